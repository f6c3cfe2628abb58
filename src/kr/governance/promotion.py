"""The end of a run: register the student, promote or record the rejection, and write the run's trail record.

Three outcomes, one record each in the trail (`kr.governance.trail`): `promoted` (every gate passed, alias
moved), `rejected` (the student is registered with its verdicts, the champion is untouched) and `failed` (a step
failed; written by the pipeline's exit handler). Steps are retried by KFP, so everything here is idempotent per run
key, and a retry follows the decision the trail already holds instead of deciding again.

One champion at a time: OSS MLflow has no compare-and-set on aliases, so reading the champion, judging against it,
recording the decision and moving the alias happen under a lease on the model name, held in the trail's store
(`Trail.lease`: a create-exclusive ticket with an expiry). Without a trail there is no lease and no promotion.

The order of `conclude`, and what a crash (a killed pod, MLflow or S3 down) at each point leaves:

1. register the student: version born `kr.decision=pending` with its gate tags. Crash: a pending version, no record.
   The exit handler appends a `failed` record naming the version and tags it `kr.decision=failed`.
2. (promotion) take the lease, judge the champion gate against the champion now. Crash: as 1; the lease expires.
3. append the trail record (`promoted` or `rejected`, with the version and the champion it replaces). Crash: the
   trail holds the decision, the alias has not moved. A retry, or the exit handler, completes it (4-5) under the
   lease: the alias moves only if the champion is still the one the record replaces (else the record stands as
   decided, superseded by a later promotion, and the summary says so).
4. check the lease still holds, move `champion`. Crash: alias moved, tags pending: completed as in 3.
5. tag the version with its decision and its record (id, hash). Release the lease.
Summary, trail and registry therefore never disagree for longer than it takes the run to finish or its exit handler
to complete the decision; a registry unreachable even then leaves the version `pending` and the record authoritative.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from kr.config import ConfigError, RunConfig
from kr.governance import registry
from kr.governance.trail import TrailError, open_trail, sha256_file
from kr.results import RunResults
from kr.run import tracking
from kr.serialization import write_json

# the run folder's copy of the run's trail record (the file name predates the trail's own name)
TRAIL_RECORD_COPY = "audit_record.json"
log = logging.getLogger(__name__)


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


LEASE_TTL_S = 600.0  # longer than champion gate + record + alias move take, with MLflow's retries
LEASE_WAIT_S = 1800.0  # a run waits this long for another run's promotion to finish


def champion_lease_name(cfg: RunConfig) -> str:
    """The lease that serialises promotions of the run's registered model."""
    return f"champion-{cfg.model_name}"


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
    """The trail record this run (its run key) already has, if any: the trail is the authority, not a copy in the
    run folder. Raises kr.governance.trail.TrailError on an unusable trail."""
    if not (cfg.audit.uri and cfg.run.run_key):
        return None
    return open_trail(cfg.audit.uri).find(cfg.run.run_key)


class RunKeyUsed(ConfigError):
    """A new run presented the key of a run the trail or the registry already knows: two runs would merge."""


def refuse_used_run_key(cfg: RunConfig) -> None:
    """Raise RunKeyUsed when the run key already has a trail record or a registered version (the first task's check,
    before any work). A run key names one run: reusing one would re-tag the old version with the new run's numbers
    and leave the new run without a record of its own. TrailError and MLflow errors propagate."""
    key = cfg.run.run_key
    record = recorded(cfg)
    where = f"trail record {record['record_id']}" if record else None
    if where is None and tracking.enabled(cfg):
        version = registry.find_version(cfg, key)
        where = f"{cfg.model_name} version {version.version}" if version is not None else None
    if where:
        raise RunKeyUsed(f"run key {key!r} is already used by {where}; every run needs a new key (omit run_key)")


def conclude(
    cfg: RunConfig,
    run_dir: Path,
    student_path: Path,
    example: np.ndarray,
    results: RunResults,
    started_at: str,
    promote: bool,
) -> dict:
    """Register the student with every verdict, promote when allowed, and write the run's trail record, in the order
    (and with the crash behaviour) of the module docstring.

    example: uint8 (2, C, S, S) input example for the model's signature (S: the image side); never real images (it
    is stored in the registry, read by more people than the run's data).
    Returns {"outcome": "promoted" | "rejected", "registry": version block or None, "gates": verdicts with the
    champion gate, "audit": trail reference or None}. Idempotent per run key (KFP retries steps): a run whose record
    exists completes that decision. Raises TrailError (trail unusable, lease not obtained in LEASE_WAIT_S, lease lost
    before the alias move), RegistryError and MlflowException.
    """
    existing = recorded(cfg)
    if existing is not None:
        return complete(cfg, Path(run_dir), existing)
    gates = results.gates.verdicts() if results.gates else {"passed": False}
    student = results.student
    if not (tracking.enabled(cfg) and student is not None):
        gates["champion"] = {"passed": False, "evaluated": False, "reasons": ["no tracking URI: no registry"]}
        gates["passed"] = False
        body = trail_body(cfg, run_dir, "rejected", None, gates, started_at, results, Path(student_path))
        return {"outcome": "rejected", "registry": None, "gates": gates, "audit": append_record(cfg, run_dir, body)}
    md5 = results.data.info.get("md5") if results.data else None
    run_id = student.mlflow_run_id or tracking.parent_run_id(run_dir)
    class_names = results.data.info.get("class_names") if results.data else None
    version = registry.register_student(
        cfg, run_id, Path(student_path), example, gates, student.test.accuracy, md5, class_names=class_names
    )
    block = {
        "model_name": cfg.model_name,
        "version": str(version.version),
        "alias": None,
        "promoted": False,
        "artifact_sha256": (version.tags or {}).get(registry.ARTIFACT_TAG),
    }
    eligible = promote and bool(gates.get("passed"))
    if not eligible or not cfg.audit.uri:
        reason = "an earlier gate failed" if not eligible else "no audit trail: a promotion needs its trail record"
        gates["champion"] = {"passed": False, "evaluated": False, "reasons": [reason]}
        gates["passed"] = False
        return _decide(cfg, Path(run_dir), block, gates, started_at, results, Path(student_path), None)
    with open_trail(cfg.audit.uri).lease(
        champion_lease_name(cfg), holder=cfg.run.run_key, ttl_s=LEASE_TTL_S, wait_s=LEASE_WAIT_S
    ) as lease:
        verdict = registry.judge_champion(cfg, block["version"], student.test.accuracy, md5)
        block["previous_champion"] = verdict.pop("previous_champion")
        gates["champion"] = verdict
        gates["passed"] = bool(gates.get("passed")) and verdict["passed"]
        if gates["passed"]:
            block |= {"alias": registry.CHAMPION, "promoted": True}
        return _decide(cfg, Path(run_dir), block, gates, started_at, results, Path(student_path), lease)


