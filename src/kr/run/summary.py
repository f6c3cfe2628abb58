"""The run summary (`summary.json`, schema kr.summary/1), its plots and report, built from the typed step results.

One section per part of the run; a step that did not run leaves its section None (a failed run's summary says
where it stopped). The keys are a published contract: extend them, never rename them.
"""

from __future__ import annotations

import platform
import shutil
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

import kr
from kr import plots
from kr.config import RunConfig
from kr.data import Dataset, read_shard
from kr.results import (
    ClassifierResult,
    Conclusion,
    DataResult,
    Evaluation,
    GatesResult,
    GeneratorResult,
    NaiveResult,
    RunResults,
    SelectionResult,
    ShardResult,
    StudentResult,
    TeacherResult,
)
from kr.run.report import write_report
from kr.run.step_table import ORDER
from kr.runtime import peak_rss_mb
from kr.serialization import write_json

SUMMARY_SCHEMA = "kr.summary/1"
DATASET_KEYS = ("name", "md5", "task", "n_classes", "channels", "n_train", "n_val", "n_test", "source", "class_names")
NOT_CONCLUDED = {"passed": False, "evaluated": False, "reasons": ["the run ended before the champion gate"]}
NOT_EVALUATED = {"passed": False, "reasons": ["the run ended before its gates were evaluated"]}


def _headline(metrics: Evaluation | None) -> dict | None:
    return {"accuracy": metrics.accuracy, "auc": metrics.auc} if metrics else None


def dataset_section(data: DataResult | None, cfg: RunConfig) -> dict[str, Any]:
    """The validated file: name, MD5, sizes, classes and the test split's majority-class rate (fraction)."""
    if not data:
        return {"name": cfg.data.dataset}
    return {**{k: data.info[k] for k in DATASET_KEYS}, "majority_rate_test": data.majority_rate_test}


def _classifier_section(model: ClassifierResult) -> dict[str, Any]:
    return {
        "val": _headline(model.val),
        "test": _headline(model.test),
        "test_per_class": model.test.model_extra.get("per_class"),
        "best_epoch": model.best_epoch,
    }


def teacher_section(teacher: TeacherResult | None) -> dict[str, Any] | None:
    """The teacher's val/test accuracy and ROC AUC, per-class test recall, kept epoch and size."""
    return _classifier_section(teacher) | {"params": teacher.params} if teacher else None


def generator_section(selection: SelectionResult | None, generator: GeneratorResult | None) -> dict[str, Any] | None:
    """The chosen (checkpoint, guidance scale) cell, its fidelity, the whole selection grid and the training."""
    if not selection:
        return None
    training = generator.model_dump(include={"steps", "resumed_from", "params", "final_loss"}) if generator else None
    return {
        "checkpoint": selection.checkpoint,
        "guidance_scale": selection.guidance_scale,
        "val_cas": selection.val_cas,
        "fidelity": selection.fidelity,
        "selection": selection.selection,
        "training": training,
    }


def _pooled(shards: list[ShardResult], key: str) -> float | None:
    """Image-weighted mean of a per-shard fraction over the whole pool (None when a shard lacks it)."""
    values = [(s.fidelity or {}).get(key, getattr(s, key, None)) for s in shards]
    if any(v is None for v in values):
        return None
    return float(np.average(values, weights=[s.n for s in shards]))


def regeneration_section(shards: list[ShardResult]) -> dict[str, Any] | None:
    """The regenerated GKD pool: size, guidance, per-shard counts and fidelity, pooled agreement and broken share."""
    if not shards:
        return None
    shards = sorted(shards, key=lambda s: s.shard)
    keys = {"shard", "n", "class_counts", "teacher_agreement", "fidelity"}
    return {
        "images": sum(s.n for s in shards),
        "guidance_scale": shards[0].guidance_scale,
        "shards": [s.model_dump(include=keys) for s in shards],
        "teacher_agreement": _pooled(shards, "teacher_agreement"),
        "broken_fraction": _pooled(shards, "broken_fraction"),
    }


def student_section(student: StudentResult | None) -> dict[str, Any] | None:
    """The GKD student's val/test accuracy and AUC, per-class test recall, kept epoch and pool sizes."""
    if not student:
        return None
    return _classifier_section(student) | {
        "images_per_epoch": student.images_per_epoch,
        "pool_images": student.pool_images,
    }


def naive_section(naive: NaiveResult | None) -> dict[str, Any] | None:
    """The naive CAS baseline's test and val accuracy and AUC."""
    return {"test": _headline(naive.test), "val": _headline(naive.val)} if naive else None


def gates_section(gates: GatesResult | None, conclusion: Conclusion | None) -> dict[str, Any]:
    """Every gate's verdict; the champion gate comes with the conclusion, so a run that ended before it fails it."""
    if conclusion:
        return conclusion.gates
    if gates:
        return {**gates.verdicts(), "champion": NOT_CONCLUDED, "passed": False}
    return NOT_EVALUATED


def timings(results: RunResults) -> dict[str, float]:
    """Seconds per step in pipeline order, the regeneration shards summed under `regenerate`."""
    out: dict[str, float] = {}
    for r in results.executed():
        name = "regenerate" if r.step.startswith("regenerate-") else r.step
        out[name] = round(out.get(name, 0.0) + r.seconds, 2)
    return {k: out[k] for k in ORDER if k in out} | {k: v for k, v in out.items() if k not in ORDER}


