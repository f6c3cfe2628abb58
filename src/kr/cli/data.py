"""`kr data`: the MedMNIST datasets kr reads, and fetching one before a run (e.g. on a machine that will lose its
network, or to fill a shared data root).

Exit codes as everywhere in `kr`: 2 for a bad request (an unknown flag or size), 1 when the download fails.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from kr.cli.options import SizeOpt, fail, flag_problem, output_level, shared
from kr.progress import console

data_app = typer.Typer(no_args_is_help=True, help="The MedMNIST 2-D datasets: list them, download one.")


@data_app.command("download")
@shared()
def data_download(
    flag: Annotated[str, typer.Argument(help="MedMNIST 2-D flag, e.g. breastmnist (`kr data list`)")],
    size: SizeOpt = None,
    root: Annotated[
        Path | None, typer.Option(help="folder to put the file in; default $KR_DATA_ROOT, else ~/.medmnist")
    ] = None,
) -> None:
    """Download FLAG's file at --size (28: <flag>.npz, else <flag>_<size>.npz) into ROOT, checking its MD5, and print
    its path. A file already there with the right MD5 is kept. Exit 2 for an unknown flag, 1 when the download
    fails (the message says how to place the file by hand)."""
    from kr.data import DataError, download_medmnist, resolve_data_root

    if problem := flag_problem(flag):
        raise fail(escape(problem))
    try:
        path = download_medmnist(
            flag.strip().lower(), size or 28, resolve_data_root(root), progress=output_level() >= 0
        )
    except DataError as exc:
        raise fail(escape(str(exc)), code=1) from None
    typer.echo(path)


@data_app.command("list")
@shared()
def data_list(as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table")] = False) -> None:
    """List the MedMNIST 2-D flags kr reads: task, classes, channels, images and the sizes each comes in."""
    from kr.data import valid_flags
    from kr.medmnist_catalog import info, sizes

    catalog = info()
    rows = [
        {
            "flag": flag,
            "task": catalog[flag]["task"],
            "classes": list(catalog[flag]["label"].values()),
            "channels": catalog[flag]["n_channels"],
            "images": sum(catalog[flag]["n_samples"].values()),
            "sizes": sizes(flag),
        }
        for flag in valid_flags()
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table("flag", "task", "classes", "channels", "images", "sizes")
    for r in rows:
        table.add_row(
            r["flag"],
            r["task"],
            str(len(r["classes"])),
            str(r["channels"]),
            f"{r['images']:,}",
            ", ".join(map(str, r["sizes"])),
        )
    console.print(table)
