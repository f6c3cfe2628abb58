"""The command line's shared options (declared once), defaults from the environment, and the run request they build."""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from kr.config import PROFILES, parse_config_text, read_config_text
from kr.progress import console
from kr.run.request import DEFAULT_PROFILE, RunRequest, resolve_request

# Precedence, the same for every key: built-in defaults < profile < --config < --set < these flags; a flag's own
# default (from the environment or $KR_HOME) applies only where no source set the key.
DatasetOpt = Annotated[
    str | None,
    typer.Option(
        help="MedMNIST 2-D flag (e.g. breastmnist) or a path to an .npz in MedMNIST layout; default data.dataset "
        "of the config, else breastmnist"
    ),
]
ProfileOpt = Annotated[str, typer.Option(help=f"one of {', '.join(PROFILES)}")]
DataRootOpt = Annotated[
    str | None,
    typer.Option(
        help="folder or s3://bucket/prefix with <flag>.npz; default data.data_root of the config, else "
        "$KR_DATA_ROOT, then ~/.medmnist"
    ),
]
DownloadOpt = Annotated[
    bool | None,
    typer.Option(
        "--download/--no-download",
        help="download the MedMNIST file if it is missing; default data.download of the config (off)",
    ),
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML file of config values (over the profile)")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="KEY=VALUE over the config, e.g. gkd.temperature=3; repeatable")
]
TrackingOpt = Annotated[
    str | None,
    typer.Option(
        help="MLflow tracking URI; default tracking.uri of the config, else $MLFLOW_TRACKING_URI, else an embedded "
        "SQLite store in $KR_HOME"
    ),
]
ModelNameOpt = Annotated[
    str | None,
    typer.Option(help="registered model name; default tracking.model_name of the config, else kr-<dataset>-student"),
]
AuditOpt = Annotated[
    str | None,
    typer.Option(
        help="audit trail: a folder, file:///path or s3://bucket/prefix; default audit.uri of the config, else "
        "$KR_AUDIT_URI, else $KR_HOME/audit"
    ),
]
GpusOpt = Annotated[int, typer.Option(min=0, help="GPUs per heavy step; 0 compiles a CPU-only pipeline")]
HostOpt = Annotated[str, typer.Option(help="Kubeflow Pipelines API, e.g. https://kfp.example.org/pipeline")]
ImageOpt = Annotated[str, typer.Option(help="component image the pipeline runs in (see scripts/build-images)")]
ExperimentOpt = Annotated[str, typer.Option(help="KFP experiment")]

# Every command takes these two (kr.cli wires them); 0 = normal, 1+ = more (-vv), -1 = --quiet.
VerboseOpt = Annotated[int, typer.Option("--verbose", "-v", count=True, help="more output; repeat for more (-vv)")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="print only the result (and errors)")]


def verbosity(verbose: int, quiet: bool) -> int:
    """One number for the output level: -1 with --quiet, else the count of -v (0: normal). Raises typer.BadParameter
    for both at once."""
    if quiet and verbose:
        raise typer.BadParameter("--quiet and --verbose contradict each other; give one")
    return -1 if quiet else verbose


# name: (annotation, default); inspect.Parameter.empty: required
REQUEST_OPTIONS: dict[str, tuple[Any, Any]] = {
    "dataset": (DatasetOpt, None),
    "profile": (ProfileOpt, DEFAULT_PROFILE),
    "config": (ConfigOpt, None),
    "overrides": (SetOpt, None),
    "tracking_uri": (TrackingOpt, None),
    "model_name": (ModelNameOpt, None),
    "audit_uri": (AuditOpt, None),
}
GatePolicyOpt = Annotated[
    Path | None,
    typer.Option(
        help="gate policy (YAML of the loosest thresholds allowed; the run may only tighten them); "
        "default $KR_GATE_POLICY, else none. On a cluster the ConfigMap kr-gate-policy decides"
    ),
]
LOCAL_OPTIONS: dict[str, tuple[Any, Any]] = {
    "data_root": (DataRootOpt, None),
    "download": (DownloadOpt, None),
    "gate_policy": (GatePolicyOpt, None),
}
CLUSTER_OPTIONS: dict[str, tuple[Any, Any]] = {
    "host": (HostOpt, inspect.Parameter.empty),
    "image": (ImageOpt, inspect.Parameter.empty),
    "experiment": (ExperimentOpt, "knowledge-recycling"),
    "gpus": (GpusOpt, 1),
}


def shared(*groups: dict[str, tuple[Any, Any]]) -> Callable[[Callable], Callable]:
    """Give a command the options of `groups` (after its own), received through its **kwargs."""

    def attach(fn: Callable) -> Callable:
        params = inspect.signature(fn, eval_str=True).parameters.values()
        own = [p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD]
        extra = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
            for group in groups
            for name, (annotation, default) in group.items()
        ]
        fn.__signature__ = inspect.Signature([*own, *extra])
        return fn

    return attach


