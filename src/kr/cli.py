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

from kr.config import PROFILES, ConfigError, RunConfig, resolve_config
from kr.progress import console

RUNNERS = ("local", "kfp.local")

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


def _fail(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def _resolve(
    dataset: str,
    profile: str,
    data_root: Path | None,
    config: Path | None,
    overrides: list[str] | None,
    download: bool = False,
) -> RunConfig:
    base = {"data": {"dataset": dataset, "download": download}}
    root = data_root if data_root is not None else os.environ.get("KR_DATA_ROOT")
    if root:
        base["data"]["data_root"] = str(root)
    return resolve_config(profile, config, overrides, base=base)


@app.command()
def run(
    dataset: DatasetOpt = "breastmnist",
    profile: ProfileOpt = "cpu",
    data_root: DataRootOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="run folder; default runs/<dataset>-<profile>-<time>. An existing folder resumes generator training."
        ),
    ] = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    download: Annotated[bool, typer.Option(help="download the MedMNIST file if it is missing")] = False,
    runner: Annotated[
        str,
        typer.Option(
            help="local: every step in this process; kfp.local: the KFP DAG with kfp.local's SubprocessRunner"
        ),
    ] = "local",
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the whole Knowledge Recycling pipeline and write summary.json, a report and plots to the run folder."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
    from kr.data import DataError
    from kr.generator import GeneratorError

    if runner not in RUNNERS:
        raise _fail(f"unknown runner {runner!r}; choose one of {', '.join(RUNNERS)}")
    try:
        cfg = _resolve(dataset, profile, data_root, config, overrides, download)
        if out is None:
            name = Path(dataset).stem if dataset.endswith(".npz") else dataset
            out = Path("runs") / f"{name}-{profile}-{datetime.now():%Y%m%d-%H%M%S}"
        if runner == "kfp.local":
            from kr.pipeline.local import PipelineFailed, run_local

            try:
                summary = run_local(cfg, out, profile)
            except PipelineFailed as exc:
                raise _fail(str(exc), code=1) from None
        else:
            from kr.run import run_pipeline

            summary = run_pipeline(cfg, out, profile)
    except (ConfigError, DataError, GeneratorError) as exc:
        raise _fail(str(exc)) from None
    console.print(
        f"[bold green]done[/] in {summary['total_wall_s'] / 60:.1f} min: teacher test acc "
        f"{summary['teacher']['test']['accuracy']:.3f}, student {summary['student']['test']['accuracy']:.3f} "
        f"(gap {summary['cas_gap_pp']:+.2f} pp)\nsummary: {out / 'summary.json'}\nreport:  {out / 'report.md'}"
    )


@app.command("compile")
def compile_cmd(
    out: Annotated[Path, typer.Option(help="where to write the pipeline (KFP IR YAML)")],
    image: Annotated[str, typer.Option(help="component image, e.g. registry.example.org/kr:0.1.0-abc1234")],
) -> None:
    """Compile the pipeline for Kubeflow Pipelines with every component running in IMAGE."""
    from kr.pipeline.compile import compile_pipeline

    console.print(f"wrote {compile_pipeline(out, image)}")


@app.command("config")
def show_config(
    dataset: DatasetOpt = "breastmnist",
    profile: ProfileOpt = "cpu",
    data_root: DataRootOpt = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of YAML")] = False,
) -> None:
    """Print the fully resolved configuration (defaults < profile < --config < --set)."""
    try:
        cfg = _resolve(dataset, profile, data_root, config, overrides)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    values = cfg.model_dump(mode="json")
    typer.echo(json.dumps(values, indent=2) if as_json else yaml.safe_dump(values, sort_keys=False))


if __name__ == "__main__":
    app()
