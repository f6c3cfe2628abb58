"""`kr`: the command line. A thin layer: it builds the run request and calls the library and the pipelines.

Options every request-taking command shares (dataset, profile, config, overrides, tracking, registry, trail) are
declared once (`REQUEST_OPTIONS`) and attached to each command's signature by `shared`.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from kr.config import PROFILES, ConfigError
from kr.progress import console
from kr.run.request import DEFAULT_PROFILE, RunRequest, resolve_request

app = typer.Typer(
    help="Knowledge Recycling: train a classifier that never sees a real image, and gate it on privacy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DatasetOpt = Annotated[
    str, typer.Option(help="MedMNIST 2-D flag (e.g. breastmnist) or a path to an .npz in MedMNIST layout")
]
ProfileOpt = Annotated[str, typer.Option(help=f"one of {', '.join(PROFILES)}")]
DataRootOpt = Annotated[
    Path | None, typer.Option(help="folder with <flag>.npz; default $KR_DATA_ROOT, then ~/.medmnist")
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML file of config values (over the profile)")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="KEY=VALUE over the config, e.g. gkd.temperature=3; repeatable")
]
TrackingOpt = Annotated[
    str | None,
    typer.Option(help="MLflow tracking URI; default $MLFLOW_TRACKING_URI, else an embedded SQLite store in $KR_HOME"),
]
ModelNameOpt = Annotated[str | None, typer.Option(help="registered model name; default kr-<dataset>-student")]
AuditOpt = Annotated[
    str | None,
    typer.Option(help="audit trail: a folder or s3://bucket/prefix; default $KR_AUDIT_URI, else $KR_HOME/audit"),
]
GpusOpt = Annotated[int, typer.Option(min=0, help="GPUs per heavy step; 0 compiles a CPU-only pipeline")]
HostOpt = Annotated[str, typer.Option(help="Kubeflow Pipelines API, e.g. https://kfp.example.org/pipeline")]
ImageOpt = Annotated[str, typer.Option(help="component image the pipeline runs in (see scripts/build-images)")]
ExperimentOpt = Annotated[str, typer.Option(help="KFP experiment")]

# name: (annotation, default); inspect.Parameter.empty: required
REQUEST_OPTIONS: dict[str, tuple[Any, Any]] = {
    "dataset": (DatasetOpt, "breastmnist"),
    "profile": (ProfileOpt, DEFAULT_PROFILE),
    "config": (ConfigOpt, None),
    "overrides": (SetOpt, None),
    "tracking_uri": (TrackingOpt, None),
    "model_name": (ModelNameOpt, None),
    "audit_uri": (AuditOpt, None),
}
LOCAL_OPTIONS: dict[str, tuple[Any, Any]] = {"data_root": (DataRootOpt, None)}
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


def _fail(message: str, code: int = 2) -> typer.Exit:
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
    dataset: str,
    profile: str,
    config: Path | None,
    overrides: list[str] | None,
    tracking_uri: str | None,
    model_name: str | None,
    audit_uri: str | None,
    data_root: Path | None = None,
    download: bool = False,
    local_store: bool = True,
) -> RunRequest:
    """The run request from the command line, resolved once here so that a bad value fails before any work.

    local_store: a run on this machine (embedded MLflow store and trail in $KR_HOME by default, data root made
    absolute); else a cluster run (defaults from the environment only). Raises ConfigError, OSError.
    """
    from kr.data import resolve_data_root

    extra = list(overrides or [])
    if download:
        extra.append("data.download=true")
    uri = tracking_uri or (default_tracking_uri() if local_store else os.environ.get("MLFLOW_TRACKING_URI", ""))
    if local_store and uri.startswith("sqlite:///"):
        # an embedded store keeps its artifacts beside its database (otherwise MLflow writes ./mlruns wherever
        # each task happens to run)
        db = Path(uri.removeprefix("sqlite:///")).resolve()
        db.parent.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{db}"  # absolute: every task process must find the same file
        extra.insert(0, f"tracking.artifact_location={(db.parent / 'mlartifacts').as_uri()}")
    req = RunRequest(
        dataset=dataset,
        profile=profile,
        overrides=extra,
        config_yaml=Path(config).read_text() if config else "",
        # every task of a local run must find the same folder, whatever its working directory
        data_root=str(resolve_data_root(data_root).resolve()) if local_store else str(data_root or ""),
        model_name=model_name or "",
        tracking_uri=uri,
        audit_uri=audit_uri or (default_audit_uri() if local_store else os.environ.get("KR_AUDIT_URI", "")),
        run_dir="placeholder-for-validation" if local_store else "",
        kfp_run_id="validation",
    )
    resolve_request(req)  # raises ConfigError with the key and the reason
    return req


@app.command()
@shared(REQUEST_OPTIONS, LOCAL_OPTIONS)
def run(
    out: Annotated[
        Path | None,
        typer.Option(
            help="run folder; default runs/<dataset>-<profile>-<time>. An existing folder resumes generator training."
        ),
    ] = None,
    download: Annotated[bool, typer.Option(help="download the MedMNIST file if it is missing")] = False,
    cache: Annotated[
        bool,
        typer.Option(
            help="reuse tasks whose inputs equal an earlier cached run's (KFP caching, in $KR_HOME/kfp-cache); "
            "the generator then trains in $KR_HOME/checkpoints"
        ),
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    **options: Any,
) -> None:
    """Run the Knowledge Recycling pipeline (the KFP DAG, with kfp.local on this machine): train, audit, gate, and
    promote the student in the MLflow registry only when every gate passes."""
    from kr.pipelines.local import PipelineFailed, run_local

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
    try:
        req = build_request(**options, download=download)
    except (ConfigError, OSError) as exc:
        raise _fail(str(exc)) from None
    dataset, profile = options["dataset"], options["profile"]
    if out is None:
        name = Path(dataset).stem if dataset.endswith(".npz") else dataset
        out = Path("runs") / f"{name}-{profile}-{datetime.now():%Y%m%d-%H%M%S}"
    try:
        req = req.model_copy(update={"run_dir": "", "kfp_run_id": ""})
        summary = run_local(req, out, cache_root=kr_home() / "kfp-cache" if cache else None)
    except PipelineFailed as exc:
        code = 2 if "validate_data" in str(exc) or "resolve" in str(exc) else 1
        raise _fail(str(exc), code=code) from None
    reg = summary.get("registry") or {}
    verdict = (
        f"promoted: {reg['model_name']} v{reg['version']} is @champion"
        if summary.get("outcome") == "promoted"
        else f"not promoted ({summary.get('outcome')}); see the gates in the report"
    )
    reused = f"; reused {', '.join(summary['reused_steps'])}" if summary.get("reused_steps") else ""
    console.print(
        f"[bold green]done[/] in {summary['total_wall_s'] / 60:.1f} min: teacher test acc "
        f"{summary['teacher']['test']['accuracy']:.3f}, student {summary['student']['test']['accuracy']:.3f} "
        f"(gap {summary['cas_gap_pp']:+.2f} pp); {verdict}{reused}\nsummary: {out / 'summary.json'}\n"
        f"report:  {out / 'report.md'}"
    )


@app.command("compile")
def compile_cmd(
    out: Annotated[Path, typer.Option(help="where to write the pipeline (KFP IR YAML)")],
    image: ImageOpt,
    gpus: GpusOpt = 1,
) -> None:
    """Compile the pipeline for Kubeflow Pipelines with every component running in IMAGE."""
    from kr.pipelines.compile import compile_pipeline
    from kr.pipelines.settings import ClusterSettings

    console.print(f"wrote {compile_pipeline(out, image, ClusterSettings(gpus=gpus))}")


@app.command("config")
@shared(REQUEST_OPTIONS, LOCAL_OPTIONS)
def show_config(
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of YAML")] = False, **options: Any
) -> None:
    """Print the fully resolved configuration (defaults < profile < --config < --set)."""
    try:
        values = resolve_request(build_request(**options)).model_dump(mode="json", exclude={"run"})
    except (ConfigError, OSError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(json.dumps(values, indent=2) if as_json else yaml.safe_dump(values, sort_keys=False))


def _cluster_request(options: dict[str, Any]) -> RunRequest:
    request = {k: v for k, v in options.items() if k in REQUEST_OPTIONS}
    try:
        return build_request(**request, local_store=False)
    except (ConfigError, OSError) as exc:
        raise _fail(str(exc)) from None


@app.command()
@shared(CLUSTER_OPTIONS, REQUEST_OPTIONS)
def submit(**options: Any) -> None:
    """Start one pipeline run on a Kubeflow Pipelines cluster."""
    from kr.pipelines.cluster import ClusterError, submit_run
    from kr.pipelines.settings import ClusterSettings

    req = _cluster_request(options)
    try:
        run_id, url = submit_run(
            options["host"], options["image"], req, options["experiment"], ClusterSettings(gpus=options["gpus"])
        )
    except ClusterError as exc:
        raise _fail(str(exc), code=1) from None
    console.print(f"started run {run_id}: {url}")


@app.command()
@shared(CLUSTER_OPTIONS, REQUEST_OPTIONS)
def schedule(
    cron: Annotated[str, typer.Option(help="KFP cron with seconds first, e.g. '0 0 3 * * 0' (Sundays 03:00)")],
    name: Annotated[str, typer.Option(help="recurring run name")] = "kr-retrain",
    **options: Any,
) -> None:
    """Create a recurring retraining run (at most one run at a time, no catch-up of missed runs)."""
    from kr.pipelines.cluster import ClusterError, check_cron, schedule_runs
    from kr.pipelines.settings import ClusterSettings

    try:
        check_cron(cron)
    except ClusterError as exc:
        raise _fail(str(exc)) from None
    req = _cluster_request(options)
    cluster = ClusterSettings(gpus=options["gpus"])
    try:
        job_id = schedule_runs(options["host"], options["image"], req, options["experiment"], name, cron, cluster)
    except ClusterError as exc:
        raise _fail(str(exc), code=1) from None
    console.print(f"recurring run {name} ({job_id}) created: {cron}")


audit_app = typer.Typer(help="The audit trail: one hash-chained record per run.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("show")
def audit_show(
    uri: Annotated[str | None, typer.Option(help="trail folder or s3://bucket/prefix")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List the trail's records, oldest first."""
    from kr.governance.trail import TrailError, open_trail

    try:
        records = open_trail(uri or default_audit_uri()).records()
    except TrailError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(records, indent=2))
        return
    from rich.table import Table

    table = Table("record", "outcome", "dataset", "model version", "decided at", "hash")
    for r in records:
        reg = (r.get("outputs") or {}).get("registry") or {}
        version = f"{reg.get('model_name')} v{reg.get('version')}" if reg else "-"
        if reg.get("alias"):
            version += f" @{reg['alias']}"
        dataset = ((r.get("inputs") or {}).get("dataset") or {}).get("name", "?")
        table.add_row(
            r["record_id"], r.get("outcome", "?"), dataset, version, r.get("decided_at", ""), r["record_hash"][:12]
        )
    console.print(table)


