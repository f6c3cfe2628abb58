"""`kr`: the command line. A thin layer: it builds the run request and calls the library and the pipelines.

Options every request-taking command shares (dataset, profile, config, overrides, tracking, registry, trail) are
declared once (`REQUEST_OPTIONS`) and attached to each command's signature by `shared`.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from kr.cli.options import (
    CLUSTER_OPTIONS,
    LOCAL_OPTIONS,
    REQUEST_OPTIONS,
    GpusOpt,
    ImageOpt,
    build_request,
    fail,
    kr_home,
    shared,
)
from kr.cli.serve import serve
from kr.cli.trail import audit_app
from kr.config import ConfigError
from kr.progress import console
from kr.run.request import RunRequest, resolve_request

app = typer.Typer(
    help="Knowledge Recycling: train a classifier that never sees a real image, and gate it on privacy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(audit_app, name="audit")
app.command()(serve)


@app.command()
@shared(REQUEST_OPTIONS, LOCAL_OPTIONS)
def run(
    out: Annotated[
        Path | None,
        typer.Option(
            help="run folder; default runs/<dataset>-<profile>-<time>. An existing folder resumes generator training."
        ),
    ] = None,
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
    promote the student in the MLflow registry only when every gate passes. Exit 2, before any work, for a bad
    option, config or run folder; 1 when the pipeline fails."""
    from kr.pipelines.local import PipelineFailed, RunFolderBusy, run_local

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
    if out is not None and (problem := _not_a_folder(out)):
        raise fail(f"--out {out}: {problem}")
    try:
        req = build_request(**options)
    except (ConfigError, OSError) as exc:
        raise fail(str(exc)) from None
    dataset, profile = req.dataset, options["profile"]
    if out is None:
        name = Path(dataset).stem if dataset.endswith(".npz") else dataset
        out = Path("runs") / f"{name}-{profile}-{datetime.now():%Y%m%d-%H%M%S}"
    try:
        req = req.model_copy(update={"run_dir": "", "kfp_run_id": ""})
        summary = run_local(req, out, cache_root=kr_home() / "kfp-cache" if cache else None)
    except RunFolderBusy as exc:  # another run holds the folder: nothing was done
        raise fail(str(exc)) from None
    except PipelineFailed as exc:
        code = 2 if "validate_data" in str(exc) or "resolve" in str(exc) else 1
        raise fail(str(exc), code=code) from None
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


def _not_a_folder(out: Path) -> str | None:
    """Why `out` cannot be a run folder (it, or a folder above it, is a file), or None."""
    for path in (out, *out.parents):
        if path.exists():
            return None if path.is_dir() else f"{path} is not a folder (a file of that name exists)"
    return None


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
    """Print the fully resolved configuration, as `kr run` would use it: defaults < profile < --config < --set <
    the flags (--dataset, --data-root, --download, --tracking-uri, --model-name, --audit-uri); the environment's
    defaults ($MLFLOW_TRACKING_URI, $KR_AUDIT_URI, $KR_DATA_ROOT, $KR_HOME) fill only what no source set."""
    try:
        values = resolve_request(build_request(**options)).model_dump(mode="json", exclude={"run"})
    except (ConfigError, OSError) as exc:
        raise fail(str(exc)) from None
    typer.echo(json.dumps(values, indent=2) if as_json else yaml.safe_dump(values, sort_keys=False))


def _cluster_request(options: dict[str, Any]) -> RunRequest:
    request = {k: v for k, v in options.items() if k in REQUEST_OPTIONS}
    try:
        return build_request(**request, local_store=False)
    except (ConfigError, OSError) as exc:
        raise fail(str(exc)) from None


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
        raise fail(str(exc), code=1) from None
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
        raise fail(str(exc)) from None
    req = _cluster_request(options)
    cluster = ClusterSettings(gpus=options["gpus"])
    try:
        job_id = schedule_runs(options["host"], options["image"], req, options["experiment"], name, cron, cluster)
    except ClusterError as exc:
        raise fail(str(exc), code=1) from None
    console.print(f"recurring run {name} ({job_id}) created: {cron}")
