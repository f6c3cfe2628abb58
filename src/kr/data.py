"""Load and validate MedMNIST 2-D datasets of 28, 64, 128 or 224 pixels a side (official flags or custom .npz files
in the same layout), from a local folder or from object storage (s3://bucket/key, fetched into a private temporary
file and read as a local one); download official files (`download_medmnist`).

The medmnist package is not imported: its catalogue (INFO) is read through `kr.medmnist_catalog`, only when a
MedMNIST flag is used, so custom files need no medmnist at all.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import math
import os
import re
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import numpy as np

from kr import medmnist_catalog as catalog
from kr.config import DataConfig, redact_uri

SPLITS = ("train", "val", "test")
KEYS = tuple(f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels"))
SIZES = catalog.SIZES  # image sides in pixels a dataset may have (DataConfig.size)
_SINGLE_LABEL_ONLY = (
    "Knowledge Recycling's GKD distils one softmax over classes into single-label teacher and student classifiers"
)


class DataError(ValueError):
    """A bad data file or request. The message always names the file (path) and the specific problem."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a loaded dataset is: its identity (name, absolute path or s3:// URI, MD5 of the file, source) and its
    shape (task, classes, channels, image size in pixels, images per split)."""

    name: str
    path: str  # an absolute local path, or the s3://bucket/key it was fetched from (each later read fetches it again)
    md5: str
    source: str  # 'medmnist' (known flag, MD5 verified), 'file' (custom .npz) or 'folder' (image folder)
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
    """A validated dataset: images uint8 (N, C, S, S) channels-first (S = info.image_size), labels int64 (N,) in
    [0, n_classes), per split, N >= 1; every class has at least one training image. `limits`: the NpzLimits it was
    read under (None: defaults)."""

    info: DatasetInfo
    x_train: np.ndarray  # uint8 (N, C, S, S)
    y_train: np.ndarray  # int64 (N,)
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    limits: NpzLimits | None = None  # the limits it was read under: a saved reference is re-read under them
    folder: FolderOptions | None = None  # an image folder's split and bounds: a saved reference re-reads with them

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(images, labels) of split 'train', 'val' or 'test'. Raises DataError for another name."""
        if name not in SPLITS:
            raise DataError(f"{self.info.path}: unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def class_counts(self, split: str) -> np.ndarray:
        """Number of images per class in a split: int64 (n_classes,). Raises DataError for an unknown split."""
        return np.bincount(self.split(split)[1], minlength=self.info.n_classes)


def resolve_data_root(data_root: str | Path | None) -> Path:
    """Explicit argument, else $KR_DATA_ROOT, else medmnist's default folder (~/.medmnist). A local folder only:
    `dataset_location` also takes an s3:// data root."""
    return Path(_root_text(data_root)).expanduser()


def _root_text(data_root: str | Path | None) -> str:
    root = data_root if data_root not in (None, "") else os.environ.get("KR_DATA_ROOT") or catalog.DEFAULT_ROOT
    return os.fspath(root)


def _info() -> dict[str, dict[str, Any]]:
    """medmnist's INFO (read by kr.medmnist_catalog). Raises DataError, saying how to install it, without medmnist."""
    try:
        return catalog.info()
    except ModuleNotFoundError as e:
        raise DataError(str(e)) from None


def file_md5(path: Path) -> str:
    """MD5 hex digest of a file, read in chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def valid_flags() -> list[str]:
    """MedMNIST 2-D flags (ChestMNIST included: `load_dataset` refuses it as multi-label, with why and what to do).
    Raises DataError when medmnist is not installed."""
    _info()
    return catalog.flags_2d()


def medmnist_flag(dataset: str) -> str:
    """The MedMNIST 2-D flag `dataset` names, normalised ('BreastMNIST ' -> 'breastmnist').

    Raises DataError for a 3-D or unknown flag (listing the 2-D ones) and when medmnist is not installed."""
    flag = dataset.strip().lower()
    if flag not in valid_flags():
        kind = "3-D MedMNIST datasets are not supported" if flag in _info() else "unknown dataset name"
        raise DataError(
            f"{dataset}: {kind}; expected a path to a .npz file, an s3://bucket/key.npz URI or one of the 2-D "
            "MedMNIST flags: " + ", ".join(valid_flags())
        )
    return flag


def check_size(size: int) -> int:
    """`size` when it is an image side kr reads (28, 64, 128 or 224 pixels); else DataError naming data.size."""
    if isinstance(size, bool) or size not in SIZES:
        raise DataError(f"image size {size!r} (data.size) is not one of MedMNIST's: {', '.join(map(str, SIZES))}")
    return size


def _is_path(dataset: str) -> bool:
    """A path or URI of a custom file or image folder (as opposed to a MedMNIST flag): it ends in .npz, holds a path
    separator, or names an existing folder that is not a flag's name."""
    if dataset.endswith(".npz") or any(sep and sep in dataset for sep in ("/", os.sep, os.altsep)):
        return True
    return os.path.isdir(dataset) and dataset.lower() not in _info()


def _is_uri(text: str) -> bool:
    return "://" in text


def is_s3_uri(location: str | Path) -> bool:
    """Whether a dataset location (`dataset_location`, `DatasetInfo.path`) is an s3:// URI rather than a local path."""
    return isinstance(location, str) and location.strip().lower().startswith("s3://")


def _check_uri(key: str, uri: str, object_required: bool) -> tuple[str, str]:
    """(bucket, key or prefix without surrounding slashes) of an s3:// URI, checked as `DataConfig.check_uri` does.
    Raises DataError naming `key` (the URI redacted, never a credential)."""
    try:
        DataConfig.check_uri(key, uri, object_required=object_required)
    except ValueError as e:
        raise DataError(str(e)) from None
    parts = urlsplit(uri.strip())
    return parts.netloc, parts.path.strip("/")


def dataset_location(dataset: str, data_root: str | Path | None, size: int = 28) -> str | Path:
    """Where a dataset's file is: an s3://bucket/key URI (a str) or an absolute local Path.

    A custom file: `dataset` itself, a local path (relative to the cwd) or an s3://bucket/key URI (`size` is then
    only checked to be one kr reads). A MedMNIST 2-D flag: <root>/<flag>.npz for size 28, <root>/<flag>_<size>.npz
    for the MedMNIST+ sizes 64, 128 and 224, root being `data_root`, else $KR_DATA_ROOT, else ~/.medmnist, a folder
    or an s3://bucket/prefix. Raises DataError for a 3-D or unknown flag, a size not in SIZES, and a URI that is not
    s3://bucket/key (another scheme, an invalid bucket, credentials, a query). The file need not exist.
    """
    check_size(size)
    if _is_uri(dataset):
        bucket, key = _check_uri("data.dataset", dataset, object_required=True)
        return f"s3://{bucket}/{key}"
    if _is_path(dataset):
        return Path(dataset).expanduser().absolute()
    name = catalog.file_name(medmnist_flag(dataset), size)
    root = _root_text(data_root)
    if _is_uri(root):
        bucket, prefix = _check_uri("data.data_root", root, object_required=False)
        return f"s3://{bucket}/{prefix + '/' if prefix else ''}{name}"
    return (Path(root).expanduser() / name).absolute()


def dataset_path(dataset: str, data_root: str | Path | None, size: int = 28) -> Path:
    """Absolute local path of a custom .npz (relative to the cwd) or of a MedMNIST 2-D flag's file in its root (see
    `dataset_location`). Raises DataError as `dataset_location` does, and for a file in object storage. The file need
    not exist."""
    location = dataset_location(dataset, data_root, size)
    if isinstance(location, str):
        raise DataError(f"{location}: lies in object storage, not in a local folder")
    return location


# --- download ------------------------------------------------------------------------------------------------------


def download_medmnist(
    flag: str,
    size: int,
    root: str | Path,
    *,
    url: str | None = None,
    md5: str | None = None,
    progress: bool = True,
    timeout_s: float = 60.0,
) -> Path:
    """Download a MedMNIST 2-D flag's file at an image size into the folder `root` (created if needed); its path.

    The file, <flag>.npz (size 28) or <flag>_<size>.npz, comes from `url` (default: INFO's, on Zenodo) over HTTP(S)
    with the standard library, is streamed in 1 MB chunks to a hidden temporary file beside it while its MD5 is
    computed, checked against `md5` (default: INFO's) and the length the server announced, then renamed into place:
    the final name never holds a partial or wrong file. A file already there with the expected MD5 is kept, nothing
    fetched. `progress`: a bar on stderr (MB, rate, ETA). `url` and `md5` serve a mirror (and tests); `timeout_s`
    bounds the connection and each read. ChestMNIST downloads too, to make single-label files from.

    Raises DataError for a 3-D or unknown flag, a size not in SIZES, medmnist not installed, and, saying how to place
    the file by hand, for an unreachable server, an HTTP error, a connection cut short, an MD5 mismatch or a local
    disk failure; the temporary file is deleted in every case.
    """
    flag, size = medmnist_flag(flag), check_size(size)
    target = (Path(root).expanduser() / catalog.file_name(flag, size)).absolute()
    expected = md5 or catalog.md5(flag, size)
    source = url or catalog.url(flag, size)
    by_hand = f"To place the file by hand, download {catalog.url(flag, size)} (MD5 {expected}) to that path"
    if target.is_file() and file_md5(target) == expected:
        return target
    partial: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # beside the target, hidden: os.replace is atomic only within one file system
        with tempfile.NamedTemporaryFile(
            dir=target.parent, prefix=f".{target.name}.", suffix=".part", delete=False
        ) as part:
            partial = Path(part.name)
            got = _stream(source, part, target.name if progress else None, timeout_s)
        if got != expected:
            raise DataError(f"{target}: MD5 mismatch after download (got {got}); nothing was kept. {by_hand}")
        partial.chmod(0o644)  # public data, readable as any download (the temporary file was private: 0600)
        os.replace(partial, target)
    except DataError:
        raise
    except (OSError, http.client.HTTPException, ValueError) as e:  # urllib's errors are OSErrors; ValueError: a bad URL
        via = "" if source == catalog.url(flag, size) else f" from {redact_uri(source)}"
        raise DataError(f"{target}: download{via} failed ({_failure(e)}). {by_hand}") from e
    finally:
        if partial is not None:
            partial.unlink(missing_ok=True)  # gone already once renamed
    return target


def _stream(url: str, out: BinaryIO, label: str | None, timeout_s: float) -> str:
    """Copy the body at `url` into `out` in 1 MB chunks, fsynced; return its MD5 hex digest. `label`: a progress
    bar's name (None: no bar). Raises ConnectionError when the body ends short of its Content-Length, and whatever
    urlopen and the reads raise (OSError, http.client.HTTPException, ValueError)."""
    h, received = hashlib.md5(), 0
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        length = response.headers.get("Content-Length", "")
        total = int(length) if length.isdigit() else None
        with _download_bar(label, total) as advance:
            # http.client returns b"" when the server closes early, without an error: the length is checked below
            for chunk in iter(lambda: response.read(MB), b""):
                h.update(chunk)
                out.write(chunk)
                received += len(chunk)
                advance(len(chunk))
    if total is not None and received != total:
        raise ConnectionError(f"the connection closed after {received:,} of {total:,} bytes")
    out.flush()
    os.fsync(out.fileno())  # on disk before the rename makes it the file
    return h.hexdigest()


@contextmanager
def _download_bar(label: str | None, total: int | None) -> Iterator[Callable[[int], None]]:
    """advance(n_bytes) for a kr.progress bar in MB (rate, ETA) named `label`; a no-op when `label` is None or the
    length is unknown (no Content-Length: a bar needs its total, and Zenodo always sends one)."""
    if label is None or total is None:
        yield lambda n: None
        return
    from kr.progress import bar  # rich, imported only when a bar is drawn

    with bar(f"download {label}", total=total / MB, unit="MB") as b:
        yield lambda n: b.advance(n / MB)


def _failure(e: BaseException) -> str:
    """A download failure in a few words: 'HTTP 404 Not Found', the URLError's reason, else the exception."""
    if isinstance(e, urllib.error.HTTPError):
        e.close()  # an HTTPError holds the response open
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return f"cannot reach the server: {e.reason}"
    return f"{type(e).__name__}: {str(e).strip()[:200]}"


MB = 1 << 20
# Below this many decompressed bytes a high compression ratio costs little memory, and label arrays (a few
# distinct values, often sorted) legitimately compress 100x and more.
_RATIO_FLOOR = 64 * MB
_MAX_HEADER = 10_000  # numpy's own cap on a .npy header; a bigger one is refused before it is parsed
# The zip directory is parsed in full when the archive is opened, at ~10x its size in memory: six members need
# under 1 KB of it, so a bigger one is a crafted file, refused before zipfile reads it.
_MAX_DIRECTORY = 64 * 1024
_MAX_MEMBERS = 64
# What a member may hold. Object arrays are refused whatever the kind: reading them means unpickling.
_KINDS = {
    "images": ("uint8", lambda dt: dt == np.uint8),
    "labels": ("an integer dtype (or bool)", lambda dt: dt.kind in "biu"),  # bool: one-hot or 0/1 labels
    "numeric": ("a numeric dtype (bool, integer or float)", lambda dt: dt.kind in "biuf"),
}
MEDMNIST_MEMBERS = {k: "images" if k.endswith("_images") else "labels" for k in KEYS}


@dataclass(frozen=True)
class NpzLimits:
    """Bounds on reading a .npz, checked from its zip directory and .npy headers before any member is decompressed.

    Sizes are in MB (2**20 bytes). max_file_mb: the file on disk. max_array_mb: one array as its header declares it
    (prod(shape) x itemsize). max_total_mb: all its arrays together. max_compression_ratio: the arrays' declared
    bytes over the file's bytes, checked once they exceed 64 MB. `DataConfig` holds the same fields; `of` reads them.
    """

    max_file_mb: float
    max_array_mb: float
    max_total_mb: float
    max_compression_ratio: float

    @classmethod
    def of(cls, cfg: DataConfig | None = None) -> NpzLimits:
        """The limits a `DataConfig` sets (its defaults when None)."""
        cfg = DataConfig() if cfg is None else cfg
        return cls(**{f.name: float(getattr(cfg, f.name)) for f in fields(cls)})


@dataclass(frozen=True)
class FolderOptions:
    """How an image folder is read (`kr.image_folder.read_image_folder`): the split of a class-per-folder tree
    (fractions of each class, seed) and its bounds (files, image side in pixels). `DataConfig` holds the same fields
    with a folder_ prefix; `of` reads them."""

    val_fraction: float = 0.1
    test_fraction: float = 0.2
    split_seed: int = 0
    max_files: int = 200_000
    max_side: int = 1024

    @classmethod
    def of(cls, cfg: DataConfig | None = None) -> FolderOptions:
        """The options a `DataConfig` sets (its defaults when None)."""
        cfg = DataConfig() if cfg is None else cfg
        return cls(**{f.name: getattr(cfg, f"folder_{f.name}") for f in fields(cls)})


def _mb(n: float) -> str:
    return f"{n / MB:,.1f} MB"


def _too_big(path: Path | str, what: str, size: int, field: str, limit: float) -> DataError:
    return DataError(
        f"{path}: {what} is {_mb(size)}, over the {limit:g} MB limit (data.{field}). If the file is trusted, raise "
        f"it: --set data.{field}=<MB> (DataConfig.{field})"
    )


def _directory(
    path: Path | str, f: BinaryIO, members: Mapping[str, str]
) -> tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]:
    """Open the zip directory (nothing decompressed) and check its entries: only `members` as .npy, each once,
    stored or deflated, not encrypted."""
    unreadable = f"{path}: is not a readable .npz (truncated or not a zip archive)"
    try:
        end = zipfile._EndRecData(f)  # the end-of-directory record: where zipfile learns the directory's size
    except OSError as e:
        raise DataError(f"{unreadable}: {e}") from e
    if end is None:  # np.load would treat a non-zip file as a pickle and report a misleading pickle error
        raise DataError(unreadable)
    if end[zipfile._ECD_SIZE] > _MAX_DIRECTORY or end[zipfile._ECD_ENTRIES_TOTAL] > _MAX_MEMBERS:
        raise DataError(
            f"{path}: zip directory of {end[zipfile._ECD_ENTRIES_TOTAL]} entries in {end[zipfile._ECD_SIZE]:,} bytes; "
            f"a .npz in this layout holds only {', '.join(members)} (refused unread)"
        )
    try:
        zf = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise DataError(f"{unreadable}: {e}") from e
    infos = zf.infolist()
    names = [i.filename for i in infos]
    expected = {f"{k}.npy": k for k in members}
    for info in infos:
        if info.filename not in expected:
            raise DataError(
                f"{path}: unexpected member {info.filename!r}; a .npz in this layout holds only "
                + ", ".join(f"{k}.npy" for k in members)
            )
        if names.count(info.filename) > 1:
            raise DataError(f"{path}: member {info.filename!r} appears {names.count(info.filename)} times")
        if info.flag_bits & 0x1:
            raise DataError(f"{path}: member {info.filename!r} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise DataError(
                f"{path}: member {info.filename!r} uses zip compression method {info.compress_type}; "
                "only stored or deflated members (what np.savez and np.savez_compressed write) are read"
            )
    return zf, infos


