"""Tests for kr.validation: the Great Expectations suites on real and generated data and on synthetic shards.

Every bad case starts from data that passes (test_generated_dataset_passes, test_balanced_shards_pass), changes one
thing, and checks that the failure message names that thing: a suite that stopped checking would fail here.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pydantic
import pytest
from datagen import REAL_ROOT, make_arrays, needs_real, write_npz

from kr.data import Dataset, load_dataset
from kr.validation import (
    REPORT_FILE,
    ValidationConfig,
    ValidationFailed,
    class_count_table,
    image_table,
    validate_real,
    validate_shard,
)

CFG = ValidationConfig(max_shared_fraction=0.0)  # strict: no shared image at all


def generated(tmp_path: Path, **overrides) -> Dataset:
    """A generated 5-class RGB dataset (12 train, 4 val, 4 test images per class) loaded through kr.data."""
    return load_dataset(str(write_npz(tmp_path / "gen.npz", **overrides)))


def fails(data: Dataset, docs: Path, cfg: ValidationConfig = CFG, *words: str) -> str:
    """Expect validate_real to raise; check every word is in the message and the artifacts exist; return it."""
    with pytest.raises(ValidationFailed) as exc:
        validate_real(data, cfg, docs)
    msg = str(exc.value)
    for word in words:
        assert word in msg, f"{word!r} not in {msg!r}"
    assert not exc.value.report["passed"]
    # the pipeline keeps these artifacts, so they must be written before the exception
    assert json.loads((docs / REPORT_FILE).read_text())["failures"] == exc.value.report["failures"]
    assert (docs / "index.html").is_file()
    return msg


# ---------------------------------------------------------------- real files


@needs_real
def test_real_breastmnist_shared_image_is_a_warning_by_default_and_fails_when_strict(tmp_path: Path) -> None:
    data = load_dataset("breastmnist", REAL_ROOT)
    # the official file holds one test image byte-identical to a training image, under the other label
    msg = fails(data, tmp_path / "strict", CFG, "test: 1 image also appears in train", "76 = train 115")
    assert len(msg.splitlines()) == 3, msg  # heading, the one problem, the Data Docs path: nothing else failed

    report = validate_real(data, ValidationConfig(), tmp_path / "docs")  # default: 1% of val+test may be shared
    assert report["passed"], report["failures"]
    assert report["warnings"] == [
        "test: 1 image also appears in train, byte for byte: index 76 = train 115 (labelled 1 here, 0 in train)"
    ]
    assert Path(report["docs"]) == (tmp_path / "docs" / "index.html").absolute()
    assert Path(report["docs"]).is_file()
    assert report["splits"]["train"] == {
        "images": 546,
        "pixel_min": 0.0,
        "pixel_max": 255.0,
        "shared_with_train": 0,
        "duplicates_within_split": 0,
        "label_conflicts": 0,  # its one conflict is between train and test: the shared-image check's, above
    }
    assert report["rows"] == {"images": 780, "class_counts": 6, "splits": 3}
    assert all(e["success"] for e in report["expectations"])
    json.dumps(report)  # JSON-ready


# ---------------------------------------------------------------- tables


def test_image_table_has_one_row_per_image_with_hash_and_shared_flag(tmp_path: Path) -> None:
    arrays = make_arrays()
    arrays["val_images"][2] = arrays["train_images"][5]
    data = generated(tmp_path, val_images=arrays["val_images"])
    table = image_table(data)
    assert len(table) == 100
    assert list(table.columns) == [
        "split",
        "index",
        "label",
        "height",
        "width",
        "channels",
        "dtype",
        "min",
        "max",
        "mean",
        "hash",
        "shared_with_train",
        "duplicate",
        "label_conflict",
    ]
    row = table[(table["split"] == "val") & (table["index"] == 2)].iloc[0]
    assert row["shared_with_train"]
    assert table["shared_with_train"].sum() == 1
    assert row["hash"] == table[(table["split"] == "train") & (table["index"] == 5)]["hash"].item()
    x = data.x_test[7]
    test7 = table[(table["split"] == "test") & (table["index"] == 7)].iloc[0]
    assert (test7["min"], test7["max"], test7["mean"]) == (x.min(), x.max(), pytest.approx(x.mean()))
    assert (test7["channels"], test7["height"], test7["width"], test7["dtype"]) == (3, 28, 28, "uint8")

    counts = class_count_table(data)
    assert len(counts) == 15
    assert counts[counts["split"] == "train"]["count"].tolist() == [12] * 5


# ---------------------------------------------------------------- generated datasets


def test_generated_dataset_passes(tmp_path: Path) -> None:
    report = validate_real(generated(tmp_path), CFG, tmp_path / "docs")
    assert report["passed"] and report["failures"] == [] and report["warnings"] == []
    assert (tmp_path / "docs" / "index.html").is_file()
    assert json.loads((tmp_path / "docs" / REPORT_FILE).read_text())["passed"]


def test_image_copied_from_train_into_test_fails(tmp_path: Path) -> None:
    arrays = make_arrays()
    arrays["test_images"][3] = arrays["train_images"][7]
    arrays["test_labels"][3] = arrays["train_labels"][7]
    arrays["test_images"][11] = arrays["train_images"][0]
    arrays["test_labels"][11] = (arrays["train_labels"][0] + 1) % 5  # the copy also carries another label
    data = generated(tmp_path, test_images=arrays["test_images"], test_labels=arrays["test_labels"])
    train_label = int(arrays["train_labels"][0, 0])
    fails(
        data,
        tmp_path / "docs",
        CFG,
        "test: 2 images also appear in train, byte for byte: indices 3 = train 7, 11 = train 0 "
        f"(labelled {(train_label + 1) % 5} here, {train_label} in train); at most 0 allowed",
    )
    # 40 val+test images: a tolerance of 5% (2 images) accepts it, 2.5% (1 image) does not
    assert validate_real(data, ValidationConfig(max_shared_fraction=0.05), tmp_path / "ok")["passed"]
    fails(data, tmp_path / "tight", ValidationConfig(max_shared_fraction=0.025), "at most 1 allowed")


def test_class_with_too_few_train_images_fails(tmp_path: Path) -> None:
    arrays = make_arrays()
    y = arrays["train_labels"].ravel()
    y[np.flatnonzero(y == 2)[3:]] = 0  # class 2 keeps 3 training images
    data = generated(tmp_path, train_labels=y.reshape(-1, 1))
    msg = fails(data, tmp_path / "docs", CFG, "train: class 2 ('2') has 3 images; at least 10 needed")
    assert "class 0" not in msg
    assert validate_real(data, ValidationConfig(min_images_per_class=3), tmp_path / "ok")["passed"]


def test_float_images_out_of_range_fail(tmp_path: Path) -> None:
    # kr.data refuses non-uint8 files, so the bad Dataset is built directly, as a buggy step might
    data = generated(tmp_path)
    x = data.x_val.astype(np.float32)
    x[4, 0, 0, 0] = 300.0
    x[9, 1, 5, 5] = -1.0
    msg = fails(dataclasses.replace(data, x_val=x), tmp_path / "docs", CFG, "dtype: images are float32, expected uint8")
    assert "pixels: 1 image has a max outside [0, 255]: 300.0 (val 4)" in msg
    assert "pixels: 1 image has a min outside [0, 255]: -1.0 (val 9)" in msg


def test_nan_pixels_fail(tmp_path: Path) -> None:
    data = generated(tmp_path)
    x = data.x_train.astype(np.float64)
    x[6, 2, 10, 10] = np.nan
    fails(dataclasses.replace(data, x_train=x), tmp_path / "docs", CFG, "pixels: 1 image contains NaN", "train 6")


def test_label_outside_class_set_fails(tmp_path: Path) -> None:
    data = generated(tmp_path)
    y = data.y_test.copy()
    y[[1, 8]] = [7, 5]
    fails(dataclasses.replace(data, y_test=y), tmp_path / "docs", CFG, "label: values outside {0, 1, 2, 3, 4}: [5, 7]")


def test_wrong_channels_and_blank_image_fail(tmp_path: Path) -> None:
    data = generated(tmp_path)
    x = data.x_train.copy()
    x[13] = 77
    gray = dataclasses.replace(data, x_train=x, x_test=data.x_test[:, :1])
    msg = fails(gray, tmp_path / "docs", CFG, "channels: values outside {3}: [1] in 20 images (test 0, 1, 2")
    assert "pixels: 1 image is blank" in msg and "(train 13)" in msg


def test_malformed_dataset_is_refused_with_a_report(tmp_path: Path) -> None:
    data = generated(tmp_path)
    bad = dataclasses.replace(data, y_val=data.y_val[:-1])
    with pytest.raises(ValidationFailed, match=r"val: labels have shape \(19,\); expected \(20,\)"):
        validate_real(bad, CFG, tmp_path / "docs")
    assert not json.loads((tmp_path / "docs" / REPORT_FILE).read_text())["passed"]


def test_no_raise_returns_the_failed_report(tmp_path: Path) -> None:
    data = generated(tmp_path)
    y = data.y_train.copy()
    y[y == 4] = 3  # class 4 loses every training image
    report = validate_real(dataclasses.replace(data, y_train=y), CFG, tmp_path / "docs", raise_on_failure=False)
    assert not report["passed"]
    assert report["failures"] == ["train: class 4 ('4') has 0 images; at least 10 needed"]
    failed = [e for e in report["expectations"] if not e["success"]]
    assert [(e["table"], e["expectation"], e["column"]) for e in failed] == [
        ("class_counts", "expect_column_values_to_be_between", "count")
    ]


def test_writes_nothing_outside_docs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cwd, home = tmp_path / "cwd", tmp_path / "home"
    cwd.mkdir()
    home.mkdir()
    data = generated(tmp_path)
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(home))
    validate_real(data, CFG, tmp_path / "docs")
    validate_shard(write_shard(tmp_path / "s.npz"), 5, CFG, tmp_path / "shard_docs")
    assert list(cwd.iterdir()) == [] and list(home.iterdir()) == []


def test_config_is_strict() -> None:
    with pytest.raises(pydantic.ValidationError):
        ValidationConfig(min_images_per_clas=5)
    with pytest.raises(pydantic.ValidationError):
        ValidationConfig(max_shared_fraction=-0.1)


# ---------------------------------------------------------------- synthetic shards


def write_shard(path: Path, n: int = 50, n_classes: int = 5, seed: int = 0, **replace: np.ndarray) -> Path:
    """A shard as kr.method.regeneration writes it: balanced labels (counts differ by <= 1), uint8 images, logits."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % n_classes)
    arrays = {
        "images": rng.integers(0, 256, (n, 3, 28, 28), dtype=np.uint8),
        "gen_labels": labels,
        "teacher_logits": rng.normal(size=(n, n_classes)).astype(np.float32),
    }
    arrays.update(replace)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


