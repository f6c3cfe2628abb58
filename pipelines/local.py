"""`kr run`: execute the KFP DAG on this machine with `kfp.local` (SubprocessRunner: no cluster, no Docker).

The same pipeline definition runs on a cluster; here every task is a subprocess of this Python environment, its
artifacts stay under `<out>/kfp`, and the run folder `<out>` gets the summary, report, plots and Data Docs. With
caching on, a task whose inputs (its config section, upstream artifacts, data) equal an earlier run's is reused
from kfp.local's cache instead of executed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from kfp import local

from kr.pipelines.knowledge_recycling import build_pipeline
from kr.pipelines.settings import ClusterSettings
from kr.steps import RUN_DIR_ENV, RunRequest

RUNNER = "kfp.local"
LOCAL_IMAGE = "local"  # the SubprocessRunner ignores images and runs the components in this environment
RUN_FILES = (
    "summary.json",
    "report.md",
    "samples.png",
    "selection.png",
    "mia_roc.png",
    "failure.json",
    "kfp",
    "tracking.json",
    "audit_record.json",
    "validation",
)


LOCK_FILE = ".kr-run.lock"
# an archive's name comes from the old summary's finish time: anything else (a path, `..`) is not a name
STAMP = re.compile(r"[^0-9A-Za-z+-]")


class PipelineFailed(RuntimeError):
    """The pipeline ended with a failed task; the message names the step and its error when the run recorded it."""


class RunFolderBusy(RuntimeError):
    """Another run is writing into the run folder: two runs in one folder would mix their files."""


@contextlib.contextmanager
def run_folder_lock(out: Path) -> Iterator[None]:
    """Hold `<out>/.kr-run.lock` (an exclusive flock, released by the kernel when the process dies, so a killed
    run never leaves a stale lock). Raises RunFolderBusy, naming the holder's pid, when another run holds it."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise RunFolderBusy(
                f"another run (pid {holder}) is writing into {out}; wait for it or give another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def new_run_key() -> str:
    """A fresh run key: a UUID4 from the OS's randomness (36 characters), never Python's `random`."""
    return str(uuid.uuid4())


def archive_previous(out: Path) -> Path | None:
    """A run into a folder that already holds a run keeps the old results under history/<finished_at>/ (the
    generator's checkpoints stay: they are what the new run resumes from). Returns the archive, None if none."""
    old = out / "summary.json"
    if old.exists():
        try:
            stamp = str(json.loads(old.read_text()).get("finished_at") or "unknown")
        except (ValueError, AttributeError):  # a damaged summary is archived too, under a neutral name
            stamp = "unreadable-summary"
        stamp = STAMP.sub("", stamp.replace(":", "")) or "unknown"
    elif any((out / name).exists() for name in ("failure.json", "kfp", "tracking.json")):
        # a run that died without a summary (killed): keep what it left
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
    return dest


def run_local(req: RunRequest, out: Path, cache_root: Path | None = None) -> dict:
    """Execute the pipeline into the run folder `out`; returns the summary. `cache_root`: reuse tasks from (and add
    them to) kfp.local's cache there; None: execute every task. Raises PipelineFailed when the run failed."""
    out = Path(out).resolve()
    with run_folder_lock(out):
        return _run_locked(req, out, cache_root)


def _run_locked(req: RunRequest, out: Path, cache_root: Path | None) -> dict:
    archive_previous(out)
    started = req.started_at or datetime.now(UTC).isoformat(timespec="seconds")
    checkpoints = req.checkpoints_root or str(cache_root.parent / "checkpoints" if cache_root else out / "checkpoints")
    # a key from the OS's randomness: kfp.local's run id comes from Python's global `random`, which a seeded
    # notebook or wrapper makes repeat, and a repeated key would merge two runs in the registry and the trail
    key = req.run_key or new_run_key()
    req = req.model_copy(
        update={"run_dir": str(out), "started_at": started, "checkpoints_root": checkpoints, "run_key": key}
    )
    # use_venv=False: components run in this interpreter, where kr and torch are already installed
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(out / "kfp"),
        raise_on_error=False,
        enable_caching=cache_root is not None,
        cache_root=str(cache_root) if cache_root else None,
    )
    # no retries: on one machine a failure is not a preempted pod, and retrying bad data only wastes minutes; one
    # shard at a time: two torch processes on a few cores slow each other down several times over
    # and no ConfigMap: a local run's gate policy is the user's KR_GATE_POLICY (`kr run --gate-policy`)
    local_settings = ClusterSettings(retries=0, regen_parallelism=1, gate_policy_config_map="")
    previous = os.environ.get(RUN_DIR_ENV)
    # the tasks' run folder, told outside their inputs so that it never enters a cache key
    os.environ[RUN_DIR_ENV] = str(out)
    try:
        build_pipeline(LOCAL_IMAGE, local_settings, runner=RUNNER)(**req.pipeline_arguments())
    finally:
        if previous is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = previous
    summary_path = out / "summary.json"
    if not summary_path.exists():
        raise PipelineFailed(f"the pipeline ended without writing {summary_path}; see the task logs above")
    summary = json.loads(summary_path.read_text())
    if summary.get("status") != "succeeded":
        raise PipelineFailed(
            f"the pipeline failed: {summary.get('error') or 'a task failed'}; partial summary in {summary_path}"
        )
    return summary
