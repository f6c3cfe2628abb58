"""`kr`: the command line. A thin layer: it resolves the config and calls the library."""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
import yaml

from kr.config import PROFILES, ConfigError
from kr.progress import console

DEFAULT_PROFILE = "laptop"

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
    list[str] | None, typer.Option("--set", help="KEY=VALUE over the config, e.g. gkd.epochs=3; repeatable")
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


def _fail(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def kr_home() -> Path:
    """Where the embedded MLflow store and the audit trail live when no URI is given: $KR_HOME, else ./runs."""
    return Path(os.environ.get("KR_HOME") or "runs").resolve()


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{kr_home() / 'mlflow.db'}"


def default_audit_uri() -> str:
    return os.environ.get("KR_AUDIT_URI") or str(kr_home() / "audit")


def _request(
    dataset: str,
    profile: str,
    data_root: Path | None,
    config: Path | None,
    overrides: list[str] | None,
    tracking_uri: str | None,
    model_name: str | None,
    audit_uri: str | None,
    download: bool = False,
    local_store: bool = True,
):
    """The pipeline's parameters from the command line; resolved once here so a bad value fails before any work."""
    from kr.run.request import RunRequest, resolve_request

    root = data_root if data_root is not None else os.environ.get("KR_DATA_ROOT")
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
        data_root=str(Path(root).resolve()) if root and local_store else str(root or ""),
        model_name=model_name or "",
        tracking_uri=uri,
        audit_uri=audit_uri or (default_audit_uri() if local_store else os.environ.get("KR_AUDIT_URI", "")),
        run_dir="placeholder-for-validation" if local_store else "",
        kfp_run_id="validation",
    )
    resolve_request(req)  # raises ConfigError with the key and the reason
    return req


