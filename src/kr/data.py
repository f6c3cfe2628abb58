"""Load and validate MedMNIST 28x28 2-D datasets (official flags or custom .npz files in the same layout)."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import medmnist
import numpy as np
from medmnist.info import DEFAULT_ROOT, INFO

SPLITS = ("train", "val", "test")
KEYS = tuple(f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels"))
IMAGE_SIZE = 28
_MULTI_LABEL_REFUSAL = "is not supported; Knowledge Recycling here needs one label per image"


class DataError(ValueError):
    """A bad data file or request. The message always names the file (path) and the specific problem."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a loaded dataset is: its identity (name, absolute path, MD5 of the file, source) and its shape (task,
    classes, channels, image size in pixels, images per split)."""

    name: str
    path: str
    md5: str
    source: str  # 'medmnist' (known flag, MD5 verified) or 'file' (custom .npz)
    task: str  # 'binary-class' or 'multi-class'
    n_classes: int
    channels: int
    image_size: int
    class_names: tuple[str, ...]
    n_train: int
    n_val: int
    n_test: int

    def to_dict(self) -> dict:
        """JSON-ready dict (class_names as a list)."""
        d = asdict(self)
        d["class_names"] = list(self.class_names)
        return d


@dataclass(eq=False)  # array fields make generated __eq__ meaningless
class Dataset:
    """A validated dataset: images uint8 (N, C, 28, 28) channels-first, labels int64 (N,) in [0, n_classes), per
    split; every class has at least one training image."""

    info: DatasetInfo
    x_train: np.ndarray  # uint8 (N, C, 28, 28)
    y_train: np.ndarray  # int64 (N,)
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(images, labels) of split 'train', 'val' or 'test'. Raises DataError for another name."""
        if name not in SPLITS:
            raise DataError(f"{self.info.path}: unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def class_counts(self, split: str) -> np.ndarray:
        """Number of images per class in a split: int64 (n_classes,). Raises DataError for an unknown split."""
        return np.bincount(self.split(split)[1], minlength=self.info.n_classes)


def resolve_data_root(data_root: str | Path | None) -> Path:
    """Explicit argument, else $KR_DATA_ROOT, else medmnist's default folder (~/.medmnist)."""
    root = data_root if data_root not in (None, "") else os.environ.get("KR_DATA_ROOT") or DEFAULT_ROOT
    return Path(root).expanduser()


def file_md5(path: Path) -> str:
    """MD5 hex digest of a file, read in chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def valid_flags() -> list[str]:
    """MedMNIST 2-D flags this module can load."""
    return [f for f in INFO if not f.endswith("3d")]


def _is_path(dataset: str) -> bool:
    return dataset.endswith(".npz") or any(sep and sep in dataset for sep in ("/", os.sep, os.altsep))


def dataset_path(dataset: str, data_root: str | Path | None) -> Path:
    """Absolute path of a custom .npz (relative to the cwd) or of <root>/<flag>.npz for a MedMNIST 2-D flag.

    Raises DataError for a 3-D or unknown flag. The file need not exist.
    """
    if _is_path(dataset):
        return Path(dataset).expanduser().absolute()
    flag = dataset.strip().lower()
    if flag not in valid_flags():
        kind = "3-D MedMNIST datasets are not supported" if flag in INFO else "unknown dataset name"
        raise DataError(
            f"{dataset}: {kind}; expected a path to a .npz file or one of the 2-D MedMNIST flags: "
            + ", ".join(valid_flags())
        )
    return (resolve_data_root(data_root) / f"{flag}.npz").absolute()


def download_dataset(flag: str, data_root: str | Path | None) -> Path:
    """Download <flag>.npz (28x28) with medmnist's own class, which also checks the MD5; returns its path.

    Raises DataError (with how to place the file by hand) when the download fails for any reason.
    """
    path = dataset_path(flag, data_root)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        cls = getattr(medmnist, INFO[path.stem]["python_class"])
        cls(split="train", root=str(path.parent), download=True, size=IMAGE_SIZE)
    except Exception as e:  # network, torchvision missing, MD5 mismatch...: all mean "place it by hand"
        raise DataError(
            f"{path}: download failed ({type(e).__name__}: {str(e).strip()[:300]}). Place the file by hand: "
            f"get {path.name} from {INFO[path.stem]['url']} (MD5 {INFO[path.stem]['MD5']}) and copy it to {path}"
        ) from e
    return path


def _read_npz(path: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """The required arrays that are present, and the names of the missing ones."""
    unreadable = f"{path}: is not a readable .npz (truncated or not a zip archive)"
    # np.load would treat a non-zip file as a pickle and report a misleading pickle error
    if not zipfile.is_zipfile(path):
        raise DataError(unreadable)
    try:
        with np.load(path, allow_pickle=False) as npz:
            present = set(npz.files)
            arrays = {k: npz[k] for k in KEYS if k in present}
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise DataError(f"{path}: holds object (pickled) arrays, which are refused for safety") from e
        raise DataError(f"{unreadable}: {e}") from e
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError) as e:
        raise DataError(f"{unreadable}: {e}") from e
    return arrays, [k for k in KEYS if k not in arrays]


def _check_images(path: Path, arrays: dict[str, np.ndarray]) -> int:
    """Validate dtype/shape of the three image arrays; return the shared channel count."""
    channels: dict[str, int] = {}
    for split in SPLITS:
        key, x = f"{split}_images", arrays[f"{split}_images"]
        if x.dtype != np.uint8:
            raise DataError(f"{path}: key '{key}' has dtype {x.dtype}; expected uint8")
        if x.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE):
            channels[key] = 1
        elif x.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE, 3):
            channels[key] = 3
        else:
            raise DataError(
                f"{path}: key '{key}' has shape {x.shape}; expected (N, 28, 28) for grayscale or (N, 28, 28, 3) for RGB"
            )
    if len(set(channels.values())) > 1:
        raise DataError(f"{path}: image splits disagree on channels: {channels}; all splits must agree")
    return channels["train_images"]


def _check_labels(path: Path, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Validate label arrays against their images; return 1-D int64 labels per split."""
    labels = {}
    for split in SPLITS:
        key, y = f"{split}_labels", arrays[f"{split}_labels"]
        n = len(arrays[f"{split}_images"])
        if y.ndim == 2 and y.shape[1] > 1:
            raise DataError(f"{path}: multi-label task (key '{key}' has shape {y.shape}) {_MULTI_LABEL_REFUSAL}")
        if y.shape not in ((n,), (n, 1)):
            raise DataError(
                f"{path}: key '{key}' has shape {y.shape}; expected ({n},) or ({n}, 1) "
                f"to match the {n} images in '{split}_images'"
            )
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{path}: key '{key}' has dtype {y.dtype}; expected an integer dtype")
        labels[split] = y.reshape(-1).astype(np.int64)
    return labels


def _check_flag(path: Path, flag: str, channels: int, labels: dict[str, np.ndarray]) -> None:
    """Channels and sample counts must match what medmnist INFO says for the flag."""
    info = INFO[flag]
    if channels != info["n_channels"]:
        raise DataError(f"{path}: images have {channels} channel(s); INFO for {flag} says {info['n_channels']}")
    for split in SPLITS:
        if len(labels[split]) != info["n_samples"][split]:
            raise DataError(
                f"{path}: split '{split}' has {len(labels[split])} samples; "
                f"INFO for {flag} expects {info['n_samples'][split]}"
            )


def _check_classes(path: Path, labels: dict[str, np.ndarray], n_classes: int, names: tuple[str, ...]) -> None:
    """Labels must lie in [0, n_classes), every class needs a training image, and n_classes >= 2."""
    for split, y in labels.items():
        bad = np.unique(y[(y < 0) | (y >= n_classes)])
        if bad.size:
            raise DataError(
                f"{path}: labels out of range in split '{split}': {bad[:10].tolist()}; "
                f"allowed range is [0, {n_classes})"
            )
    if n_classes < 2:
        raise DataError(f"{path}: only {n_classes} class found; a classifier needs at least 2 classes")
    empty = np.flatnonzero(np.bincount(labels["train"], minlength=n_classes) == 0)
    if empty.size:
        which = ", ".join(f"{c} ({names[c]!r})" for c in empty)
        raise DataError(f"{path}: class {which} has no training image in split 'train'")


def _missing_message(path: Path, flag: str | None) -> str:
    if flag is None:
        return f"{path}: file not found (relative paths are resolved against the current directory {Path.cwd()})"
    return (
        f"{path}: file not found. Looked in data root {path.parent}. Pass --data-root or set KR_DATA_ROOT to "
        f"the folder holding {path.name}, or use --download to fetch it"
    )


def load_dataset(dataset: str, data_root: str | Path | None = None, download: bool = False) -> Dataset:
    """Load and validate a MedMNIST flag or a custom .npz; images become (N, C, 28, 28) uint8.

    The file needs {train,val,test}_{images,labels}: uint8 (N, 28, 28) or (N, 28, 28, 3) images, integer (N,) or
    (N, 1) labels. With `download`, a missing MedMNIST file is fetched first. Raises DataError, naming the file and
    the problem, for a missing or unreadable file, pickled arrays, an MD5 or INFO mismatch (MedMNIST flags), a
    missing key, a wrong dtype or shape, a multi-label task, labels out of range, fewer than two classes, or a
    class without a training image.
    """
    path = dataset_path(dataset, data_root)
    flag = None if _is_path(dataset) else path.stem
    if flag is not None and "multi-label" in INFO[flag]["task"]:
        raise DataError(f"{path}: multi-label task '{INFO[flag]['task']}' of {flag} {_MULTI_LABEL_REFUSAL}")
    if not path.is_file() and flag is not None and download:
        download_dataset(flag, data_root)
    if not path.is_file():
        raise DataError(_missing_message(path, flag))

    arrays, missing = _read_npz(path)
    md5 = file_md5(path)
    if flag is not None and md5 != INFO[flag]["MD5"]:
        raise DataError(
            f"{path}: MD5 mismatch for {flag}: expected {INFO[flag]['MD5']}, got {md5}; "
            "the file is corrupt or not the official one, re-download it (--download after deleting it)"
        )
    if missing:
        raise DataError(f"{path}: missing keys {', '.join(missing)}; expected all of {', '.join(KEYS)}")

    channels = _check_images(path, arrays)
    labels = _check_labels(path, arrays)
    if flag is not None:
        _check_flag(path, flag, channels, labels)
        names = tuple(INFO[flag]["label"][str(i)] for i in range(len(INFO[flag]["label"])))
        task = "binary-class" if INFO[flag]["task"] == "binary-class" else "multi-class"
    else:
        # negative labels are caught by the range check in _check_classes
        names = tuple(str(i) for i in range(max(int(y.max(initial=-1)) for y in labels.values()) + 1))
        task = "binary-class" if len(names) == 2 else "multi-class"
    _check_classes(path, labels, len(names), names)

    def images(split: str) -> np.ndarray:
        x = arrays[f"{split}_images"]
        return np.ascontiguousarray(x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2))

    info = DatasetInfo(
        name=flag or path.stem,
        path=str(path),
        md5=md5,
        source="medmnist" if flag else "file",
        task=task,
        n_classes=len(names),
        channels=channels,
        image_size=IMAGE_SIZE,
        class_names=names,
        n_train=len(labels["train"]),
        n_val=len(labels["val"]),
        n_test=len(labels["test"]),
    )
    return Dataset(info, images("train"), labels["train"], images("val"), labels["val"], images("test"), labels["test"])


