"""Run the KFP DAG on this machine with `kfp.local` (SubprocessRunner: no cluster, no Docker)."""

import json
from datetime import UTC, datetime
from pathlib import Path

from kfp import local

from kr.config import RunConfig
from kr.pipeline.dag import build_pipeline
from kr.run import archive_previous

RUNNER = "kfp.local"
LOCAL_IMAGE = "local"  # the SubprocessRunner ignores images and runs the components in this environment


class PipelineFailed(RuntimeError):
    pass


def run_local(cfg: RunConfig, out: Path, profile: str) -> dict:
    """Execute the pipeline; its task outputs stay under <out>/kfp. Returns the summary the exit task wrote."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    archive_previous(out)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    # use_venv=False: components run in this interpreter, where kr and torch are already installed
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(out / "kfp"), raise_on_error=False)
    pipeline = build_pipeline(LOCAL_IMAGE)
    pipeline(config_json=cfg.model_dump_json(), run_dir=str(out), profile=profile, runner=RUNNER, started_at=started)
    summary_path = out / "summary.json"
    if not summary_path.exists():
        raise PipelineFailed(f"the pipeline ended without writing {summary_path}; see the task logs above")
    summary = json.loads(summary_path.read_text())
    if summary.get("status") != "succeeded":
        raise PipelineFailed(
            f"the pipeline failed: {summary.get('error') or 'a task failed'}; partial summary in {summary_path}"
        )
    return summary
