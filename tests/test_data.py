"""Tests for kr.data: real MedMNIST files, generated custom files and every kind of bad file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import medmnist
import numpy as np
import pytest
from datagen import REAL_ROOT, make_arrays, needs_real, write_npz
from medmnist.info import DEFAULT_ROOT, INFO

from kr import data
from kr.data import DataError, file_md5, load_dataset, resolve_data_root


def raises(match_words: list[str], *args, **kwargs) -> str:
    """Call load_dataset expecting DataError; check every word is in the message; return it."""
    with pytest.raises(DataError) as exc:
        load_dataset(*args, **kwargs)
    msg = str(exc.value)
    for word in match_words:
        assert word in msg, f"{word!r} not in {msg!r}"
    return msg


def as_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **kw) -> Path:
    """Write a generated file as tmp_path/breastmnist.npz and make INFO accept its MD5."""
    path = write_npz(tmp_path / "breastmnist.npz", **kw)
    monkeypatch.setitem(INFO["breastmnist"], "MD5", file_md5(path))
    return path


# ---------------------------------------------------------------- real files


@needs_real
def test_real_breastmnist_loads():
    ds = load_dataset("breastmnist", data_root=REAL_ROOT)
    info = ds.info
    assert (info.n_train, info.n_val, info.n_test) == (546, 78, 156)
    assert ds.x_train.shape == (546, 1, 28, 28) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (156, 1, 28, 28) and ds.x_train.flags["C_CONTIGUOUS"]
    assert ds.y_train.shape == (546,) and ds.y_train.dtype == np.int64
    assert info.md5 == "750601b1f35ba3300ea97c75c52ff8f6"
    assert (info.source, info.task, info.n_classes, info.channels) == ("medmnist", "binary-class", 2, 1)
    assert info.class_names == ("malignant", "normal, benign")
    assert info.path == str((REAL_ROOT / "breastmnist.npz").absolute())
    assert ds.class_counts("train").sum() == 546 and len(ds.class_counts("val")) == 2
    assert json.loads(json.dumps(info.to_dict()))["class_names"] == ["malignant", "normal, benign"]


@needs_real
def test_real_pneumoniamnist_loads():
    ds = load_dataset("pneumoniamnist", data_root=REAL_ROOT)
    assert (ds.info.n_train, ds.info.n_val, ds.info.n_test) == (4708, 524, 624)
    assert ds.x_val.shape == (524, 1, 28, 28)
    assert ds.info.class_names == ("normal", "pneumonia") and ds.info.task == "binary-class"


# ---------------------------------------------------------------- data root


def test_resolve_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("KR_DATA_ROOT", raising=False)
    assert resolve_data_root(None) == Path(DEFAULT_ROOT).expanduser()
    monkeypatch.setenv("KR_DATA_ROOT", str(tmp_path / "env"))
    assert resolve_data_root(None) == tmp_path / "env"
    assert resolve_data_root(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_root(str(tmp_path / "arg")) == tmp_path / "arg"


def test_env_data_root_used_by_load(monkeypatch, tmp_path):
    monkeypatch.setenv("KR_DATA_ROOT", str(tmp_path))
    raises([str(tmp_path / "breastmnist.npz"), "not found"], "breastmnist")


# ---------------------------------------------------------------- custom files


def test_generated_rgb_file_loads(tmp_path):
    arrays = make_arrays()
    path = write_npz(tmp_path / "custom.npz")
    ds = load_dataset(str(path))
    info = ds.info
    assert (info.name, info.source, info.channels, info.n_classes) == ("custom", "file", 3, 5)
    assert info.task == "multi-class" and info.class_names == ("0", "1", "2", "3", "4")
    assert ds.x_train.shape == (60, 3, 28, 28) and ds.x_train.dtype == np.uint8
    assert ds.x_train.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(ds.x_train, arrays["train_images"].transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(ds.y_val, arrays["val_labels"][:, 0])
    assert ds.y_val.dtype == np.int64 and info.md5 == file_md5(path)
    assert ds.class_counts("train").tolist() == [12] * 5
    x, y = ds.split("test")
    assert x.shape == (20, 3, 28, 28) and y.shape == (20,)
    json.dumps(info.to_dict())


def test_relative_path_and_flat_grayscale_labels(tmp_path, monkeypatch):
    arrays = make_arrays(channels=1, n_classes=2)
    write_npz(tmp_path / "gray.npz", channels=1, n_classes=2, train_labels=arrays["train_labels"][:, 0])
    monkeypatch.chdir(tmp_path)
    ds = load_dataset("gray.npz")
    assert ds.info.path == str(tmp_path / "gray.npz")
    assert ds.x_train.shape == (60, 1, 28, 28) and ds.info.task == "binary-class"


def test_split_rejects_unknown_name(tmp_path):
    ds = load_dataset(str(write_npz(tmp_path / "c.npz")))
    with pytest.raises(DataError, match="unknown split"):
        ds.split("dev")


# ---------------------------------------------------------------- bad files


def test_missing_file_for_flag(tmp_path):
    msg = raises(
        ["breastmnist.npz", "not found", "--data-root", "KR_DATA_ROOT", "--download"], "breastmnist", data_root=tmp_path
    )
    assert str(tmp_path) in msg


def test_missing_file_for_path(tmp_path):
    msg = raises(["nothere.npz", "not found"], str(tmp_path / "nothere.npz"))
    assert "--download" not in msg


@needs_real
def test_truncated_file(tmp_path):
    raw = (REAL_ROOT / "breastmnist.npz").read_bytes()
    (tmp_path / "breastmnist.npz").write_bytes(raw[: len(raw) // 2])
    raises(["breastmnist.npz", "not a readable .npz", "truncated"], "breastmnist", data_root=tmp_path)


@needs_real
def test_corrupt_member(tmp_path):
    raw = bytearray((REAL_ROOT / "breastmnist.npz").read_bytes())
    raw[1000:1100] = bytes(b ^ 0xFF for b in raw[1000:1100])
    (tmp_path / "breastmnist.npz").write_bytes(bytes(raw))
    raises(["breastmnist.npz", "not a readable .npz"], "breastmnist", data_root=tmp_path)


def test_not_a_zip(tmp_path):
    path = tmp_path / "notes.npz"
    path.write_text("hello, I am not an archive\n")
    raises(["notes.npz", "not a readable .npz"], str(path))


def test_wrong_md5(tmp_path):
    path = write_npz(tmp_path / "breastmnist.npz", channels=1, n_classes=2)
    msg = raises(
        ["breastmnist.npz", "MD5 mismatch", INFO["breastmnist"]["MD5"], file_md5(path), "re-download"],
        "breastmnist",
        data_root=tmp_path,
    )
    assert "expected" in msg


@needs_real
def test_wrong_md5_of_copied_real_file_under_other_flag(tmp_path):
    shutil.copy(REAL_ROOT / "breastmnist.npz", tmp_path / "pneumoniamnist.npz")
    raises(["pneumoniamnist.npz", "MD5 mismatch"], "pneumoniamnist", data_root=tmp_path)


@pytest.mark.parametrize("drop", [["val_labels"], ["train_images", "test_labels"]])
def test_missing_keys(tmp_path, drop):
    path = write_npz(tmp_path / "keys.npz", **{k: None for k in drop})
    raises(["keys.npz", "missing keys", *drop], str(path))


def test_wrong_dtype(tmp_path):
    images = make_arrays()["train_images"].astype(np.float32)
    path = write_npz(tmp_path / "floaty.npz", train_images=images)
    raises(["floaty.npz", "train_images", "dtype float32", "uint8"], str(path))


def test_wrong_shape(tmp_path):
    images = np.zeros((20, 32, 32, 3), np.uint8)
    path = write_npz(tmp_path / "big.npz", val_images=images)
    raises(["big.npz", "val_images", "(20, 32, 32, 3)", "(N, 28, 28)"], str(path))


def test_channels_disagree(tmp_path):
    gray = make_arrays(channels=1)["test_images"]
    path = write_npz(tmp_path / "mixed.npz", test_images=gray)
    raises(["mixed.npz", "disagree on channels"], str(path))


def test_label_count_mismatch(tmp_path):
    labels = make_arrays()["train_labels"][:-1]
    path = write_npz(tmp_path / "short.npz", train_labels=labels)
    raises(["short.npz", "train_labels", "(59, 1)", "60 images"], str(path))


def test_float_labels(tmp_path):
    labels = make_arrays()["train_labels"].astype(np.float32)
    path = write_npz(tmp_path / "flabels.npz", train_labels=labels)
    raises(["flabels.npz", "train_labels", "integer dtype"], str(path))


def test_negative_label(tmp_path):
    labels = make_arrays()["val_labels"].astype(np.int16)
    labels[3] = -1
    path = write_npz(tmp_path / "neg.npz", val_labels=labels)
    raises(["neg.npz", "out of range", "'val'", "-1"], str(path))


def test_class_without_training_image(tmp_path):
    labels = make_arrays()["train_labels"].copy()
    labels[labels == 2] = 1
    path = write_npz(tmp_path / "gap.npz", train_labels=labels)
    raises(["gap.npz", "class 2", "no training image", "'train'"], str(path))


def test_single_class_refused(tmp_path):
    a = make_arrays()
    zeros = {f"{s}_labels": np.zeros_like(a[f"{s}_labels"]) for s in ("train", "val", "test")}
    path = write_npz(tmp_path / "one.npz", **zeros)
    raises(["one.npz", "at least 2 classes"], str(path))


def test_multi_label_labels_refused(tmp_path):
    labels = np.zeros((60, 3), np.uint8)
    path = write_npz(tmp_path / "multi.npz", train_labels=labels)
    raises(["multi.npz", "multi-label", "not supported", "one label per image"], str(path))


def test_multi_label_flag_refused(tmp_path):
    raises(["chestmnist.npz", "multi-label", "not supported"], "chestmnist", data_root=tmp_path)


def test_object_arrays_refused(tmp_path):
    path = write_npz(tmp_path / "pickled.npz", train_labels=np.array([{"a": 1}], dtype=object))
    raises(["pickled.npz", "pickled"], str(path))


def test_unknown_flag():
    msg = raises(["cifar10", "unknown dataset name", "breastmnist", "pneumoniamnist"], "cifar10")
    assert "organmnist3d" not in msg


def test_3d_flag_refused():
    raises(["organmnist3d", "3-D", "breastmnist"], "organmnist3d")


# ---------------------------------------------------------------- flag-only checks (INFO MD5 patched)


def test_flag_with_matching_md5_uses_info(tmp_path, monkeypatch):
    as_flag(tmp_path, monkeypatch, n_train=546, n_val=78, n_test=156, channels=1, n_classes=2)
    ds = load_dataset("BreastMNIST", data_root=tmp_path)
    assert ds.info.source == "medmnist" and ds.info.name == "breastmnist"
    assert ds.info.class_names == ("malignant", "normal, benign")


def test_flag_label_out_of_range(tmp_path, monkeypatch):
    labels = make_arrays(n_test=156, channels=1, n_classes=2)["test_labels"].copy()
    labels[0] = 2
    as_flag(tmp_path, monkeypatch, n_train=546, n_val=78, n_test=156, channels=1, n_classes=2, test_labels=labels)
    raises(["breastmnist.npz", "out of range", "'test'", "[2]", "[0, 2)"], "breastmnist", data_root=tmp_path)


def test_flag_channels_mismatch(tmp_path, monkeypatch):
    as_flag(tmp_path, monkeypatch, channels=3, n_classes=2)
    raises(["breastmnist.npz", "3 channel", "says 1"], "breastmnist", data_root=tmp_path)


def test_flag_sample_count_mismatch(tmp_path, monkeypatch):
    as_flag(tmp_path, monkeypatch, channels=1, n_classes=2)
    raises(["breastmnist.npz", "'train' has 60 samples", "expects 546"], "breastmnist", data_root=tmp_path)


# ---------------------------------------------------------------- download (no network: patched)


def test_download_called_only_when_missing(tmp_path, monkeypatch):
    calls = []

    def fake_download(flag, data_root):
        calls.append(flag)
        return as_flag(tmp_path, monkeypatch, n_train=546, n_val=78, n_test=156, channels=1, n_classes=2)

    monkeypatch.setattr(data, "download_dataset", fake_download)
    load_dataset("breastmnist", data_root=tmp_path, download=True)
    load_dataset("breastmnist", data_root=tmp_path, download=True)
    assert calls == ["breastmnist"]


def test_download_failure_is_wrapped(tmp_path, monkeypatch):
    class Failing:
        def __init__(self, **kwargs):
            assert kwargs["download"] is True and kwargs["size"] == 28
            raise RuntimeError("network unreachable")

    monkeypatch.setattr(medmnist, "BreastMNIST", Failing)
    root = tmp_path / "new_root"
    with pytest.raises(DataError) as exc:
        data.download_dataset("breastmnist", root)
    msg = str(exc.value)
    assert "download failed" in msg and "by hand" in msg and "breastmnist.npz" in msg
    assert "network unreachable" in msg and root.is_dir()


def test_the_data_artifact_is_a_reference_that_refuses_a_changed_file(tmp_path) -> None:
    """The validated dataset travels as info.json (path, MD5), never as images; a step that finds the file changed
    since validation stops with a DataError naming it."""
    from kr.data import DataError, load_dataset, load_saved_dataset, save_dataset

    path = write_npz(tmp_path / "d.npz", n_train=40, channels=1, n_classes=2)
    data = load_dataset(str(path))
    folder = save_dataset(data, tmp_path / "artifact")
    assert [p.name for p in folder.iterdir()] == ["info.json"]
    again = load_saved_dataset(folder)
    assert again.info == data.info and (again.x_train == data.x_train).all()
    write_npz(path, n_train=40, channels=1, n_classes=2, seed=1)
    with pytest.raises(DataError, match="changed after validation"):
        load_saved_dataset(folder)
    path.unlink()
    with pytest.raises(DataError, match="gone"):
        load_saved_dataset(folder)
