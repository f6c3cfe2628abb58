"""The run summary (`summary.json`, schema kr.summary/1), the report and the plots, built from step records."""

from __future__ import annotations

import json
import platform
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

import kr
from kr import plots
from kr.config import RunConfig
from kr.data import load_saved_dataset
from kr.run.report import write_report
from kr.serialization import peak_rss_mb, read_records, write_json

SUMMARY_SCHEMA = "kr.summary/1"
STEP_ORDER = (
    "validate_data",
    "train_teacher",
    "train_generator",
    "select_generator",
    "regenerate",
    "train_student",
    "train_naive",
    "audit_privacy",
    "evaluate_gates",
    "promote",
    "record_rejection",
)
NOT_CONCLUDED = {"passed": False, "evaluated": False, "reasons": ["the run ended before the champion gate"]}


def _headline(metrics: dict | None) -> dict | None:
    return {"accuracy": metrics["accuracy"], "auc": metrics["auc"]} if metrics else None


def _result(records: dict, step: str) -> dict | None:
    return records[step]["result"] if step in records else None


def _shards(records: dict) -> list[dict]:
    return sorted(
        (r["result"] for name, r in records.items() if name.startswith("regenerate-")), key=lambda s: s["shard"]
    )


def _timings(records: dict) -> dict[str, float]:
    timings = {name: r["seconds"] for name, r in records.items() if not name.startswith("regenerate-")}
    shards = [r["seconds"] for name, r in records.items() if name.startswith("regenerate-")]
    if shards:
        timings["regenerate"] = round(sum(shards), 2)
    return {k: timings[k] for k in STEP_ORDER if k in timings} | {
        k: v for k, v in timings.items() if k not in STEP_ORDER
    }


def build_summary(
    run_dir: Path,
    cfg: RunConfig,
    profile: str,
    runner: str,
    started_at: str,
    status: str = "succeeded",
    error: str | None = None,
) -> dict:
    records = read_records(run_dir)
    failure_file = Path(run_dir) / "failure.json"
    if failure_file.exists():
        failure = json.loads(failure_file.read_text())
        status, error = "failed", f"step {failure['step']} failed: {failure['error']}"
    data, teacher = _result(records, "validate_data"), _result(records, "train_teacher")
    selection, generator = _result(records, "select_generator"), _result(records, "train_generator")
    student, naive = _result(records, "train_student"), _result(records, "train_naive")
    shards = _shards(records)
    conclusion = _result(records, "promote") or _result(records, "record_rejection")
    gates = _result(records, "evaluate_gates")
    gates = (
        conclusion["gates"]
        if conclusion
        else ({**gates, "champion": NOT_CONCLUDED, "passed": False} if gates else None)
    )
    gap = round(100 * (student["test"]["accuracy"] - teacher["test"]["accuracy"]), 2) if student and teacher else None
    return {
        "schema": SUMMARY_SCHEMA,
        "runner": runner,
        "status": status,
        "error": error,
        "kr_version": kr.__version__,
        "started_at": started_at,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": {"python": platform.python_version(), "machine": platform.machine()},
        "dataset": (
            {
                **{
                    k: data["info"][k]
                    for k in (
                        "name",
                        "md5",
                        "task",
                        "n_classes",
                        "channels",
                        "n_train",
                        "n_val",
                        "n_test",
                        "source",
                        "class_names",
                    )
                },
                "majority_rate_test": data["majority_rate_test"],
            }
            if data
            else {"name": cfg.data.dataset}
        ),
        "profile": profile,
        "config": cfg.model_dump(mode="json"),
        "config_digest": cfg.digest(),
        "teacher": (
            {
                "val": _headline(teacher["val"]),
                "test": _headline(teacher["test"]),
                "test_per_class": teacher["test"]["per_class"],
                "best_epoch": teacher["best_epoch"],
                "params": teacher["params"],
            }
            if teacher
            else None
        ),
        "generator": (
            {
                "checkpoint": selection["checkpoint"],
                "guidance_scale": selection["guidance_scale"],
                "val_cas": selection["val_cas"],
                "fidelity": selection.get("fidelity"),
                "selection": selection["selection"],
                "training": {k: generator[k] for k in ("steps", "resumed_from", "params", "final_loss")}
                if generator
                else None,
            }
            if selection
            else None
        ),
        "regeneration": (
            {
                "images": sum(s["n"] for s in shards),
                "guidance_scale": shards[0]["guidance_scale"],
                "shards": [
                    {k: s.get(k) for k in ("shard", "n", "class_counts", "teacher_agreement", "fidelity")}
                    for s in shards
                ],
                "teacher_agreement": _pooled(shards, "teacher_agreement"),
                "broken_fraction": _pooled(shards, "broken_fraction"),
            }
            if shards
            else None
        ),
        "naive": {"test": _headline(naive["test"]), "val": _headline(naive["val"])} if naive else None,
        "student": (
            {
                "val": _headline(student["val"]),
                "test": _headline(student["test"]),
                "test_per_class": student["test"]["per_class"],
                "best_epoch": student["best_epoch"],
                "images_per_epoch": student["images_per_epoch"],
                "pool_images": student["pool_images"],
            }
            if student
            else None
        ),
        "cas_gap_pp": gap,
        "privacy": _result(records, "audit_privacy"),
        "gates": gates or {"passed": False, "reasons": ["the run ended before its gates were evaluated"]},
        "registry": (conclusion or {}).get("registry"),
        "audit": (conclusion or {}).get("audit"),
        "outcome": (conclusion or {}).get("outcome") or ("failed" if status == "failed" else None),
        "artifacts": {
            "teacher": teacher and teacher["path"],
            "student": student and student["path"],
            "report": str(Path(run_dir) / "report.md"),
        },
        "timings_s": _timings(records),
        # per step, the peak of the process that ran it (one process in-process, one per task with KFP)
        "peak_rss_mb": max([r.get("peak_rss_mb", 0.0) for r in records.values()] + [peak_rss_mb()]),
    }


