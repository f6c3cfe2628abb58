"""The command line's shared options (declared once), defaults from the environment, and the run request they build."""

from __future__ import annotations

import difflib
import functools
import inspect
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from kr.config import PROFILES, ConfigError, DataConfig, parse_config_text, read_config_text
from kr.progress import console
from kr.run.request import DEFAULT_PROFILE, RunRequest, resolve_request

# Precedence, the same for every key: built-in defaults < profile < --config < --set < these flags; a flag's own
# default (from the environment or $KR_HOME) applies only where no source set the key.
DatasetOpt = Annotated[
    str | None,
    typer.Option(
        help="MedMNIST 2-D flag (e.g. breastmnist; `kr data list`), a path to an .npz in MedMNIST layout, an image "
        "folder or an s3:// URI; default data.dataset of the config, else breastmnist"
    ),
]
Size = DataConfig.model_fields["size"].annotation  # Literal[28, 64, 128, 224]: typer offers exactly these
SizeOpt = Annotated[
    Size | None,
    typer.Option(help="image side in pixels (MedMNIST+ files above 28); default data.size of the config, else 28"),
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

# Every command takes these two (`shared` wires them); 0 = normal, 1+ = more (-vv), -1 = --quiet.
VerboseOpt = Annotated[int, typer.Option("--verbose", "-v", count=True, help="more output; repeat for more (-vv)")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="print only the result (and errors)")]
OUTPUT_OPTIONS: dict[str, tuple[Any, Any]] = {"verbose": (VerboseOpt, 0), "quiet": (QuietOpt, False)}
_level = 0  # the running command's output level (`verbosity`), set by `set_verbosity`
LOG_LEVELS = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}  # -vv and more: DEBUG


def verbosity(verbose: int, quiet: bool) -> int:
    """One number for the output level: -1 with --quiet, else the count of -v (0: normal). Raises typer.BadParameter
    for both at once."""
    if quiet and verbose:
        raise typer.BadParameter("--quiet and --verbose contradict each other; give one")
    return -1 if quiet else verbose


def set_verbosity(level: int) -> None:
    """Apply an output level to this process: logging at ERROR (-1, --quiet), WARNING (0), INFO (1, -v) or DEBUG
    (2+, -vv); `note` prints only above -1."""
    global _level
    _level = level
    threshold = LOG_LEVELS.get(level, logging.DEBUG if level > 0 else logging.ERROR)
    logging.basicConfig(level=threshold)
    logging.getLogger().setLevel(threshold)  # basicConfig does nothing once a handler exists (a second command)


def output_level() -> int:
    """The running command's output level: -1 quiet, 0 normal, 1+ verbose."""
    return _level


def note(message: str) -> None:
    """Print a line that is not the command's result (what was checked, where things are); silent with --quiet."""
    if _level >= 0:
        console.print(message)


