"""Data validation with Great Expectations: the real splits and every synthetic shard, before they are used.

`kr.data` already refuses files it cannot read (bad MD5, keys, shapes, dtypes, label range). What it cannot see is
whether the data are fit to train and evaluate on: an image that sits in both train and val/test inflates every
held-out metric and the privacy audit's non-member set, a class with a handful of images cannot be learnt or
scored, and a shard with a NaN logit or a skewed class mix silently poisons distillation. Those checks live here,
as Great Expectations suites over small tables, so that each run leaves Data Docs (static HTML) beside its other
artifacts and a failure names every problem in plain words before any training starts.

The real splits become one row per image (pixel statistics and a content hash), plus one row per split and class;
a shard becomes one row per synthetic image plus one row per class. GE validates tables, so every check is a column
expectation and the Data Docs show them all. Great Expectations is imported inside the functions: it costs seconds
to import, and commands that never validate (`kr config`, `kr compile`) should not pay for it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from kr.config import ValidationConfig
from kr.data import IMAGE_SIZE, SPLITS, Dataset

if TYPE_CHECKING:
    from kr.method.fidelity import Envelope

REPORT_FILE = "validation.json"
DOCS_SITE = "kr"
SHARD_KEYS = ("images", "gen_labels", "teacher_logits")
_SHOW = 10  # indices listed per problem: enough to find the rows, short enough to read


class ValidationFailed(ValueError):
    """At least one expectation failed; the message lists each failure, `report` holds the full report."""

    def __init__(self, message: str, report: dict) -> None:
        super().__init__(message)
        self.report = report


# --------------------------------------------------------------------------------------------------------------
# Tables


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


def _layout_problems(what: str, x: np.ndarray, y: np.ndarray) -> list[str]:
    """What makes a per-image table impossible (the loaders exclude it; a hand-made Dataset may not)."""
    problems = []
    if x.ndim != 4 or 0 in x.shape[1:]:
        problems.append(f"{what}: images have shape {x.shape}; expected (N, C, H, W)")
    if y.ndim != 1 or len(y) != len(x):
        problems.append(f"{what}: labels have shape {y.shape}; expected ({len(x)},), one per image")
    return problems


def image_table(data: Dataset) -> pd.DataFrame:
    """One row per real image: split, index, label, height, width, channels, dtype, min, max, mean, hash and
    shared_with_train (a val/test image byte-identical to some training image)."""
    frames = []
    train_hashes: set[str] = set()
    for split in SPLITS:
        x, y = data.split(split)
        if problems := _layout_problems(split, x, y):
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
    return pd.concat(frames, ignore_index=True)


def class_count_table(data: Dataset) -> pd.DataFrame:
    """One row per (split, class) with its image count; classes with no image appear with count 0."""
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


def _shard_tables(
    images: np.ndarray, labels: np.ndarray, logits: np.ndarray, n_classes: int, envelope: Envelope | None = None
) -> list[pd.DataFrame]:
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


# --------------------------------------------------------------------------------------------------------------
# Readable failures: each expectation carries a function that turns its GE result into sentences


@dataclass
class _Check:
    expectation: Any  # a great_expectations Expectation
    describe: Callable[[dict], list[str]]  # GE "result" dict of a failed (or tolerated) expectation -> sentences


@dataclass
class _Table:
    name: str
    frame: pd.DataFrame
    keys: list[str]  # columns that locate a row in the messages and in the Data Docs
    checks: list[_Check]


def _listing(items: list, show: int = _SHOW) -> str:
    head = ", ".join(str(i) for i in items[:show])
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


def _in_set_check(gxe: Any, column: str, allowed: list, description: str) -> _Check:
    def describe(res: dict) -> list[str]:
        found = ", ".join(_values(res))
        rows = res.get("unexpected_index_list", [])
        return [
            f"{column}: values outside {{{', '.join(map(str, allowed))}}}: [{found}] "
            f"in {_images(len(rows))} ({_where(rows)})"
        ]

    return _Check(gxe.ExpectColumnValuesToBeInSet(column=column, value_set=allowed, description=description), describe)


def _pixel_checks(gxe: Any, what: str) -> list[_Check]:
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
        _Check(
            gxe.ExpectColumnValuesToBeInSet(
                column="dtype", value_set=["uint8"], description=f"{what} are stored as uint8"
            ),
            dtype_msg,
        )
    ]
    for column in ("min", "max"):
        checks.append(
            _Check(
                gxe.ExpectColumnValuesToNotBeNull(column=column, description=f"no pixel is NaN (per-image {column})"),
                nan_msg(column),
            )
        )
        checks.append(
            _Check(
                gxe.ExpectColumnValuesToBeBetween(
                    column=column, min_value=0, max_value=255, description=f"per-image pixel {column} lies in [0, 255]"
                ),
                range_msg(column),
            )
        )
    return checks


def _shape_checks(gxe: Any, channels: list[int], size: int) -> list[_Check]:
    checks = []
    for column, allowed in (("height", [size]), ("width", [size]), ("channels", channels)):
        checks.append(_in_set_check(gxe, column, allowed, f"every image has {column} in {allowed}"))
    return checks


def _real_tables(data: Dataset, images: pd.DataFrame, counts: pd.DataFrame, cfg: ValidationConfig) -> list[_Table]:
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
        _Check(
            gxe.ExpectTableRowCountToEqual(value=expected_rows, description="one row per image in the dataset info"),
            rows_msg,
        ),
        *_shape_checks(gxe, [info.channels], info.image_size),
        *_pixel_checks(gxe, "images"),
        _Check(
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="max", column_B="min", description="no blank image: its brightest pixel beats its darkest"
            ),
            blank_msg,
        ),
        _in_set_check(gxe, "label", classes, f"every label is one of the {info.n_classes} classes"),
        _Check(
            gxe.ExpectColumnValuesToBeInSet(
                column="shared_with_train",
                value_set=[False],
                mostly=mostly,
                description=f"no val/test image is byte-identical to a training image (at most {allowed} allowed)",
            ),
            shared_msg,
        ),
    ]
    # one expectation per split, through GE's row conditions, so the Data Docs show each split's threshold
    count_checks = [
        _Check(
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
        _Table("images", images, ["split", "index"], image_checks),
        _Table("class_counts", counts, ["split", "label", "class_name"], count_checks),
    ]


def _balance_bounds(n: int, n_classes: int, tolerance: float) -> tuple[int, int]:
    """Allowed per-class count: exact balance gives floor or ceil of N/K; tolerance widens that by a share of N/K."""
    share = n / n_classes
    slack = tolerance * share
    return max(0, math.floor(share - slack)), math.ceil(share + slack)


def _shard_checks(
    table: pd.DataFrame, counts: pd.DataFrame, n_classes: int, channels: int | None, cfg: ValidationConfig
) -> list[_Table]:
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
        *_shape_checks(gxe, [channels] if channels else [1, 3], IMAGE_SIZE),
        *_pixel_checks(gxe, "images"),
        _in_set_check(gxe, "gen_label", list(range(n_classes)), f"every label is one of {n_classes} classes"),
        _Check(
            gxe.ExpectColumnValuesToBeInSet(
                column="logit_count", value_set=[n_classes], description="one teacher logit per class"
            ),
            width_msg,
        ),
        _Check(
            gxe.ExpectColumnValuesToBeInSet(
                column="logits_finite", value_set=[True], description="every teacher logit is finite"
            ),
            finite_msg,
        ),
        _Check(
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
        _Check(
            gxe.ExpectColumnValuesToBeBetween(
                column="count", min_value=lo, max_value=hi, description=f"each class has {lo} to {hi} images"
            ),
            balance_msg,
        )
    ]
    return [
        _Table("images", table, ["index"], image_checks),
        _Table("class_counts", counts, ["label"], count_checks),
    ]


# --------------------------------------------------------------------------------------------------------------
# Running the suites and writing Data Docs


def _context(docs_dir: Path) -> Any:
    """An in-memory GE context whose only Data Docs site is docs_dir: nothing lands in the cwd or the home folder."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    site = {
        "class_name": "SiteBuilder",
        "show_how_to_buttons": False,  # the buttons point readers at GE's setup guides, not at this pipeline
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir.absolute())},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    }
    config = DataContextConfig(
        # init_temp_docs_sites=False: the default ephemeral context would also add a site in a temp folder
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        data_docs_sites={DOCS_SITE: site},
        analytics_enabled=False,  # pipelines run offline; this must never phone home
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),  # keep step logs readable
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _json_ready(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def _entry(table: _Table, result: dict) -> dict:
    config = result["expectation_config"]
    kwargs = {k: v for k, v in config["kwargs"].items() if k != "batch_id"}
    res = result.get("result") or {}
    entry = {
        "table": table.name,
        "expectation": config["type"],
        "column": kwargs.get("column") or ", ".join(kwargs[k] for k in ("column_A", "column_B") if k in kwargs) or None,
        "kwargs": kwargs,
        "description": config.get("description"),
        "success": bool(result["success"]),
    }
    if "observed_value" in res:
        entry["observed"] = res["observed_value"]
    if "unexpected_count" in res:
        entry["unexpected_count"] = res["unexpected_count"]
        entry["unexpected"] = res.get("unexpected_index_list", [])[:_SHOW]
    exception = result.get("exception_info") or {}
    if exception.get("raised_exception"):
        entry["error"] = exception.get("exception_message")
    return _json_ready(entry)


def _run(subject: str, tables: list[_Table], docs_dir: Path) -> dict:
    """Validate every table with its own suite, build Data Docs, and return the report (nothing raised here)."""
    import great_expectations as gx

    context = _context(docs_dir)
    source = context.data_sources.add_pandas("kr")
    entries: list[dict] = []
    failures: list[str] = []
    warnings: list[str] = []
    for table in tables:
        batch = source.add_dataframe_asset(table.name).add_batch_definition_whole_dataframe(table.name)
        for i, check in enumerate(table.checks):
            check.expectation.meta = {"check": i}  # results are matched back to their check through meta
        suite = context.suites.add(
            gx.ExpectationSuite(name=f"{subject}.{table.name}", expectations=[c.expectation for c in table.checks])
        )
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=suite.name, data=batch, suite=suite)
        )
        outcome = definition.run(
            batch_parameters={"dataframe": table.frame},
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": table.keys},
        )
        for result in outcome.results:
            result = result.to_json_dict()
            check = table.checks[result["expectation_config"]["meta"]["check"]]
            entry = _entry(table, result)
            entries.append(entry)
            if "error" in entry:
                failures.append(
                    f"{table.name}: {entry['expectation']} on {entry['column']} could not run: {entry['error']}"
                )
            elif not entry["success"]:
                failures += check.describe(result["result"])
            elif entry.get("unexpected_count"):  # passed within a configured tolerance: still worth reading
                warnings += check.describe(result["result"])
    context.build_data_docs(site_names=[DOCS_SITE])
    return {
        "passed": not failures,
        "suite": subject,
        "suites": [f"{subject}.{t.name}" for t in tables],
        "rows": {t.name: len(t.frame) for t in tables},
        "expectations": entries,
        "failures": failures,
        "warnings": warnings,
        "docs": str((docs_dir / "index.html").absolute()),
    }