@pytest.mark.parametrize("n", [50, 23, 3])
def test_balanced_shards_pass(tmp_path: Path, n: int) -> None:
    report = validate_shard(write_shard(tmp_path / "shard-0.npz", n=n), 5, CFG, tmp_path / "docs", channels=3)
    assert report["passed"], report["failures"]
    assert sum(report["class_counts"]) == n and max(report["class_counts"]) - min(report["class_counts"]) <= 1
    assert report["suite"] == "shard.shard-0"
    assert (tmp_path / "docs" / "index.html").is_file()


def shard_fails(path: Path, docs: Path, cfg: ValidationConfig = CFG, **kw) -> str:
    with pytest.raises(ValidationFailed) as exc:
        validate_shard(path, 5, cfg, docs, **kw)
    assert (docs / "index.html").is_file() and (docs / REPORT_FILE).is_file()
    return str(exc.value)


def test_shard_with_nan_logit_fails(tmp_path: Path) -> None:
    logits = np.random.default_rng(1).normal(size=(50, 5)).astype(np.float32)
    logits[17, 2] = np.nan
    logits[30, 0] = np.inf
    msg = shard_fails(write_shard(tmp_path / "s.npz", teacher_logits=logits), tmp_path / "docs")
    assert "teacher_logits: 2 row(s) hold NaN or infinite values (indices 17, 30)" in msg
    assert msg.count("\n  - ") == 1, msg


