"""The tables Great Expectations validates, built from images: GE checks columns of tables, not arrays.

The real splits become one row per image (pixel statistics and a content hash), plus one row per split and class;
a shard becomes one row per synthetic image plus one row per class. Every check is then a column expectation
(`kr.validation.suites`), and the Data Docs show them all.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from kr.data import SPLITS, Dataset

if TYPE_CHECKING:
    from kr.method.fidelity import Envelope


def _image_hashes(x: np.ndarray) -> list[str]:
    # blake2b is the fastest strong hash in hashlib; 128 bits make an accidental collision impossible in practice
    flat = np.ascontiguousarray(x).reshape(len(x), -1)
    return [hashlib.blake2b(row.tobytes(), digest_size=16).hexdigest() for row in flat]


def _pixel_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image min, max and mean as float64, so NaN survives (GE then sees it as a missing value)."""
    flat = x.reshape(len(x), -1)
    if len(x) == 0:
        empty = np.zeros(0)
        return {"min": empty, "max": empty, "mean": empty}
    return {
        "min": flat.min(axis=1).astype(np.float64),
        "max": flat.max(axis=1).astype(np.float64),
        "mean": flat.mean(axis=1, dtype=np.float64),
    }


def layout_problems(what: str, x: np.ndarray, y: np.ndarray) -> list[str]:
    """What makes a per-image table impossible (the loaders exclude it; a hand-made Dataset may not).

    Takes images `x` and labels `y` of any shape and dtype; `what` names them in the sentences. Returns one sentence,
    prefixed with `what`, per problem: `x` not 4-D (N, C, H, W) or with a zero C, H or W; `y` not 1-D with len(x)
    entries. Returns [] when a table can be built (N = 0 is allowed). Raises nothing.
    """
    problems = []
    if x.ndim != 4 or 0 in x.shape[1:]:
        problems.append(f"{what}: images have shape {x.shape}; expected (N, C, H, W)")
    if y.ndim != 1 or len(y) != len(x):
        problems.append(f"{what}: labels have shape {y.shape}; expected ({len(x)},), one per image")
    return problems


def image_table(data: Dataset) -> pd.DataFrame:
    """One row per real image: split, index, label, height, width, channels, dtype, min, max, mean, hash and
    shared_with_train (a val/test image byte-identical to some training image).

    Rows run over train, val, test in that order, with a fresh RangeIndex. Columns: `split` (str); `index` (int, the
    image's position within its split); `label` (the split's labels as stored, unchecked); `height`, `width`,
    `channels` (int, from the split's (N, C, H, W) shape); `dtype` (str, e.g. "uint8"); `min`, `max`, `mean`
    (float64 per-image pixel statistics on the stored scale, 0-255 for uint8; NaN when the image holds a NaN);
    `hash` (str, 32 hex digits of a 128-bit BLAKE2b digest of the image's raw bytes); `shared_with_train` (bool,
    always False in train); `duplicate` (bool: byte-identical to an earlier image of its split under the same
    label); `label_conflict` (bool: byte-identical to another image of its split, or of the other held-out split
    (val/test), under a different label; a val/test image's conflict with train is `shared_with_train`'s).

    Raises ValueError (the `layout_problems` sentences joined by "; ") at the first split whose images are not
    (N, C, H, W) or whose labels are not one per image.
    """
    frames = []
    train_hashes: set[str] = set()
    for split in SPLITS:
        x, y = data.split(split)
        if problems := layout_problems(split, x, y):
            raise ValueError("; ".join(problems))
        hashes = _image_hashes(x)
        if split == "train":
            train_hashes = set(hashes)
        shared = np.zeros(len(x), bool) if split == "train" else np.array([h in train_hashes for h in hashes], bool)
        n, c, h, w = x.shape
        frames.append(
            pd.DataFrame(
                {
                    "split": split,
                    "index": np.arange(n),
                    "label": np.asarray(y),
                    "height": h,
                    "width": w,
                    "channels": c,
                    "dtype": str(x.dtype),
                    **_pixel_stats(x),
                    "hash": hashes,
                    "shared_with_train": shared,
                }
            )
        )
    table = pd.concat(frames, ignore_index=True)
    return _mark_duplicates(table)