def _finish(report: dict, docs_dir: Path, what: str, raise_on_failure: bool) -> dict:
    """Write the report beside the Data Docs, then raise if anything failed (the artifacts must exist either way)."""
    docs_dir.mkdir(parents=True, exist_ok=True)
    (docs_dir / REPORT_FILE).write_text(json.dumps(report, indent=2))
    if raise_on_failure and not report["passed"]:
        lines = "\n".join(f"  - {f}" for f in report["failures"])
        docs = f"\nData Docs: {report['docs']}" if report.get("docs") else ""
        raise ValidationFailed(
            f"{what} failed data validation ({len(report['failures'])} problem(s)):\n{lines}{docs}", report
        )
    return report


def _refused(subject: str, problems: list[str]) -> dict:
    """Report for data too malformed to tabulate: no suite ran, so there are no Data Docs."""
    return {
        "passed": False,
        "suite": subject,
        "suites": [],
        "rows": {},
        "expectations": [],
        "failures": problems,
        "warnings": [],
        "docs": None,
    }


def _split_stats(images: pd.DataFrame) -> dict:
    """Facts for the report that no expectation checks: pixel range and duplicates inside a split."""
    stats = {}
    for split, group in images.groupby("split", sort=False):
        stats[str(split)] = {
            "images": len(group),
            "pixel_min": float(group["min"].min()) if len(group) else None,
            "pixel_max": float(group["max"].max()) if len(group) else None,
            "shared_with_train": int(group["shared_with_train"].sum()),
            "duplicates_within_split": int(group["hash"].duplicated().sum()),
        }
    val_hashes = set(images.loc[images["split"] == "val", "hash"])
    stats["val_test_shared"] = int(images.loc[images["split"] == "test", "hash"].isin(val_hashes).sum())
    return stats


