"""`kr pipelines` and `kr schedule`: the pipeline as a named, versioned KFP pipeline, and recurring retraining.

Exit codes, as for `kr submit`: 2 for a bad request (an option, a cron, an unknown or ambiguous name, a version name
already taken), checked before anything on the cluster changes; 1 when the cluster cannot be reached or its API
refuses or fails. The message says which; never a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import click
import typer
from rich.markup import escape
from typer.core import TyperGroup

from kr.cli.options import CLUSTER_OPTIONS, REQUEST_OPTIONS, GpusOpt, HostOpt, ImageOpt, build_request, fail, shared
from kr.config import ConfigError
from kr.progress import console
from kr.run.request import RunRequest

JsonOpt = Annotated[bool, typer.Option("--json", help="JSON instead of a table")]

RefArg = Annotated[str, typer.Argument(metavar="NAME_OR_ID", help="recurring run name or id (`kr schedule list`)")]


def cluster_request(options: dict[str, Any]) -> RunRequest:
    """The run request of a cluster command's options (exit 2 for a bad config or override)."""
    request = {k: v for k, v in options.items() if k in REQUEST_OPTIONS}
    try:
        return build_request(**request, local_store=False)
    except (ConfigError, OSError) as exc:
        raise fail(str(exc)) from None


@contextmanager
def cluster_errors() -> Iterator[None]:
    """ClusterInputError -> exit 2, ClusterError -> exit 1, each with its message."""
    from kr.pipelines.cluster import ClusterError, ClusterInputError

    try:
        yield
    except ClusterInputError as exc:
        raise fail(escape(str(exc)), code=2) from None
    except ClusterError as exc:
        raise fail(escape(str(exc)), code=1) from None


