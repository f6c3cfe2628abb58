"""`kr run`: execute the KFP DAG on this machine with `kfp.local` (SubprocessRunner: no cluster, no Docker).

The same pipeline definition runs on a cluster; here every task is a subprocess of this Python environment, its
artifacts stay under `<out>/kfp`, and the run folder `<out>` gets the summary, report, plots and Data Docs. With
caching on, a task whose inputs (its config section, upstream artifacts, data) equal an earlier run's is reused
from kfp.local's cache instead of executed.

Output: kfp.local prints every task's executor input and output and streams each task's output line by line, all
with `print` and `logging` in the thread that runs the task (ParallelFor iterations run in worker threads). While the
pipeline runs, `capture_tasks` takes sys.stdout and sys.stderr and sends each write, by thread, to the running task's
`<out>/logs/<step>.log` (lines outside a task to `logs/pipeline.log`), and tells a `StepListener` (`kr run`'s view)
when a task starts and ends and what its `kr.progress` bars report (their event lines, kept out of the log).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import re
import shutil
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit
from urllib.request import url2pathname

from kfp import local
from kfp.local import logging_utils, status, task_dispatcher
from kfp.local.orchestrator import task_executor

from kr.pipelines.knowledge_recycling import build_pipeline
from kr.pipelines.settings import ClusterSettings
from kr.steps import (
    EVENTS_ENV,
    LOGS_DIR,
    PIPELINE_LOG,
    POLICY_ENV,
    RUN_DIR_ENV,
    RunConfig,
    RunRequest,
    State,
    StepListener,
    log_path,
    parse_event,
    resolve_request,
)

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
    LOGS_DIR,
)


LOCK_FILE = ".kr-run.lock"
# an archive's name comes from the old summary's finish time: anything else (a path, `..`) is not a name
STAMP = re.compile(r"[^0-9A-Za-z+-]")


class PipelineFailed(RuntimeError):
    """The pipeline ended with a failed task; the message names the step and its error when the run recorded it."""


class ContainerEngineError(RuntimeError):
    """`kr run --image` without a Docker engine that answers, or without the image in it."""


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


# kfp.local colours task names and statuses whatever its output is; a log file (and the failure tail printed from it)
# gets the text alone
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# a ParallelFor iteration runs its tasks under <pipeline>/for-loop-N-iteration-I (kfp.local's resource name)
ITERATION = re.compile(r"-iteration-(\d+)$")


def step_of(task_name: str, pipeline_resource_name: str) -> str:
    """The step a kfp.local task runs, as kr names it (train-teacher: train_teacher); a ParallelFor iteration's task
    gets its index (regenerate-0), as its step result names it."""
    step = task_name.replace("-", "_")
    iteration = ITERATION.search(pipeline_resource_name)
    return f"{step}-{iteration[1]}" if iteration else step


class TaskLog:
    """One task's output: whole lines to its log file (created at the first) and to the listener; `kr.progress`
    event lines to the listener only."""

    def __init__(self, step: str, path: Path, listener: StepListener) -> None:
        self.step, self.path, self.listener = step, path, listener
        self.dispatched = False  # kfp.local executed the task; a cache hit never gets that far
        self._partial = ""  # a write need not end a line (docker streams chunks)
        self._file: TextIO | None = None
        self._lock = threading.Lock()  # the pipeline's log is written from several threads

    def write(self, text: str) -> None:
        """Take `text`; every line it completes goes out."""
        with self._lock:
            *lines, self._partial = (self._partial + text).split("\n")
            for line in lines:
                self._line(line.rstrip("\r"))

    def close(self) -> None:
        """Send the last, unfinished line and close the file."""
        with self._lock:
            if self._partial:
                self._line(self._partial)
                self._partial = ""
            if self._file is not None:
                self._file.close()
                self._file = None

    def _line(self, line: str) -> None:
        line = ANSI.sub("", line)
        if (event := parse_event(line)) is not None:
            self.listener.step_progress(self.step, event)
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write(line + "\n")
        self._file.flush()  # the log is what a person tails while the step runs
        self.listener.step_log(self.step, line)


class TaskRouter:
    """Which task each thread runs, and that task's log; threads outside a task write to the pipeline's log."""

    def __init__(self, logs: Path, listener: StepListener) -> None:
        self.logs, self.listener = logs, listener
        self.pipeline = TaskLog(PIPELINE_LOG, log_path(logs, PIPELINE_LOG), listener)
        self._local = threading.local()

    def current(self) -> TaskLog:
        """The log of the task this thread runs, else the pipeline's."""
        return getattr(self._local, "task", None) or self.pipeline

    def executing(self, original: Callable[..., tuple[dict, status.Status]]) -> Callable[..., Any]:
        """`original` (kfp.local's execute_single_task: cache lookup, then dispatch) with this thread's output going
        to the task's log, and the task's end (done, failed, cached) told to the listener."""

        def execute(**kwargs: Any) -> tuple[dict, status.Status]:
            step = step_of(kwargs["task_name"], kwargs["pipeline_resource_name"])
            log = self._local.task = TaskLog(step, log_path(self.logs, step), self.listener)
            state = State.FAILED
            try:
                outputs, task_status = original(**kwargs)
                if task_status == status.Status.SUCCESS:
                    state = State.DONE if log.dispatched else State.CACHED
                return outputs, task_status
            finally:
                self._local.task = None
                log.close()
                self.listener.step_ended(step, state)

        return execute

    def dispatching(self, original: Callable[..., Any]) -> Callable[..., Any]:
        """`original` (kfp.local's run_single_task_implementation, which runs the task) telling the listener first."""

        def dispatch(**kwargs: Any) -> Any:
            log = self.current()
            log.dispatched = True
            self.listener.step_started(log.step)
            return original(**kwargs)

        return dispatch


