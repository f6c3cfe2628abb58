"""Running one step in its process: threads, seed, timing, memory, MLflow run, failure note; by-products."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from kr.config import RunConfig
from kr.progress import console
from kr.results import (
    StepResult,
    StudentResult,
    TeacherResult,
)
from kr.run import tracking
from kr.serialization import write_json

TEACHER_FILE, STUDENT_FILE, SHARD_FILE = "teacher.pt", "student.pt", "shard.npz"
RUN_DIR_ENV = "KR_RUN_DIR"
FAILURE_NOTE = "failure.json"
R = TypeVar("R", bound=StepResult)


def context_run_dir() -> Path | None:
    """The run folder a runner announced through KR_RUN_DIR (None on a cluster's cached steps)."""
    value = os.environ.get(RUN_DIR_ENV, "")
    return Path(value) if value else None


def run_step(
    cfg: RunConfig,
    name: str,
    fn: Callable[[], R],
    artifacts: Callable[[R | None], Iterable[Path]] = lambda _r: (),
    folder: Path | None = None,
) -> R:
    """Run one step in this process: threads and seed set, timed, mirrored as an MLflow run, stamped.

    A failure leaves a failure note in the run folder (when there is one) and a FAILED MLflow run, then re-raises.
    """
    from kr.runtime import configure_threads, peak_rss_mb, seed_everything

    folder = folder or context_run_dir()
    # each step may be its own process (a KFP task): threads and seeds are set here, not once per run
    configure_threads()
    seed_everything(cfg.seed)
    parent = tracking.parent_run_id(folder) if folder else None
    console.rule(f"[bold]{name}")
    t0 = time.perf_counter()
    try:
        result = fn()
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        if folder:  # the summary names the step that failed and why, though another process writes it
            write_json(Path(folder) / FAILURE_NOTE, {"step": name, "error": error})
        try:
            left = [p for p in _paths(artifacts) if Path(p).exists()]
            tracking.log_step(cfg, parent, name, None, 0.0, left, error=error)
        except Exception as secondary:  # never let bookkeeping hide the error that matters
            tracking.log.warning("could not track the failed step %s: %s", name, secondary)
        raise
    seconds = time.perf_counter() - t0
    if folder:
        _clear_failure_note(Path(folder), name)
    result = result.stamped(name, seconds, peak_rss_mb())
    run_id = tracking.log_step(cfg, parent, name, result.model_dump(mode="json"), seconds, artifacts(result))
    console.print(f"{name} done in {seconds:.1f} s")
    return result.model_copy(update={"mlflow_run_id": run_id})


def _clear_failure_note(folder: Path, name: str) -> None:
    """A retry that succeeded takes back its earlier attempt's note: left there, it makes a finished run read as
    failed. Another step's note stays."""
    note = folder / FAILURE_NOTE
    try:
        if json.loads(note.read_text()).get("step") == name:
            note.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def _paths(artifacts: Callable[[Any], Iterable[Path]]) -> list[Path]:
    try:
        return list(artifacts(None))
    except (AttributeError, KeyError, TypeError):  # the step's artifacts are named by a result it never produced
        return []


def publish(source: Path, name: str, folder: Path | None) -> None:
    """Copy a by-product (a Data Docs site) into the run folder, where people read the run; nothing without a run
    folder or when the run folder has it already."""
    if folder and Path(source).exists() and not (Path(folder) / name).exists():
        shutil.copytree(source, Path(folder) / name, dirs_exist_ok=True)


def shard_files(shard_dirs: Iterable[Path]) -> list[Path]:
    """The npz file of each regeneration shard artifact."""
    return [Path(d) / SHARD_FILE for d in shard_dirs]


def log_kfp_metrics(result: TeacherResult | StudentResult, metrics: Any, confusion: Any) -> None:
    """A classifier's val/test accuracy and AUC as KFP Metrics, and its test confusion matrix (KFP
    ClassificationMetrics), for the KFP UI."""
    for split in ("val", "test"):
        evaluation = getattr(result, split)
        metrics.log_metric(f"{split}_accuracy", evaluation.accuracy)
        if evaluation.auc is not None:
            metrics.log_metric(f"{split}_auc", evaluation.auc)
    matrix = result.test.model_extra.get("confusion_matrix") or []
    confusion.log_confusion_matrix([str(i) for i in range(len(matrix))], matrix)
    keep_metrics(metrics, confusion)


def keep_metrics(*artifacts: Any) -> None:
    """Write each KFP metrics artifact's values as JSON at its path. KFP keeps metrics in metadata and writes no
    file; kfp.local's cache treats an output without a file as missing, so a task with metrics would never be
    reused."""
    for artifact in artifacts:
        write_json(Path(artifact.path), artifact.metadata)
