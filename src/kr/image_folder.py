"""Read a folder of PNG/JPEG images, one sub-folder per class, into the arrays of the MedMNIST .npz layout.

Two layouts, told apart by the root's sub-folders:

- ``ROOT/{train,val,test}/<class>/*.png|jpg|jpeg`` ("splits"). ``train`` and ``test`` are required; without ``val``
  a stratified, seeded share (`val_fraction`) of each class's training images becomes val ("train-test").
- ``ROOT/<class>/*`` ("classes"): each class is split into train/val/test by `val_fraction` and `test_fraction`,
  stratified per class and deterministic given the seed and the file list.

Class names are the class folders' names (Unicode NFC, sorted by code point), labels their indices. Every image
must be square, of one size, and of one family: grayscale (modes 1, L, LA, or P with a gray palette) or colour (RGB,
RGBA, P, CMYK, YCbCr). Nothing is resized unless asked (`resize`), and every refusal is an `ImageFolderError`
naming a file. What is skipped on purpose, and never hashed: hidden entries (a name starting with "."; .DS_Store,
._* AppleDouble files, .ipynb_checkpoints), __MACOSX folders, Thumbs.db and desktop.ini, and files other than
images lying directly in ROOT or in a split folder (README, labels.csv). Everything else inside a class folder must
be a readable .png/.jpg/.jpeg image: a dropped patient image would silently change the data.

Pillow reads the files, restricted to its PNG and JPEG decoders (the only formats accepted, whatever the suffix).
This module imports nothing from `kr.data`, so that `kr.data` can import it without a cycle.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import unicodedata
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

SPLITS = ("train", "val", "test")  # kr.data.SPLITS, not imported: kr.data may import this module without a cycle
SUFFIXES = (".png", ".jpg", ".jpeg")  # matched case-insensitively
FORMATS = ("PNG", "JPEG")  # the only Pillow decoders ever run, whatever a file's suffix claims
SKIPPED_NAMES = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini"})  # OS litter, skipped like hidden entries
DEFAULT_MAX_FILES = 200_000
DEFAULT_MAX_SIDE = 1024
DEFAULT_MAX_TOTAL_MB = 2048.0  # DataConfig.max_total_mb's default: the decoded arrays of all splits together
MAX_FILE_BYTES = 64 << 20  # one image file; a 1024 x 1024 RGB PNG stored without compression is 3 MB
GRAY_MODES = frozenset({"1", "L", "LA", "La"})
COLOR_MODES = frozenset({"RGB", "RGBA", "RGBa", "CMYK", "YCbCr"})
PALETTE_MODES = frozenset({"P", "PA"})  # gray or colour depending on the palette
DEEP_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})  # 16- and 32-bit: refused, see _family


class ImageFolderError(ValueError):
    """An image folder that cannot be read as a dataset. The message names the folder or file and the problem.

    A ValueError, like kr.data.DataError (a caller in kr.data re-raises it as one, naming the dataset)."""


@dataclass(frozen=True, eq=False)  # an array dict makes the generated __eq__ meaningless
class FolderData:
    """An image folder read into the MedMNIST .npz layout.

    `arrays`: {split}_images uint8 (N, S, S) grayscale or (N, S, S, 3) RGB, and {split}_labels int64 (N, 1), for
    split in train, val, test; within a split images run in the order of their relative paths. `class_names`: the
    class folders' names, label i being class_names[i]. `md5`: hex MD5 of the folder's content (see `folder_md5`).
    `layout`: "splits", "train-test" (val taken from train) or "classes" (all three splits drawn per class).
    """

    arrays: dict[str, np.ndarray]
    class_names: tuple[str, ...]
    md5: str
    layout: str

    @property
    def image_size(self) -> int:
        """S, the side of every image in pixels."""
        return int(self.arrays["train_images"].shape[1])

    @property
    def channels(self) -> int:
        """1 (grayscale) or 3 (RGB)."""
        return 1 if self.arrays["train_images"].ndim == 3 else 3


@dataclass(frozen=True)
class _File:
    path: Path
    rel: str  # relative to the root, "/"-separated, NFC: the same text on every machine
    label: int


def _name(entry: os.DirEntry | Path) -> str:
    # macOS file systems hand out decomposed (NFD) names, Linux keeps what was written: NFC makes them agree
    return unicodedata.normalize("NFC", entry.name)


def _skipped(name: str) -> bool:
    return name.startswith(".") or name in SKIPPED_NAMES


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(SUFFIXES)


def _too_many(root: Path, max_files: int) -> ImageFolderError:
    return ImageFolderError(
        f"{root}: more than {max_files:,} image files (max_files); raise the limit if the folder is trusted"
    )


def _entries(folder: Path, limit: int | None = None, root: Path | None = None) -> tuple[list[Path], list[Path]]:
    """(sub-folders, files) of a folder, sorted by NFC name, hidden and OS litter left out. With `limit`, a folder
    of more entries is refused as more than `limit` files under `root`, before the rest of it is listed."""
    entries: list[os.DirEntry] = []
    try:
        with os.scandir(folder) as it:
            for entry in it:
                if not _skipped(_name(entry)):
                    entries.append(entry)
                    if limit is not None and len(entries) > limit:  # a folder of millions is not listed in full
                        raise _too_many(root or folder, limit)
    except OSError as e:
        raise ImageFolderError(f"{folder}: cannot be listed ({e})") from e
    entries.sort(key=_name)
    dirs = [Path(e.path) for e in entries if e.is_dir()]
    return dirs, [Path(e.path) for e in entries if not e.is_dir()]


def is_image_folder(path: str | Path) -> bool:
    """Whether `path` is a folder with at least one visible sub-folder: a candidate for `read_image_folder`.

    Reads one directory listing, no image; never raises (an unreadable path is not an image folder)."""
    path = Path(path)
    try:
        return path.is_dir() and bool(_entries(path)[0])
    except (ImageFolderError, OSError):
        return False


def _loose_images(folder: Path, files: list[Path], where: str) -> None:
    images = [f.name for f in files if _is_image_name(f.name)]
    if images:
        raise ImageFolderError(
            f"{folder}: image {images[0]!r} lies {where}, outside any class folder; images go in <class>/ folders"
        )


def _class_files(
    folder: Path, root: Path, classes: tuple[str, ...], counter: list[int], max_files: int
) -> Iterator[_File]:
    """The image files of one folder of class folders, labelled by `classes`; refuses what is not an image."""
    dirs, files = _entries(folder)
    _loose_images(folder, files, "directly in " + ("the root" if folder == root else f"split folder {folder.name}"))
    for class_dir in dirs:
        sub_dirs, images = _entries(class_dir, max_files, root)
        if sub_dirs:
            raise ImageFolderError(
                f"{sub_dirs[0]}: a folder inside class folder {class_dir.name!r}; images must lie directly in "
                "their class folder (is the root one level too high?)"
            )
        if not images:
            raise ImageFolderError(f"{class_dir}: class folder holds no image (.png, .jpg, .jpeg)")
        for path in images:
            if not _is_image_name(path.name):
                raise ImageFolderError(
                    f"{path}: not an image file (only .png, .jpg and .jpeg are read); remove it or convert it"
                )
            counter[0] += 1
            if counter[0] > max_files:
                raise _too_many(root, max_files)
            rel = "/".join(unicodedata.normalize("NFC", p) for p in path.relative_to(root).parts)
            yield _File(path, rel, classes.index(_name(class_dir)))


def _class_names(folder: Path) -> tuple[str, ...]:
    names = tuple(sorted(_name(d) for d in _entries(folder)[0]))
    if len(names) < 2:
        found = f"only the class {names[0]!r}" if names else "no class folder"
        raise ImageFolderError(f"{folder}: {found}; a classifier needs at least 2 classes (one folder each)")
    return names


def _layout(root: Path) -> tuple[str, dict[str, Path]]:
    """("splits" | "train-test" | "classes", the split folders present)."""
    dirs = {_name(d): d for d in _entries(root)[0]}
    present = {s: dirs[s] for s in SPLITS if s in dirs}
    if not present:
        return "classes", {}
    others = sorted(set(dirs) - set(SPLITS))
    if others:
        raise ImageFolderError(
            f"{root}: mixes split folders ({', '.join(present)}) with other folders ({', '.join(others[:5])}); "
            "use either ROOT/{train,val,test}/<class>/ or ROOT/<class>/"
        )
    missing = [s for s in ("train", "test") if s not in present]
    if missing:
        raise ImageFolderError(
            f"{root}: split folder(s) {', '.join(missing)} missing; the split layout needs train/ and test/ (val/ is "
            "optional: without it val_fraction of train becomes val), or put class folders directly in the root to "
            "have every split drawn from them"
        )
    return ("splits" if "val" in present else "train-test"), present


def _rank(seed: int, rel: str) -> bytes:
    # a per-file hash rather than a shuffled index: a file's rank depends only on the seed and its own path, not
    # on the other classes' files, and hashlib gives the same bytes on every machine and version
    return hashlib.blake2b(f"{seed}\0{rel}".encode(), digest_size=16).digest()


def _draw(
    files: list[_File], fractions: dict[str, float], seed: int, classes: tuple[str, ...]
) -> dict[str, list[_File]]:
    """Split `files` per class: round(fraction * n) files (at least 1) to each split of `fractions`, the rest to
    train. Raises ImageFolderError for a class too small to give every split an image."""
    out: dict[str, list[_File]] = {"train": [], **{s: [] for s in fractions}}
    for label, name in enumerate(classes):
        mine = sorted((f for f in files if f.label == label), key=lambda f: _rank(seed, f.rel))
        counts = {s: max(1, math.floor(frac * len(mine) + 0.5)) for s, frac in fractions.items()}
        if len(mine) - sum(counts.values()) < 1:
            need = ", ".join(f"{counts[s]} {s}" for s in fractions)
            raise ImageFolderError(
                f"class {name!r} has {len(mine)} image(s): too few for {need} and at least 1 train image"
            )
        start = 0
        for split, n in counts.items():
            out[split] += mine[start : start + n]
            start += n
        out["train"] += mine[start:]
    return {s: sorted(v, key=lambda f: f.rel) for s, v in out.items()}


def _check_fraction(name: str, value: float) -> None:
    if not 0 < value < 1:
        raise ImageFolderError(f"{name}={value}: expected a fraction strictly between 0 and 1")


def _listing(root: Path, max_files: int) -> tuple[str, tuple[str, ...], dict[str, list[_File]]]:
    """(layout, class names, the image files of each split folder present; under "" in the classes layout)."""
    layout, present = _layout(root)
    counter = [0]
    if layout == "classes":
        classes = _class_names(root)
        return layout, classes, {"": list(_class_files(root, root, classes, counter, max_files))}
    _loose_images(root, _entries(root)[1], "directly in the root")
    classes = _class_names(present["train"])
    for folder in present.values():  # one label space: a class missing from a split is an error, not a 0
        theirs = tuple(sorted(_name(d) for d in _entries(folder)[0]))
        if theirs != classes:
            lacking, extra = sorted(set(classes) - set(theirs)), sorted(set(theirs) - set(classes))
            raise ImageFolderError(f"{folder}: class folders differ from train's: missing {lacking}, extra {extra}")
    return layout, classes, {s: list(_class_files(f, root, classes, counter, max_files)) for s, f in present.items()}


def _splits(
    root: Path, val_fraction: float, test_fraction: float, seed: int, max_files: int
) -> tuple[str, tuple[str, ...], dict[str, list[_File]]]:
    """(layout, class names, the files of each split, drawn where the layout does not give the split)."""
    layout, classes, found = _listing(root, max_files)
    if layout == "classes":
        return layout, classes, _draw(found[""], {"test": test_fraction, "val": val_fraction}, seed, classes)
    if layout == "train-test":
        found.update(_draw(found.pop("train"), {"val": val_fraction}, seed, classes))
    return layout, classes, {s: found[s] for s in SPLITS}


def _family(f: _File, im: Image.Image) -> str:
    """ "gray" or "rgb" from a header's mode (a palette image is decoded to see its colours in use); refuses
    images of more than 8 bits per sample and modes that are neither."""
    if im.mode in DEEP_MODES or any(";16" in str(t.args) for t in im.tile):  # RGB;16B: Pillow keeps the high byte
        # scaling to 8 bits needs a window (the file's full range? 12 bits? per image?) that only the data's owner
        # knows; a guess would crush or stretch intensities, e.g. 12-bit data divided by 257 spans 0-15
        raise ImageFolderError(
            f"{f.path}: {im.mode} image of more than 8 bits per sample; only 8-bit images are read. Convert it to 8 "
            "bits with the intensity window you mean (e.g. the whole set's min-max) first"
        )
    if im.mode in GRAY_MODES:
        return "gray"
    if im.mode in COLOR_MODES:
        return "rgb"
    if im.mode in PALETTE_MODES:
        # only the entries in use count: palettes are often padded with colours no pixel takes
        try:
            used = np.unique(np.asarray(im.getchannel(0)))
        except Exception as e:  # decoding, bounded by max_side already: a broken file fails here
            raise ImageFolderError(f"{f.path}: corrupt or truncated image ({type(e).__name__}: {e})") from e
        palette = np.frombuffer(bytes(im.getpalette("RGB") or b""), np.uint8).reshape(-1, 3)
        colours = palette[used[used < len(palette)]]
        return "gray" if (colours == colours[:, :1]).all() else "rgb"
    raise ImageFolderError(f"{f.path}: image mode {im.mode} is neither grayscale (L) nor colour (RGB)")


def _open(f: _File, data: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # over MAX_IMAGE_PIXELS: refuse, not warn
            return Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageFolderError(f"{f.path}: refused as a decompression bomb ({e})") from e
    except Exception as e:  # Pillow raises many types for hostile or broken headers: each means unreadable
        raise ImageFolderError(f"{f.path}: not a readable PNG or JPEG image ({type(e).__name__}: {e})") from e


def _read_bytes(f: _File) -> bytes:
    try:
        size = f.path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ImageFolderError(f"{f.path}: {size:,} bytes, over the {MAX_FILE_BYTES:,}-byte limit for one image")
        return f.path.read_bytes()
    except OSError as e:
        raise ImageFolderError(f"{f.path}: cannot be read ({e})") from e


def _header(f: _File, max_side: int) -> tuple[int, str]:
    """(side, family) from the file's header, nothing decoded; refuses what no image may be."""
    im = _open(f, _read_bytes(f))
    with im:
        w, h = im.size
        if max(w, h) > max_side:
            raise ImageFolderError(f"{f.path}: {w} x {h} pixels, over the {max_side}-pixel side limit (max_side)")
        if w != h:
            raise ImageFolderError(f"{f.path}: {w} x {h} pixels, not square; crop it square (nothing is stretched)")
        if getattr(im, "n_frames", 1) > 1:
            raise ImageFolderError(f"{f.path}: holds {im.n_frames} frames (animated); one image per file is read")
        return w, _family(f, im)