def finalize_run(
    run_dir: Path,
    cfg: RunConfig,
    profile: str,
    runner: str,
    started_at: str,
    wall_s: float,
    status: str = "succeeded",
    error: str | None = None,
    audit: dict | None = None,
) -> dict:
    """Write summary.json, the plots and report.md for whatever the run got to do."""
    run_dir = Path(run_dir)
    summary = build_summary(run_dir, cfg, profile, runner, started_at, status, error)
    summary["total_wall_s"] = round(wall_s, 2)
    summary["audit"] = summary["audit"] or audit
    records = read_records(run_dir)
    summary["artifacts"].update(_plots(run_dir, records))
    write_json(run_dir / "summary.json", summary)
    write_report(summary, run_dir / "report.md")
    return summary


def _pooled(shards: list[dict], key: str) -> float | None:
    """Image-weighted mean of a per-shard fraction over the whole pool (None when a shard lacks it)."""
    values = [(s.get("fidelity") or {}).get(key, s.get(key)) for s in shards]
    if any(v is None for v in values):
        return None
    return float(np.average(values, weights=[s["n"] for s in shards]))


def _plots(run_dir: Path, records: dict) -> dict[str, str]:
    out: dict[str, str] = {}
    data, selection, shards = _result(records, "validate_data"), _result(records, "select_generator"), _shards(records)
    if selection:
        out["selection_plot"] = str(
            plots.selection_heatmap(selection["selection"], selection, run_dir / "selection.png")
        )
    if data and shards:
        dataset = load_saved_dataset(data["data_dir"])
        with np.load(shards[0]["path"]) as z:
            syn_x, syn_y = z["images"], z["gen_labels"]
        out["samples"] = str(
            plots.sample_grid(
                dataset.x_train,
                dataset.y_train,
                syn_x,
                syn_y,
                list(dataset.info.class_names),
                run_dir / "samples.png",
                title=f"{dataset.info.name}: real (left) and regenerated (right) images per class",
            )
        )
    privacy = _result(records, "audit_privacy")
    if privacy:
        out["mia_roc"] = privacy["roc_plot"]
    return out
