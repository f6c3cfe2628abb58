"""The end of a run: register the student, promote or record the rejection, and write the run's trail record.

Three outcomes, one record each in the trail (`kr.governance.trail`): `promoted` (every gate passed, alias
moved), `rejected` (the student is registered with its verdicts, the champion is untouched) and `failed` (a step
failed; written by the pipeline's exit handler). Steps are retried by KFP, so everything here is idempotent per run key.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from kr.config import RunConfig
from kr.governance import registry
from kr.governance.trail import open_trail, sha256_file
from kr.results import RunResults
from kr.run import tracking
from kr.serialization import write_json

# the run folder's copy of the run's trail record (the file name predates the trail's own name)
TRAIL_RECORD_COPY = "audit_record.json"


def privacy_evidence(results: RunResults, gates: dict | None) -> dict:
    """What a reviewer checks first: the privacy verdict (pass, fail, inconclusive), the audit's power (teacher
    canary AUC), the student's canary AUC and one-run epsilon lower bound, and its strongest real-data attack AUC."""
    audit = results.privacy
    canaries = (audit.canaries or {}) if audit else {}
    return {
        "verdict": ((gates or {}).get("privacy") or {}).get("state", "not evaluated"),
        "teacher_canary_auc": (canaries.get("teacher") or {}).get("auc"),
        "student_canary_auc": (canaries.get("student") or {}).get("auc"),
        "student_epsilon_lower_bound": ((canaries.get("student") or {}).get("epsilon_lower_bound") or {}).get(
            "epsilon"
        ),
        "student_strongest_attack_auc": audit.student["strongest"]["auc"] if audit else None,
    }


def trail_body(
    cfg: RunConfig,
    run_dir: Path,
    outcome: str,
    registry_block: dict | None,
    gates: dict | None,
    started_at: str,
    results: RunResults,
    student_path: Path | None = None,
    error: str | None = None,
) -> dict:
    """One run as the trail keeps it (DESIGN.md's audit record): inputs (data file, code, image, config), outputs
    (the student's SHA-256, the registry version, test accuracies as fractions), verdicts and times (UTC ISO-8601)."""
    info = results.data.info if results.data else {}
    student, teacher = results.student, results.teacher
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
            "model_sha256": sha256_file(student_path) if student_path and Path(student_path).exists() else None,
            "registry": registry_block,
            "student_test_accuracy": student.test.accuracy if student else None,
            "teacher_test_accuracy": teacher.test.accuracy if teacher else None,
            "privacy": privacy_evidence(results, gates),
        },
        "gates": gates,
        "mlflow": {"tracking_uri": cfg.tracking.uri, "parent_run_id": tracking.parent_run_id(run_dir)},
        "started_at": started_at,
        "decided_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "error": error,
    }


def append_record(cfg: RunConfig, run_dir: Path, body: dict) -> dict | None:
    """Append the run's record once (a retried step gets the record it wrote before) and keep a copy in the run
    folder. Returns the reference the summary and registry keep, None without a trail (`audit.uri` unset).
    Raises kr.governance.trail.TrailError on an unusable trail or a conflicting record for this run."""
    if not cfg.audit.uri:
        return None
    trail = open_trail(cfg.audit.uri)
    entry = trail.find(body["run_id"]) if body["run_id"] else None
    if entry is None:
        entry = trail.append(body)
    write_json(Path(run_dir) / TRAIL_RECORD_COPY, trail.get(entry["record_id"]))
    return _reference(entry, cfg.audit.uri)


def _reference(record: dict, uri: str | None) -> dict:
    """What the summary and the registry keep of a record: enough to find it and check it."""
    return {k: record[k] for k in ("record_id", "record_hash", "previous_hash", "sequence")} | {"uri": uri}


def recorded(cfg: RunConfig) -> dict | None:
    """The reference to the trail record this run (its run key) already has, if any: the trail is the authority,
    not a copy in the run folder. Raises kr.governance.trail.TrailError on an unusable trail."""
    if not (cfg.audit.uri and cfg.run.run_key):
        return None
    entry = open_trail(cfg.audit.uri).find(cfg.run.run_key)
    return _reference(entry, cfg.audit.uri) if entry else None


def conclude(
    cfg: RunConfig,
    run_dir: Path,
    student_path: Path,
    example: np.ndarray,
    results: RunResults,
    started_at: str,
    promote: bool,
) -> dict:
    """Register the student with every verdict, promote when allowed, and write the run's trail record.

    example: uint8 (2, C, 28, 28) input example for the model's signature; never real images (it is stored in the
    registry, read by more people than the run's data).
    Returns {"outcome": "promoted" | "rejected", "registry": version block or None, "gates": verdicts with the
    champion gate, "audit": trail reference or None}. Idempotent per run key (KFP retries steps).
    """
    gates = results.gates.verdicts() if results.gates else {"passed": False}
    student = results.student
    registry_block = None
    if tracking.enabled(cfg) and student is not None:
        run_id = student.mlflow_run_id or tracking.parent_run_id(run_dir)
        registry_block = registry.decide(
            cfg,
            run_id,
            Path(student_path),
            example,
            gates,
            student.test.accuracy,
            promote=promote and bool(gates.get("passed")),
            move_alias=False,
            dataset_md5=results.data.info.get("md5") if results.data else None,
        )
        gates["champion"] = registry_block.pop("champion_gate")
    else:
        gates["champion"] = {"passed": False, "evaluated": False, "reasons": ["no tracking URI: no registry"]}
    gates["passed"] = bool(gates.get("passed")) and gates["champion"]["passed"]
    outcome = "promoted" if registry_block and registry_block["promoted"] else "rejected"
    # the record first, then the alias: no model becomes champion without its trail record (a failure in between
    # leaves a record of a promotion that did not happen, never a champion nobody recorded)
    body = trail_body(cfg, run_dir, outcome, registry_block, gates, started_at, results, Path(student_path))
    reference = append_record(cfg, run_dir, body)
    if registry_block and registry_block["promoted"]:
        registry.set_champion(cfg, registry_block["version"])
    if reference and registry_block:
        registry.tag_trail_record(cfg, registry_block["version"], reference)
    return {"outcome": outcome, "registry": registry_block, "gates": gates, "audit": reference}


def record_failure(cfg: RunConfig, run_dir: Path, started_at: str, error: str | None) -> dict | None:
    """A failed run's trail record (the exit handler's job); a run that already concluded keeps its record."""
    existing = recorded(cfg)
    if existing:
        return existing
    body = trail_body(cfg, run_dir, "failed", None, None, started_at, RunResults(), error=error)
    return append_record(cfg, run_dir, body)