def _first_of_each(found: dict, what: str, root: Path) -> None:
    if len(found) > 1:
        shown = "; ".join(f"{key}: {len(paths)} file(s), e.g. {paths[0]}" for key, paths in list(found.items())[:4])
        raise ImageFolderError(f"{root}: images differ in {what}: {shown}")


def _pixels(f: _File, data: bytes, family: str, side: int) -> np.ndarray:
    """The decoded image as uint8 (S, S) or (S, S, 3); resized to side x side only when it differs (resize=True)."""
    im = _open(f, data)
    try:
        im.load()
        im = ImageOps.exif_transpose(im)  # the orientation viewers show, which is what was labelled
    except Exception as e:  # truncated data, a corrupt chunk, a bad CRC: unreadable, never half-read
        raise ImageFolderError(f"{f.path}: corrupt or truncated image ({type(e).__name__}: {e})") from e
    if im.mode in PALETTE_MODES:
        im = im.convert("RGBA")
    if im.mode in ("LA", "La", "RGBA", "RGBa"):
        alpha = np.asarray(im.getchannel("A"))
        if alpha.min() < 255:
            # compositing onto black or white is a guess about the background; an opaque alpha is just dropped
            raise ImageFolderError(f"{f.path}: has transparent pixels; flatten it onto its background first")
    im = im.convert("L" if family == "gray" else "RGB")
    if im.size != (side, side):
        im = im.resize((side, side), Image.Resampling.LANCZOS)
    return np.asarray(im, dtype=np.uint8)


