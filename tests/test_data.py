"""Tests for kr.data: real MedMNIST files, generated custom files and every kind of bad file."""

from __future__ import annotations

import http.server
import io
import json
import shutil
import socket
import subprocess
import sys
import threading
import tracemalloc
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from datagen import REAL_ROOT, make_arrays, needs_real, write_npz
from medmnist.info import DEFAULT_ROOT, INFO

from kr import data
from kr.config import DataConfig
from kr.data import DataError, NpzLimits, file_md5, load_dataset, resolve_data_root


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
    """Under its flag the MD5, checked before anything is inflated, refuses it; as a custom file, the member."""
    raw = bytearray((REAL_ROOT / "breastmnist.npz").read_bytes())
    raw[1000:1100] = bytes(b ^ 0xFF for b in raw[1000:1100])
    (tmp_path / "breastmnist.npz").write_bytes(bytes(raw))
    raises(["breastmnist.npz", "MD5 mismatch"], "breastmnist", data_root=tmp_path)
    raises(["breastmnist.npz", "'train_images'", "not readable", "corrupt"], str(tmp_path / "breastmnist.npz"))


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
    raises(["multi.npz", "multi-label", "single-label", "one label per image", "one binary task per label"], str(path))


def test_multi_label_flag_refused(tmp_path):
    raises(
        ["chestmnist.npz", "multi-label", "single-label", "one binary task per finding"],
        "chestmnist",
        data_root=tmp_path,
    )


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
    raises(
        ["breastmnist.npz", "out of range", "'test'", "index 0: 2", "[0, 2)", "INFO for breastmnist"],
        "breastmnist",
        data_root=tmp_path,
    )


def test_flag_channels_mismatch(tmp_path, monkeypatch):
    as_flag(tmp_path, monkeypatch, channels=3, n_classes=2)
    raises(["breastmnist.npz", "3 channel", "says 1"], "breastmnist", data_root=tmp_path)


def test_flag_sample_count_mismatch(tmp_path, monkeypatch):
    as_flag(tmp_path, monkeypatch, channels=1, n_classes=2)
    raises(["breastmnist.npz", "'train' has 60 samples", "expects 546"], "breastmnist", data_root=tmp_path)


# ---------------------------------------------------------------- image sizes (MedMNIST+)


def square_arrays(side: int, channels: int = 3, n_classes: int = 2) -> dict[str, np.ndarray]:
    """make_arrays' layout and labels with random uint8 images of side x side pixels."""
    arrays = make_arrays(channels=channels, n_classes=n_classes)
    rng = np.random.default_rng(1)
    for split in data.SPLITS:
        n = len(arrays[f"{split}_labels"])
        shape = (n, side, side) if channels == 1 else (n, side, side, 3)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
    return arrays


def test_a_flag_reads_the_file_of_its_size(tmp_path):
    assert data.dataset_location("breastmnist", tmp_path) == tmp_path / "breastmnist.npz"
    assert data.dataset_path("BreastMNIST", tmp_path, 64) == tmp_path / "breastmnist_64.npz"
    assert data.dataset_location("breastmnist", "s3://kr-data/mm", 224) == "s3://kr-data/mm/breastmnist_224.npz"
    assert data.dataset_location(str(tmp_path / "mine.npz"), None, 128) == tmp_path / "mine.npz"
    raises(["breastmnist_128.npz", "not found", "--download"], "breastmnist", data_root=tmp_path, size=128)


@pytest.mark.parametrize("size", [32, 0, True, "64"])
def test_an_unknown_size_is_refused(tmp_path, size):
    raises(["image size", "data.size", "28, 64, 128, 224"], "breastmnist", data_root=tmp_path, size=size)


