"""The end of a run: register the student, promote or record the rejection, and write the audit record.

Three outcomes, one record each in the audit trail: `promoted` (every gate passed, alias moved), `rejected` (the
student is registered with its verdicts, the champion is untouched) and `failed` (a step failed; written by the
pipeline's exit handler). Steps are retried by KFP, so everything here is idempotent per run key.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from kr.config import RunConfig
from kr.data import load_saved_dataset
from kr.governance import registry
from kr.governance.trail import sha256_file
from kr.run import tracking
from kr.serialization import read_records, write_json

AUDIT_COPY = "audit_record.json"


def _result(records: dict, step: str) -> dict | None:
    return records[step]["result"] if step in records else None


def audit_body(
    cfg: RunConfig,
    run_dir: Path,
    outcome: str,
    registry_block: dict | None,
    gates: dict | None,
    started_at: str,
    error: str | None = None,
) -> dict:
    """One run as the audit trail keeps it: inputs, outputs, verdicts, times (DESIGN.md's audit record)."""
    records = read_records(run_dir)
    data, student, teacher = (_result(records, s) for s in ("validate_data", "train_student", "train_teacher"))
    info = (data or {}).get("info", {})
    student_path = Path(student["path"]) if student else None
    return {
        "run_id": cfg.run.run_key,
        "outcome": outcome,
        "inputs": {
            "dataset": {
                "name": info.get("name", cfg.data.dataset),
                "md5": info.get("md5"),
                "source": info.get("source"),
            },
            "code_version": tracking.code_version(),
            "image": cfg.run.image,
            "kfp_run_id": cfg.run.kfp_run_id or None,
            "config_digest": cfg.digest(),
            "config": cfg.model_dump(mode="json"),
        },
        "outputs": {
            "model_sha256": sha256_file(student_path) if student_path and student_path.exists() else None,
            "registry": registry_block,
            "student_test_accuracy": student["test"]["accuracy"] if student else None,
            "teacher_test_accuracy": teacher["test"]["accuracy"] if teacher else None,
        },
        "gates": gates,
        "mlflow": {"tracking_uri": cfg.tracking.uri, "parent_run_id": tracking.parent_run_id(run_dir)},
        "started_at": started_at,
        "decided_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "error": error,
    }


def append_audit(cfg: RunConfig, run_dir: Path, body: dict) -> dict | None:
    """Append once per run (a retried step gets the entry it wrote before) and keep a copy in the run folder."""
    if not cfg.audit.uri:
        return None
    from kr.governance.trail import open_trail

    trail = open_trail(cfg.audit.uri)
    entry = trail.find(body["run_id"]) if body["run_id"] else None
    if entry is None:
        entry = trail.append(body)
    write_json(Path(run_dir) / AUDIT_COPY, trail.get(entry["record_id"]))
    return _reference(entry, cfg.audit.uri)


def _reference(record: dict, uri: str | None) -> dict:
    """What the summary and the registry keep of a record: enough to find it and check it."""
    return {k: record[k] for k in ("record_id", "record_hash", "previous_hash", "sequence")} | {"uri": uri}


def recorded(cfg: RunConfig, run_dir: Path) -> dict | None:
    """The reference to the audit record this run already wrote, if any."""
    copy = Path(run_dir) / AUDIT_COPY
    return _reference(json.loads(copy.read_text()), cfg.audit.uri) if copy.exists() else None


def conclude(cfg: RunConfig, run_dir: Path, data_dir: Path, started_at: str, promote: bool) -> dict:
    """Register the student with every verdict, promote when allowed, and write the run's audit record."""
    records = read_records(run_dir)
    gates = dict(_result(records, "evaluate_gates") or {"passed": False})
    student = records["train_student"]
    registry_block = None
    if tracking.enabled(cfg):
        example = load_saved_dataset(data_dir).x_test[:2]
        run_id = student.get("mlflow_run_id") or tracking.parent_run_id(run_dir)
        registry_block = registry.decide(
            cfg,
            run_id,
            Path(student["result"]["path"]),
            example,
            gates,
            student["result"]["test"]["accuracy"],
            promote=promote and bool(gates.get("passed")),
            move_alias=False,
        )
        gates["champion"] = registry_block.pop("champion_gate")
    else:
        gates["champion"] = {"passed": False, "evaluated": False, "reasons": ["no tracking URI: no registry"]}
    gates["passed"] = bool(gates.get("passed")) and gates["champion"]["passed"]
    outcome = "promoted" if registry_block and registry_block["promoted"] else "rejected"
    # the record first, then the alias: no model becomes champion without its audit record (a failure in between
    # leaves a record of a promotion that did not happen, never a champion nobody recorded)
    audit = append_audit(cfg, run_dir, audit_body(cfg, run_dir, outcome, registry_block, gates, started_at))
    if registry_block and registry_block["promoted"]:
        registry.set_champion(cfg, registry_block["version"])
    if audit and registry_block:
        registry.tag_audit(cfg, registry_block["version"], audit)
    return {"outcome": outcome, "registry": registry_block, "gates": gates, "audit": audit}


def record_failure(cfg: RunConfig, run_dir: Path, started_at: str, error: str | None) -> dict | None:
    """A failed run's audit record (the exit handler's job); a run that already concluded keeps its record."""
    existing = recorded(cfg, run_dir)
    if existing:
        return existing
    gates = _result(read_records(run_dir), "evaluate_gates")
    return append_audit(cfg, run_dir, audit_body(cfg, run_dir, "failed", None, gates, started_at, error))
