"""The expectation suites over the real splits and over a shard, each check with its readable failure message.

Every expectation carries a function that turns its GE result into sentences naming the rows at fault, so a
failure reads as a list of problems rather than GE's JSON. Great Expectations is imported inside the functions: it
costs seconds to import, and commands that never validate (`kr config`, `kr compile`) should not pay for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from kr.config import ValidationConfig
from kr.data import SIZES, SPLITS, Dataset
from kr.validation.tables import split_table

SHOW = 10  # indices listed per problem: enough to find the rows, short enough to read
# The fewest grey levels a split's pixels may span (its max - min over every image). 8-bit images use most of 0-255:
# every official MedMNIST split spans 0-255, 1-255 or 0-254. A split within 0-15 uses under 4 of the 8 bits: values
# never scaled to 0-255 before the cast to uint8 (a [0, 1] float cast as is gives 0-1, 12-bit values shifted by 8 give
# 0-15). A constant rather than a ValidationConfig field: no real 8-bit dataset needs another value.
MIN_SPLIT_RANGE = 16
GROUP_MEMBERS = 4  # images shown per group of byte-identical images


@dataclass
class Check:
    """One expectation and how to word its result.

    `expectation`: a great_expectations Expectation. `describe`: takes the GE "result" dict of a failed (or
    tolerated) run of it, with `unexpected_index_list` rows keyed by the table's `keys`, and returns sentences.
    """

    expectation: Any  # a great_expectations Expectation
    describe: Callable[[dict], list[str]]  # GE "result" dict of a failed (or tolerated) expectation -> sentences


@dataclass
class Table:
    """A table and its suite: `name` (also the suite's suffix), `frame`, `keys` (the columns that locate a row in
    the messages and in the Data Docs) and the `checks` run on it."""

    name: str
    frame: pd.DataFrame
    keys: list[str]  # columns that locate a row in the messages and in the Data Docs
    checks: list[Check]


def _listing(items: list, show: int = SHOW, sep: str = ", ") -> str:
    head = sep.join(str(i) for i in items[:show])
    return head + (f" and {len(items) - show} more" if len(items) > show else "")


def _by_split(rows: list[dict]) -> dict[str, list[int]]:
    """Row locations grouped by split, in SPLITS order (rows without a split go under '')."""
    grouped: dict[str, list[int]] = {}
    for row in rows:
        grouped.setdefault(str(row.get("split", "")), []).append(int(row["index"]))
    return {s: grouped[s] for s in sorted(grouped, key=lambda s: SPLITS.index(s) if s in SPLITS else len(SPLITS))}


def _where(rows: list[dict]) -> str:
    """'train 4, 17; val 30' for split rows, 'index 4' or 'indices 4, 9' for a shard's rows."""
    parts = []
    for split, idx in _by_split(rows).items():
        parts.append(
            f"{split} {_listing(idx)}" if split else f"{'index' if len(idx) == 1 else 'indices'} {_listing(idx)}"
        )
    return "; ".join(parts)


def _images(n: int, one: str = "", many: str = "") -> str:
    """'1 image is' / '3 images are' (the verb forms are optional)."""
    verb = one if n == 1 else many
    return f"{n} image" + ("" if n == 1 else "s") + (f" {verb}" if verb else "")


def _values(res: dict) -> list[str]:
    """The distinct unexpected values, sorted, as text."""
    values = set(res.get("unexpected_list", []))
    try:
        return [str(v) for v in sorted(values)]
    except TypeError:  # mixed types cannot be ordered
        return sorted(str(v) for v in values)


def _in_set_check(gxe: Any, column: str, allowed: list, description: str) -> Check:
    def describe(res: dict) -> list[str]:
        found = ", ".join(_values(res))
        rows = res.get("unexpected_index_list", [])
        return [
            f"{column}: values outside {{{', '.join(map(str, allowed))}}}: [{found}] "
            f"in {_images(len(rows))} ({_where(rows)})"
        ]

    return Check(gxe.ExpectColumnValuesToBeInSet(column=column, value_set=allowed, description=description), describe)


