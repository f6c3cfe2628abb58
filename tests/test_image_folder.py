"""Tests for kr.image_folder: PNG/JPEG class folders read into the MedMNIST .npz layout, and every refusal.

The trees are written in tmp_path from real BreastMNIST images, so the pixels read back can be compared with the
arrays they came from.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from datagen import REAL_ROOT, needs_real
from PIL import Image

from kr.data import SPLITS
from kr.image_folder import (
    SPLITS as FOLDER_SPLITS,
)
from kr.image_folder import (
    FolderData,
    ImageFolderError,
    folder_md5,
    is_image_folder,
    read_image_folder,
)

pytestmark = needs_real
CLASSES = ("benign", "malignant")  # folder names; sorted, so benign is label 0


@pytest.fixture(scope="module")
def breast() -> dict[str, np.ndarray]:
    """A few dozen real BreastMNIST images per split: {split: uint8 (N, 28, 28)}, half of each class, label order
    0 then 1 (train 24, val 8, test 8)."""
    with np.load(REAL_ROOT / "breastmnist.npz") as f:
        out = {}
        for split, n in (("train", 12), ("val", 4), ("test", 4)):
            x, y = f[f"{split}_images"], f[f"{split}_labels"].ravel()
            out[split] = np.concatenate([x[y == c][:n] for c in (0, 1)])
    return out


def write(path: Path, image: np.ndarray, **save: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, **save)
    return path


def split_tree(root: Path, breast: dict[str, np.ndarray], splits: tuple[str, ...] = SPLITS, ext: str = "png") -> Path:
    """ROOT/<split>/<class>/<i>.<ext>, images i in the fixture's order."""
    for split in splits:
        x = breast[split]
        half = len(x) // 2
        for i, image in enumerate(x):
            write(root / split / CLASSES[i // half] / f"{i:03d}.{ext}", image)
    return root


def class_tree(root: Path, breast: dict[str, np.ndarray]) -> tuple[Path, np.ndarray]:
    """ROOT/<class>/<i>.png from every fixture image (20 per class); returns the root and the images, (40, 28, 28)."""
    x = np.concatenate(
        [breast[s][breast[s].shape[0] // 2 * c :][: breast[s].shape[0] // 2] for c in (0, 1) for s in SPLITS]
    )
    for i, image in enumerate(x):
        write(root / CLASSES[i // 20] / f"{i:03d}.png", image)
    return root, x


def refused(root: Path, *words: str, **kw: object) -> str:
    with pytest.raises(ImageFolderError) as exc:
        read_image_folder(root, **kw)
    msg = str(exc.value)
    for word in words:
        assert word in msg, f"{word!r} not in {msg!r}"
    assert len(msg) < 500, msg
    return msg


# ---------------------------------------------------------------- reading


def test_png_split_layout_round_trips_every_pixel(tmp_path: Path, breast: dict[str, np.ndarray]) -> None:
    got = read_image_folder(split_tree(tmp_path / "d", breast))
    assert isinstance(got, FolderData)
    assert FOLDER_SPLITS == SPLITS
    assert (got.layout, got.class_names, got.image_size, got.channels) == ("splits", CLASSES, 28, 1)
    assert sorted(got.arrays) == sorted(f"{s}_{k}" for s in SPLITS for k in ("images", "labels"))
    for split in SPLITS:
        x, y = got.arrays[f"{split}_images"], got.arrays[f"{split}_labels"]
        assert x.dtype == np.uint8 and y.dtype == np.int64 and y.shape == (len(x), 1)
        np.testing.assert_array_equal(x, breast[split])  # paths sort as the fixture's order: exact round trip
        n = len(x) // 2
        assert y.ravel().tolist() == [0] * n + [1] * n


def test_rgb_png_round_trips_and_opaque_alpha_is_dropped(tmp_path: Path, breast: dict[str, np.ndarray]) -> None:
    rgb = {s: np.stack([x, 255 - x, x // 2], axis=-1) for s, x in breast.items()}
    root = split_tree(tmp_path / "d", rgb)
    opaque = np.concatenate([rgb["val"][0], np.full((28, 28, 1), 255, np.uint8)], axis=-1)
    write(root / "val" / "benign" / "000.png", opaque)  # RGBA, every pixel opaque: the same image
    got = read_image_folder(root)
    assert got.channels == 3
    for split in SPLITS:
        np.testing.assert_array_equal(got.arrays[f"{split}_images"], rgb[split])


def test_jpeg_and_gray_palette_images_are_read(tmp_path: Path, breast: dict[str, np.ndarray]) -> None:
    root = split_tree(tmp_path / "d", breast, ext="jpg")
    # a palette image whose pixels use gray entries only (index i is gray 2i); its padding entries are red
    gray_palette = Image.fromarray(breast["test"][0] // 2).convert("P")
    gray_palette.putpalette([v for i in range(128) for v in (2 * i,) * 3] + [255, 0, 0] * 128)
    gray_palette.save(root / "test" / "benign" / "000.jpg", "PNG")  # a PNG behind a .jpg suffix: read as PNG
    (root / "train" / "benign" / "001.jpg").rename(root / "train" / "benign" / "001.JPEG")
    got = read_image_folder(root)
    assert got.channels == 1
    diff = np.abs(got.arrays["train_images"].astype(int) - breast["train"].astype(int))
    assert diff.mean() < 6, diff.mean()  # JPEG is lossy
    np.testing.assert_array_equal(got.arrays["test_images"][0], breast["test"][0] // 2 * 2)


def test_class_layout_split_is_stratified_deterministic_and_complete(tmp_path: Path, breast: dict) -> None:
    root, x = class_tree(tmp_path / "d", breast)
    got = read_image_folder(root, val_fraction=0.1, test_fraction=0.2, seed=3)
    assert got.layout == "classes" and got.class_names == CLASSES
    counts = {s: np.bincount(got.arrays[f"{s}_labels"].ravel()).tolist() for s in SPLITS}
    assert counts == {"train": [14, 14], "val": [2, 2], "test": [4, 4]}  # 20 per class: 10% and 20% of each
    # every image lands in exactly one split, under its own class
    by_bytes = {img.tobytes(): i // 20 for i, img in enumerate(x)}
    seen = [
        (img.tobytes(), int(label))
        for s in SPLITS
        for img, label in zip(got.arrays[f"{s}_images"], got.arrays[f"{s}_labels"].ravel(), strict=True)
    ]
    assert sorted(b for b, _ in seen) == sorted(by_bytes) and all(by_bytes[b] == c for b, c in seen)

    again = read_image_folder(root, val_fraction=0.1, test_fraction=0.2, seed=3)
    other = read_image_folder(root, val_fraction=0.1, test_fraction=0.2, seed=4)
    for key in got.arrays:
        np.testing.assert_array_equal(got.arrays[key], again.arrays[key])
    assert not np.array_equal(got.arrays["test_images"], other.arrays["test_images"])
    assert got.md5 == again.md5 == other.md5  # the identity is the content's, not the draw's


def test_train_test_layout_takes_val_from_train(tmp_path: Path, breast: dict[str, np.ndarray]) -> None:
    got = read_image_folder(split_tree(tmp_path / "d", breast, splits=("train", "test")), val_fraction=0.25)
    assert got.layout == "train-test"
    assert {s: len(got.arrays[f"{s}_labels"]) for s in SPLITS} == {"train": 18, "val": 6, "test": 8}
    np.testing.assert_array_equal(got.arrays["test_images"], breast["test"])
    together = np.concatenate([got.arrays["train_images"], got.arrays["val_images"]])
    assert sorted(i.tobytes() for i in together) == sorted(i.tobytes() for i in breast["train"])


def test_md5_is_stable_and_tracks_content(tmp_path: Path, breast: dict[str, np.ndarray]) -> None:
    root = split_tree(tmp_path / "a", breast)
    md5 = read_image_folder(root).md5
    # an md5sum manifest sorted by path, so anyone can rebuild it
    files = sorted(p for p in root.rglob("*.png"))
    manifest = "".join(f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.relative_to(root).as_posix()}\n" for p in files)
    assert md5 == hashlib.md5(manifest.encode()).hexdigest() == folder_md5(root)
    shutil.copytree(root, tmp_path / "b")  # another place, other inodes and times: the same identity
    (tmp_path / "b" / ".DS_Store").write_bytes(b"\0\1junk")  # skipped files do not count
    (tmp_path / "b" / "train" / "benign" / "._000.png").write_bytes(b"AppleDouble")
    assert read_image_folder(tmp_path / "b").md5 == md5
    (tmp_path / "b" / "train" / "benign" / "000.png").rename(tmp_path / "b" / "train" / "malignant" / "000.png")
    assert folder_md5(tmp_path / "b") != md5  # a label changed: so did the identity
    write(root / "test" / "benign" / "000.png", breast["test"][1])
    assert folder_md5(root) != md5


def test_names_are_unicode_normalised(tmp_path: Path, breast: dict[str, np.ndarray]) -> None:
    """macOS writes decomposed (NFD) names, Linux keeps composed ones: the same tree reads the same on both."""
    reads = []
    for form, name in (("nfc", "b\u00e9nin"), ("nfd", "be\u0301nin")):
        for i in range(3):
            write(tmp_path / form / name / f"{i}.png", breast["train"][i])
            write(tmp_path / form / "malin" / f"{i}.png", breast["train"][12 + i])
        reads.append(read_image_folder(tmp_path / form))
    assert reads[0].class_names == reads[1].class_names == ("b\u00e9nin", "malin")
    assert reads[0].md5 == reads[1].md5


def test_is_image_folder(tmp_path: Path, breast: dict[str, np.ndarray]) -> None:
    assert is_image_folder(split_tree(tmp_path / "d", breast))
    (tmp_path / "empty").mkdir()
    (tmp_path / "f.npz").write_bytes(b"x")
    assert not is_image_folder(tmp_path / "empty")
    assert not is_image_folder(tmp_path / "f.npz")
    assert not is_image_folder(tmp_path / "missing")


def test_resize_only_when_asked(tmp_path: Path, breast: dict[str, np.ndarray]) -> None:
    root = split_tree(tmp_path / "d", breast)
    refused(root, "images are 28 x 28 pixels; expected 32 x 32 (size)", size=32)
    assert read_image_folder(root, size=32, resize=True).arrays["val_images"].shape == (8, 32, 32)
    big = write(
        root / "train" / "malignant" / "999.png", np.asarray(Image.fromarray(breast["train"][0]).resize((32, 32)))
    )
    refused(root, "images differ in size", "28 x 28: 40 file(s), e.g.", "32 x 32: 1 file(s), e.g. " + str(big))
    got = read_image_folder(root, size=28, resize=True)
    assert got.arrays["train_images"].shape == (25, 28, 28)
    refused(root, "resize needs the target size", resize=True)


# ---------------------------------------------------------------- refusals


def test_pixel_format_refusals(tmp_path: Path, breast: dict[str, np.ndarray]) -> None:
    root = split_tree(tmp_path / "d", breast)
    path = root / "val" / "benign" / "000.png"
    write(path, np.stack([breast["val"][0]] * 3, axis=-1))
    refused(root, "images differ in colour", "gray: 39 file(s)", "rgb: 1 file(s), e.g. " + str(path))
    write(path, np.stack([breast["val"][0], np.full((28, 28), 128, np.uint8)], axis=-1))  # LA, half transparent
    refused(root, str(path), "has transparent pixels; flatten it onto its background first")
    write(path, breast["val"][0].astype(np.uint16) * 257)
    refused(root, str(path), "I;16 image of more than 8 bits per sample; only 8-bit images are read")
    write(path, np.zeros((28, 30), np.uint8))
    refused(root, str(path), "30 x 28 pixels, not square")


def tiny_png(width: int, height: int) -> bytes:
    """A PNG that declares a size and holds no pixel data to speak of: what a decompression bomb's header says."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_bounds_refuse_before_decoding(tmp_path: Path, breast: dict[str, np.ndarray]) -> None:
    root = split_tree(tmp_path / "d", breast)
    refused(root, "more than 39 image files (max_files)", max_files=39)
    refused(root, "more than 5 image files (max_files)", max_files=5)  # refused while listing a 12-file folder
    assert read_image_folder(root, max_files=40).arrays["test_images"].shape == (8, 28, 28)
    refused(root, "40 images of 28 x 28 x 1 make 0.0 MB, over the 0.01 MB limit (max_total_mb)", max_total_mb=0.01)
    bomb = root / "test" / "benign" / "bomb.png"
    bomb.write_bytes(tiny_png(5000, 5000))  # 25 M pixels declared in 60 bytes
    refused(root, str(bomb), "5000 x 5000 pixels, over the 1024-pixel side limit (max_side)")
    bomb.write_bytes(tiny_png(100_000, 100_000))  # over Pillow's MAX_IMAGE_PIXELS, which applies whatever max_side
    refused(root, str(bomb), "refused as a decompression bomb", max_side=10**6)
    bomb.write_bytes(tiny_png(28, 28))  # a header and no pixels
    refused(root, str(bomb), "corrupt or truncated image")


def test_unreadable_and_stray_files(tmp_path: Path, breast: dict[str, np.ndarray]) -> None:
    root = split_tree(tmp_path / "d", breast)
    good = (root / "train" / "benign" / "000.png").read_bytes()
    bad = root / "train" / "benign" / "000.png"
    bad.write_bytes(good[: len(good) // 2])
    refused(root, str(bad), "corrupt or truncated image")
    bad.write_bytes(b"not an image at all")
    refused(root, str(bad), "not a readable PNG or JPEG image")
    buf = io.BytesIO()
    Image.fromarray(breast["train"][0]).save(buf, "BMP")
    bad.write_bytes(buf.getvalue())  # a real image, but not of the two formats decoded
    refused(root, str(bad), "not a readable PNG or JPEG image")
    bad.write_bytes(good)
    (root / "train" / "benign" / "notes.txt").write_text("x")
    refused(root, "notes.txt: not an image file (only .png, .jpg and .jpeg are read)")
    (root / "train" / "benign" / "notes.txt").unlink()
    (root / "README.md").write_text("ignored: not an image, outside the class folders")
    (root / "train" / "labels.csv").write_text("ignored too")
    assert read_image_folder(root).layout == "splits"
    write(root / "stray.png", breast["train"][0])
    refused(root, "image 'stray.png' lies directly in the root, outside any class folder")


def test_structure_refusals(tmp_path: Path, breast: dict[str, np.ndarray]) -> None:
    root = split_tree(tmp_path / "d", breast, splits=("train", "val"))
    refused(root, "split folder(s) test missing; the split layout needs train/ and test/")
    split_tree(root, breast, splits=("test",))
    (root / "benign").mkdir()
    refused(root, "mixes split folders (train, val, test) with other folders (benign)")
    (root / "benign").rmdir()
    (root / "test" / "malignant" / "sub").mkdir()
    refused(root, "a folder inside class folder 'malignant'")
    (root / "test" / "malignant" / "sub").rmdir()
    shutil.rmtree(root / "test" / "malignant")
    refused(root, str(root / "test"), "class folders differ from train's: missing ['malignant'], extra []")
    (root / "test" / "malignant").mkdir()
    refused(root, str(root / "test" / "malignant"), "class folder holds no image")
    (root / "test" / "malignant" / ".DS_Store").write_bytes(b"\0")  # hidden: still no image
    refused(root, "class folder holds no image")

    one = tmp_path / "one"
    write(one / "benign" / "0.png", breast["train"][0])
    refused(one, "only the class 'benign'; a classifier needs at least 2 classes")
    refused(tmp_path / "nope", "not a folder")


def test_split_fractions_and_small_classes(tmp_path: Path, breast: dict[str, np.ndarray]) -> None:
    root, _ = class_tree(tmp_path / "d", breast)
    refused(root, "val_fraction + test_fraction = 1", val_fraction=0.5, test_fraction=0.5)
    refused(root, "test_fraction=0: expected a fraction strictly between 0 and 1", test_fraction=0)
    small = tmp_path / "small"
    for i in range(3):
        write(small / "a" / f"{i}.png", breast["train"][i])
        write(small / "b" / f"{i}.png", breast["train"][12 + i])
    assert read_image_folder(small).arrays["train_labels"].ravel().tolist() == [0, 1]  # 1 train, 1 val, 1 test each
    (small / "b" / "2.png").unlink()
    refused(small, "class 'b' has 2 image(s): too few for 1 test, 1 val and at least 1 train image")


# ---------------------------------------------------------------- as a dataset (kr.data)


def test_a_folder_is_a_dataset_validated_saved_and_reread_with_its_split(tmp_path: Path, breast: dict) -> None:
    from kr.data import DataError, FolderOptions, load_dataset, load_saved_dataset, save_dataset

    root, _ = class_tree(tmp_path / "scans", breast)
    options = FolderOptions(val_fraction=0.2, test_fraction=0.25, split_seed=3)
    data = load_dataset(str(root), folder=options)
    assert (data.info.source, data.info.name, data.info.class_names) == ("folder", "scans", CLASSES)
    assert data.info.md5 == folder_md5(root) and data.x_train.shape[1:] == (1, 28, 28)
    assert data.info.n_train + data.info.n_val + data.info.n_test == 40 and data.info.n_val == 2 * 4
    # a later step re-reads the same split from the reference (never the images), and refuses a changed folder
    again = load_saved_dataset(save_dataset(data, tmp_path / "ref"))
    np.testing.assert_array_equal(again.x_val, data.x_val)
    np.testing.assert_array_equal(again.y_test, data.y_test)
    write(root / CLASSES[0] / "999.png", breast["train"][0][::-1])
    with pytest.raises(DataError, match="changed after validation"):
        load_saved_dataset(tmp_path / "ref")
    # the reader's refusals are DataErrors naming the folder; a size other than the images' is refused
    with pytest.raises(DataError, match="64"):
        load_dataset(str(root), size=64)


def test_a_folder_name_without_a_slash_is_a_path_unless_it_is_a_flag(tmp_path: Path, breast: dict, monkeypatch) -> None:
    from kr.data import load_dataset

    class_tree(tmp_path / "scans", breast)
    monkeypatch.chdir(tmp_path)
    assert load_dataset("scans").info.source == "folder"
