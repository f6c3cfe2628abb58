"""`kr audit`: read and verify the audit trail (one hash-chained record per run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from kr.cli.options import default_audit_uri, fail, shared
from kr.progress import console

audit_app = typer.Typer(help="The audit trail: one hash-chained record per run.", no_args_is_help=True)

UriOpt = Annotated[str | None, typer.Option(help="trail folder or s3://bucket/prefix")]


def _dig(record: Any, *path: str) -> Any:
    """record[path[0]][path[1]]...; None where a level is missing or not an object (a damaged record)."""
    for part in path:
        if not isinstance(record, dict):
            return None
        record = record.get(part)
    return record


def _row(name: str, r: dict | None) -> list[str]:
    if r is None:
        return [name, "(unreadable)", "-", "-", "-", "-", "-"]
    reg = _dig(r, "outputs", "registry") or {}
    version = f"{_dig(reg, 'model_name')} v{_dig(reg, 'version')}" if isinstance(reg, dict) and reg else "-"
    if _dig(reg, "alias"):
        version += f" @{reg['alias']}"
    dataset = _dig(r, "inputs", "dataset", "name") or "?"
    return [
        str(r.get("record_id") or f"({name})"),
        str(r.get("outcome", "?")),
        str(_dig(r, "outputs", "privacy", "verdict") or "-"),
        str(dataset),
        version,
        str(r.get("decided_at", "")),
        str(r.get("record_hash") or "-")[:12],
    ]


@audit_app.command("show")
@shared()
def audit_show(uri: UriOpt = None, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the trail's records, oldest first; exit 1 naming records that are unreadable or miss fields."""
    from kr.governance.trail import REQUIRED_FIELDS, TrailError, open_trail

    try:
        objects = open_trail(uri or default_audit_uri(), key=None).read_all()
    except TrailError as exc:
        raise fail(escape(str(exc))) from None
    problems = []
    for name, r in objects:
        if r is None:
            problems.append(f"{name}: not a JSON object")
        elif missing := [f for f in REQUIRED_FIELDS if f not in r]:
            problems.append(f"{name} ({r.get('record_id', 'no record_id')}): missing {', '.join(missing)}")
    if as_json:
        typer.echo(json.dumps([r for _, r in objects], indent=2))
    else:
        from rich.table import Table

        table = Table("record", "outcome", "privacy", "dataset", "model version", "decided at", "hash")
        for name, r in objects:
            table.add_row(*(escape(cell) for cell in _row(name, r)))
        console.print(table)
    for problem in problems:
        console.print(f"[bold red]invalid record[/] {escape(problem)}")
    if problems:
        raise fail(f"{len(problems)} invalid record(s); run `kr audit verify` for the whole chain", code=1)


@audit_app.command("verify")
@shared()
def audit_verify(
    uri: UriOpt = None,
    expect_head: Annotated[
        list[str] | None,
        typer.Option(
            "--expect-head",
            metavar="SEQ:HASH",
            help="a published record that must be in the trail with this record_hash: SEQUENCE:HASH or "
            "RECORD_ID:HASH (e.g. a model version's tags kr.audit_record_id:kr.audit_record_hash, or the head a "
            "previous verify printed). Fails on a cut tail or a rewritten chain; repeatable",
        ),
    ] = None,
    require_signatures: Annotated[
        bool,
        typer.Option(
            "--require-signatures",
            help="fail on any unsigned record (needs the key: KR_AUDIT_HMAC_KEY or KR_AUDIT_HMAC_KEY_FILE)",
        ),
    ] = False,
    key_file: Annotated[
        list[Path] | None,
        typer.Option("--key-file", help="another HMAC key file to check signatures with (an older key); repeatable"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Recompute the hash chain and print its head; exit 1 naming the first altered, missing or unexpected record.

    Signatures are checked with the key in KR_AUDIT_HMAC_KEY / KR_AUDIT_HMAC_KEY_FILE (and --key-file).
    """
    from kr.governance.trail import HmacKey, RecordRef, TrailError, open_trail

    try:
        refs = [RecordRef.parse(text) for text in expect_head or []]
        trail = open_trail(uri or default_audit_uri())
        keys = ([trail.key] if trail.key else []) + [HmacKey.from_file(p) for p in key_file or []]
        report = trail.verify(refs, keys=keys, require_signatures=require_signatures)
    except TrailError as exc:
        raise fail(escape(str(exc))) from None
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
    head = (
        f"{report.head} (sequence {report.head_sequence}) record_hash {report.head_hash}"
        if report.head
        else "(empty trail)"
    )
    if not report.ok:
        console.print(f"good: {report.checked} record(s) before it; last good {escape(head)}")
        raise fail(escape(f"audit trail broken at {report.first_bad}: {report.problem}"), code=1)
    console.print(f"[bold green]ok[/]: {report.checked} record(s), chain intact")
    console.print(f"head: {escape(head)}")
    if report.signed:
        console.print(f"signatures: {escape(report.signature_summary())}")
    for ref in report.confirmed:
        console.print(f"expected {escape(ref)}: present and intact")