class TaskStream(io.TextIOBase):
    """sys.stdout or sys.stderr while the pipeline runs: each write goes to the log of the task its thread runs."""

    def __init__(self, router: TaskRouter) -> None:
        super().__init__()
        self._router = router

    def write(self, text: str) -> int:
        self._router.current().write(text)
        return len(text)

    @property
    def encoding(self) -> str:
        return "utf-8"


@contextlib.contextmanager
def _swapped(owner: Any, name: str, value: Any) -> Iterator[None]:
    """`owner.name` is `value` inside the block, what it was after."""
    before = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, before)


@contextlib.contextmanager
def capture_tasks(logs: Path, listener: StepListener) -> Iterator[None]:
    """While kfp.local runs the pipeline in this block: every task's output in `logs/<step>.log`, kfp.local's own
    lines in `logs/pipeline.log`, nothing on this process's stdout and stderr (a console for the listener must be
    given the real stream before), and the tasks' starts, ends and progress (their bars' event lines, which
    EVENTS_ENV turns on in tasks that inherit this environment) told to `listener`.

    It wraps two kfp.local functions (kfp 2.17; both are called through their module, so replacing the attribute
    is enough): execute_single_task, which runs in the thread of one task, cached or not, and knows the task's name;
    and run_single_task_implementation, which only an executed task reaches."""
    router = TaskRouter(logs, listener)
    with contextlib.ExitStack() as stack:
        stack.callback(router.pipeline.close)
        stack.enter_context(
            _swapped(task_executor, "execute_single_task", router.executing(task_executor.execute_single_task))
        )
        stack.enter_context(
            _swapped(
                task_dispatcher,
                "run_single_task_implementation",
                router.dispatching(task_dispatcher.run_single_task_implementation),
            )
        )
        # kfp.local indents streamed lines to set them off from its own; a log of its own needs no indent
        stack.enter_context(_swapped(logging_utils, "indented_print", contextlib.nullcontext))
        stack.enter_context(_environ({EVENTS_ENV: "1"}))  # the tasks' bars write their event lines
        stack.enter_context(_swapped(sys, "stdout", TaskStream(router)))
        stack.enter_context(_swapped(sys, "stderr", TaskStream(router)))
        yield


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """`values` in os.environ inside the block (the SubprocessRunner's tasks inherit it), as they were after."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# what a task's container gets from this environment, when set: credentials, endpoints, the trail's key, the policy
PASSED_ENV = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "KR_AUDIT_HMAC_KEY",
    "KR_AUDIT_HMAC_KEY_FILE",
    POLICY_ENV,
    "OMP_NUM_THREADS",
)


def run_local(
    req: RunRequest,
    out: Path,
    cache_root: Path | None = None,
    image: str | None = None,
    listener: StepListener | None = None,
) -> dict:
    """Execute the pipeline into the run folder `out`; returns the summary. `cache_root`: reuse tasks from (and add
    them to) kfp.local's cache there; None: execute every task. `image`: run every task in its own container of
    that image (kfp.local's DockerRunner; `container_runner` says what it mounts); None: as subprocesses of this
    Python. Every task's output goes to `<out>/logs/<step>.log`, none to this process's stdout or stderr;
    `listener` hears of the steps' starts, ends, progress and log lines. Raises PipelineFailed when the run failed,
    RunFolderBusy when another run writes into `out`."""
    out = Path(out).resolve()
    if image:
        check_engine(image)  # before anything in `out` moves
    with run_folder_lock(out), _engine_timeout(ENGINE_TIMEOUT_S if image else None):
        return _run_locked(req, out, cache_root, image, listener or StepListener())


ENGINE_TIMEOUT_S = 900  # seconds a Docker API call may take while kfp.local starts a task's container


@contextlib.contextmanager
def _engine_timeout(seconds: int | None) -> Iterator[None]:
    """Raise docker-py's default API timeout (60 s) for the run: kfp.local calls `docker.from_env()` without one,
    and creating a container on a `vfs` storage driver copies the whole image (about 2 GB) first, which took more
    than 60 s here and failed the task with a read timeout."""
    if seconds is None:
        yield
        return
    import docker.client

    before = docker.client.DEFAULT_TIMEOUT_SECONDS
    docker.client.DEFAULT_TIMEOUT_SECONDS = seconds
    try:
        yield
    finally:
        docker.client.DEFAULT_TIMEOUT_SECONDS = before


def check_engine(image: str) -> None:
    """Raise ContainerEngineError unless a Docker engine answers and holds `image` (kfp.local would try to pull it)."""
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        raise ContainerEngineError(f"no Docker engine answers ({exc}); start one, or run without --image") from exc
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        raise ContainerEngineError(
            f"image {image!r} is not in the local Docker engine; build it (scripts/build-images) or pull it first"
        ) from None
    finally:
        client.close()


def container_runner(cfg: RunConfig, out: Path, checkpoints: Path) -> local.DockerRunner:
    """kfp.local's DockerRunner for a run of `cfg` into `out`: host networking (the tracking server, the S3 API and
    the trail on 127.0.0.1 answer as they do here), this user's uid:gid (files in the run folder stay the user's),
    the PASSED_ENV variables that are set, and bind mounts at the same paths for every host folder the tasks read
    or write: the run folder and checkpoints (read-write), an embedded MLflow store and a folder trail (read-write),
    the data folder or file and the gate policy (read-only). kfp.local mounts the pipeline root itself. s3:// data
    and trails and http(s) tracking need no mount."""
    from docker.types import Mount

    writable = [out, checkpoints]
    readable: list[Path] = []
    if cfg.tracking.uri and cfg.tracking.uri.startswith("sqlite:///"):
        writable.append(Path(cfg.tracking.uri.removeprefix("sqlite:///")).parent)
    for uri in (cfg.tracking.artifact_location, cfg.audit.uri):
        if uri and "://" not in uri:
            writable.append(Path(uri))
        elif uri and uri.startswith("file://"):
            writable.append(Path(url2pathname(urlsplit(uri).path)))
    dataset = Path(cfg.data.dataset)
    if cfg.data.dataset.endswith(".npz") and "://" not in cfg.data.dataset:
        readable.append(dataset.resolve().parent)
    elif cfg.data.data_root and "://" not in cfg.data.data_root:
        readable.append(Path(cfg.data.data_root))
    if os.environ.get(POLICY_ENV):
        readable.append(Path(os.environ[POLICY_ENV]).resolve().parent)
    mounts: dict[str, Mount] = {}
    for path in writable:
        path = Path(path).resolve()
        path.mkdir(parents=True, exist_ok=True)  # docker would create a missing source as root
        mounts.setdefault(str(path), Mount(target=str(path), source=str(path), type="bind"))
    for path in readable:  # a folder both read and written stays writable
        path = Path(path).resolve()
        mounts.setdefault(str(path), Mount(target=str(path), source=str(path), type="bind", read_only=True))
    env = {k: os.environ[k] for k in PASSED_ENV if os.environ.get(k)}
    # HOME: a uid the image does not know still needs somewhere to cache (matplotlib, torch)
    env |= {RUN_DIR_ENV: str(out), "HOME": "/tmp", EVENTS_ENV: "1"}
    return local.DockerRunner(
        mounts=list(mounts.values()),
        environment=env,
        network_mode="host",
        user=f"{os.getuid()}:{os.getgid()}",
    )


def _run_locked(req: RunRequest, out: Path, cache_root: Path | None, image: str | None, listener: StepListener) -> dict:
    archive_previous(out)
    started = req.started_at or datetime.now(UTC).isoformat(timespec="seconds")
    checkpoints = req.checkpoints_root or str(cache_root.parent / "checkpoints" if cache_root else out / "checkpoints")
    # a key from the OS's randomness: kfp.local's run id comes from Python's global `random`, which a seeded
    # notebook or wrapper makes repeat, and a repeated key would merge two runs in the registry and the trail
    key = req.run_key or new_run_key()
    req = req.model_copy(
        update={"run_dir": str(out), "started_at": started, "checkpoints_root": checkpoints, "run_key": key}
    )
    if image:
        runner = container_runner(resolve_request(req), out, Path(checkpoints))
    else:  # use_venv=False: components run in this interpreter, where kr and torch are already installed
        runner = local.SubprocessRunner(use_venv=False)
    local.init(
        runner=runner,
        pipeline_root=str(out / "kfp"),
        raise_on_error=False,
        enable_caching=cache_root is not None,
        cache_root=str(cache_root) if cache_root else None,
    )
    # no retries: on one machine a failure is not a preempted pod, and retrying bad data only wastes minutes; one
    # shard at a time: two torch processes on a few cores slow each other down several times over
    # and no ConfigMap: a local run's gate policy is the user's KR_GATE_POLICY (`kr run --gate-policy`)
    local_settings = ClusterSettings(retries=0, regen_parallelism=1, gate_policy_config_map="")
    runner_name = f"{RUNNER}/docker" if image else RUNNER
    # the tasks' run folder, told outside their inputs so that it never enters a cache key
    with _environ({RUN_DIR_ENV: str(out)}), capture_tasks(out / LOGS_DIR, listener):
        build_pipeline(image or LOCAL_IMAGE, local_settings, runner=runner_name)(**req.pipeline_arguments())
    summary_path = out / "summary.json"
    if not summary_path.exists():
        raise PipelineFailed(
            f"the pipeline ended without writing {summary_path}; see the task logs in {out / LOGS_DIR}"
        )
    summary = json.loads(summary_path.read_text())
    if summary.get("status") != "succeeded":
        raise PipelineFailed(
            f"the pipeline failed: {summary.get('error') or 'a task failed'}; partial summary in {summary_path}"
        )
    return summary
