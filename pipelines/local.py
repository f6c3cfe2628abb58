"""`kr run`: execute the KFP DAG on this machine with `kfp.local` (SubprocessRunner: no cluster, no Docker).

The same pipeline definition runs on a cluster; here every task is a subprocess of this Python environment and
its outputs stay under `<out>/kfp`. The run folder itself is shared by the tasks (records, checkpoints).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from kfp import local
from kr.pipelines.knowledge_recycling import ClusterSettings, build_pipeline

from kr.run.request import RunRequest

RUNNER = "kfp.local"
LOCAL_IMAGE = "local"  # the SubprocessRunner ignores images and runs the components in this environment
RUN_FILES = (
    "summary.json",
    "report.md",
    "samples.png",
    "selection.png",
    "records",
    "failure.json",
    "kfp",
    "tracking.json",
    "audit_record.json",
    "validation",
)


class PipelineFailed(RuntimeError):
    pass


def archive_previous(out: Path) -> Path | None:
    """A run into a folder that already holds a run keeps the old results under history/<finished_at>/."""
    old = out / "summary.json"
    if old.exists():
        stamp = json.loads(old.read_text()).get("finished_at", "unknown").replace(":", "")
    elif (out / "failure.json").exists() or (out / "records").exists():
        # a run that died without a summary (killed): keep what it recorded
        stamp = "unfinished-" + datetime.now(UTC).strftime("%Y-%m-%dT%H%M%S")
    else:
        return None
    dest = out / "history" / stamp
    while dest.exists():  # never merge into (and so overwrite) an earlier archive
        dest = dest.with_name(dest.name + "-1")
    dest.mkdir(parents=True)
    for name in RUN_FILES:
        if (out / name).exists():
            shutil.move(str(out / name), dest / name)
    # every step's outputs move too, but the generator: its checkpoints are what the new run resumes from
    for step in (out / "steps").glob("*"):
        if step.name != "generator":
            (dest / "steps").mkdir(exist_ok=True)
            shutil.move(str(step), dest / "steps" / step.name)
    return dest


def run_local(req: RunRequest, out: Path) -> dict:
    """Execute the pipeline; returns the summary its exit task wrote. Raises PipelineFailed when the run failed."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    archive_previous(out)
    req = replace(req, run_dir=str(out), started_at=req.started_at or datetime.now(UTC).isoformat(timespec="seconds"))
    # use_venv=False: components run in this interpreter, where kr and torch are already installed
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(out / "kfp"), raise_on_error=False)
    # no retries: on one machine a failure is not a preempted pod, and retrying bad data only wastes minutes; one
    # shard at a time: two torch processes on a few cores slow each other down several times over
    local_settings = ClusterSettings(retries=0, regen_parallelism=1)
    build_pipeline(LOCAL_IMAGE, local_settings, runner=RUNNER)(**req.pipeline_arguments())
    summary_path = out / "summary.json"
    if not summary_path.exists():
        raise PipelineFailed(f"the pipeline ended without writing {summary_path}; see the task logs above")
    summary = json.loads(summary_path.read_text())
    if summary.get("status") != "succeeded":
        raise PipelineFailed(
            f"the pipeline failed: {summary.get('error') or 'a task failed'}; partial summary in {summary_path}"
        )
    return summary
