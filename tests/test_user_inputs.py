"""Files real users brought, each a kind of input: one-hot and multi-label labels, stray label values, empty splits.

Every refusal is a DataError (a ValueError) whose message names the file and the problem in under 400 characters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from datagen import make_arrays, write_npz

from kr import data
from kr.data import DataError, load_dataset

MAX_MESSAGE = 400


def refusal(dataset: str, *words: str, **kwargs) -> str:
    """load_dataset(dataset, **kwargs)'s DataError message, checked short and holding every word."""
    with pytest.raises(DataError) as exc:
        load_dataset(dataset, **kwargs)
    assert isinstance(exc.value, ValueError)
    msg = str(exc.value)
    assert len(msg) < MAX_MESSAGE, f"{len(msg)} characters: {msg}"
    for word in words:
        assert word in msg, f"{word!r} not in {msg!r}"
    return msg


def one_hot(labels: np.ndarray, n_classes: int, dtype: type) -> np.ndarray:
    """(N,) or (N, 1) class indices as one-hot rows (N, n_classes) of `dtype`."""
    return np.eye(n_classes, dtype=dtype)[labels.reshape(-1)]


# ---------------------------------------------------------------- 1. one-hot and multi-label labels


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.bool_])
def test_one_hot_labels_of_shape_n_2_load_as_class_indices(tmp_path: Path, dtype: type) -> None:
    """Reported: a binary set with one-hot labels (N, 2) was refused as a "multi-label task"."""
    arrays = make_arrays(channels=1, n_classes=2)
    hot = {f"{s}_labels": one_hot(arrays[f"{s}_labels"], 2, dtype) for s in data.SPLITS}
    ds = load_dataset(str(write_npz(tmp_path / "onehot.npz", channels=1, n_classes=2, **hot)))
    assert (ds.info.n_classes, ds.info.task) == (2, "binary-class")
    for split in data.SPLITS:
        y = ds.split(split)[1]
        assert y.dtype == np.int64 and y.shape == (len(arrays[f"{split}_labels"]),)
        np.testing.assert_array_equal(y, arrays[f"{split}_labels"][:, 0])


def test_one_hot_labels_mix_with_class_indices_across_splits(tmp_path: Path) -> None:
    arrays = make_arrays(n_classes=5)
    path = write_npz(tmp_path / "mixed.npz", n_classes=5, val_labels=one_hot(arrays["val_labels"], 5, np.int32))
    ds = load_dataset(str(path))
    np.testing.assert_array_equal(ds.y_val, arrays["val_labels"][:, 0])
    assert ds.info.n_classes == 5


@pytest.mark.parametrize("row", [[1, 1, 0], [0, 0, 0]], ids=["several-ones", "no-one"])
def test_rows_without_exactly_one_1_are_refused_as_multi_label_saying_why_and_what_to_do(
    tmp_path: Path, row: list[int]
) -> None:
    arrays = make_arrays(n_classes=3)
    labels = one_hot(arrays["train_labels"], 3, np.uint8)
    labels[4] = row
    path = write_npz(tmp_path / "multi.npz", n_classes=3, train_labels=labels)
    refusal(
        str(path),
        "multi.npz",
        "'train_labels'",
        "multi-label",
        f"row 4 holds {sum(row)}",
        "GKD distils one softmax",
        "single-label",
        "one label per image",
        "one binary task per label",
    )


def test_two_dimensional_labels_with_other_values_are_refused(tmp_path: Path) -> None:
    labels = one_hot(make_arrays(n_classes=3)["test_labels"], 3, np.int16)
    labels[2, 1] = 7
    path = write_npz(tmp_path / "counts.npz", n_classes=3, test_labels=labels)
    refusal(str(path), "counts.npz", "'test_labels'", "other than 0 and 1", "row 2", "(N,) or (N, 1)")