def test_unbalanced_shard_fails(tmp_path: Path) -> None:
    labels = np.arange(50) % 5
    labels[:3] = 1  # class 0 loses 1 image, class 2 loses 1; class 1 gains 2 (10 is exact balance)
    msg = shard_fails(write_shard(tmp_path / "s.npz", gen_labels=labels), tmp_path / "docs")
    assert "gen_labels: class 1 has 12 images; expected 10 to 10" in msg
    assert "class 0 has 9 images" in msg and "class 2 has 9 images" in msg
    assert "class 3" not in msg
    # a 20% tolerance (8 to 12 for N/K = 10) accepts it
    assert validate_shard(tmp_path / "s.npz", 5, ValidationConfig(max_class_imbalance=0.2), tmp_path / "ok")["passed"]


def test_shard_pixels_labels_and_logit_width_fail(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    labels = np.arange(50) % 5
    labels[4] = 5  # one label outside the 5 classes
    path = write_shard(
        tmp_path / "s.npz",
        images=rng.integers(0, 256, (50, 1, 28, 28)).astype(np.int16),
        gen_labels=labels,
        teacher_logits=rng.normal(size=(50, 4)).astype(np.float32),
    )
    msg = shard_fails(path, tmp_path / "docs", channels=3)
    assert "dtype: images are int16, expected uint8" in msg
    assert "channels: values outside {3}: [1] in 50 images" in msg
    assert "gen_label: values outside {0, 1, 2, 3, 4}: [5] in 1 image (index 4)" in msg
    assert "teacher_logits: 4 columns; expected 5" in msg


def test_shard_image_size_is_the_real_datas(tmp_path: Path) -> None:
    images = np.random.default_rng(3).integers(0, 256, (50, 3, 64, 64), dtype=np.uint8)
    path = write_shard(tmp_path / "s.npz", images=images)
    assert validate_shard(path, 5, CFG, tmp_path / "any")["passed"]  # 64 is one of the MedMNIST+ sides
    assert validate_shard(path, 5, CFG, tmp_path / "64", image_size=64)["passed"]
    msg = shard_fails(path, tmp_path / "28", image_size=28)
    assert "height: values outside {28}: [64] in 50 images" in msg and "width: values outside {28}" in msg


def test_unreadable_shard_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.npz"
    with open(path, "wb") as f:
        np.savez(f, images=np.zeros((4, 1, 28, 28), np.uint8), gen_labels=np.arange(4))
    with pytest.raises(ValidationFailed, match="missing keys teacher_logits"):
        validate_shard(path, 2, CFG, tmp_path / "docs")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValidationFailed, match="not a readable shard"):
        validate_shard(tmp_path / "junk.npz", 2, CFG, tmp_path / "docs2")