def _pixel_checks(gxe: Any, what: str) -> list[Check]:
    """dtype uint8, no NaN and pixel values in [0, 255]: what the classifiers and the generator assume."""

    def dtype_msg(res: dict) -> list[str]:
        rows = res.get("unexpected_index_list", [])
        return [f"dtype: {what} are {', '.join(_values(res))}, expected uint8 ({_images(len(rows))}: {_where(rows)})"]

    def nan_msg(column: str) -> Callable[[dict], list[str]]:
        def describe(res: dict) -> list[str]:
            rows = res.get("unexpected_index_list", [])
            return [
                f"pixels: {_images(len(rows), 'contains', 'contain')} NaN, "
                f"so their {column} is undefined ({_where(rows)})"
            ]

        return describe

    def range_msg(column: str) -> Callable[[dict], list[str]]:
        def describe(res: dict) -> list[str]:
            rows = res.get("unexpected_index_list", [])
            found = _listing(sorted({float(r[column]) for r in rows}))
            return [
                f"pixels: {_images(len(rows), 'has', 'have')} a {column} outside [0, 255]: {found} ({_where(rows)})"
            ]

        return describe

    checks = [
        Check(
            gxe.ExpectColumnValuesToBeInSet(
                column="dtype", value_set=["uint8"], description=f"{what} are stored as uint8"
            ),
            dtype_msg,
        )
    ]
    for column in ("min", "max"):
        checks.append(
            Check(
                gxe.ExpectColumnValuesToNotBeNull(column=column, description=f"no pixel is NaN (per-image {column})"),
                nan_msg(column),
            )
        )
        checks.append(
            Check(
                gxe.ExpectColumnValuesToBeBetween(
                    column=column, min_value=0, max_value=255, description=f"per-image pixel {column} lies in [0, 255]"
                ),
                range_msg(column),
            )
        )
    return checks


def _shape_checks(gxe: Any, channels: list[int], sizes: list[int]) -> list[Check]:
    checks = []
    for column, allowed in (("height", sizes), ("width", sizes), ("channels", channels)):
        checks.append(_in_set_check(gxe, column, allowed, f"every image has {column} in {allowed}"))
    return checks


