"""`kr audit`: read and verify the audit trail (one hash-chained record per run)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from kr.cli.options import default_audit_uri, fail
from kr.progress import console

audit_app = typer.Typer(help="The audit trail: one hash-chained record per run.", no_args_is_help=True)


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
        raise fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(records, indent=2))
        return
    from rich.table import Table

    table = Table("record", "outcome", "privacy", "dataset", "model version", "decided at", "hash")
    for r in records:
        reg = (r.get("outputs") or {}).get("registry") or {}
        version = f"{reg.get('model_name')} v{reg.get('version')}" if reg else "-"
        if reg.get("alias"):
            version += f" @{reg['alias']}"
        dataset = ((r.get("inputs") or {}).get("dataset") or {}).get("name", "?")
        privacy = ((r.get("outputs") or {}).get("privacy") or {}).get("verdict", "-")
        table.add_row(
            r["record_id"],
            r.get("outcome", "?"),
            privacy,
            dataset,
            version,
            r.get("decided_at", ""),
            r["record_hash"][:12],
        )
    console.print(table)


@audit_app.command("verify")
def audit_verify(uri: Annotated[str | None, typer.Option(help="trail folder or s3://bucket/prefix")] = None) -> None:
    """Recompute the hash chain; exit 1 naming the first altered or missing record."""
    from kr.governance.trail import TrailError, open_trail

    try:
        report = open_trail(uri or default_audit_uri()).verify()
    except TrailError as exc:
        raise fail(str(exc)) from None
    if not report.ok:
        raise fail(f"audit trail broken at {report.first_bad}: {report.problem}", code=1)
    console.print(f"[bold green]ok[/]: {report.checked} record(s), chain intact")