def test_a_custom_file_of_64_pixels_loads_at_size_64_and_keeps_it_in_its_reference(tmp_path):
    from kr.data import load_saved_dataset, save_dataset

    arrays = square_arrays(64)
    path = write_npz(tmp_path / "big.npz", **arrays)
    ds = load_dataset(str(path), size=64)
    assert ds.info.image_size == 64 and ds.x_train.shape == (60, 3, 64, 64) and ds.x_train.dtype == np.uint8
    np.testing.assert_array_equal(ds.x_val, arrays["val_images"].transpose(0, 3, 1, 2))
    again = load_saved_dataset(save_dataset(ds, tmp_path / "artifact"))
    assert again.info.image_size == 64 and again.x_test.shape == (20, 3, 64, 64)


def test_a_custom_file_of_another_size_names_both_sizes(tmp_path):
    path = write_npz(tmp_path / "small.npz", channels=1, n_classes=2)
    msg = raises(["small.npz", "(60, 28, 28)", "28x28", "image size is 64", "set data.size=28"], str(path), size=64)
    assert len(msg) < 400
    odd = write_npz(tmp_path / "odd.npz", **square_arrays(32))
    raises(["odd.npz", "32x32", "image size is 28", "resize them"], str(odd))


def test_a_flag_at_size_64_is_checked_against_info_md5_64(tmp_path, monkeypatch):
    path = write_npz(tmp_path / "breastmnist_64.npz", **square_arrays(64, channels=1))
    raises(["breastmnist_64.npz", "MD5 mismatch", INFO["breastmnist"]["MD5_64"]], "breastmnist", tmp_path, size=64)
    monkeypatch.setitem(INFO["breastmnist"], "MD5_64", file_md5(path))
    monkeypatch.setitem(INFO["breastmnist"], "n_samples", {"train": 60, "val": 20, "test": 20})
    ds = load_dataset("breastmnist", tmp_path, size=64)
    assert (ds.info.source, ds.info.name, ds.info.image_size) == ("medmnist", "breastmnist", 64)
    assert ds.x_train.shape == (60, 1, 64, 64)


# ---------------------------------------------------------------- the medmnist catalogue


def test_kr_data_reads_flags_without_importing_the_medmnist_package():
    """medmnist's __init__ imports torch, pandas and scikit-learn (and prints on stdout when one is missing): kr reads
    only medmnist/info.py."""
    code = (
        "import sys, kr.data as d; assert 'breastmnist' in d.valid_flags(); "
        "assert d.dataset_path('breastmnist', '/x', 64).name == 'breastmnist_64.npz'; "
        "print(sorted(m for m in ('medmnist', 'torch', 'pandas', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_catalogue_is_medmnist_info_itself():
    from kr import medmnist_catalog

    assert medmnist_catalog.info() is INFO and medmnist_catalog.DEFAULT_ROOT == DEFAULT_ROOT
    assert medmnist_catalog.file_name("pathmnist", 28) == "pathmnist.npz"
    assert medmnist_catalog.md5("pathmnist", 224) == INFO["pathmnist"]["MD5_224"]
    assert medmnist_catalog.url("pathmnist", 64) == INFO["pathmnist"]["url_64"]


def test_without_medmnist_flags_say_how_to_install_it_and_custom_files_still_load(tmp_path, monkeypatch):
    from kr import medmnist_catalog

    def missing():
        raise ModuleNotFoundError(f"MedMNIST flags need the medmnist catalogue: {medmnist_catalog.INSTALL_HINT}")

    monkeypatch.setattr(medmnist_catalog, "info", missing)
    raises(["medmnist", "pip install --no-deps"], "breastmnist", data_root=tmp_path)
    assert load_dataset(str(write_npz(tmp_path / "mine.npz"))).info.n_classes == 5


# ---------------------------------------------------------------- download (a real HTTP server on 127.0.0.1)


@contextmanager
def serving(body: bytes, *, send: int | None = None, status: int = 200) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 in a thread; yields the URL of the one file it serves, `body`. `send`: announce
    len(body) bytes but send only that many, then close the connection. `status`: answer that error instead."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if status != 200:
                self.send_error(status)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:send])  # HTTP/1.0: the connection closes when the handler returns

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/breastmnist.npz"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (a port just bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/breastmnist.npz"


