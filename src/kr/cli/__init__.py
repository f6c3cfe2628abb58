"""`kr`: the command line. A thin layer: it builds the run request and calls the library and the pipelines.

Options every request-taking command shares (dataset, size, profile, config, overrides, tracking, registry, trail)
are declared once (`REQUEST_OPTIONS`) and attached to each command's signature by `shared`, which also gives every
command -v/--verbose (INFO logging; -vv DEBUG) and -q/--quiet (only the result and errors).

Exit codes, the same for every command: 0 done; 2 a bad request (an option, a config, a dataset, a name that does not
exist), refused before anything is written; 1 the work failed or what it needs is missing (e.g. no champion to serve,
a cluster that cannot be reached).
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from kr.cli.cluster import cluster_errors, cluster_request, pipelines_app, schedule_app
from kr.cli.data import data_app
from kr.cli.options import (
    CLUSTER_OPTIONS,
    LOCAL_OPTIONS,
    REQUEST_OPTIONS,
    GpusOpt,
    ImageOpt,
    QuietOpt,
    VerboseOpt,
    build_request,
    fail,
    kr_home,
    set_verbosity,
    shared,
    verbosity,
)
from kr.cli.serve import serve
from kr.cli.trail import audit_app
from kr.config import ConfigError
from kr.progress import console
from kr.run.request import resolve_request

app = typer.Typer(
    help="Knowledge Recycling: train a classifier that never sees a real image, and gate it on privacy.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(audit_app, name="audit")
app.add_typer(data_app, name="data")
app.add_typer(pipelines_app, name="pipelines")
app.add_typer(schedule_app, name="schedule")
app.command()(serve)


def version_text() -> str:
    """`kr <installed version>`, with the code version (commit, dirty) of the checkout when it differs."""
    from kr.run.tracking import code_version

    try:
        installed = installed_version("kr")
    except PackageNotFoundError:  # run from a source tree that was never installed
        import kr

        installed = kr.__version__
    code = code_version()
    return f"kr {installed}" + (f" (code {code})" if code != installed else "")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(version_text())
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="print kr's version and exit"),
    ] = False,
) -> None:
    """Knowledge Recycling: train a classifier that never sees a real image, and gate it on privacy."""


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
    image: Annotated[
        str | None,
        typer.Option(
            help="run every task in its own container of this image (kfp.local's DockerRunner, a Docker engine, host "
            "networking; build one with scripts/build-images); default: tasks run as processes of this Python"
        ),
    ] = None,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
    **options: Any,
) -> None:
    """Run the Knowledge Recycling pipeline (the KFP DAG, with kfp.local on this machine): train, audit, gate, and
    promote the student in the MLflow registry only when every gate passes. Shows the steps as they run (a live
    table on a terminal, a line per finished step otherwise), then the result; every step's output goes to
    <out>/logs/<step>.log (-v also prints it, --quiet shows only the result). Exit 2, before any work, for a bad
    option, config or run folder; 1 when the pipeline fails, after the failed step's last log lines."""
    from rich.console import Console

    from kr.pipelines.local import ContainerEngineError, PipelineFailed, RunFolderBusy, run_local
    from kr.run.step_table import ORDER
    from kr.run.view import LOGS_DIR, RunView, result_lines

    level = verbosity(verbose, quiet)
    set_verbosity(level)
    if out is not None and (problem := _not_a_folder(out)):
        raise fail(f"--out {out}: {problem}")
    try:
        req = build_request(**options)
    except (ConfigError, OSError) as exc:
        raise fail(str(exc)) from None
    dataset, profile = req.dataset, options["profile"]
    if out is None:
        # a flag as it is; a file, folder or s3:// object by its last name, without .npz
        name = Path(dataset.rstrip("/")).name.removesuffix(".npz") or "dataset"
        out = Path("runs") / f"{name}-{profile}-{datetime.now():%Y%m%d-%H%M%S}"
    # the real stderr, taken now: while the pipeline runs, sys.stderr collects the tasks' output into their logs
    view = RunView(Console(file=sys.stderr), ORDER, out / LOGS_DIR, level)
    try:
        req = req.model_copy(update={"run_dir": "", "kfp_run_id": ""})
        with view:
            summary = run_local(
                req, out, cache_root=kr_home() / "kfp-cache" if cache else None, image=image, listener=view
            )
    except (RunFolderBusy, ContainerEngineError) as exc:  # nothing was done: another run holds the folder, or
        raise fail(str(exc)) from None  # no engine or image for --image
    except PipelineFailed as exc:
        view.print_failure()
        code = 2 if "validate_data" in str(exc) or "resolve" in str(exc) else 1
        raise fail(str(exc), code=code) from None
    typer.echo("\n".join(result_lines(summary, out)))


def _not_a_folder(out: Path) -> str | None:
    """Why `out` cannot be a run folder (it, or a folder above it, is a file), or None."""
    for path in (out, *out.parents):
        if path.exists():
            return None if path.is_dir() else f"{path} is not a folder (a file of that name exists)"
    return None


@app.command("compile")
@shared()
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
    the flags (--dataset, --size, --data-root, --download, --tracking-uri, --model-name, --audit-uri); the
    environment's defaults ($MLFLOW_TRACKING_URI, $KR_AUDIT_URI, $KR_DATA_ROOT, $KR_HOME) fill only what no source
    set. Writes nothing. Exit 2 for a bad option, config or dataset."""
    try:
        request = build_request(**options, create_folders=False)
        values = resolve_request(request).model_dump(mode="json", exclude={"run"})
    except (ConfigError, OSError) as exc:
        raise fail(str(exc)) from None
    typer.echo(json.dumps(values, indent=2) if as_json else yaml.safe_dump(values, sort_keys=False))


@app.command()
@shared(CLUSTER_OPTIONS, REQUEST_OPTIONS)
def submit(**options: Any) -> None:
    """Start one pipeline run on a Kubeflow Pipelines cluster, compiled for IMAGE from this checkout. Exit 2 for a
    bad option or config, 1 when the cluster cannot be reached or refuses the run."""
    from kr.pipelines.cluster import submit_run
    from kr.pipelines.settings import ClusterSettings

    req = cluster_request(options)
    with cluster_errors():
        run_id, url = submit_run(
            options["host"], options["image"], req, options["experiment"], ClusterSettings(gpus=options["gpus"])
        )
    console.print(f"started run {run_id}: {url}")