def _decide(
    cfg: RunConfig,
    run_dir: Path,
    block: dict,
    gates: dict,
    started_at: str,
    results: RunResults,
    student_path: Path,
    lease,
) -> dict:
    """Steps 3-5: the record, then (under `lease`) the alias, then the version's decision tags."""
    outcome = "promoted" if block["promoted"] else "rejected"
    body = trail_body(cfg, run_dir, outcome, block, gates, started_at, results, student_path)
    reference = append_record(cfg, run_dir, body)
    if block["promoted"]:
        lease.check()  # a lease that expired meanwhile may have let another run judge against the old champion
        registry.set_champion(cfg, block["version"])
    registry.tag_decision(cfg, block["version"], outcome, reference)
    return {"outcome": outcome, "registry": block, "gates": gates, "audit": reference}


def complete(cfg: RunConfig, run_dir: Path, record: dict) -> dict:
    """Finish a decision the trail already holds (a retried or interrupted conclusion, or the exit handler).

    `promoted`: under the champion lease, move the alias if the champion is still the version the record replaces
    (`superseded` in the returned registry block when a later promotion moved it since); then the version's tags.
    `rejected`/`failed`: the version's tags. Returns the conclusion as `conclude` does, from the record.
    """
    found = conclusion_of(record, cfg.audit.uri)
    outcome, block, reference = found["outcome"], found["registry"], found["audit"]
    write_json(Path(run_dir) / TRAIL_RECORD_COPY, record)
    if block and tracking.enabled(cfg):
        if outcome == "promoted":
            with open_trail(cfg.audit.uri).lease(
                champion_lease_name(cfg), holder=cfg.run.run_key, ttl_s=LEASE_TTL_S, wait_s=LEASE_WAIT_S
            ) as lease:
                now = registry.current_champion(cfg)
                current = str(now.version) if now else None
                if current not in (block["version"], block.get("previous_champion")):
                    block["superseded_by"] = current
                elif current != block["version"]:
                    lease.check()
                    registry.set_champion(cfg, block["version"])
                registry.tag_decision(cfg, block["version"], outcome, reference)
        else:
            registry.tag_decision(cfg, block["version"], outcome, reference)
    return found


def conclusion_of(record: dict, uri: str | None) -> dict:
    """The conclusion a trail record holds, as `conclude` returns it: {"outcome", "registry" (a copy of the
    record's version block, or None), "gates", "audit" (the reference to the record at `uri`)}."""
    return {
        "outcome": record.get("outcome", "failed"),
        "registry": dict((record.get("outputs") or {}).get("registry") or {}) or None,
        "gates": record.get("gates") or {},
        "audit": _reference(record, uri),
    }


def record_failure(cfg: RunConfig, run_dir: Path, started_at: str, error: str | None) -> dict | None:
    """The exit handler's trail work. A run whose conclusion recorded a decision gets that decision completed
    (`complete`); otherwise a `failed` record, naming the version a registration left `pending`, which is then
    tagged `failed`. Returns the trail reference, None without a trail."""
    try:
        existing = recorded(cfg)
    except TrailError:
        # no record can be written: a version left pending must not look undecided (or promotable) meanwhile
        block = _pending_version(cfg)
        if block:
            registry.tag_decision(cfg, block["version"], "failed", None)
        raise
    if existing is not None:
        try:
            complete(cfg, run_dir, existing)
        except Exception as exc:  # the record stands; the registry is completed by a later retry
            log.warning("could not complete the recorded decision in the registry: %s", exc)
        return _reference(existing, cfg.audit.uri)
    block = _pending_version(cfg)
    body = trail_body(cfg, run_dir, "failed", block, None, started_at, RunResults(), error=error)
    reference = append_record(cfg, run_dir, body)
    if block:
        registry.tag_decision(cfg, block["version"], "failed", reference)
    return reference


def _pending_version(cfg: RunConfig) -> dict | None:
    """The version an interrupted conclusion registered for this run, None if none (or the registry is down)."""
    if not (tracking.enabled(cfg) and cfg.run.run_key):
        return None
    try:
        version = registry.find_version(cfg, cfg.run.run_key)
    except Exception as exc:  # an unreachable registry must not stop the failure record
        log.warning("could not look for this run's model version: %s", exc)
        return None
    if version is None:
        return None
    return {"model_name": cfg.model_name, "version": str(version.version), "alias": None, "promoted": False}