def _header(path: Path | str, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and header length of a member, from its .npy header alone (a few hundred bytes inflated)."""
    try:
        with zf.open(info) as fp:
            version = np.lib.format.read_magic(fp)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fp, max_header_size=_MAX_HEADER)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(fp, max_header_size=_MAX_HEADER)
            else:  # 3.0 only adds utf-8 field names, i.e. structured dtypes, which no member may have
                raise ValueError(f".npy format version {version} is not read here (1.0 and 2.0 are)")
            return shape, dtype, fp.tell()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise DataError(f"{path}: key '{info.filename[:-4]}' is not readable (truncated or corrupt member: {e})") from e
    except (ValueError, SyntaxError) as e:  # what numpy raises for a malformed header
        raise DataError(f"{path}: key '{info.filename[:-4]}' has no valid .npy header ({e})") from e


def _check_member(path: Path | str, key: str, kind: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if dtype.hasobject:
        raise DataError(
            f"{path}: key '{key}' has dtype {dtype}: object (pickled) arrays are refused for safety, "
            "unpickling can run code"
        )
    wanted, ok = _KINDS[kind]
    if dtype.names is not None or dtype.subdtype is not None or not ok(dtype):
        raise DataError(f"{path}: key '{key}' has dtype {dtype}; expected {wanted}")
    if any(d < 0 for d in shape):
        raise DataError(f"{path}: key '{key}' declares the impossible shape {shape}")


SHARD_KEYS = ("images", "gen_labels", "teacher_logits")
# Shards are the pipeline's own output, sized by the gkd config (a large set's can pass a GB), so their sizes are
# capped loosely; the checks that stop a zip bomb or a lying .npy header (compression ratio, header against zip
# directory, numeric dtypes only) apply in full.
SHARD_LIMITS = NpzLimits(max_file_mb=16384, max_array_mb=16384, max_total_mb=16384, max_compression_ratio=100)


def read_shard(path: str | Path) -> dict[str, np.ndarray]:
    """A regeneration shard's arrays (SHARD_KEYS present in the file), read bounded under SHARD_LIMITS: images uint8
    (N, C, H, W), gen_labels int (N,), teacher_logits float32 (N, K). Raises DataError as `read_npz` does."""
    return read_npz(path, dict.fromkeys(SHARD_KEYS, "numeric"), SHARD_LIMITS)[0]


def read_npz(
    path: str | Path,
    members: Mapping[str, str],
    limits: NpzLimits | None = None,
    verify: Callable[[str], None] | None = None,
    *,
    source: str | None = None,
) -> tuple[dict[str, np.ndarray], str]:
    """Read a .npz with bounded memory: (the arrays of `members` present, keyed without .npy; MD5 hex of the file).

    members: key -> kind, 'images' (uint8), 'labels' (integer) or 'numeric' (bool, integer, float); missing keys
    are simply absent from the result. In order, before any array exists: the file size (`limits.max_file_mb`);
    the zip directory (only these members, each once, stored or deflated, not encrypted); the MD5 of the file's
    bytes, streamed, handed to `verify` (which raises to refuse); then every member's .npy header: dtype of its
    kind and never object, declared bytes (prod(shape) x itemsize) within `max_array_mb`, header plus data equal to
    the size the zip directory gives (so inflating stops there), all arrays within `max_total_mb`, and their bytes
    over the file's within `max_compression_ratio`. Only then are the arrays read, each at its declared size.

    Raises DataError, naming the file, the member and the limit (with the setting that raises it), for every
    refusal, an unreadable file or member, and a MemoryError while reading. The file is only read, never changed.
    `source`: where the file came from (e.g. the s3:// URI of a fetched copy), named in messages instead of `path`.
    """
    path = Path(path)
    limits = NpzLimits.of() if limits is None else limits
    where = source or path
    try:
        with open(path, "rb") as f:  # one handle throughout: the bytes hashed are the bytes read
            return _read_open(where, f, members, limits, verify)
    except OSError as e:  # zipfile and numpy errors are DataErrors by now: this is the file system's
        raise DataError(f"{where}: cannot be read ({e})") from e


def _read_open(
    path: Path | str, f: BinaryIO, members: Mapping[str, str], limits: NpzLimits, verify: Callable[[str], None] | None
) -> tuple[dict[str, np.ndarray], str]:
    size = os.fstat(f.fileno()).st_size
    if size > limits.max_file_mb * MB:
        raise _too_big(path, "the file", size, "max_file_mb", limits.max_file_mb)
    zf, infos = _directory(path, f, members)
    with zf:
        f.seek(0)
        h = hashlib.md5()
        for chunk in iter(lambda: f.read(MB), b""):
            h.update(chunk)
        md5 = h.hexdigest()
        if verify is not None:
            verify(md5)
        declared: dict[str, tuple[zipfile.ZipInfo, tuple[int, ...], np.dtype]] = {}
        total = 0
        for info in infos:
            key = info.filename[:-4]  # _directory let through only '<key>.npy' names
            shape, dtype, header_len = _header(path, zf, info)
            _check_member(path, key, members[key], shape, dtype)
            nbytes = math.prod(shape) * dtype.itemsize
            if nbytes > limits.max_array_mb * MB:
                what = f"key '{key}' ({shape} {dtype}, as its .npy header declares)"
                raise _too_big(path, what, nbytes, "max_array_mb", limits.max_array_mb)
            if info.file_size != header_len + nbytes:
                raise DataError(
                    f"{path}: key '{key}': its .npy header declares shape {shape} {dtype}, {header_len + nbytes:,} "
                    f"bytes with the header, but the zip directory gives {info.file_size:,}; the file is corrupt "
                    "or crafted"
                )
            total += nbytes
            declared[key] = (info, shape, dtype)
        if total > limits.max_total_mb * MB:
            raise _too_big(path, "the arrays' total, decompressed,", total, "max_total_mb", limits.max_total_mb)
        if total > _RATIO_FLOOR and total > limits.max_compression_ratio * size:
            raise DataError(
                f"{path}: its arrays declare {_mb(total)} from a {size:,}-byte file, a compression ratio of "
                f"{total / max(size, 1):,.0f}, over the limit of {limits.max_compression_ratio:g} "
                "(data.max_compression_ratio; a zip bomb?). If the file is trusted, raise it: "
                "--set data.max_compression_ratio=<ratio> (DataConfig.max_compression_ratio)"
            )
        return {k: _read_member(path, zf, *declared[k]) for k in members if k in declared}, md5


def _read_member(
    path: Path | str, zf: zipfile.ZipFile, info: zipfile.ZipInfo, shape: tuple, dtype: np.dtype
) -> np.ndarray:
    """One member's array; zipfile inflates at most the directory's size, checked equal to what the header needs."""
    where = f"{path}: key '{info.filename[:-4]}'"
    try:
        with zf.open(info) as fp:
            array = np.lib.format.read_array(fp, allow_pickle=False, max_header_size=_MAX_HEADER)
    except MemoryError as e:
        raise DataError(
            f"{where}: not enough memory for its {_mb(math.prod(shape) * dtype.itemsize)} ({shape} {dtype})"
        ) from e
    except (ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"{where} is not readable (truncated or corrupt member: {e})") from e
    if array.shape != tuple(shape) or array.dtype != dtype:  # the header was read twice: they must agree
        raise DataError(f"{where}: read as {array.shape} {array.dtype}, declared {shape} {dtype}")
    return array


def _check_images(path: Path | str, arrays: dict[str, np.ndarray], size: int) -> int:
    """Check the three image arrays: uint8, shape (N, size, size) or (N, size, size, 3) with N >= 1, one channel count
    for all; return it (1 or 3). Raises DataError naming the key (and the split for an empty one)."""
    channels: dict[str, int] = {}
    for split in SPLITS:
        key, x = f"{split}_images", arrays[f"{split}_images"]
        if x.dtype != np.uint8:
            raise DataError(f"{path}: key '{key}' has dtype {x.dtype}; expected uint8")
        if x.ndim == 0 or x.shape[0] == 0:  # an empty split fails far from here (a reshape in training): say it now
            raise DataError(
                f"{path}: split '{split}' has no images (key '{key}' has shape {x.shape}); every split needs at "
                "least one image"
            )
        if x.shape[1:] not in ((size, size), (size, size, 3)):
            raise DataError(_image_shape_message(path, key, x.shape, size))
        channels[key] = 1 if x.ndim == 3 else 3
    if len(set(channels.values())) > 1:
        raise DataError(f"{path}: image splits disagree on channels: {channels}; all splits must agree")
    return channels["train_images"]


def _image_shape_message(path: Path | str, key: str, shape: tuple[int, ...], size: int) -> str:
    """Why an image array's shape is refused; for square images of another side, which setting reads them."""
    message = (
        f"{path}: key '{key}' has shape {shape}; expected (N, {size}, {size}) for grayscale or (N, {size}, {size}, 3) "
        "for RGB"
    )
    square = len(shape) in (3, 4) and shape[1] == shape[2] and shape[3:] in ((), (3,))
    if not square:
        return message
    side = shape[1]
    fix = f"set data.size={side}" if side in SIZES else f"resize them to a side of {', '.join(map(str, SIZES))}"
    return f"{message}: its images are {side}x{side} but the image size is {size} (data.size); {fix}"


def _check_labels(path: Path | str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Check the label arrays against their images; return the class index of every image, int64 (N,), per split.

    Each split's labels: integer or bool, class indices of shape (N,) or (N, 1), or one-hot rows (N, K), K >= 2
    (`_one_hot_classes`). Raises DataError for another dtype or shape, and for 2-D labels that are not one-hot.
    """
    labels = {}
    for split in SPLITS:
        key, y = f"{split}_labels", arrays[f"{split}_labels"]
        n = len(arrays[f"{split}_images"])
        if y.dtype.kind not in "biu":
            raise DataError(f"{path}: key '{key}' has dtype {y.dtype}; expected an integer dtype (or bool)")
        if y.ndim == 2 and y.shape[0] == n and y.shape[1] > 1:
            labels[split] = _one_hot_classes(path, key, y)
        elif y.shape in ((n,), (n, 1)):
            labels[split] = y.reshape(-1).astype(np.int64)
        else:
            raise DataError(
                f"{path}: key '{key}' has shape {y.shape}; expected ({n},) or ({n}, 1) class indices, or one-hot "
                f"({n}, K), to match the {n} images in '{split}_images'"
            )
    return labels


def _one_hot_classes(path: Path | str, key: str, y: np.ndarray) -> np.ndarray:
    """Class indices, int64 (N,), of one-hot labels y, integer or bool (N, K): every row one 1 and K - 1 zeros.

    Raises DataError for values other than 0 and 1, and for rows of 0s and 1s without exactly one 1: a multi-label
    set, which a single-label method cannot learn (the message says why and what to do)."""
    binary = (y == 0) | (y == 1)
    if not binary.all():
        row = int(np.flatnonzero(~binary.all(axis=1))[0])
        raise DataError(
            f"{path}: key '{key}' has shape {y.shape} and values other than 0 and 1 (row {row}: "
            f"{y[row, :6].tolist()}); 2-D labels are read only as one-hot rows, else give one class index per image, "
            "shape (N,) or (N, 1)"
        )
    ones = np.count_nonzero(y, axis=1)
    bad = np.flatnonzero(ones != 1)
    if bad.size:
        raise DataError(
            f"{path}: key '{key}' (shape {y.shape}) is multi-label: {bad.size:,} of {len(y):,} rows do not hold "
            f"exactly one 1 (row {bad[0]} holds {ones[bad[0]]}). {_SINGLE_LABEL_ONLY}. Keep one label per image, "
            "or split the file into one binary task per label"
        )
    return y.argmax(axis=1).astype(np.int64)


def _check_flag(path: Path | str, flag: str, channels: int, labels: dict[str, np.ndarray]) -> None:
    """Channels and sample counts must match what medmnist INFO says for the flag."""
    info = _info()[flag]
    if channels != info["n_channels"]:
        raise DataError(f"{path}: images have {channels} channel(s); INFO for {flag} says {info['n_channels']}")
    for split in SPLITS:
        if len(labels[split]) != info["n_samples"][split]:
            raise DataError(
                f"{path}: split '{split}' has {len(labels[split])} samples; "
                f"INFO for {flag} expects {info['n_samples'][split]}"
            )


def _some(indices: np.ndarray, shown: int = 3) -> str:
    """The first few of many indices, compactly: '7', '7, 9, 12' or '7, 9, 12 and 250 more'."""
    text = ", ".join(str(i) for i in indices[:shown])
    return text + (f" and {indices.size - shown:,} more" if indices.size > shown else "")


def _inferred_classes(path: Path | str, y_train: np.ndarray) -> tuple[tuple[str, ...], str]:
    """A custom file's class names, '0' .. 'K-1', and where K came from (for messages): K = the largest training
    label + 1, as every class needs a training image (a larger val/test label is out of range, not a new class).

    Raises DataError when K exceeds the training images: that many classes cannot each have one, and a stray value
    (255 for 'unknown') would otherwise ask for hundreds of empty classes (or a huge bincount)."""
    top = int(y_train.max())  # the split is not empty: _check_images
    at = np.flatnonzero(y_train == top)
    where = f"train index {_some(at)}" if at.size <= 3 else f"{at.size:,} training images"
    source = f"inferred from the largest training label, {top} ({where})"
    if top >= len(y_train):
        raise DataError(
            f"{path}: {top + 1:,} classes {source}, for {len(y_train):,} training images: not every class can have "
            "one. Labels must be 0..K-1 with every class in 'train'; is that label a stray value?"
        )
    return tuple(str(i) for i in range(top + 1)), source


def _check_classes(path: Path | str, labels: dict[str, np.ndarray], names: tuple[str, ...], source: str) -> None:
    """Labels must lie in [0, n_classes), n_classes >= 2 and every class needs a training image. `source`: where the
    class count came from, said in every message (a few indices and values, never a list of hundreds)."""
    n_classes = len(names)
    count = f"the class count, {n_classes}, is {source}"
    for split, y in labels.items():
        out = np.flatnonzero((y < 0) | (y >= n_classes))
        if out.size:
            pairs = ", ".join(f"index {i}: {y[i]}" for i in out[:3])
            more = f" and {out.size - 3:,} more" if out.size > 3 else ""
            raise DataError(
                f"{path}: split '{split}' has {out.size:,} label(s) out of range [0, {n_classes}) ({pairs}{more}); "
                f"{count}"
            )
    if n_classes < 2:
        raise DataError(f"{path}: only {n_classes} class found; a classifier needs at least 2 classes")
    empty = np.flatnonzero(np.bincount(labels["train"], minlength=n_classes) == 0)
    if empty.size == 1:
        raise DataError(
            f"{path}: class {empty[0]} ({names[empty[0]]!r}) has no training image in split 'train'; {count}"
        )
    if empty.size:
        raise DataError(
            f"{path}: {empty.size:,} of {n_classes} classes have no training image in split 'train' (classes "
            f"{_some(empty, 5)}); {count}. Labels must be 0..K-1, every class in 'train': a stray value?"
        )


# --- object storage -------------------------------------------------------------------------------------------------
# The same endpoint variables as the audit trail (kr.governance.trail.stores.ENDPOINT_VARS, which a test holds equal;
# not imported, as importing the trail costs every data step ~0.3 s): MinIO, moto or another S3 API.
S3_ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")
S3_REGION_VARS = ("AWS_DEFAULT_REGION", "AWS_REGION")
_NOT_FOUND = ("404", "NoSuchKey", "NotFound", "NoSuchBucket")
_DENIED = ("403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken")
_CHANGED = ("412", "PreconditionFailed")
_CREDENTIALS_HINT = (
    "credentials come from the environment only: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (on a cluster, the "
    "Secret kr-data-s3), or another source of boto3's default chain (AWS_PROFILE, a web identity)"
)


class _NoSuchObject(DataError):
    """The bucket or the object does not exist (load_saved_dataset words it as the validated file being gone)."""


def _s3_endpoint() -> str | None:
    return next((os.environ[v] for v in S3_ENDPOINT_VARS if os.environ.get(v)), None)


def s3_data_client() -> Any:
    """A new boto3 S3 client for reading data: the trail's endpoint variables (the first set of S3_ENDPOINT_VARS,
    with path-style addressing; none: AWS), the region from AWS_DEFAULT_REGION, else AWS_REGION, credentials from
    boto3's default chain only. Retries: botocore's standard mode, 5 attempts; 10 s to connect, 60 s per read.
    Makes no request. Raises ValueError for a malformed endpoint URL, BotoCoreError for a broken AWS configuration."""
    import boto3
    from botocore.config import Config

    endpoint = _s3_endpoint()
    region = next((os.environ[v] for v in S3_REGION_VARS if os.environ.get(v)), None)
    config = Config(
        retries={"mode": "standard", "max_attempts": 5},
        connect_timeout=10,
        read_timeout=60,
        # a custom endpoint (MinIO, moto, an IP address) rarely resolves bucket subdomains
        s3={"addressing_style": "path"} if endpoint else {},
    )
    # a session of its own: boto3's default one keeps the first credentials it found for the life of the process
    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region, config=config)


def _scrub(text: str) -> str:
    """An error text without user information in any URL it quotes (an endpoint may carry one)."""
    return re.sub(r"//[^/@\s]*@", "//***@", text)


def _s3_call(uri: str, what: str, fn: Callable[[], Any]) -> Any:
    """Run one S3 operation on `uri`; every failure becomes a DataError naming `uri` and the cause (no credential)."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    try:
        return fn()
    except DataError:  # our own refusal from inside `fn`, already worded
        raise
    except ClientError as e:
        error = e.response.get("Error", {})
        code = str(error.get("Code") or e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        detail = _scrub(str(error.get("Message") or code))
        if code in _NOT_FOUND:
            raise _NoSuchObject(f"{uri}: no such object ({code}: {detail})") from e
        if code in _DENIED:
            raise DataError(
                f"{uri}: access denied to {what} it ({code}: {detail}); the credentials found may not read it (or it "
                f"does not exist and they may not list the bucket). S3 {_CREDENTIALS_HINT}"
            ) from e
        if code in _CHANGED:
            raise DataError(f"{uri}: the object changed while it was being fetched ({code}); run again") from e
        raise DataError(f"{uri}: S3 refused to {what} it ({code}: {detail})") from e
    except (NoCredentialsError, PartialCredentialsError) as e:
        raise DataError(f"{uri}: no S3 credentials to {what} it ({type(e).__name__}); {_CREDENTIALS_HINT}") from e
    except (EndpointConnectionError, ConnectTimeoutError) as e:
        endpoint = _s3_endpoint()
        where = f"the S3 endpoint {redact_uri(endpoint)} (from {', '.join(S3_ENDPOINT_VARS)})" if endpoint else "AWS S3"
        raise DataError(f"{uri}: cannot reach {where} to {what} it ({type(e).__name__}: {_scrub(str(e))})") from e
    except (BotoCoreError, ValueError) as e:  # a broken AWS configuration, a malformed endpoint, a broken stream
        raise DataError(f"{uri}: cannot {what} it ({type(e).__name__}: {_scrub(str(e))})") from e


@contextmanager
def fetched(uri: str, limits: NpzLimits | None = None) -> Iterator[Path]:
    """The object at s3://bucket/key in a private temporary file (a 0700 folder of its own), deleted on exit.

    Its size, as S3 reports it (HEAD), is checked against `limits.max_file_mb` before a byte is downloaded; the
    object is then streamed to disk in 1 MB chunks (never whole in memory), downloaded only if it is still the
    object measured (If-Match on its ETag) and only up to the size measured. Raises DataError for an invalid URI,
    an object over the limit, a missing bucket or object (its message says which), access denied, no credentials,
    an unreachable endpoint, an object changed or cut short during the download, and a local disk failure.
    """
    limits = NpzLimits.of() if limits is None else limits
    bucket, key = _check_uri("data.dataset", uri, object_required=True)
    client = _s3_call(uri, "connect to S3 for", s3_data_client)
    try:
        head = _s3_call(uri, "read", lambda: client.head_object(Bucket=bucket, Key=key))
    except _NoSuchObject:
        try:  # a HEAD answers 404 alike for a missing object and a missing bucket: ask which
            _s3_call(uri, "read the bucket of", lambda: client.head_bucket(Bucket=bucket))
        except _NoSuchObject as e:
            raise _NoSuchObject(f"{uri}: the bucket {bucket!r} does not exist") from e
        except DataError:
            pass  # the bucket may exist, unreadable as a bucket: the object is what is missing
        raise _NoSuchObject(f"{uri}: no object {key!r} in the bucket {bucket!r}") from None
    size = int(head["ContentLength"])
    if size > limits.max_file_mb * MB:
        raise _too_big(uri, "the object, as S3 reports it,", size, "max_file_mb", limits.max_file_mb)
    with tempfile.TemporaryDirectory(prefix="kr-data-") as folder:
        path = Path(folder) / (PurePosixPath(key).name if key.endswith(".npz") else "object.npz")

        def download() -> None:
            same = {"IfMatch": head["ETag"]} if head.get("ETag") else {}  # the object measured, or 412
            body = client.get_object(Bucket=bucket, Key=key, **same)["Body"]
            received = 0
            with body, open(path, "xb") as out:
                for chunk in iter(lambda: body.read(MB), b""):
                    received += len(chunk)
                    if received > size:
                        raise DataError(f"{uri}: S3 sent more than the {size:,} bytes it announced; refused")
                    out.write(chunk)
            if received != size:
                raise DataError(f"{uri}: the download ended after {received:,} of {size:,} bytes; run again")

        try:
            _s3_call(uri, "download", download)
        except OSError as e:
            raise DataError(f"{uri}: cannot be written to a temporary file in {folder} ({e})") from e
        yield path


def _missing_message(path: Path, flag: str | None) -> str:
    if flag is None:
        return f"{path}: file not found (relative paths are resolved against the current directory {Path.cwd()})"
    return (
        f"{path}: file not found. Looked in data root {path.parent}. Pass --data-root or set KR_DATA_ROOT to "
        f"the folder holding {path.name}, or use --download to fetch it"
    )


def load_dataset(
    dataset: str,
    data_root: str | Path | None = None,
    download: bool = False,
    *,
    size: int = 28,
    limits: NpzLimits | None = None,
    folder: FolderOptions | None = None,
) -> Dataset:
    """Load and validate a MedMNIST flag, a custom .npz or an image folder; images become (N, C, size, size) uint8.

    An image folder (PNG/JPEG files in one folder per class, with or without train/val/test folders:
    `kr.image_folder`) is read with `folder` (default: `DataConfig`'s; pass `FolderOptions.of(cfg.data)`), its
    identity the MD5 of its files' manifest, then validated as a custom file is (class names from the folders).

    The file needs {train,val,test}_{images,labels} and nothing else: uint8 (N, size, size) or (N, size, size, 3)
    images, N >= 1 in every split; integer or bool labels, one class index per image, (N,) or (N, 1), or one-hot
    (N, K). `size` (DataConfig.size): 28, 64, 128 or 224; a flag then reads <flag>.npz or <flag>_<size>.npz (see
    `dataset_location`). A custom file's class count is its largest training label + 1. With `download`, a missing
    MedMNIST file is fetched first (`download_medmnist`). `limits` (default: `DataConfig`'s; pass
    `NpzLimits.of(cfg.data)`) bound the reading, see `read_npz`: a MedMNIST file's MD5 is checked on its bytes before
    anything is decompressed. Raises DataError, naming the file and the problem, for a multi-label flag (before any
    read), a missing or unreadable file, an unexpected member, object (pickled) arrays, a limit exceeded, a header
    that disagrees with the zip directory, an MD5 or INFO mismatch (MedMNIST flags), a missing key, a wrong dtype or
    shape, an empty split, multi-label labels, labels out of range, fewer than two classes, or a class without a
    training image.
    """
    location = dataset_location(dataset, data_root, size)
    flag = None if _is_path(dataset) else medmnist_flag(dataset)
    if flag is not None and catalog.is_multi_label(flag):
        raise DataError(_multi_label_flag_message(location, flag))
    limits = NpzLimits.of() if limits is None else limits

    def official(md5: str) -> None:
        expected = catalog.md5(flag, size)
        if md5 != expected:
            raise DataError(
                f"{location}: MD5 mismatch for {flag}: expected {expected}, got {md5}; the file is corrupt or not the "
                "official one, re-download it (--download after deleting it; in object storage, upload the official "
                "file again)"
            )

    verify = official if flag else None
    if isinstance(location, str):  # object storage: fetched, read as a local file, deleted
        try:
            with fetched(location, limits) as path:
                return _load(path, flag, limits, verify, source=location, size=size)
        except _NoSuchObject as e:
            hint = f"; upload {location.rpartition('/')[2]} there (--download fetches into a local data root only)"
            raise DataError(f"{e}{hint if flag else ''}") from e
    path = location
    if flag is None and path.is_dir():
        return _load_folder(path, size, limits, FolderOptions() if folder is None else folder)
    if not path.is_file() and flag is not None and download:
        download_medmnist(flag, size, path.parent)
    if not path.is_file():
        raise DataError(_missing_message(path, flag))
    return _load(path, flag, limits, verify, size=size)


def _multi_label_flag_message(location: str | Path, flag: str) -> str:
    """Why a multi-label MedMNIST flag (ChestMNIST) is refused, and how to make a single-label dataset from it."""
    return (
        f"{location}: {flag} is multi-label ({len(_info()[flag]['label'])} labels per image), refused unread. "
        f"{_SINGLE_LABEL_ONLY}. Make one binary task per finding (a .npz of labels[:, k] for finding k, passed "
        "with --dataset), or keep one label per image"
    )


def _load_folder(path: Path, size: int, limits: NpzLimits, options: FolderOptions, md5: str | None = None) -> Dataset:
    """Read an image folder (`kr.image_folder.read_image_folder`, its decoded arrays bounded by
    `limits.max_total_mb`) and validate it as a custom file. `md5`: the manifest MD5 it must still have (a saved
    reference). Raises DataError for every refusal of the reader, and a changed folder."""
    from kr.image_folder import ImageFolderError, read_image_folder

    try:
        found = read_image_folder(
            path,
            size=size,
            val_fraction=options.val_fraction,
            test_fraction=options.test_fraction,
            seed=options.split_seed,
            max_files=options.max_files,
            max_side=options.max_side,
            max_total_mb=limits.max_total_mb,
        )
    except ImageFolderError as e:
        raise DataError(str(e)) from e
    if md5 is not None and found.md5 != md5:
        raise DataError(
            f"{path}: the image folder changed after validation (MD5 {found.md5}, validated {md5}); run again"
        )
    data = _validated(path, found.arrays, found.md5, None, size, "folder", found.class_names)
    return replace(data, limits=limits, folder=options)


def _load(
    path: Path,
    flag: str | None,
    limits: NpzLimits,
    verify: Callable[[str], None] | None,
    source: str | None = None,
    *,
    size: int = 28,
) -> Dataset:
    """Read (bounded, `verify` given the file's MD5 first) and validate the file at path, its images of side `size`.
    `source`: where the file came from (an s3:// URI), named in messages and as the dataset's path instead of the
    local copy at `path`."""
    arrays, md5 = read_npz(path, MEDMNIST_MEMBERS, limits, verify, source=source)
    # a copy of an official file (another name, object storage) is that dataset: its class names, its checks
    flag = flag or _official_flag(md5, size)
    # from here on the file is only named: in messages and the info
    data = _validated(source or path, arrays, md5, flag, size, "medmnist" if flag else "file")
    return replace(data, limits=limits)


def _official_flag(md5: str, size: int) -> str | None:
    """The MedMNIST flag whose official file at `size` has this MD5, or None (also without medmnist installed)."""
    try:
        return catalog.flag_of(md5, size)
    except ModuleNotFoundError:
        return None


def _validated(
    where: str | Path,
    arrays: Mapping[str, np.ndarray],
    md5: str,
    flag: str | None,
    size: int,
    source: str,
    names: tuple[str, ...] | None = None,
) -> Dataset:
    """Validate MedMNIST-layout arrays (see `load_dataset`) read from `where` and make the Dataset. `names`: the
    class names where the source gives them (an image folder's); else a flag's INFO, or inferred from the labels."""
    missing = [k for k in KEYS if k not in arrays]
    if missing:
        raise DataError(f"{where}: missing keys {', '.join(missing)}; expected all of {', '.join(KEYS)}")

    channels = _check_images(where, arrays, size)
    labels = _check_labels(where, arrays)
    if names is not None:
        source_of_count = f"one class per folder ({len(names)})"
        task = "binary-class" if len(names) == 2 else "multi-class"
    elif flag is not None:
        _check_flag(where, flag, channels, labels)
        label_names = _info()[flag]["label"]
        names = tuple(label_names[str(i)] for i in range(len(label_names)))
        task = "binary-class" if _info()[flag]["task"] == "binary-class" else "multi-class"
        source_of_count = f"given by medmnist's INFO for {flag}"
    else:
        names, source_of_count = _inferred_classes(where, labels["train"])
        task = "binary-class" if len(names) == 2 else "multi-class"
    _check_classes(where, labels, names, source_of_count)

    def images(split: str) -> np.ndarray:
        x = arrays[f"{split}_images"]
        return np.ascontiguousarray(x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2))

    info = DatasetInfo(
        name=flag or PurePosixPath(str(where)).stem,
        path=str(where),
        md5=md5,
        source=source,
        task=task,
        n_classes=len(names),
        channels=channels,
        image_size=size,
        class_names=names,
        n_train=len(labels["train"]),
        n_val=len(labels["val"]),
        n_test=len(labels["test"]),
    )
    x_train, x_val, x_test = images("train"), images("val"), images("test")
    return Dataset(info, x_train, labels["train"], x_val, labels["val"], x_test, labels["test"])


def save_dataset(data: Dataset, folder: str | Path) -> Path:
    """Write a validated dataset's reference as a pipeline artifact: info.json (path, MD5, shape), never the images.

    Real patient images do not belong in the pipeline's artifact store, which every pipeline user can read: each
    step re-reads the file it names (`load_saved_dataset`) and checks it is still the one validated. Returns the
    folder (created if needed).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    reference = data.info.to_dict()
    if data.limits is not None:  # later steps re-read the file under the limits it was validated with
        reference["read_limits"] = asdict(data.limits)
    if data.folder is not None:  # and an image folder with the same split
        reference["folder_options"] = asdict(data.folder)
    (folder / "info.json").write_text(json.dumps(reference, indent=2))
    return folder


def load_saved_dataset(folder: str | Path) -> Dataset:
    """The validated dataset a `save_dataset` reference names, read again from its file under the same limits.

    Raises DataError when the file is gone or its MD5 differs from the validated one (it changed after
    validation: the run must not train on data nobody checked); the MD5 is checked before anything is decompressed.
    """
    folder = Path(folder)
    values = json.loads((folder / "info.json").read_text())
    limits = NpzLimits(**values.pop("read_limits")) if "read_limits" in values else NpzLimits.of()
    folder_options = values.pop("folder_options", None)
    values["class_names"] = tuple(values["class_names"])
    info = DatasetInfo(**values)
    gone = f"{info.path}: the validated data file is gone (validated MD5 {info.md5})"

    def unchanged(md5: str) -> None:
        if md5 != info.md5:
            raise DataError(
                f"{info.path}: the file changed after validation (MD5 {md5}, validated {info.md5}); run again"
            )

    if info.source == "folder":
        if not Path(info.path).is_dir():
            raise DataError(f"{info.path}: the validated image folder is gone (validated MD5 {info.md5})")
        loaded = _load_folder(Path(info.path), info.image_size, limits, FolderOptions(**folder_options), info.md5)
    elif is_s3_uri(info.path):  # fetched again, its MD5 checked before anything is decompressed
        try:
            with fetched(info.path, limits) as path:
                loaded = _load(path, None, limits, unchanged, source=info.path, size=info.image_size)
        except _NoSuchObject as e:
            raise DataError(f"{gone}: {e}") from e
    else:
        path = Path(info.path)
        if not path.is_file():
            raise DataError(gone)
        loaded = _load(path, None, limits, unchanged, size=info.image_size)
    return replace(loaded, info=info)