def test_chestmnist_is_refused_before_its_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The multi-label flag is refused with why and what to do, before any read: local, download or object storage."""

    def no_read(*args: object, **kwargs: object) -> None:
        raise AssertionError("the file was read")

    monkeypatch.setattr(data, "read_npz", no_read)
    monkeypatch.setattr(data, "fetched", no_read)
    monkeypatch.setattr(data, "download_medmnist", no_read)
    (tmp_path / "chestmnist.npz").write_bytes(b"not even a zip")
    words = ("chestmnist", "multi-label", "14 labels per image", "GKD distils one softmax", "single-label")
    refusal("chestmnist", "chestmnist.npz", *words, "one binary task per finding", data_root=tmp_path)
    refusal("ChestMNIST", *words, data_root=tmp_path / "empty", download=True)
    refusal("chestmnist", "s3://bucket/medmnist/chestmnist_64.npz", *words, data_root="s3://bucket/medmnist", size=64)


# ---------------------------------------------------------------- 3. out-of-range and stray label values


def test_a_stray_255_test_label_names_the_split_index_value_and_the_class_count_source(tmp_path: Path) -> None:
    """Reported: one test label of 255 in a two-class file gave a 3,173-character error listing 253 empty classes."""
    labels = make_arrays(channels=1, n_classes=2)["test_labels"].copy()
    labels[7] = 255
    path = write_npz(tmp_path / "two.npz", channels=1, n_classes=2, test_labels=labels)
    refusal(
        str(path),
        "two.npz",
        "split 'test'",
        "1 label(s) out of range [0, 2)",
        "index 7: 255",
        "the class count, 2, is inferred from the largest training label, 1",
    )


def test_many_out_of_range_labels_show_the_first_few(tmp_path: Path) -> None:
    labels = make_arrays(channels=1, n_classes=2)["val_labels"].astype(np.int64)
    labels[3:] = 255
    path = write_npz(tmp_path / "many.npz", channels=1, n_classes=2, val_labels=labels)
    msg = refusal(str(path), "split 'val'", "17 label(s)", "index 3: 255, index 4: 255, index 5: 255 and 14 more")
    assert "index 6" not in msg


def test_a_stray_training_label_beyond_the_image_count_is_refused_without_listing_classes(tmp_path: Path) -> None:
    labels = make_arrays(channels=1, n_classes=2)["train_labels"].copy()
    labels[5] = 255
    path = write_npz(tmp_path / "stray.npz", channels=1, n_classes=2, train_labels=labels)
    refusal(str(path), "stray.npz", "256 classes", "largest training label, 255 (train index 5)", "60 training images")


def test_a_few_stray_training_values_say_how_many_classes_are_empty_and_why(tmp_path: Path) -> None:
    labels = make_arrays(n_train=300, channels=1, n_classes=2)["train_labels"].copy()
    labels[[10, 20]] = 40
    path = write_npz(tmp_path / "gaps.npz", n_train=300, channels=1, n_classes=2, train_labels=labels)
    msg = refusal(
        str(path),
        "gaps.npz",
        "38 of 41 classes have no training image",
        "classes 2, 3, 4, 5, 6 and 33 more",
        "largest training label, 40 (train index 10, 20)",
    )
    assert "'7'" not in msg


def test_a_huge_label_allocates_nothing(tmp_path: Path) -> None:
    labels = make_arrays(channels=1, n_classes=2)["train_labels"].astype(np.int64)
    labels[0] = 2**40
    path = write_npz(tmp_path / "huge.npz", channels=1, n_classes=2, train_labels=labels)
    refusal(str(path), "huge.npz", f"{2**40 + 1:,} classes", "60 training images")


# ---------------------------------------------------------------- 4. empty splits


@pytest.mark.parametrize("split", ["train", "val", "test"])
@pytest.mark.parametrize(
    ("images", "labels"),
    [((0, 28, 28), (0,)), ((0, 28, 28, 3), (0, 1)), ((0,), (0,)), ((0, 5, 5), (0, 1))],
    ids=["gray", "rgb", "flat", "odd-shape"],
)
def test_an_empty_split_is_refused_naming_file_and_split(
    tmp_path: Path, split: str, images: tuple[int, ...], labels: tuple[int, ...]
) -> None:
    """Reported: an empty val split (0, 28, 28) failed later with a reshape error naming neither file nor split."""
    empty = {f"{split}_images": np.zeros(images, np.uint8), f"{split}_labels": np.zeros(labels, np.uint8)}
    path = write_npz(tmp_path / "hollow.npz", channels=1, n_classes=2, **empty)
    refusal(str(path), "hollow.npz", f"split '{split}' has no images", f"{images}", "at least one image")


def test_zero_sized_images_of_a_non_empty_split_are_a_shape_error(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "flat.npz", channels=1, n_classes=2, val_images=np.zeros((20, 0, 28), np.uint8))
    refusal(str(path), "flat.npz", "'val_images'", "(20, 0, 28)", "(N, 28, 28)")