def validate_real(data: Dataset, cfg: ValidationConfig, docs_dir: Path, *, raise_on_failure: bool = True) -> dict:
    """Validate the real splits; write Data Docs and validation.json to docs_dir; raise ValidationFailed on failure."""
    docs_dir = Path(docs_dir)
    subject = f"real.{data.info.name}"
    problems = [p for s in SPLITS for p in _layout_problems(s, *data.split(s))]
    if problems:
        return _finish(_refused(subject, problems), docs_dir, f"dataset {data.info.name}", raise_on_failure)
    images = image_table(data)
    report = _run(subject, _real_tables(data, images, class_count_table(data), cfg), docs_dir)
    report["splits"] = _split_stats(images)
    return _finish(report, docs_dir, f"dataset {data.info.name}", raise_on_failure)


def _read_shard(path: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in SHARD_KEYS if k in z.files}
    except (OSError, ValueError) as e:  # missing, truncated, not a zip, or pickled arrays
        return {}, [f"{path}: not a readable shard: {e}"]
    missing = [k for k in SHARD_KEYS if k not in arrays]
    if missing:
        return arrays, [f"{path}: missing keys {', '.join(missing)}; a shard holds {', '.join(SHARD_KEYS)}"]
    x, y, z = (arrays[k] for k in SHARD_KEYS)
    problems = _layout_problems("images/gen_labels", x, y)
    if z.ndim != 2 or len(z) != len(x):
        problems.append(f"teacher_logits: shape {z.shape}; expected ({len(x)}, K), one row per image")
    if not np.issubdtype(y.dtype, np.integer):
        problems.append(f"gen_labels: dtype {y.dtype}; expected integers")
    return arrays, [f"{path}: {p}" for p in problems]


def validate_shard(
    path: Path,
    n_classes: int,
    cfg: ValidationConfig,
    docs_dir: Path,
    *,
    channels: int | None = None,
    envelope: Envelope | None = None,
    raise_on_failure: bool = True,
) -> dict:
    """Validate one regeneration shard (.npz: images, gen_labels, teacher_logits); same outputs as validate_real.

    channels: the real data's channel count when known; otherwise 1 or 3 are accepted.
    envelope: the real images' envelope (`kr.method.fidelity.fit_envelope`); with it, a shard whose share of broken
    samples exceeds `cfg.max_broken_fraction` fails.
    """
    path, docs_dir = Path(path), Path(docs_dir)
    subject = f"shard.{path.stem}"
    arrays, problems = _read_shard(path)
    if problems:
        return _finish(_refused(subject, problems), docs_dir, f"shard {path}", raise_on_failure)
    tables = _shard_tables(arrays["images"], arrays["gen_labels"], arrays["teacher_logits"], n_classes, envelope)
    report = _run(subject, _shard_checks(*tables, n_classes, channels, cfg), docs_dir)
    report["path"] = str(path)
    report["class_counts"] = tables[1]["count"].tolist()
    return _finish(report, docs_dir, f"shard {path}", raise_on_failure)