def save_dataset(data: Dataset, folder: str | Path) -> Path:
    """Write a validated dataset's reference as a pipeline artifact: info.json (path, MD5, shape), never the images.

    Real patient images do not belong in the pipeline's artifact store, which every pipeline user can read: each
    step re-reads the file it names (`load_saved_dataset`) and checks it is still the one validated. Returns the
    folder (created if needed).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "info.json").write_text(json.dumps(data.info.to_dict(), indent=2))
    return folder


def load_saved_dataset(folder: str | Path) -> Dataset:
    """The validated dataset a `save_dataset` reference names, read again from its file.

    Raises DataError when the file is gone or its MD5 differs from the validated one (it changed after
    validation: the run must not train on data nobody checked).
    """
    folder = Path(folder)
    values = json.loads((folder / "info.json").read_text())
    values["class_names"] = tuple(values["class_names"])
    info = DatasetInfo(**values)
    path = Path(info.path)
    if not path.is_file():
        raise DataError(f"{path}: the validated data file is gone (validated MD5 {info.md5})")
    md5 = file_md5(path)
    if md5 != info.md5:
        raise DataError(f"{path}: the file changed after validation (MD5 {md5}, validated {info.md5}); run again")
    loaded = load_dataset(str(path))
    return replace(loaded, info=info)