def fail(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def kr_home() -> Path:
    """Where the embedded MLflow store, the audit trail, the task cache and shared checkpoints live when no URI is
    given: $KR_HOME, else ./runs."""
    return Path(os.environ.get("KR_HOME") or "runs").resolve()


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else an embedded SQLite store in $KR_HOME."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{kr_home() / 'mlflow.db'}"


def default_audit_uri() -> str:
    """$KR_AUDIT_URI, else a folder trail in $KR_HOME."""
    return os.environ.get("KR_AUDIT_URI") or str(kr_home() / "audit")


def build_request(
    *,
    dataset: str | None,
    profile: str,
    config: Path | None,
    overrides: list[str] | None,
    tracking_uri: str | None,
    model_name: str | None,
    audit_uri: str | None,
    data_root: str | Path | None = None,
    gate_policy: Path | None = None,
    download: bool | None = None,
    local_store: bool = True,
) -> RunRequest:
    """The run request from the command line, resolved here so that a bad value fails before any work.

    One precedence for every key: built-in defaults < profile < `config` < `overrides` < the explicit flags
    (`dataset`, `data_root`, `tracking_uri`, `model_name`, `audit_uri`, `download`; None: not given). The defaults
    that come from the environment apply only to keys no source set: the tracking URI ($MLFLOW_TRACKING_URI), the
    audit trail ($KR_AUDIT_URI) and, for a local run, the data root ($KR_DATA_ROOT, then ~/.medmnist). The request
    carries the resolved dataset, data root, URIs and model name, so the pipeline resolves the same config again.

    local_store: a run on this machine (embedded MLflow store and trail in $KR_HOME by default, data root made
    absolute); else a cluster run (defaults from the environment only). Raises ConfigError (a bad config file,
    override or value, named; never a credential), OSError (the embedded store's folder cannot be made).
    """
    from kr.data import resolve_data_root
    from kr.run.policy import POLICY_ENV

    if gate_policy is not None:
        # the environment carries it to every task of a local run (kfp.local subprocesses inherit it)
        os.environ[POLICY_ENV] = str(Path(gate_policy).resolve())

    extra = list(overrides or [])
    if download is not None:
        extra.append(f"data.download={json.dumps(download)}")  # a flag beats --set
    config_yaml = read_config_text(config) if config else ""
    parse_config_text(config_yaml, f"config file {config}")  # the file's own problems, named by its path
    # first every source but the defaults: flags beat the config, the config beats the defaults
    explicit = RunRequest(
        dataset=dataset or "",
        profile=profile,
        overrides=extra,
        config_yaml=config_yaml,
        data_root=str(data_root or ""),
        model_name=model_name or "",
        tracking_uri=tracking_uri or "",
        audit_uri=audit_uri or "",
        run_dir="placeholder-for-validation",
        kfp_run_id="validation",
    )
    cfg = resolve_request(explicit)  # raises ConfigError with the key and the reason
    uri = cfg.tracking.uri or (default_tracking_uri() if local_store else os.environ.get("MLFLOW_TRACKING_URI", ""))
    if local_store and uri.startswith("sqlite:///"):
        # an embedded store keeps its artifacts beside its database (otherwise MLflow writes ./mlruns wherever
        # each task happens to run)
        db = Path(uri.removeprefix("sqlite:///")).resolve()
        db.parent.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{db}"  # absolute: every task process must find the same file
        if cfg.tracking.artifact_location is None:
            extra.append(f"tracking.artifact_location={json.dumps((db.parent / 'mlartifacts').as_uri())}")
    root = cfg.data.data_root or ""
    if local_store and "://" not in (root or os.environ.get("KR_DATA_ROOT", "")):
        # every task of a local run must find the same folder, whatever its working directory (an s3:// root is
        # the same everywhere)
        root = str(resolve_data_root(root).resolve())
    elif local_store and not root:
        root = os.environ["KR_DATA_ROOT"]
    req = explicit.model_copy(
        update={
            "dataset": cfg.data.dataset,
            "overrides": extra,
            "data_root": root,
            "model_name": cfg.tracking.model_name or "",
            "tracking_uri": uri,
            "audit_uri": cfg.audit.uri or (default_audit_uri() if local_store else os.environ.get("KR_AUDIT_URI", "")),
            "run_dir": "placeholder-for-validation" if local_store else "",
        }
    )
    resolve_request(req)  # the defaults are checked too (e.g. $KR_AUDIT_URI)
    return req