def _mark_duplicates(table: pd.DataFrame) -> pd.DataFrame:
    """Add `duplicate` and `label_conflict` (see `image_table`) from the hashes: group-bys, O(N), never pairwise."""
    table["duplicate"] = table.duplicated(["split", "hash", "label"])  # the first copy is not a duplicate
    within = table.groupby(["split", "hash"])["label"].transform("nunique") > 1
    # val and test together: both score models, so one image under two labels there is one truth contradicting
    # another. Train against val/test is the shared_with_train check's, with its tolerance (MedMNIST's own
    # BreastMNIST holds such a pair), so it is not counted twice.
    held_out = table["split"].isin(["val", "test"])
    across = pd.Series(False, index=table.index)
    across[held_out] = table[held_out].groupby("hash")["label"].transform("nunique") > 1
    table["label_conflict"] = within | across
    return table


def split_table(images: pd.DataFrame) -> pd.DataFrame:
    """One row per split that holds images, from an `image_table`: its pixel range over all its images.

    Columns: `split` (str, in SPLITS order), `images` (int), `pixel_min`, `pixel_max` (float64: the lowest per-image
    min and the highest per-image max, NaN ignored), `pixel_range` (float64, pixel_max - pixel_min). Raises nothing.
    """
    rows = []
    for split in SPLITS:
        group = images[images["split"] == split]
        if len(group):
            lo, hi = float(group["min"].min()), float(group["max"].max())
            rows.append(
                {"split": split, "images": len(group), "pixel_min": lo, "pixel_max": hi, "pixel_range": hi - lo}
            )
    return pd.DataFrame(rows, columns=["split", "images", "pixel_min", "pixel_max", "pixel_range"])


def class_count_table(data: Dataset) -> pd.DataFrame:
    """One row per (split, class) with its image count; classes with no image appear with count 0.

    3 * K rows for K = `data.info.n_classes`, split by split (train, val, test), classes 0..K-1 within each.
    Columns: `split` (str), `label` (int), `class_name` (str: `data.info.class_names[label]`, or str(label) where
    the names run short), `count` (int >= 0). Labels outside [0, K) are not counted: the image suite reports them.
    Raises nothing of its own.
    """
    k = data.info.n_classes
    rows = []
    for split in SPLITS:
        y = np.asarray(data.split(split)[1])
        counts = np.bincount(y[(y >= 0) & (y < k)].astype(np.int64), minlength=k)  # out-of-range labels: image suite
        names = data.info.class_names
        rows += [
            {"split": split, "label": c, "class_name": names[c] if c < len(names) else str(c), "count": int(counts[c])}
            for c in range(k)
        ]
    return pd.DataFrame(rows, columns=["split", "label", "class_name", "count"])


def shard_tables(
    images: np.ndarray, labels: np.ndarray, logits: np.ndarray, n_classes: int, envelope: Envelope | None = None
) -> list[pd.DataFrame]:
    """The two tables of one shard: [per-image table, per-class count table].

    Takes `images` (N, C, H, W) of any dtype (the suite expects uint8), `labels` (N,) integer, `logits` (N, K')
    and the expected class count K = `n_classes`; the caller has checked these layouts (`layout_problems`).
    `envelope`: the real images' envelope (`kr.method.fidelity.Envelope`), or None to mark no image broken.

    Per-image table, N rows: `index` (int, 0..N-1), `gen_label` (the labels as stored), `height`, `width`,
    `channels` (int), `dtype` (str), `min`, `max`, `mean` (float64 per-image pixel statistics; NaN when the image
    holds a NaN), `logit_count` (int K', the same on every row), `logits_finite` (bool: the image's K' logits are
    all finite), `broken` (bool: outside the envelope). Count table, K rows: `label` (int, 0..K-1), `count` (int64
    images with that label; labels outside [0, K) are not counted). Raises ValueError when `images` is not 4-D.
    """
    n, c, h, w = images.shape
    table = pd.DataFrame(
        {
            "index": np.arange(n),
            "gen_label": labels,
            "height": h,
            "width": w,
            "channels": c,
            "dtype": str(images.dtype),
            **_pixel_stats(images),
            "logit_count": logits.shape[1],
            "logits_finite": np.isfinite(logits).all(axis=1) if n else np.zeros(0, bool),
            # outside the envelope of real images' statistics (kr.method.fidelity); False when no envelope is given
            "broken": envelope.broken(images) if envelope is not None else np.zeros(n, bool),
        }
    )
    valid = labels[(labels >= 0) & (labels < n_classes)].astype(np.int64)
    counts = np.bincount(valid, minlength=n_classes)
    return [table, pd.DataFrame({"label": np.arange(n_classes), "count": counts})]