def reused_steps(results: RunResults, started_at: str) -> list[str]:
    """Steps whose result was finished before this run started: KFP reused an earlier execution (its cache)."""
    start = datetime.fromisoformat(started_at)
    return [r.step for r in results.executed() if r.finished_at and datetime.fromisoformat(r.finished_at) < start]


def build_summary(
    cfg: RunConfig,
    results: RunResults,
    profile: str,
    runner: str,
    started_at: str,
    status: str = "succeeded",
    error: str | None = None,
) -> dict[str, Any]:
    """The summary dict (schema kr.summary/1) of a run from its step results. Accuracies are fractions, the CAS gap
    (student minus teacher test accuracy) percentage points, times seconds, memory MiB."""
    teacher, student, conclusion = results.teacher, results.student, results.conclusion
    gap = round(100 * (student.test.accuracy - teacher.test.accuracy), 2) if student and teacher else None
    executed = results.executed()
    return {
        "schema": SUMMARY_SCHEMA,
        "runner": runner,
        "status": status,
        "error": error,
        "kr_version": kr.__version__,
        "started_at": started_at,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": {"python": platform.python_version(), "machine": platform.machine()},
        "dataset": dataset_section(results.data, cfg),
        "profile": profile,
        "config": cfg.model_dump(mode="json"),
        "config_digest": cfg.digest(),
        "teacher": teacher_section(teacher),
        "generator": generator_section(results.selection, results.generator),
        "regeneration": regeneration_section(results.shards),
        "naive": naive_section(results.naive),
        "student": student_section(student),
        "cas_gap_pp": gap,
        "privacy": results.privacy.model_dump(mode="json", exclude=set(_EXECUTION)) if results.privacy else None,
        "gates": gates_section(results.gates, conclusion),
        "registry": conclusion.registry if conclusion else None,
        "audit": conclusion.audit if conclusion else None,
        "outcome": conclusion.outcome if conclusion else ("failed" if status == "failed" else None),
        "artifacts": {
            "teacher": teacher.path if teacher else None,
            # the generator's work folder: every kept checkpoint (the artifact copy has the same weights)
            "generator": results.generator.workspace if results.generator else None,
            "student": student.path if student else None,
        },
        "timings_s": timings(results),
        "reused_steps": reused_steps(results, started_at),
        # per step, the peak of the process that ran it (one process per task with KFP)
        "peak_rss_mb": max([r.peak_rss_mb for r in executed] + [peak_rss_mb()]),
    }


_EXECUTION = ("step", "seconds", "peak_rss_mb", "finished_at", "mlflow_run_id")


def write_summary(
    folder: Path,
    cfg: RunConfig,
    results: RunResults,
    *,
    profile: str,
    runner: str,
    started_at: str,
    wall_s: float,
    status: str = "succeeded",
    error: str | None = None,
    trail: dict | None = None,
    dataset: Dataset | None = None,
    shard_files: Iterable[Path] = (),
    roc_plot: Path | None = None,
) -> dict[str, Any]:
    """Write summary.json, the plots and report.md into the run folder for whatever the run got to do; returns the
    summary. `trail`: the trail reference of a run that did not conclude (a failed run's record). wall_s: seconds.
    `dataset`: the validated data (class names, and real images only with tracking.real_samples_in_report)."""
    folder = Path(folder)
    summary = build_summary(cfg, results, profile, runner, started_at, status, error)
    summary["total_wall_s"] = round(wall_s, 2)
    summary["audit"] = summary["audit"] or trail
    summary["artifacts"]["report"] = str(folder / "report.md")
    real_beside = cfg.tracking.real_samples_in_report
    summary["artifacts"].update(_plots(folder, results, dataset, list(shard_files), roc_plot, real_beside))
    write_json(folder / "summary.json", summary)
    write_report(summary, folder / "report.md")
    return summary


def _plots(
    folder: Path,
    results: RunResults,
    dataset: Dataset | None,
    shard_files: list[Path],
    roc: Path | None,
    real_beside: bool = False,
) -> dict[str, str]:
    out: dict[str, str] = {}
    if results.selection:
        chosen = results.selection.model_dump(mode="json")
        out["selection_plot"] = str(
            plots.selection_heatmap(results.selection.selection, chosen, folder / "selection.png")
        )
    if dataset is not None and shard_files:
        shard = read_shard(sorted(shard_files, key=str)[0])
        syn_x, syn_y = shard["images"], shard["gen_labels"]
        # real patient images only when asked for, and only in this run folder (never logged)
        real = (dataset.x_train, dataset.y_train) if real_beside else None
        sides = "real (left) and regenerated (right)" if real_beside else "regenerated"
        out["samples"] = str(
            plots.sample_grid(
                real,
                syn_x,
                syn_y,
                list(dataset.info.class_names),
                folder / "samples.png",
                title=f"{dataset.info.name}: {sides} images per class",
            )
        )
    if roc and Path(roc).exists():
        target = folder / "mia_roc.png"
        if Path(roc).resolve() != target.resolve():
            shutil.copyfile(roc, target)
        out["mia_roc"] = str(target)
    return out