@app.command()
def run(
    dataset: DatasetOpt = "breastmnist",
    profile: ProfileOpt = DEFAULT_PROFILE,
    data_root: DataRootOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="run folder; default runs/<dataset>-<profile>-<time>. An existing folder resumes generator training."
        ),
    ] = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    tracking_uri: TrackingOpt = None,
    model_name: ModelNameOpt = None,
    audit_uri: AuditOpt = None,
    download: Annotated[bool, typer.Option(help="download the MedMNIST file if it is missing")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the Knowledge Recycling pipeline (the KFP DAG, with kfp.local on this machine): train, audit, gate, and
    promote the student in the MLflow registry only when every gate passes."""
    from dataclasses import replace

    from kr.pipelines.local import PipelineFailed, run_local

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
    try:
        req = _request(dataset, profile, data_root, config, overrides, tracking_uri, model_name, audit_uri, download)
    except (ConfigError, OSError) as exc:
        raise _fail(str(exc)) from None
    if out is None:
        name = Path(dataset).stem if dataset.endswith(".npz") else dataset
        out = Path("runs") / f"{name}-{profile}-{datetime.now():%Y%m%d-%H%M%S}"
    try:
        summary = run_local(replace(req, run_dir="", kfp_run_id=""), out)
    except PipelineFailed as exc:
        code = 2 if "validate_data" in str(exc) or "resolve" in str(exc) else 1
        raise _fail(str(exc), code=code) from None
    reg = summary.get("registry") or {}
    verdict = (
        f"promoted: {reg['model_name']} v{reg['version']} is @champion"
        if summary.get("outcome") == "promoted"
        else f"not promoted ({summary.get('outcome')}); see the gates in the report"
    )
    console.print(
        f"[bold green]done[/] in {summary['total_wall_s'] / 60:.1f} min: teacher test acc "
        f"{summary['teacher']['test']['accuracy']:.3f}, student {summary['student']['test']['accuracy']:.3f} "
        f"(gap {summary['cas_gap_pp']:+.2f} pp); {verdict}\nsummary: {out / 'summary.json'}\n"
        f"report:  {out / 'report.md'}"
    )


@app.command("compile")
def compile_cmd(
    out: Annotated[Path, typer.Option(help="where to write the pipeline (KFP IR YAML)")],
    image: Annotated[str, typer.Option(help="component image, e.g. registry.example.org/kr:0.1.0-abc1234")],
    gpus: GpusOpt = 1,
) -> None:
    """Compile the pipeline for Kubeflow Pipelines with every component running in IMAGE."""
    from kr.pipelines.compile import compile_pipeline
    from kr.pipelines.knowledge_recycling import ClusterSettings

    console.print(f"wrote {compile_pipeline(out, image, ClusterSettings(gpus=gpus))}")


@app.command("config")
def show_config(
    dataset: DatasetOpt = "breastmnist",
    profile: ProfileOpt = DEFAULT_PROFILE,
    data_root: DataRootOpt = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    tracking_uri: TrackingOpt = None,
    model_name: ModelNameOpt = None,
    audit_uri: AuditOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of YAML")] = False,
) -> None:
    """Print the fully resolved configuration (defaults < profile < --config < --set)."""
    from kr.run.request import resolve_request

    try:
        req = _request(dataset, profile, data_root, config, overrides, tracking_uri, model_name, audit_uri)
        values = resolve_request(req).model_dump(mode="json", exclude={"run"})
    except (ConfigError, OSError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(json.dumps(values, indent=2) if as_json else yaml.safe_dump(values, sort_keys=False))


GpusOpt = Annotated[int, typer.Option(min=0, help="GPUs per heavy step; 0 compiles a CPU-only pipeline")]
HostOpt = Annotated[str, typer.Option(help="Kubeflow Pipelines API, e.g. https://kfp.example.org/pipeline")]
ImageOpt = Annotated[str, typer.Option(help="component image the pipeline runs in (see scripts/build-images)")]
ExperimentOpt = Annotated[str, typer.Option(help="KFP experiment")]


def _cluster_request(dataset, profile, config, overrides, tracking_uri, model_name, audit_uri):
    try:
        return _request(
            dataset, profile, None, config, overrides, tracking_uri, model_name, audit_uri, local_store=False
        )
    except (ConfigError, OSError) as exc:
        raise _fail(str(exc)) from None


@app.command()
def submit(
    host: HostOpt,
    image: ImageOpt,
    dataset: DatasetOpt = "breastmnist",
    profile: ProfileOpt = "gpu",
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    tracking_uri: TrackingOpt = None,
    model_name: ModelNameOpt = None,
    audit_uri: AuditOpt = None,
    experiment: ExperimentOpt = "knowledge-recycling",
    gpus: GpusOpt = 1,
) -> None:
    """Start one pipeline run on a Kubeflow Pipelines cluster."""
    from kr.pipelines.cluster import ClusterError, submit_run
    from kr.pipelines.knowledge_recycling import ClusterSettings

    req = _cluster_request(dataset, profile, config, overrides, tracking_uri, model_name, audit_uri)
    try:
        run_id, url = submit_run(host, image, req, experiment, ClusterSettings(gpus=gpus))
    except ClusterError as exc:
        raise _fail(str(exc), code=1) from None
    console.print(f"started run {run_id}: {url}")


@app.command()
def schedule(
    host: HostOpt,
    image: ImageOpt,
    cron: Annotated[str, typer.Option(help="KFP cron with seconds first, e.g. '0 0 3 * * 0' (Sundays 03:00)")],
    name: Annotated[str, typer.Option(help="recurring run name")] = "kr-retrain",
    dataset: DatasetOpt = "breastmnist",
    profile: ProfileOpt = "gpu",
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    tracking_uri: TrackingOpt = None,
    model_name: ModelNameOpt = None,
    audit_uri: AuditOpt = None,
    experiment: ExperimentOpt = "knowledge-recycling",
    gpus: GpusOpt = 1,
) -> None:
    """Create a recurring retraining run (at most one run at a time, no catch-up of missed runs)."""
    from kr.pipelines.cluster import ClusterError, check_cron, schedule_runs
    from kr.pipelines.knowledge_recycling import ClusterSettings

    try:
        check_cron(cron)
    except ClusterError as exc:
        raise _fail(str(exc)) from None
    req = _cluster_request(dataset, profile, config, overrides, tracking_uri, model_name, audit_uri)
    try:
        job_id = schedule_runs(host, image, req, experiment, name, cron, ClusterSettings(gpus=gpus))
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