def served_file(tmp_path: Path) -> tuple[bytes, str]:
    """The bytes and MD5 of a small generated .npz."""
    path = write_npz(tmp_path / "source" / "served.npz", channels=1, n_classes=2)
    return path.read_bytes(), file_md5(path)


def test_download_streams_checks_the_md5_and_renames_into_place(tmp_path):
    body, md5 = served_file(tmp_path)
    root = tmp_path / "new" / "root"
    with serving(body) as url:
        path = data.download_medmnist("BreastMNIST", 64, root, url=url, md5=md5, progress=True)
        assert path == root / "breastmnist_64.npz" and path.read_bytes() == body
        assert data.download_medmnist("breastmnist", 28, root, url=url, md5=md5, progress=False).read_bytes() == body
    assert sorted(p.name for p in root.iterdir()) == ["breastmnist.npz", "breastmnist_64.npz"]  # no .part left
    assert path.stat().st_mode & 0o777 == 0o644
    # a file already there with the expected MD5 is kept: no server needed
    assert data.download_medmnist("breastmnist", 64, root, url=closed_port_url(), md5=md5, progress=False) == path


def test_download_with_a_wrong_md5_keeps_nothing_and_says_how_to_place_the_file(tmp_path):
    body, _ = served_file(tmp_path)
    root = tmp_path / "root"
    with serving(body) as url, pytest.raises(DataError) as exc:
        data.download_medmnist("breastmnist", 28, root, url=url, progress=False)  # INFO's MD5: not this file's
    msg = str(exc.value)
    for word in ["breastmnist.npz", "MD5 mismatch", INFO["breastmnist"]["MD5"], "by hand", INFO["breastmnist"]["url"]]:
        assert word in msg, word
    assert list(root.iterdir()) == [] and len(msg) < 400