def real_suites(data: Dataset, images: pd.DataFrame, counts: pd.DataFrame, cfg: ValidationConfig) -> list[Table]:
    """The suites over the real splits: [Table "images" keyed by (split, index), Table "class_counts" keyed by
    (split, label, class_name), Table "splits" keyed by split (`split_table(images)`)].

    Takes the dataset, its `image_table` and its `class_count_table`. The image suite expects: one row per image in
    `data.info` (n_train + n_val + n_test); height and width equal to `info.image_size` and channels to
    `info.channels`; dtype uint8, no NaN, per-image min and max in [0, 255]; no blank image (max > min); labels in
    [0, K); at most floor(`cfg.max_shared_fraction` * (n_val + n_test)) val/test images byte-identical to a
    training image (those within the allowance are reported as warnings); no `label_conflict` (the same bytes under
    two labels within a split or across val and test; no tolerance); images repeating an earlier one of their split
    under the same label (`duplicate`) are reported as warnings, never failed. The count suite expects every class to
    hold at least `cfg.min_images_per_class` images in train and `cfg.min_eval_images_per_class` in val and in test.
    The split suite expects every split's pixels to span at least `MIN_SPLIT_RANGE` grey levels (max - min).
    Builds the expectations only (nothing runs). Raises ImportError when great_expectations is not installed.
    """
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    info = data.info
    expected_rows = info.n_train + info.n_val + info.n_test
    # MedMNIST itself has a few: BreastMNIST 1 test image (with another label), PneumoniaMNIST 8 val images
    allowed = int(cfg.max_shared_fraction * (info.n_val + info.n_test))
    classes = list(range(info.n_classes))
    by_row = images.set_index(["split", "index"])
    train = images[images["split"] == "train"]
    train_index_of = dict(zip(train["hash"][::-1], train["index"][::-1], strict=True))  # first match wins

    def rows_msg(res: dict) -> list[str]:
        return [
            f"images: the table has {res.get('observed_value')} rows but the dataset info says {expected_rows} "
            f"(train {info.n_train} + val {info.n_val} + test {info.n_test})"
        ]

    def blank_msg(res: dict) -> list[str]:
        rows = res.get("unexpected_index_list", [])
        return [f"pixels: {_images(len(rows), 'is', 'are')} blank (every pixel has the same value) ({_where(rows)})"]

    def shared_msg(res: dict) -> list[str]:
        messages = []
        for split, indices in _by_split(res.get("unexpected_index_list", [])).items():
            pairs = []
            for i in indices:
                j = train_index_of[by_row.at[(split, i), "hash"]]
                label, train_label = by_row.at[(split, i), "label"], by_row.at[("train", j), "label"]
                # the same image under two labels is worse than a leak: the ground truth itself disagrees
                pairs.append(
                    f"{i} = train {j}"
                    + (f" (labelled {label} here, {train_label} in train)" if label != train_label else "")
                )
            messages.append(
                f"{split}: {_images(len(indices), 'also appears', 'also appear')} in train, byte for byte: "
                f"{'index' if len(indices) == 1 else 'indices'} {_listing(pairs)}"
            )
        total = res.get("unexpected_count", 0)
        if messages and total > allowed:
            messages[-1] += (
                f"; at most {allowed} allowed in total ({cfg.max_shared_fraction:g} of val+test, "
                "validation.max_shared_fraction)"
            )
        return messages

    def conflict_msg(res: dict) -> list[str]:
        rows = res.get("unexpected_index_list", [])
        # the flagged rows, grouped by their bytes: each group is one image under two or more labels
        groups: dict[str, list[str]] = {}
        for row in rows:
            split, i = str(row["split"]), int(row["index"])
            groups.setdefault(by_row.at[(split, i), "hash"], []).append(
                f"{split} {i} (label {by_row.at[(split, i), 'label']})"
            )
        shown = [_listing(g, GROUP_MEMBERS, " = ") for g in groups.values()]
        return [
            f"labels: {_images(len(groups), 'is', 'are')} stored twice or more under different labels: "
            f"{_listing(shown, 3, '; ')} (one image cannot be both: fix the labels or drop the copies)"
        ]

    def duplicate_msg(res: dict) -> list[str]:
        key = ["split", "hash", "label"]  # with the label: a group may also hold copies under another label
        first_of = images.drop_duplicates(key).set_index(key)["index"]
        messages = []
        for split, indices in _by_split(res.get("unexpected_index_list", [])).items():
            pairs = [f"{i} = {first_of.at[(split, *by_row.loc[(split, i), ['hash', 'label']])]}" for i in indices]
            messages.append(
                f"{split}: {_images(len(indices), 'repeats', 'repeat')} an earlier image of the split under the "
                f"same label: {_listing(pairs)} (reported, not failed)"
            )
        return messages

    def range_msg(res: dict) -> list[str]:
        messages = []
        by_split = splits.set_index("split")
        for row in res.get("unexpected_index_list", []):
            r = by_split.loc[row["split"]]
            seen = f"{row['split']}: pixel values span only {r['pixel_min']:g} to {r['pixel_max']:g}"
            seen += f" over {_images(int(r['images']))}"
            if r["pixel_max"] <= 1:
                messages.append(f"{seen}: images scaled to [0, 1] then cast to uint8? multiply by 255 before casting")
            else:
                messages.append(
                    f"{seen} (fewer than {MIN_SPLIT_RANGE} grey levels): not scaled to 0-255 before the cast to uint8? "
                    "rescale to the full range"
                )
        return messages

    minimum = {"train": cfg.min_images_per_class, "val": cfg.min_eval_images_per_class}
    minimum["test"] = minimum["val"]

    def few_msg(res: dict) -> list[str]:
        return [
            f"{r['split']}: class {r['label']} ({r['class_name']!r}) has {_images(int(r['count']))}; "
            f"at least {minimum[r['split']]} needed"
            for r in res.get("unexpected_index_list", [])
        ]

    # mostly is GE's tolerance: the share of rows that must pass, so k allowed rows out of n is (n - k) / n
    n_rows = len(images)
    mostly = (n_rows - allowed) / n_rows if allowed and n_rows else 1.0
    image_checks = [
        Check(
            gxe.ExpectTableRowCountToEqual(value=expected_rows, description="one row per image in the dataset info"),
            rows_msg,
        ),
        *_shape_checks(gxe, [info.channels], [info.image_size]),
        *_pixel_checks(gxe, "images"),
        Check(
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="max", column_B="min", description="no blank image: its brightest pixel beats its darkest"
            ),
            blank_msg,
        ),
        _in_set_check(gxe, "label", classes, f"every label is one of the {info.n_classes} classes"),
        Check(
            gxe.ExpectColumnValuesToBeInSet(
                column="shared_with_train",
                value_set=[False],
                mostly=mostly,
                description=f"no val/test image is byte-identical to a training image (at most {allowed} allowed)",
            ),
            shared_msg,
        ),
        Check(
            gxe.ExpectColumnValuesToBeInSet(
                column="label_conflict",
                value_set=[False],
                description="no image appears twice under different labels (within a split, or across val and test)",
            ),
            conflict_msg,
        ),
        Check(
            gxe.ExpectColumnValuesToBeInSet(
                column="duplicate",
                value_set=[False],
                mostly=0.0,  # never fails: a repeated image under its own label is reported for reading
                description="images repeating an earlier one of their split under the same label (reported only)",
            ),
            duplicate_msg,
        ),
    ]
    splits = split_table(images)
    split_checks = [
        Check(
            gxe.ExpectColumnValuesToBeBetween(
                column="pixel_range",
                min_value=MIN_SPLIT_RANGE,
                description=f"each split's pixels span at least {MIN_SPLIT_RANGE} grey levels (not scaled to [0, 1])",
            ),
            range_msg,
        )
    ]
    # one expectation per split, through GE's row conditions, so the Data Docs show each split's threshold
    count_checks = [
        Check(
            gxe.ExpectColumnValuesToBeBetween(
                column="count",
                min_value=minimum[split],
                row_condition=Column("split") == split,
                description=f"every class has at least {minimum[split]} images in {split}",
            ),
            few_msg,
        )
        for split in SPLITS
    ]
    return [
        Table("images", images, ["split", "index"], image_checks),
        Table("class_counts", counts, ["split", "label", "class_name"], count_checks),
        Table("splits", splits, ["split"], split_checks),
    ]


