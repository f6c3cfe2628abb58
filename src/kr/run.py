"""One Knowledge Recycling run, step after step in this process, with artifacts passed as files.

Run folder:
    summary.json, report.md, samples.png, selection.png
    records/<step>.json               each finished step's result (the summary is built from these)
    steps/data/                       the validated dataset (arrays.npz, info.json)
    steps/teacher/teacher.pt
    steps/generator/...               resumable: running again with the same --out continues training
    steps/selection/selection.json
    steps/regenerate/shard-000.npz ...
    steps/student/student.pt
    steps/privacy/privacy.json, mia_roc.png
"""

from __future__ import annotations

import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

from kr import steps
from kr.config import RunConfig
from kr.progress import console
from kr.runtime import configure_threads, seed_everything
from kr.summary import finalize_run

RUNNER = "local"


def archive_previous(out: Path) -> None:
    """A run into a folder that already holds a finished run keeps the old results under history/<finished_at>/."""
    old = out / "summary.json"
    if old.exists():
        stamp = json.loads(old.read_text()).get("finished_at", "unknown").replace(":", "")
    elif (out / "failure.json").exists() or (out / "records").exists():
        # a run that died without a summary (killed): keep what it recorded
        stamp = "unfinished-" + datetime.now(UTC).strftime("%Y-%m-%dT%H%M%S")
    else:
        return
    dest = out / "history" / stamp
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("summary.json", "report.md", "samples.png", "selection.png", "records", "failure.json", "kfp"):
        if (out / name).exists():
            shutil.move(str(out / name), dest / name)
    # every step's outputs move too, but the generator: its checkpoints are what the new run resumes from
    for step in (out / "steps").glob("*"):
        if step.name != "generator":
            (dest / "steps").mkdir(exist_ok=True)
            shutil.move(str(step), dest / "steps" / step.name)


def run_pipeline(cfg: RunConfig, out: Path, profile: str) -> dict:
    """Every step in order in this process; the KFP pipeline (kr.pipeline) runs the same steps as tasks."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    archive_previous(out)
    configure_threads()
    seed_everything(cfg.seed)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    try:
        _run_steps(cfg, out, profile, started)
    except Exception as exc:
        # a failed run still leaves its summary (status failed, the step and the error) before the error surfaces
        try:
            finalize_run(out, cfg, profile, RUNNER, started, time.perf_counter() - t0, status="failed", error=str(exc))
        except Exception as secondary:  # never let the bookkeeping hide the error that matters
            console.print(f"[yellow]could not write the failed run's summary: {secondary}")
        raise
    return finalize_run(out, cfg, profile, RUNNER, started, time.perf_counter() - t0)


def _run_steps(cfg: RunConfig, out: Path, profile: str, started: str) -> None:
    d = {name: out / "steps" / name for name in ("data", "teacher", "generator", "selection", "student", "privacy")}
    info = steps.validate_data(cfg, out, d["data"])["info"]
    console.print(
        f"{info['name']}: {info['n_train']}/{info['n_val']}/{info['n_test']} images, "
        f"{info['n_classes']} classes, {info['channels']} channel(s), md5 {info['md5']}"
    )
    steps.train_teacher(cfg, out, d["data"], d["teacher"])
    steps.train_generator(cfg, out, d["data"], d["generator"])
    steps.select_generator(cfg, out, d["data"], d["generator"], d["teacher"], d["selection"])
    pool = [out / "steps" / "regenerate" / f"shard-{k:03d}.npz" for k in range(len(steps.plan_shards(cfg, d["data"])))]
    for k, path in enumerate(pool):
        steps.regenerate(cfg, out, k, d["data"], d["generator"], d["teacher"], d["selection"], path)
    steps.train_student(cfg, out, d["data"], pool, d["student"])
    if cfg.naive.enabled:
        steps.train_naive(cfg, out, d["data"], pool)
    if cfg.privacy.enabled:
        steps.audit_privacy(cfg, out, d["data"], d["teacher"], d["student"], pool, d["privacy"])
    steps.evaluate_gates(cfg, out, profile, RUNNER, started)