def test_download_cut_mid_file_keeps_nothing(tmp_path):
    body, md5 = served_file(tmp_path)
    root = tmp_path / "root"
    with serving(body, send=len(body) // 2) as url, pytest.raises(DataError) as exc:
        data.download_medmnist("breastmnist", 28, root, url=url, md5=md5, progress=False)
    msg = str(exc.value)
    assert "download from http://127.0.0.1" in msg and "failed" in msg and "by hand" in msg
    assert f"closed after {len(body) // 2:,} of {len(body):,} bytes" in msg
    assert list(root.iterdir()) == []


def test_download_http_errors_and_unreachable_servers_are_data_errors(tmp_path):
    with serving(b"", status=404) as url, pytest.raises(DataError, match="HTTP 404 Not Found.*by hand"):
        data.download_medmnist("breastmnist", 28, tmp_path, url=url, md5="0" * 32, progress=False)
    with pytest.raises(DataError, match="cannot reach the server.*by hand"):
        data.download_medmnist("breastmnist", 28, tmp_path, url=closed_port_url(), md5="0" * 32, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("flag", "size", "words"),
    [("organmnist3d", 28, ["3-D"]), ("cifar10", 28, ["unknown dataset name"]), ("breastmnist", 32, ["data.size"])],
)
def test_download_refuses_3d_and_unknown_flags_and_sizes_before_any_request(tmp_path, flag, size, words):
    with pytest.raises(DataError) as exc:
        data.download_medmnist(flag, size, tmp_path / "root", url=closed_port_url())
    assert all(w in str(exc.value) for w in words) and not (tmp_path / "root").exists()


def test_load_dataset_downloads_a_missing_flag_file_only_when_asked_and_missing(tmp_path, monkeypatch):
    arrays = dict(n_train=546, n_val=78, n_test=156, channels=1, n_classes=2)
    source = write_npz(tmp_path / "source" / "breastmnist.npz", **arrays)
    monkeypatch.setitem(INFO["breastmnist"], "MD5", file_md5(source))
    root = tmp_path / "root"
    raises(["breastmnist.npz", "not found"], "breastmnist", data_root=root)
    with serving(source.read_bytes()) as url:
        monkeypatch.setitem(INFO["breastmnist"], "url", url)
        assert load_dataset("breastmnist", data_root=root, download=True).info.n_train == 546
    calls = []
    monkeypatch.setattr(data, "download_medmnist", lambda *a, **k: calls.append(a))
    assert load_dataset("breastmnist", data_root=root, download=True).info.source == "medmnist"
    assert calls == []  # there already


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


# ---------------------------------------------------------------- hostile files: refused before inflating anything


def npy(shape: tuple[int, ...], descr: str = "|u1", payload: bytes | None = None) -> bytes:
    """A .npy header declaring shape/descr, then payload (default: the zero bytes the header declares)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    if payload is None:
        payload = bytes(int(np.prod(shape)) * np.dtype(descr).itemsize)
    return buf.getvalue() + payload


def tiny_members(n: int = 10) -> dict[str, bytes]:
    """Valid .npy members of a small grayscale two-class file."""
    members = {}
    for split in ("train", "val", "test"):
        members[f"{split}_images.npy"] = npy((n, 28, 28))
        members[f"{split}_labels.npy"] = npy((n,), payload=bytes(np.arange(n, dtype=np.uint8) % 2))
    return members


def write_zip(path: Path, members: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", method) as z:
        for name, raw in members.items():
            z.writestr(name, raw)
    return path


def write_bomb(path: Path, n: int = 200_000, member: str = "train_images.npy", **others: bytes) -> Path:
    """A zip whose `member` declares (n, 28, 28) uint8 zeros (157 MB at n = 200,000), deflated to ~150 KB, written in
    1 MiB chunks so that making it never holds the array; `others` (name -> bytes) are stored beside it."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        with z.open(member, "w", force_zip64=True) as f:
            f.write(npy((n, 28, 28), payload=b""))
            left, chunk = n * 28 * 28, bytes(1 << 20)
            while left:
                f.write(chunk[: min(left, len(chunk))])
                left -= min(left, len(chunk))
        for name, raw in others.items():
            z.writestr(name, raw)
    return path


def peak_mb(fn, *args, **kwargs) -> tuple[BaseException | None, float]:
    """Call fn; return what it raised (None if nothing) and the peak of traced allocations (numpy's arrays
    included) in MiB: deterministic, unlike RSS, which other tests in the process have already raised."""
    tracemalloc.start()
    try:
        fn(*args, **kwargs)
        raised = None
    except Exception as e:  # returned for the caller to check
        raised = e
    finally:
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    return raised, peak


@pytest.mark.fault
def test_zip_bomb_refused_before_inflating(tmp_path):
    members = tiny_members()
    del members["train_images.npy"]
    path = write_bomb(tmp_path / "bomb.npz", **members)
    assert path.stat().st_size < 1_000_000
    raised, peak = peak_mb(load_dataset, str(path))
    assert isinstance(raised, DataError), raised
    msg = str(raised)
    for word in ("bomb.npz", "declare 149.6 MB", "compression ratio", "data.max_compression_ratio", "--set"):
        assert word in msg, msg
    assert peak < 32, f"peak {peak:.0f} MiB for a refused bomb"  # the array alone would be 150 MiB


def test_zip_bomb_under_official_name_is_refused_by_md5_before_any_member_is_opened(tmp_path, monkeypatch):
    members = tiny_members()
    del members["train_images.npy"]
    write_bomb(tmp_path / "breastmnist.npz", **members)
    opened = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(
        zipfile.ZipFile, "open", lambda self, name, *a, **k: opened.append(name) or real_open(self, name, *a, **k)
    )
    raised, peak = peak_mb(load_dataset, "breastmnist", data_root=tmp_path)
    assert isinstance(raised, DataError) and "MD5 mismatch for breastmnist" in str(raised), raised
    assert opened == [] and peak < 32


@pytest.mark.fault
def test_lying_header_claiming_a_huge_shape(tmp_path):
    """A 1 KB member whose header claims (10**9, 28, 28): refused from the header, never a MemoryError."""
    members = tiny_members()
    members["train_images.npy"] = npy((10**9, 28, 28), payload=bytes(1024))
    path = write_zip(tmp_path / "liar.npz", members)
    msg = raises(["liar.npz", "'train_images'", "(1000000000, 28, 28)", "data.max_array_mb", "--set"], str(path))
    assert "747,680" in msg  # the declared MB


def test_lying_header_within_the_limits(tmp_path):
    """A header declaring more bytes than the member holds (the zip directory's size) is refused unread."""
    members = tiny_members()
    members["val_images.npy"] = npy((1000, 28, 28), payload=bytes(1024))
    path = write_zip(tmp_path / "short.npz", members, zipfile.ZIP_DEFLATED)
    raises(["short.npz", "'val_images'", "(1000, 28, 28)", "zip directory gives", "corrupt or crafted"], str(path))


def test_object_member_refused_without_unpickling(tmp_path, monkeypatch):
    import pickle

    members = tiny_members()
    members["train_labels.npy"] = npy((10,), "|O", payload=pickle.dumps(list(range(10))))
    path = write_zip(tmp_path / "obj.npz", members)
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("unpickled"))
    raises(["obj.npz", "'train_labels'", "object", "pickled", "refused"], str(path))