@audit_app.command("verify")
def audit_verify(uri: Annotated[str | None, typer.Option(help="trail folder or s3://bucket/prefix")] = None) -> None:
    """Recompute the hash chain; exit 1 naming the first altered or missing record."""
    from kr.governance.trail import TrailError, open_trail

    try:
        report = open_trail(uri or default_audit_uri()).verify()
    except TrailError as exc:
        raise _fail(str(exc)) from None
    if not report.ok:
        raise _fail(f"audit trail broken at {report.first_bad}: {report.problem}", code=1)
    console.print(f"[bold green]ok[/]: {report.checked} record(s), chain intact")


@app.command()
def serve(
    model_name: Annotated[str, typer.Option(help="registered model name, e.g. kr-breastmnist-student")],
    tracking_uri: TrackingOpt = None,
    port: Annotated[int, typer.Option()] = 5001,
    host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
) -> None:
    """Serve the current champion (models:/NAME@champion) with `mlflow models serve` in this environment."""
    import subprocess
    import sys

    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri or default_tracking_uri()}
    # mlflow starts its scoring server as `uvicorn` by name: make it this environment's
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        f"models:/{model_name}@champion",
        "--env-manager",
        "local",
        "--host",
        host,
        "--port",
        str(port),
    ]
    raise typer.Exit(subprocess.call(cmd, env=env))


if __name__ == "__main__":
    app()