class _CreateByDefault(TyperGroup):
    """`kr schedule --cron ...` (options, no subcommand) is `kr schedule create --cron ...`, as before there were
    subcommands."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0].startswith("-") and args[0] not in self.get_help_option_names(ctx):
            args = ["create", *args]
        return super().parse_args(ctx, args)


schedule_app = typer.Typer(
    cls=_CreateByDefault,
    no_args_is_help=True,
    help="Recurring retraining on Kubeflow Pipelines: create, list, pause, resume, delete. "
    "`kr schedule --cron ...` is `kr schedule create --cron ...`.",
)
pipelines_app = typer.Typer(
    no_args_is_help=True, help="The pipeline on Kubeflow Pipelines as a named pipeline with versions."
)


@schedule_app.command("create")
@shared(CLUSTER_OPTIONS, REQUEST_OPTIONS)
def schedule_create(
    cron: Annotated[
        str,
        typer.Option(
            help="KFP cron, six fields with seconds first, in UTC: '0 0 3 * * 0' is Sundays 03:00; names (MON, JAN), "
            "lists, ranges and steps as KFP takes them, or @hourly, @daily, @weekly, @monthly, @yearly"
        ),
    ],
    name: Annotated[str, typer.Option(help="recurring run name; must not be taken")] = "kr-retrain",
    **options: Any,
) -> None:
    """Create a recurring retraining run (at most one run at a time, no catch-up of missed runs), compiled for
    IMAGE from this checkout. Exit 2 for a bad cron or option, or a name another recurring run has."""
    from kr.pipelines.cluster import check_cron, schedule_runs
    from kr.pipelines.settings import ClusterSettings

    with cluster_errors():
        cron = check_cron(cron)  # a bad cron is named before the config is even read
    req = cluster_request(options)
    cluster = ClusterSettings(gpus=options["gpus"])
    with cluster_errors():
        job_id = schedule_runs(options["host"], options["image"], req, options["experiment"], name, cron, cluster)
    console.print(f"recurring run {escape(name)} ({job_id}) created: {escape(cron)}")


def _printed_plainly(rows: list[dict], as_json: bool, empty: str) -> bool:
    """Print `rows` as JSON, or `empty` when there are none; False when a table is still to be printed."""
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return True
    if not rows:
        console.print(empty)
        return True
    return False


@schedule_app.command("list")
@shared()
def schedule_list(host: HostOpt, as_json: JsonOpt = False) -> None:
    """List the recurring runs: name, id, status (ENABLED or DISABLED), schedule, experiment, created."""
    from kr.pipelines.cluster import list_schedules, schedule_row

    with cluster_errors():
        rows = [schedule_row(r) for r in list_schedules(host)]
    if _printed_plainly(rows, as_json, "no recurring runs"):
        return
    from rich.table import Table

    table = Table("name", "id", "status", "schedule", "experiment", "created")
    for r in rows:
        table.add_row(
            *(escape(str(r[k] or "-")) for k in ("name", "id", "status", "schedule", "experiment_id")),
            escape(str(r["created_at"] or "-")),
        )
    console.print(table)


def _change(host: str, ref: str, action: str) -> None:
    from kr.pipelines.cluster import SCHEDULE_ACTIONS, change_schedule, schedule_row

    with cluster_errors():
        run = change_schedule(host, ref, action)
    row = schedule_row(run)
    done = SCHEDULE_ACTIONS[action][1]
    console.print(f"recurring run {escape(str(row['name']))} ({row['id']}, {escape(str(row['schedule']))}) {done}")


@schedule_app.command("pause")
@shared()
def schedule_pause(ref: RefArg, host: HostOpt) -> None:
    """Pause a recurring run: no new runs start until it is resumed (a run in progress goes on)."""
    _change(host, ref, "pause")


@schedule_app.command("resume")
@shared()
def schedule_resume(ref: RefArg, host: HostOpt) -> None:
    """Resume a paused recurring run (missed runs are not caught up)."""
    _change(host, ref, "resume")


@schedule_app.command("delete")
@shared()
def schedule_delete(ref: RefArg, host: HostOpt) -> None:
    """Delete a recurring run (the runs it started, and their records, stay)."""
    _change(host, ref, "delete")


@pipelines_app.command("upload")
@shared()
def pipelines_upload(
    host: HostOpt,
    image: ImageOpt,
    name: Annotated[str, typer.Option(help="pipeline name; a new version of it if it exists")] = "knowledge-recycling",
    version: Annotated[
        str | None,
        typer.Option(
            help="version name; default <image tag or digest>_<code version of this checkout>, with the UTC time "
            "appended when the checkout is dirty. A name the pipeline already has is refused"
        ),
    ] = None,
    gpus: GpusOpt = 1,
) -> None:
    """Compile the pipeline for IMAGE from this checkout and upload it as a new version of the pipeline NAME
    (created if there is none). Prints the pipeline id, the version id and the UI link."""
    from kr.pipelines.cluster import upload_pipeline
    from kr.pipelines.settings import ClusterSettings

    with cluster_errors():
        up = upload_pipeline(host, image, name, version, ClusterSettings(gpus=gpus))
    made = "created pipeline" if up.new_pipeline else "pipeline"
    console.print(
        f"{made} {escape(up.pipeline_name)} ({up.pipeline_id}): uploaded version {escape(up.version_name)} "
        f"({up.version_id})\n{up.url}"
    )


@pipelines_app.command("list")
@shared()
def pipelines_list(
    host: HostOpt,
    name: Annotated[str | None, typer.Option(help="only this pipeline")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List the pipelines and their versions, newest version first."""
    from kr.pipelines.cluster import list_pipelines

    with cluster_errors():
        found = list_pipelines(host, name)
    rows = [
        {
            "pipeline": p.display_name,
            "pipeline_id": p.pipeline_id,
            "versions": [
                {
                    "name": v.display_name,
                    "id": v.pipeline_version_id,
                    "created_at": v.created_at.isoformat() if v.created_at else None,
                    "description": v.description,
                }
                for v in versions
            ],
        }
        for p, versions in found
    ]
    if _printed_plainly(rows, as_json, "no pipelines"):
        return
    from rich.table import Table

    table = Table("pipeline", "pipeline id", "version", "version id", "created")
    for row in rows:
        versions = row["versions"] or [{"name": "(no version)", "id": "-", "created_at": None}]
        for i, v in enumerate(versions):
            first = i == 0
            table.add_row(
                escape(str(row["pipeline"])) if first else "",
                row["pipeline_id"] if first else "",
                escape(str(v["name"])),
                v["id"],
                v["created_at"] or "-",
            )
    console.print(table)