@pytest.mark.parametrize("name", ["notes.npy", "../train_images.npy", "train_images"])
def test_unexpected_member_refused(tmp_path, name):
    members = tiny_members()
    members[name] = npy((2,))
    path = write_zip(tmp_path / "extra.npz", members)
    raises(["extra.npz", "unexpected member", repr(name), "train_images.npy"], str(path))


def test_duplicate_member_refused(tmp_path):
    members = tiny_members()
    path = write_zip(tmp_path / "dup.npz", members)
    with warnings.catch_warnings(), zipfile.ZipFile(path, "a") as z:
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate it is asked to write
        z.writestr("train_labels.npy", npy((10,)))
    raises(["dup.npz", "'train_labels.npy' appears 2 times"], str(path))


def test_other_zip_compression_refused(tmp_path):
    path = write_zip(tmp_path / "bz.npz", tiny_members(), zipfile.ZIP_BZIP2)
    raises(["bz.npz", "compression method 12", "stored or deflated"], str(path))


@pytest.mark.parametrize(
    "raw",
    [b"", b"hello, I am not an archive\n", b"PK\x03\x04" + bytes(200), npy((3, 28, 28))],
    ids=["empty", "text", "zip-magic", "plain-npy"],
)
def test_non_zip_files_refused(tmp_path, raw):
    path = tmp_path / "nz.npz"
    path.write_bytes(raw)
    raises(["nz.npz", "not a readable .npz"], str(path))


def test_compressed_file_loads(tmp_path):
    """np.savez_compressed's deflated members read like stored ones."""
    arrays = make_arrays(channels=1, n_classes=2)
    with open(tmp_path / "z.npz", "wb") as f:
        np.savez_compressed(f, **arrays)
    ds = load_dataset(str(tmp_path / "z.npz"))
    np.testing.assert_array_equal(ds.x_test[:, 0], arrays["test_images"])


def test_limits_come_from_data_config_and_say_how_to_raise_them(tmp_path):
    path = write_npz(tmp_path / "d.npz", channels=3)  # train_images: 60 x 28 x 28 x 3 = 0.13 MB
    cases = {"max_file_mb": 0.1, "max_array_mb": 0.1, "max_total_mb": 0.2}
    for field, mb in cases.items():
        limits = NpzLimits.of(DataConfig(**{field: mb}))
        msg = raises(
            ["d.npz", f"over the {mb:g} MB limit", f"data.{field}", f"--set data.{field}="], str(path), limits=limits
        )
        assert msg.count("MB limit") == 1
    assert load_dataset(str(path), limits=NpzLimits.of(DataConfig(max_array_mb=0.2))).info.n_train == 60
    assert NpzLimits.of() == NpzLimits.of(DataConfig())
    with pytest.raises(ValueError):
        DataConfig(max_array_mb=0)