def test_hostile_shards_are_refused_before_inflating(tmp_path: Path) -> None:
    """A zip bomb, a lying .npy header and an object member are refused from the zip directory and the headers,
    with the memory of a few buffers; the report says why."""
    import io
    import tracemalloc
    import zipfile

    def npy(shape: tuple[int, ...], descr: str = "|u1", payload: bytes = b"") -> bytes:
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
        return buf.getvalue() + payload

    small = {"gen_labels.npy": npy((4,), "<i8", bytes(32)), "teacher_logits.npy": npy((4, 2), "<f4", bytes(32))}
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        with z.open("images.npy", "w", force_zip64=True) as f:  # (200000, 1, 28, 28) zeros: 150 MiB in ~150 KB
            f.write(npy((200_000, 1, 28, 28)))
            for _ in range(200_000 * 784 // 2**20):
                f.write(bytes(2**20))
            f.write(bytes(200_000 * 784 % 2**20))
        for name, raw in small.items():
            z.writestr(name, raw)
    tracemalloc.start()
    try:
        with pytest.raises(ValidationFailed, match="not a readable shard.*compression ratio of 1,0"):
            validate_shard(bomb, 2, CFG, tmp_path / "docs")
        peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert peak < 32, f"peak {peak:.0f} MiB for a refused bomb"  # the images alone would be 150 MiB

    hostile = {
        "liar.npz": ({"images.npy": npy((10**9, 1, 28, 28), payload=bytes(1024))}, "declares"),
        "obj.npz": ({"images.npy": npy((4,), "|O", payload=b"\x80\x04N.")}, "object"),
        "extra.npz": (
            {"images.npy": npy((4, 1, 28, 28), payload=bytes(3136)), "x.npy": npy((1,), payload=b"\0")},
            "unexpected member",
        ),
    }
    for name, (members, word) in hostile.items():
        with zipfile.ZipFile(tmp_path / name, "w") as z:
            for member, raw in {**small, **members}.items():
                z.writestr(member, raw)
        with pytest.raises(ValidationFailed, match=f"not a readable shard.*{word}"):
            validate_shard(tmp_path / name, 2, CFG, tmp_path / f"docs-{name}")


# ---------------------------------------------------------------- implausible pixel ranges, duplicates


def test_images_scaled_to_0_1_or_to_a_tiny_range_fail(tmp_path: Path) -> None:
    data = generated(tmp_path)
    # a [0, 1] float image cast to uint8 without the * 255: every pixel is 0 or 1
    x_train = np.rint(data.x_train / 255.0).astype(np.uint8)
    x_val = data.x_val // 32  # 0..7: 3 bits of 8 used (e.g. 11-bit values shifted one bit too far)
    msg = fails(
        dataclasses.replace(data, x_train=x_train, x_val=x_val),
        tmp_path / "docs",
        CFG,
        "train: pixel values span only 0 to 1 over 60 images: images scaled to [0, 1] then cast to uint8? "
        "multiply by 255 before casting",
        f"val: pixel values span only {x_val.min()} to {x_val.max()} over 20 images (fewer than 16 grey levels): "
        "not scaled to 0-255 before the cast to uint8? rescale to the full range",
    )
    assert "test: pixel values" not in msg
    line = next(s for s in msg.splitlines() if "train: pixel values" in s)
    assert len(line) < 300, line


@needs_real
def test_real_pneumoniamnist_passes_with_its_duplicates_reported(tmp_path: Path) -> None:
    report = validate_real(load_dataset("pneumoniamnist", REAL_ROOT), ValidationConfig(), tmp_path / "docs")
    assert report["passed"], report["failures"]
    assert report["splits"]["train"]["pixel_max"] == 255.0
    # its 8 val images shared with train lie within the 1% allowance; 18 train and 3 test images repeat one of their
    # split under the same label: reported, not failed
    assert any(w.startswith("val: 8 images also appear in train") for w in report["warnings"]), report["warnings"]
    assert any(w.startswith("train: 18 images repeat") for w in report["warnings"]), report["warnings"]
    assert any(w.startswith("test: 3 images repeat") for w in report["warnings"]), report["warnings"]


def test_same_image_under_two_labels_fails(tmp_path: Path) -> None:
    data = generated(tmp_path)
    x_train, y_train = data.x_train.copy(), data.y_train.copy()
    x_train[20], y_train[20] = x_train[3], (y_train[3] + 1) % 5  # within train
    x_train[33], y_train[33] = x_train[3], y_train[3]  # and a third copy, under the first label
    x_test, y_test = data.x_test.copy(), data.y_test.copy()
    x_test[5], y_test[5] = data.x_val[2], (data.y_val[2] + 2) % 5  # across val and test
    bad = dataclasses.replace(data, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    msg = fails(
        bad,
        tmp_path / "docs",
        CFG,
        "labels: 2 images are stored twice or more under different labels: "
        f"train 3 (label {y_train[3]}) = train 20 (label {y_train[20]}) = train 33 (label {y_train[33]}); "
        f"val 2 (label {data.y_val[2]}) = test 5 (label {y_test[5]})",
    )
    assert len(msg.splitlines()) == 3, msg  # heading, the one problem, the Data Docs path
    # no tolerance makes it pass: the ground truth itself disagrees
    report = validate_real(bad, ValidationConfig(max_shared_fraction=1.0), tmp_path / "lax", raise_on_failure=False)
    assert not report["passed"]
    assert report["splits"]["train"]["label_conflicts"] == 3 and report["splits"]["test"]["label_conflicts"] == 1
    # the copy under the same label is also what it is: a repeat, reported
    assert report["warnings"] == [
        "train: 1 image repeats an earlier image of the split under the same label: 33 = 3 (reported, not failed)"
    ]


def test_same_image_under_the_same_label_is_a_warning(tmp_path: Path) -> None:
    data = generated(tmp_path)
    x_train = data.x_train.copy()
    y_train = data.y_train.copy()
    x_train[30], y_train[30] = x_train[4], y_train[4]
    x_train[41], y_train[41] = x_train[4], y_train[4]
    report = validate_real(dataclasses.replace(data, x_train=x_train, y_train=y_train), CFG, tmp_path / "docs")
    assert report["passed"], report["failures"]
    assert report["warnings"] == [
        "train: 2 images repeat an earlier image of the split under the same label: 30 = 4, 41 = 4 "
        "(reported, not failed)"
    ]
    assert report["splits"]["train"]["duplicates_within_split"] == 2