def _manifest_md5(file_md5: dict[str, str]) -> str:
    # md5sum's own line format, sorted by path: the identity can be rebuilt by hand from `md5sum` output
    manifest = "".join(f"{file_md5[rel]}  {rel}\n" for rel in sorted(file_md5))
    return hashlib.md5(manifest.encode()).hexdigest()


def folder_md5(root: str | Path, *, max_files: int = DEFAULT_MAX_FILES) -> str:
    """The MD5 identity `read_image_folder` gives the folder, from the files' bytes alone (nothing decoded).

    Hex MD5 of a manifest with one line per image file read, "<MD5 of its bytes>  <path>\n" (md5sum's format),
    sorted by path: relative to the root, "/"-separated, Unicode NFC. The same on every machine; it changes when an
    image is added, removed, renamed, moved to another class or split, or edited; skipped files do not count.
    Raises ImageFolderError as `read_image_folder` does for the folder's structure and unreadable files."""
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise ImageFolderError(f"{root}: not a folder")
    files = [f for group in _listing(root, max_files)[2].values() for f in group]
    return _manifest_md5({f.rel: hashlib.md5(_read_bytes(f)).hexdigest() for f in files})


def read_image_folder(
    root: str | Path,
    *,
    size: int | None = None,
    resize: bool = False,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    max_files: int = DEFAULT_MAX_FILES,
    max_side: int = DEFAULT_MAX_SIDE,
    max_total_mb: float = DEFAULT_MAX_TOTAL_MB,
) -> FolderData:
    """Read an image folder (see the module docstring for the layouts) into MedMNIST-layout arrays.

    size: the side S every image must have; None: whatever single side they share. resize: resize (Lanczos) square
    images of another side to `size` (needs `size`; non-square images are still refused). val_fraction,
    test_fraction: shares of each class drawn for val and test where the layout does not provide the split (both
    in (0, 1), summing under 1, checked whatever the layout; at least one image per class and split, rounded half
    up); drawn by ranking each class's files by BLAKE2b(seed, relative path): deterministic given the seed and the
    file list, the same on every machine and numpy version, and independent of the other classes' files.
    max_files: most image files read. max_side: largest image side, from the header, before decoding (the
    decompression-bomb bound; Pillow's own MAX_IMAGE_PIXELS also applies and is refused, not warned). max_total_mb:
    the decoded arrays of all splits together (MB = 2**20 bytes), checked from the headers before decoding.

    Returns FolderData; `md5` is what `folder_md5` gives, from the bytes that were decoded. Raises
    ImageFolderError, naming the folder or file, for: a root that is not a folder; split folders mixed with other
    folders; train/ or test/ missing in the split layout; class folders differing between splits; fewer than 2
    classes; an empty class folder; a folder inside a class folder; a non-image file in a class folder, or an image
    outside one; more than `max_files` images; a file over 64 MB; a file neither PNG nor JPEG, unreadable,
    truncated or corrupt; an image over `max_side` or Pillow's MAX_IMAGE_PIXELS, non-square, animated, 16/32-bit
    or of another mode, or with transparent pixels; images of different sides (without `resize`) or of both gray
    and colour (a file of each named); a side other than `size` (without `resize`); arrays over `max_total_mb`; a
    fraction out of range; a class too small to give each split an image.
    """
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise ImageFolderError(f"{root}: not a folder")
    if resize and size is None:
        raise ImageFolderError(f"{root}: resize needs the target size")
    # checked whatever the layout (a bad value is a bug even where it is unused), before anything is listed
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1:
        raise ImageFolderError(f"val_fraction + test_fraction = {val_fraction + test_fraction:g}; leaves no train")
    layout, classes, splits = _splits(root, val_fraction, test_fraction, seed, max_files)
    files = [f for s in SPLITS for f in splits[s]]

    sides: dict[str, list[Path]] = {}
    families: dict[str, list[Path]] = {}
    for f in files:  # headers only: every refusal comes before a single image is decoded
        found, family = _header(f, max_side)
        sides.setdefault(f"{found} x {found}", []).append(f.path)
        families.setdefault(family, []).append(f.path)
    _first_of_each(families, "colour (grayscale and RGB mixed; convert them to one)", root)
    if not resize:
        _first_of_each(sides, "size (nothing is resized unless asked: resize=True with a size)", root)
    family = next(iter(families))
    found = int(next(iter(sides)).split(" x ")[0])
    side = found if size is None else size
    if side != found and not resize:
        raise ImageFolderError(f"{root}: images are {found} x {found} pixels; expected {side} x {side} (size)")
    channels = 1 if family == "gray" else 3
    total = len(files) * side * side * channels
    if total > max_total_mb * (1 << 20):
        raise ImageFolderError(
            f"{root}: {len(files):,} images of {side} x {side} x {channels} make {total / (1 << 20):,.1f} MB, over the "
            f"{max_total_mb:g} MB limit (max_total_mb)"
        )

    file_md5: dict[str, str] = {}
    arrays: dict[str, np.ndarray] = {}
    for split in SPLITS:
        shape = (len(splits[split]), side, side) + ((3,) if channels == 3 else ())
        x = np.empty(shape, np.uint8)
        for i, f in enumerate(splits[split]):
            data = _read_bytes(f)
            file_md5[f.rel] = hashlib.md5(data).hexdigest()  # the bytes hashed are the bytes decoded
            x[i] = _pixels(f, data, family, side)
        arrays[f"{split}_images"] = x
        arrays[f"{split}_labels"] = np.array([f.label for f in splits[split]], np.int64).reshape(-1, 1)
    return FolderData(arrays=arrays, class_names=classes, md5=_manifest_md5(file_md5), layout=layout)
