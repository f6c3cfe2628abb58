"""MLflow tracking: one parent run per pipeline run, one nested run per step.

Every step runs in its own process (a kfp.local subprocess or a pod), so nothing lives in memory: the parent
run's id is written to `<run_dir>/tracking.json` by the first task (`resolve_config`), and each step's run id goes
into its typed result. A step that has no run folder (a cacheable task on a cluster) logs a run of its own, which
`summarize` later nests under the parent (`adopt`). The ML code never imports MLflow; steps hand their results here
after they finish.
Credentials come only from the environment (MLFLOW_TRACKING_USERNAME/PASSWORD, AWS_*), never from the config.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kr.config import RunConfig
from kr.serialization import write_json

log = logging.getLogger(__name__)

TRACKING_FILE = "tracking.json"
PARENT_TAG = "mlflow.parentRunId"
MAX_PARAM_LEN = 6000  # MLflow's limit on a param value


def enabled(cfg: RunConfig) -> bool:
    """Whether the run is tracked (a tracking URI is set)."""
    return bool(cfg.tracking.uri)


def client(cfg: RunConfig):
    """An MlflowClient on the run's tracking URI, also its registry URI."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=cfg.tracking.uri, registry_uri=cfg.tracking.uri)


def _git_commit(folder: Path) -> tuple[str, bool] | None:
    """(HEAD's short hash, dirty) of the git checkout that tracks `folder`; None when there is none (an installed
    wheel, no git, a git error). Dirty: a tracked file anywhere in the checkout differs from HEAD (staged or not),
    or an untracked, not ignored file sits under `folder`."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=5, check=True)
        return done.stdout.strip()

    try:
        # a wheel installed into a venv that happens to live inside some repository is not that repository's code
        if not git("ls-files", "--", "."):
            return None
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
        dirty = dirty or bool(git("ls-files", "--others", "--exclude-standard", "--", "."))
    except (OSError, subprocess.SubprocessError):
        return None
    return commit, dirty


def code_version(checkout: str | os.PathLike | None = None) -> str:
    """kr's version and the commit its code comes from: "<version>+<12 hex digits>", with ".dirty" appended when the
    code differs from that commit, "<version>+unknown" when no commit is known. Never raises.

    From the git checkout that tracks `checkout` (default: the kr package's folder): HEAD, dirty when a tracked file
    differs from HEAD or an untracked file sits in that folder. Without one (an installed wheel, as in the images):
    KR_COMMIT, which scripts/build-images bakes into the images, with KR_DIRTY=1 when it built from a dirty tree
    (KR_GIT_COMMIT, an older name, is still read).
    """
    import kr

    found = _git_commit(Path(checkout) if checkout is not None else Path(kr.__file__).parent)
    if found is not None:
        commit, dirty = found
    else:
        commit = (os.environ.get("KR_COMMIT") or os.environ.get("KR_GIT_COMMIT") or "").strip()
        dirty = os.environ.get("KR_DIRTY", "").strip().lower() in ("1", "true", "yes")
        if re.fullmatch(r"[0-9a-f]{13,40}", commit):  # the build passes the full hash; records use 12 digits
            commit = commit[:12]
    if not commit or commit == "unknown":
        return f"{kr.__version__}+unknown"
    return f"{kr.__version__}+{commit}" + (".dirty" if dirty else "")


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _experiment_id(cfg: RunConfig) -> str:
    c = client(cfg)
    exp = c.get_experiment_by_name(cfg.tracking.experiment)
    if exp is not None:
        return exp.experiment_id
    try:
        return c.create_experiment(cfg.tracking.experiment, artifact_location=cfg.tracking.artifact_location)
    except Exception:  # created meanwhile by a concurrent run: use theirs
        exp = c.get_experiment_by_name(cfg.tracking.experiment)
        if exp is None:
            raise
        return exp.experiment_id


def parent_run_id(run_dir: Path) -> str | None:
    """The run's MLflow parent run id from `<run_dir>/tracking.json`, None before resolve-config opened it."""
    path = Path(run_dir) / TRACKING_FILE
    return json.loads(path.read_text())["parent_run_id"] if path.exists() else None


def open_parent(cfg: RunConfig, run_dir: Path, dataset: dict | None = None) -> str | None:
    """The pipeline run's MLflow run, created once (the first step) and found again by every later step."""
    if not enabled(cfg):
        return None
    existing = parent_run_id(run_dir)
    if existing:
        return existing
    from mlflow.entities import Param

    c = client(cfg)
    tags = {
        "mlflow.runName": f"{Path(cfg.data.dataset).stem}-{cfg.run.run_key or Path(run_dir).name}",
        "kr.run_key": cfg.run.run_key,
        "kr.kfp_run_id": cfg.run.kfp_run_id,
        "kr.image": cfg.run.image,
        "kr.code_version": code_version(),
        "kr.config_digest": cfg.digest(),
        "kr.run_dir": str(run_dir),
        "kr.dataset": cfg.data.dataset,
    }
    run = c.create_run(_experiment_id(cfg), tags={k: v for k, v in tags.items() if v})
    params = [
        Param(k, json.dumps(v) if not isinstance(v, str) else v)
        for k, v in flatten(cfg.model_dump(mode="json")).items()
    ]
    for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
        c.log_batch(run.info.run_id, params=[Param(p.key, p.value[:MAX_PARAM_LEN]) for p in params[i : i + 100]])
    write_json(Path(run_dir) / TRACKING_FILE, {"parent_run_id": run.info.run_id, "tracking_uri": cfg.tracking.uri})
    return run.info.run_id


def log_dataset(cfg: RunConfig, parent: str, data) -> None:
    """The real training split (kr.data.Dataset) as the parent run's input, named and digested by the file's MD5:
    its digest and source path, not its images (mlflow.data.from_numpy keeps a profile and schema only)."""
    if not (enabled(cfg) and parent):
        return
    from mlflow.entities import DatasetInput, InputTag

    import mlflow

    info = data.info
    c = client(cfg)
    c.set_tag(parent, "kr.dataset_md5", info.md5)
    dataset = mlflow.data.from_numpy(
        data.x_train, targets=data.y_train, source=info.path, name=info.name, digest=info.md5
    )
    # through the client: `with mlflow.start_run(run_id=parent)` would end the parent run, FINISHED, on leaving
    entity = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", "training")])
    c.log_inputs(parent, datasets=[entity])


def _canary_headline(summary: dict, model: str) -> dict[str, float | None]:
    """A model's canary AUC and one-run epsilon lower bound from the summary ({} without canaries)."""
    found = ((summary.get("privacy") or {}).get("canaries") or {}).get(model)
    if not found:
        return {}
    return {"auc": found["auc"], "epsilon_lower_bound": found["epsilon_lower_bound"]["epsilon"]}


def _numeric_leaves(result: dict) -> dict[str, float]:
    out = {}
    for key, value in flatten(result).items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if value == value and abs(value) != float("inf"):  # NaN / inf cannot be logged
            out[key] = float(value)
    return out


def _history_metrics(result: dict) -> Iterable[tuple[str, float, int]]:
    """Per-epoch curves: classifier histories (list of dicts) and the generator's loss curve."""
    for epoch, record in enumerate(result.get("history") or []):
        for key, value in _numeric_leaves(record).items():
            if key != "epoch":
                yield f"epoch.{key}", value, epoch
    for step, loss in result.get("loss_curve") or []:
        yield "train.loss", float(loss), int(step)


def log_step(
    cfg: RunConfig,
    parent: str | None,
    step: str,
    result: dict | None,
    seconds: float,
    artifacts: Iterable[Path] = (),
    error: str | None = None,
) -> str | None:
    """A run for one finished (or failed) step, nested under `parent` when given: its scalar results, curves
    (per-epoch metrics, the generator's loss) and artifacts. Returns its run id; None without tracking."""
    if not enabled(cfg):
        return None
    from mlflow.entities import Metric

    c = client(cfg)
    tags = {"mlflow.runName": step, "kr.step": step} | ({PARENT_TAG: parent} if parent else {})
    experiment = c.get_run(parent).info.experiment_id if parent else _experiment_id(cfg)
    run = c.create_run(experiment, tags=tags)
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    scalars = {k: v for k, v in _numeric_leaves(result or {}).items() if not k.startswith("history")}
    scalars.setdefault("seconds", seconds)  # a typed result carries its own seconds already
    metrics = [Metric(k, v, now, 0) for k, v in scalars.items()]
    metrics += [Metric(k, v, now, s) for k, v, s in _history_metrics(result or {})]
    for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
        c.log_batch(run_id, metrics=metrics[i : i + 1000])
    for path in artifacts:
        path = Path(path)
        if path.is_dir():
            c.log_artifacts(run_id, str(path), artifact_path=path.name)
        elif path.exists():
            c.log_artifact(run_id, str(path))
    if error:
        c.set_tag(run_id, "kr.error", error[:5000])
    c.set_terminated(run_id, status="FAILED" if error else "FINISHED")
    return run_id


def adopt(cfg: RunConfig, parent: str, step_runs: dict[str, str | None]) -> None:
    """Nest step runs logged without a parent under this run's parent; a step KFP reused from an earlier run keeps
    its own parent, and the parent gets a `kr.reused.<step>` tag naming that run."""
    if not enabled(cfg):
        return
    c = client(cfg)
    for step, run_id in step_runs.items():
        if not run_id:
            continue
        owner = c.get_run(run_id).data.tags.get(PARENT_TAG)
        if owner is None:
            c.set_tag(run_id, PARENT_TAG, parent)
        elif owner != parent:
            c.set_tag(parent, f"kr.reused.{step}", run_id)


def finish_parent(cfg: RunConfig, run_dir: Path, summary: dict, artifacts: Iterable[Path]) -> str | None:
    """Headline metrics, the summary, report, plots and audit record on the parent run; then close it."""
    parent = open_parent(cfg, run_dir)  # a run that failed before its first step still gets a parent run
    if not parent:
        return None
    from mlflow.entities import Metric

    c = client(cfg)
    fidelity = (summary.get("generator") or {}).get("fidelity") or {}
    pool = summary.get("regeneration") or {}
    headline = {
        "teacher_test_accuracy": (summary.get("teacher") or {}).get("test", {}).get("accuracy"),
        "student_test_accuracy": (summary.get("student") or {}).get("test", {}).get("accuracy"),
        "naive_test_accuracy": ((summary.get("naive") or {}).get("test") or {}).get("accuracy"),
        "cas_gap_pp": summary.get("cas_gap_pp"),
        "student_strongest_mia_auc": ((summary.get("privacy") or {}).get("student") or {})
        .get("strongest", {})
        .get("auc"),
        "teacher_strongest_mia_auc": ((summary.get("privacy") or {}).get("teacher") or {})
        .get("strongest", {})
        .get("auc"),
        **{
            f"{model}_canary_{key}": value
            for model in ("teacher", "student")
            for key, value in _canary_headline(summary, model).items()
        },
        **{f"generator_{k}": v for k, v in fidelity.items() if k != "per_class"},
        "pool_teacher_agreement": pool.get("teacher_agreement"),
        "pool_broken_fraction": pool.get("broken_fraction"),
        "total_wall_s": summary.get("total_wall_s"),
    }
    now = int(time.time() * 1000)
    c.log_batch(parent, metrics=[Metric(k, float(v), now, 0) for k, v in _numeric_leaves(headline).items()])
    for path in artifacts:
        if Path(path).exists():
            c.log_artifact(parent, str(path))
    c.set_tag(parent, "kr.status", summary.get("status", "unknown"))
    c.set_tag(parent, "kr.gates_passed", str(bool((summary.get("gates") or {}).get("passed"))).lower())
    privacy_verdict = (summary.get("gates") or {}).get("privacy") or {}
    c.set_tag(parent, "kr.privacy_verdict", privacy_verdict.get("state", "not evaluated"))
    c.set_terminated(parent, status="FINISHED" if summary.get("status") == "succeeded" else "FAILED")
    return parent