# name: (annotation, default); inspect.Parameter.empty: required
REQUEST_OPTIONS: dict[str, tuple[Any, Any]] = {
    "dataset": (DatasetOpt, None),
    "size": (SizeOpt, None),
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
    """Give a command the options of `groups` (after its own), received through its **kwargs, and -v/--verbose and
    -q/--quiet (`OUTPUT_OPTIONS`), applied (`set_verbosity`) before the command runs and not passed to it. A command
    that declares `verbose` or `quiet` itself gets neither and handles its output level itself."""

    def attach(fn: Callable) -> Callable:
        params = inspect.signature(fn, eval_str=True).parameters.values()
        own = [p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD]
        applies_output = not {p.name for p in own} & set(OUTPUT_OPTIONS)
        extra = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
            for group in (*groups, OUTPUT_OPTIONS if applies_output else {})
            for name, (annotation, default) in group.items()
        ]

        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            if applies_output:
                set_verbosity(verbosity(kwargs.pop("verbose"), kwargs.pop("quiet")))
            return fn(*args, **kwargs)

        command.__signature__ = inspect.Signature([*own, *extra])  # type: ignore[attr-defined]
        return command

    return attach


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print `message` as an error and return the Exit to raise: 2 for a bad request (nothing was done), 1 when the
    work itself failed or what it needs is missing."""
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
    size: int | None = None,
    local_store: bool = True,
    create_folders: bool = True,
) -> RunRequest:
    """The run request from the command line, resolved here so that a bad value fails before any work.

    One precedence for every key: built-in defaults < profile < `config` < `overrides` < the explicit flags
    (`dataset`, `data_root`, `tracking_uri`, `model_name`, `audit_uri`, `download`, `size`; None: not given). The
    defaults that come from the environment apply only to keys no source set: the tracking URI
    ($MLFLOW_TRACKING_URI), the audit trail ($KR_AUDIT_URI) and, for a local run, the data root ($KR_DATA_ROOT, then
    ~/.medmnist). The request carries the resolved dataset, data root, URIs and model name, so the pipeline resolves
    the same config again.

    local_store: a run on this machine (embedded MLflow store and trail in $KR_HOME by default, data root made
    absolute, a local dataset path must exist); else a cluster run (defaults from the environment only; paths are the
    cluster's). create_folders: make the embedded store's folder (a command that runs); False for one that only
    shows the request, which then leaves no trace. Raises ConfigError (a bad config file, override or value, an
    unknown dataset (`check_dataset`), named; never a credential), OSError (the store's folder cannot be made).
    """
    from kr.data import resolve_data_root
    from kr.run.policy import POLICY_ENV

    if gate_policy is not None:
        # the environment carries it to every task of a local run (kfp.local subprocesses inherit it)
        os.environ[POLICY_ENV] = str(Path(gate_policy).resolve())

    extra = list(overrides or [])
    if download is not None:
        extra.append(f"data.download={json.dumps(download)}")  # a flag beats --set
    if size is not None:
        extra.append(f"data.size={size}")
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
    check_dataset(cfg.data.dataset, local=local_store)  # before anything is made: nothing to clean up after a typo
    uri = cfg.tracking.uri or (default_tracking_uri() if local_store else os.environ.get("MLFLOW_TRACKING_URI", ""))
    if local_store and uri.startswith("sqlite:///"):
        # an embedded store keeps its artifacts beside its database (otherwise MLflow writes ./mlruns wherever
        # each task happens to run)
        db = Path(uri.removeprefix("sqlite:///")).resolve()
        if create_folders:
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


def check_dataset(dataset: str, local: bool = True) -> None:
    """Refuse a dataset no run could read, before any work: it must be a 2-D MedMNIST flag (any case), an s3:// URI,
    or a local path: an .npz file or an image folder, which must exist when `local` (a cluster's paths are its own).

    Raises ConfigError naming the dataset, with the closest flag (difflib) and the valid flags on one line.
    """
    text = dataset.strip()
    if flag_problem(text) is None or text.lower().startswith("s3://"):
        return
    path = Path(text).expanduser()
    if path.is_dir() or (path.suffix == ".npz" and path.is_file()):
        return
    if path.exists():
        raise ConfigError(f"dataset {text}: neither an .npz file nor a folder")
    if text.endswith(".npz") or any(sep and sep in text for sep in ("/", os.sep, os.altsep)):
        if not local:
            return  # a path on the cluster's volume: only the cluster can tell
        raise ConfigError(f"dataset {text}: no such file or folder ({path.absolute()})")
    raise ConfigError(f"dataset {text!r} is not an .npz file, an image folder or an s3:// URI; {flag_problem(text)}")


def flag_problem(name: str) -> str | None:
    """None for a 2-D MedMNIST flag (any case); else why not, with the closest flag (difflib) and every flag on one
    line."""
    from kr.data import valid_flags

    flags = valid_flags()
    if name.strip().lower() in flags:
        return None
    close = difflib.get_close_matches(name.strip().lower(), flags, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"{name!r} is not a MedMNIST 2-D flag; {hint}flags: {', '.join(flags)}"