def _balance_bounds(n: int, n_classes: int, tolerance: float) -> tuple[int, int]:
    """Allowed per-class count: exact balance gives floor or ceil of N/K; tolerance widens that by a share of N/K."""
    share = n / n_classes
    slack = tolerance * share
    return max(0, math.floor(share - slack)), math.ceil(share + slack)


def shard_suites(
    table: pd.DataFrame,
    counts: pd.DataFrame,
    n_classes: int,
    channels: int | None,
    cfg: ValidationConfig,
    image_size: int | None = None,
) -> list[Table]:
    """The suites over one shard: [Table "images" keyed by index, Table "class_counts" keyed by label].

    Takes the two tables of `shard_tables`, the class count K = `n_classes`, `channels`, the real data's channel
    count (None or 0 accepts 1 or 3), and `image_size`, the real data's side (None accepts any of `kr.data.SIZES`).
    The image suite expects: height and width that side and the channels above; dtype uint8, no NaN, per-image min
    and max in [0, 255]; gen_label in [0, K); K teacher logits per image, all finite; at most a
    `cfg.max_broken_fraction` share of broken images (those within it are reported as warnings). The count suite
    expects each class count within floor(N/K - t * N/K) (at least 0) and ceil(N/K + t * N/K) for N images and
    t = `cfg.max_class_imbalance`. Builds the expectations only (nothing runs). Raises ZeroDivisionError when
    `n_classes` is 0, ImportError when great_expectations is not installed.
    """
    import great_expectations.expectations as gxe

    n = len(table)
    lo, hi = _balance_bounds(n, n_classes, cfg.max_class_imbalance)

    def finite_msg(res: dict) -> list[str]:
        rows = res.get("unexpected_index_list", [])
        return [f"teacher_logits: {len(rows)} row(s) hold NaN or infinite values ({_where(rows)})"]

    def width_msg(res: dict) -> list[str]:
        return [f"teacher_logits: {', '.join(_values(res))} columns; expected {n_classes}, one per class"]

    def broken_msg(res: dict) -> list[str]:
        rows = res.get("unexpected_index_list", [])
        return [
            f"images: {len(rows)} of {n} samples ({len(rows) / max(n, 1):.0%}) are broken (outside the envelope of "
            f"real images' statistics: saturated, flat or noise); allowed up to "
            f"validation.max_broken_fraction={cfg.max_broken_fraction:g} ({_where(rows)})"
        ]

    def balance_msg(res: dict) -> list[str]:
        return [
            f"gen_labels: class {r['label']} has {_images(int(r['count']))}; expected {lo} to {hi} "
            f"for {n} images over {n_classes} classes (validation.max_class_imbalance={cfg.max_class_imbalance})"
            for r in res.get("unexpected_index_list", [])
        ]

    image_checks = [
        *_shape_checks(gxe, [channels] if channels else [1, 3], [image_size] if image_size else list(SIZES)),
        *_pixel_checks(gxe, "images"),
        _in_set_check(gxe, "gen_label", list(range(n_classes)), f"every label is one of {n_classes} classes"),
        Check(
            gxe.ExpectColumnValuesToBeInSet(
                column="logit_count", value_set=[n_classes], description="one teacher logit per class"
            ),
            width_msg,
        ),
        Check(
            gxe.ExpectColumnValuesToBeInSet(
                column="logits_finite", value_set=[True], description="every teacher logit is finite"
            ),
            finite_msg,
        ),
        Check(
            gxe.ExpectColumnValuesToBeInSet(
                column="broken",
                value_set=[False],
                mostly=1.0 - cfg.max_broken_fraction,
                description="samples lie inside the envelope of real images' statistics",
            ),
            broken_msg,
        ),
    ]
    count_checks = [
        Check(
            gxe.ExpectColumnValuesToBeBetween(
                column="count", min_value=lo, max_value=hi, description=f"each class has {lo} to {hi} images"
            ),
            balance_msg,
        )
    ]
    return [
        Table("images", table, ["index"], image_checks),
        Table("class_counts", counts, ["label"], count_checks),
    ]