def test_compression_ratio_limit_applies_past_its_floor(tmp_path, monkeypatch):
    members = tiny_members(n=2000)  # zero images deflate ~1000x; 4.7 MB is under the 64 MB floor
    path = write_zip(tmp_path / "zeros.npz", members, zipfile.ZIP_DEFLATED)
    assert load_dataset(str(path)).info.n_train == 2000
    monkeypatch.setattr(data, "_RATIO_FLOOR", 0)
    raises(["zeros.npz", "compression ratio", "data.max_compression_ratio"], str(path))
    limits = NpzLimits.of(DataConfig(max_compression_ratio=10_000))
    assert load_dataset(str(path), limits=limits).info.n_train == 2000


def test_default_limits_fit_every_2d_medmnist_file():
    """Every 2-D MedMNIST file at 28x28 loads under the defaults (sizes from medmnist INFO: uint8 images, labels)."""
    limits = NpzLimits.of()
    for flag in data.valid_flags():
        info = INFO[flag]
        n_labels = len(info["label"]) if "multi-label" in info["task"] else 1
        arrays = [n * 28 * 28 * info["n_channels"] for n in info["n_samples"].values()]
        arrays += [n * n_labels for n in info["n_samples"].values()]
        assert max(arrays) <= limits.max_array_mb * 2**20, flag
        # compressed it is smaller still (ratio ~1.1): the arrays' total bounds the file too
        assert sum(arrays) <= min(limits.max_total_mb, limits.max_file_mb) * 2**20, flag


@needs_real
@pytest.mark.parametrize("flag", ["breastmnist", "pneumoniamnist"])
def test_real_files_load_exactly_as_np_load_reads_them(flag):
    ds = load_dataset(flag, data_root=REAL_ROOT)
    with np.load(REAL_ROOT / f"{flag}.npz") as z:
        for split in ("train", "val", "test"):
            x, y = ds.split(split)
            np.testing.assert_array_equal(x, z[f"{split}_images"][:, None])
            np.testing.assert_array_equal(y, z[f"{split}_labels"].reshape(-1).astype(np.int64))
    assert ds.info.md5 == INFO[flag]["MD5"] and ds.limits == NpzLimits.of()


@needs_real
def test_real_file_is_never_modified(tmp_path):
    path = Path(shutil.copy(REAL_ROOT / "breastmnist.npz", tmp_path / "breastmnist.npz"))
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    load_dataset("breastmnist", data_root=tmp_path)
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


def test_saved_reference_rereads_under_the_validated_limits(tmp_path):
    from kr.data import load_saved_dataset, save_dataset

    path = write_npz(tmp_path / "d.npz", channels=1, n_classes=2)
    limits = NpzLimits.of(DataConfig(max_array_mb=0.5))
    folder = save_dataset(load_dataset(str(path), limits=limits), tmp_path / "artifact")
    assert load_saved_dataset(folder).limits == limits
    reference = json.loads((folder / "info.json").read_text())
    reference["read_limits"]["max_array_mb"] = 0.01
    (folder / "info.json").write_text(json.dumps(reference))
    with pytest.raises(DataError, match="data.max_array_mb"):
        load_saved_dataset(folder)


@needs_real
def test_a_copy_of_an_official_file_is_that_dataset(tmp_path: Path) -> None:
    """Found by its MD5 under any name: a served model then names BreastMNIST's classes, not 0 and 1."""
    copy = tmp_path / "scans.npz"
    shutil.copyfile(REAL_ROOT / "breastmnist.npz", copy)
    data = load_dataset(str(copy))
    assert (data.info.name, data.info.source) == ("breastmnist", "medmnist")
    assert data.info.class_names == ("malignant", "normal, benign") and data.info.path == str(copy)
