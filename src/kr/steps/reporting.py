"""The end of a run: the summary, report and plots from every result (`summarize`); the exit handler's record of a
failed run (`finalize_run`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from kr.config import ConfigError, DataConfig, RunConfig
from kr.data import load_saved_dataset
from kr.results import Conclusion, RunResults
from kr.run import tracking
from kr.run.request import RunRequest, from_parts, resolve_request, run_dir, started_at
from kr.run.step_table import load_step_config
from kr.steps.running import FAILURE_NOTE, shard_files


def summarize(
    config: str,
    run_folder: Path,
    profile: str,
    runner: str,
    started: str,
    results: RunResults,
    data_dir: Path,
    shard_dirs: list[Path],
    privacy_dir: Path | None,
) -> dict:
    """Write summary.json (schema kr.summary/1), the plots and report.md into the run folder from the step results,
    and put them on the MLflow parent run, which it closes. Returns the summary."""
    from kr.run.summary import write_summary

    cfg = load_step_config(config)
    folder = Path(run_folder)
    wall_s = (datetime.now(UTC) - datetime.fromisoformat(started)).total_seconds()
    dataset = load_saved_dataset(data_dir)  # once: with s3:// data every load is a download
    summary = write_summary(
        folder,
        cfg,
        results,
        profile=profile,
        runner=runner,
        started_at=started,
        wall_s=wall_s,
        dataset=dataset,
        shard_files=shard_files(shard_dirs),
        roc_plot=Path(privacy_dir) / "mia_roc.png" if privacy_dir else None,
    )
    parent = tracking.parent_run_id(folder)
    if parent:
        tracking.log_dataset(cfg, parent, dataset)
        tracking.adopt(cfg, parent, {r.step: r.mlflow_run_id for r in results.executed()})
    tracking.finish_parent(cfg, folder, summary, _run_files(folder))
    return summary


def _run_files(folder: Path) -> list[Path]:
    from kr.governance.promotion import TRAIL_RECORD_COPY

    # samples.png shows real training images beside synthetic ones: it stays in the run folder, out of MLflow
    return [folder / n for n in ("summary.json", "report.md", "selection.png", "mia_roc.png")] + [
        folder / TRAIL_RECORD_COPY
    ]


def _recorded_conclusion(cfg: RunConfig) -> Conclusion | None:
    """The decision the trail holds for a run that failed after concluding (e.g. in `summarize`): the summary tells
    the trail's story (promoted stays promoted), not "failed" beside a champion. None for a `failed` record."""
    from kr.governance import promotion

    try:
        record = promotion.recorded(cfg)
    except Exception:  # the trail is unreachable: record_failure has said so already
        return None
    if not record or record.get("outcome") not in ("promoted", "rejected"):
        return None
    return Conclusion(**promotion.conclusion_of(record, cfg.audit.uri))


def finalize_run(scalars: dict, overrides: list, gates: dict, runner: str, failed: bool, error: str | None) -> None:
    """The exit handler's work: a failed run (or one that could not start) still gets its trail record (outcome
    `failed`), a summary that says where it stopped and why, a report, and a closed MLflow parent run. A run that
    succeeded was summarised by `summarize`: nothing to do."""
    from kr.governance import promotion
    from kr.run.summary import write_summary

    if not failed:
        return
    try:
        req = from_parts(scalars, overrides, gates)
        cfg = resolve_request(req)
    except (ConfigError, ValueError) as exc:
        # the run could not even start; still leave a summary that says why (no tracking: no valid settings)
        req = RunRequest.model_validate({k: v for k, v in scalars.items() if k in ("dataset", "run_dir", "runs_root")})
        cfg, error = RunConfig(data=DataConfig(dataset=req.dataset)), str(exc)
    folder = run_dir(req)
    note = folder / FAILURE_NOTE
    if note.exists():  # the failed step's own words beat the orchestrator's "task X failed"
        failure = json.loads(note.read_text())
        error = f"step {failure['step']} failed: {failure['error']}"
        if failure["step"] == "resolve_config":
            # refused before any work (e.g. its run key is another run's): nothing to record under that key
            cfg = RunConfig(data=DataConfig(dataset=req.dataset))
    error = error or "a pipeline task failed"
    started = started_at(req)
    trail = promotion.record_failure(cfg, folder, started, error)
    wall_s = (datetime.now(UTC) - datetime.fromisoformat(started)).total_seconds()
    summary = write_summary(
        folder,
        cfg,
        RunResults(conclusion=_recorded_conclusion(cfg)),
        profile=req.profile,
        runner=runner,
        started_at=started,
        wall_s=wall_s,
        status="failed",
        error=error,
        trail=trail,
    )
    tracking.finish_parent(cfg, folder, summary, _run_files(folder))
