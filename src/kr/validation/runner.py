"""Running the suites: an in-memory GE context, Data Docs and a JSON report per subject, and the two entry points.

`validate_real` and `validate_shard` always leave their artifacts (validation.json, and Data Docs when a suite ran)
before they raise, because the pipeline keeps them for reading after a failed step. Great Expectations is imported
inside the functions: it costs seconds to import, and commands that never validate should not pay for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from kr.config import ValidationConfig
from kr.data import SHARD_KEYS, SPLITS, DataError, Dataset, read_shard
from kr.validation.suites import SHOW, Table, real_suites, shard_suites
from kr.validation.tables import class_count_table, image_table, layout_problems, shard_tables

if TYPE_CHECKING:
    from kr.method.fidelity import Envelope

REPORT_FILE = "validation.json"
DOCS_SITE = "kr"


class ValidationFailed(ValueError):
    """At least one expectation failed; the message lists each failure, `report` holds the full report.

    The message is a heading, one "  - " line per failure and, when a suite ran, the path of the Data Docs.
    `report` is the dict `validate_real` or `validate_shard` would have returned.
    """

    def __init__(self, message: str, report: dict) -> None:
        super().__init__(message)
        self.report = report


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


def _entry(table: Table, result: dict) -> dict:
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
        entry["unexpected"] = res.get("unexpected_index_list", [])[:SHOW]
    exception = result.get("exception_info") or {}
    if exception.get("raised_exception"):
        entry["error"] = exception.get("exception_message")
    return _json_ready(entry)


def _run(subject: str, tables: list[Table], docs_dir: Path) -> dict:
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
            "label_conflicts": int(group["label_conflict"].sum()),
        }
    val_hashes = set(images.loc[images["split"] == "val", "hash"])
    stats["val_test_shared"] = int(images.loc[images["split"] == "test", "hash"].isin(val_hashes).sum())
    return stats


def validate_real(data: Dataset, cfg: ValidationConfig, docs_dir: Path, *, raise_on_failure: bool = True) -> dict:
    """Validate the real splits; write Data Docs and validation.json to docs_dir; raise ValidationFailed on failure.

    Runs the `real_suites` over `image_table(data)`, `class_count_table(data)` and `split_table` (pixel range per
    split). `docs_dir` (created if missing) receives validation.json (`REPORT_FILE`) and the Data Docs site
    (index.html). Returns the JSON-ready report:
    `passed` (bool), `suite` ("real.<dataset name>"), `suites` (one name per table), `rows` (table name -> row
    count), `expectations` (one dict per expectation: table, expectation, column, kwargs, description, success,
    and where GE gives them observed, unexpected_count, unexpected (the first 10 unexpected rows as dicts), error),
    `failures` and `warnings` (sentences; an expectation GE could not run is a failure, one that passed within a
    configured tolerance gives warnings), `docs` (absolute path of index.html), and `splits` (per split present:
    images, pixel_min, pixel_max, shared_with_train, duplicates_within_split (images whose bytes repeat an earlier
    image of the split, whatever the labels), label_conflicts (images flagged `label_conflict`); plus
    val_test_shared, the number of test images byte-identical to a val image).

    A split whose images are not (N, C, H, W) or whose labels are not one per image is refused before any suite
    runs: the report then holds only those failures, `docs` is None, no Data Docs are built and there is no
    `splits`. Raises ValidationFailed (after writing the artifacts) when the report did not pass and
    `raise_on_failure` is true; otherwise returns the report either way.
    """
    docs_dir = Path(docs_dir)
    subject = f"real.{data.info.name}"
    problems = [p for s in SPLITS for p in layout_problems(s, *data.split(s))]
    if problems:
        return _finish(_refused(subject, problems), docs_dir, f"dataset {data.info.name}", raise_on_failure)
    images = image_table(data)
    report = _run(subject, real_suites(data, images, class_count_table(data), cfg), docs_dir)
    report["splits"] = _split_stats(images)
    return _finish(report, docs_dir, f"dataset {data.info.name}", raise_on_failure)


def _read_shard(path: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    try:  # bounded: refuses zip bombs, lying headers and object arrays before inflating anything
        arrays = read_shard(path)
    except DataError as e:  # missing, truncated, not a zip, unexpected member, pickled arrays, over a limit
        return {}, [f"not a readable shard: {e}"]
    missing = [k for k in SHARD_KEYS if k not in arrays]
    if missing:
        return arrays, [f"{path}: missing keys {', '.join(missing)}; a shard holds {', '.join(SHARD_KEYS)}"]
    x, y, z = (arrays[k] for k in SHARD_KEYS)
    problems = layout_problems("images/gen_labels", x, y)
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
    image_size: int | None = None,
    envelope: Envelope | None = None,
    raise_on_failure: bool = True,
) -> dict:
    """Validate one regeneration shard (.npz: images, gen_labels, teacher_logits); same outputs as validate_real.

    channels: the real data's channel count when known; otherwise 1 or 3 are accepted.
    image_size: the real data's image side (`DatasetInfo.image_size`) when known; otherwise any of `kr.data.SIZES`.
    envelope: the real images' envelope (`kr.method.fidelity.fit_envelope`); with it, a shard whose share of broken
    samples exceeds `cfg.max_broken_fraction` fails.

    The shard should hold images uint8 (N, C, S, S) on the 0-255 scale, gen_labels integer (N,) in
    [0, n_classes) and teacher_logits float (N, n_classes); the `shard_suites` check all of it. The report has the
    keys of `validate_real`'s but `splits`, with `suite` "shard.<file stem>", plus `path` (str) and `class_counts`
    (list of n_classes ints). A file `kr.data.read_npz` refuses under `SHARD_LIMITS` (unreadable, a member other
    than those three, a non-numeric or object dtype, a zip bomb or a lying .npy header; nothing is inflated
    first), a missing key, images and gen_labels failing `layout_problems`, gen_labels of a non-integer dtype, or
    teacher_logits not 2-D with one row per image is refused before any suite runs: the report then holds only
    those failures, `docs` is None, and there are no Data Docs, `path` or `class_counts`. Raises ValidationFailed
    (after writing the artifacts) when the report did not pass and `raise_on_failure` is true.
    """
    path, docs_dir = Path(path), Path(docs_dir)
    subject = f"shard.{path.stem}"
    arrays, problems = _read_shard(path)
    if problems:
        return _finish(_refused(subject, problems), docs_dir, f"shard {path}", raise_on_failure)
    tables = shard_tables(arrays["images"], arrays["gen_labels"], arrays["teacher_logits"], n_classes, envelope)
    report = _run(subject, shard_suites(*tables, n_classes, channels, cfg, image_size), docs_dir)
    report["path"] = str(path)
    report["class_counts"] = tables[1]["count"].tolist()
    return _finish(report, docs_dir, f"shard {path}", raise_on_failure)
