"""The gated model registry: every run's student is registered; only a student that passes every gate and is not
worse than the current champion (beyond a tolerance) gets the `champion` alias.

Like TFX's Pusher, promotion needs an explicit verdict: no verdict, no alias. Registration is idempotent (a
version is found again by its run key, never created twice). A version is born `kr.decision=pending` and gets its
decision (promoted, rejected, failed) once the run's trail record holds it, so the registry never shows a decision
the trail does not. Who may read the champion and move the alias is serialised by `kr.governance.promotion` (a
lease in the trail's store): OSS MLflow has no compare-and-set on aliases.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kr.config import RunConfig
from kr.run.tracking import client

log = logging.getLogger(__name__)

CHAMPION = "champion"
RUN_KEY_TAG = "kr.run_key"
DATASET_TAG = "kr.dataset_md5"
DECISION_TAG = "kr.decision"  # pending, then promoted, rejected or failed: what the trail record says
ARTIFACT_TAG = "kr.artifact_sha256"  # digest of the registered model's files (kr.governance.serving)
# MLflow accepts more, but the name goes into search filters and URIs: letters, digits, . _ - only
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class RegistryError(RuntimeError):
    """The registry cannot register or read a model version (e.g. a version that never becomes READY)."""


def log_student(
    cfg: RunConfig, run_id: str, student_path: Path, example: np.ndarray, class_names: Sequence[str] | None = None
) -> tuple[str, str | None, str]:
    """Log the student into `run_id` without pickle (`kr.governance.serving`), its predictions named by
    `class_names` (default: the MedMNIST flag's, else "0".."K-1"): (model URI, model id, SHA-256 digest of the
    logged files, `serving.artifact_digest`)."""
    from kr.governance.serving import log_student_model

    names = class_names if class_names is not None else flag_class_names(cfg.data.dataset)
    return log_student_model(cfg.tracking.uri, run_id, Path(student_path), example, names)


def flag_class_names(dataset: str) -> list[str] | None:
    """The class names of a MedMNIST flag in label order (medmnist's INFO), None for a file or folder."""
    from kr.medmnist_catalog import info

    labels = (info().get(dataset.strip().lower()) or {}).get("label")
    return [labels[str(i)] for i in range(len(labels))] if labels else None


def _registered_model(cfg: RunConfig):
    """The registered model `cfg.model_name`, or None when there is none this user can read.

    Found by search, not `get_registered_model`: behind MLflow's basic auth with NO_PERMISSIONS as the default (the
    cluster's setting, infra/base/mlflow/basic_auth.ini), getting a model that does not exist yet is refused (403,
    the permission is looked up before the model), while a search lists what the user may read. A model that exists
    but that this user may not read then fails loudly at registration (it already exists)."""
    c = client(cfg)
    if not c.search_registered_models(filter_string=f"name = '{checked_name(cfg.model_name)}'", max_results=1):
        return None
    return c.get_registered_model(cfg.model_name)


def checked_name(name: str) -> str:
    """`name` when it is a safe registered model name (letters, digits, `._-`, at most 128); else RegistryError.
    The name goes into an MLflow search filter: a quote in it would change the query."""
    if not MODEL_NAME.match(name or ""):
        raise RegistryError(f"registered model name {name!r}: use letters, digits, '.', '_' and '-' (at most 128)")
    return name


def find_version(cfg: RunConfig, run_key: str):
    """This run's registered version, if an earlier attempt already registered it (None also without a model)."""
    if _registered_model(cfg) is None:
        return None
    versions = client(cfg).search_model_versions(f"name = '{checked_name(cfg.model_name)}'")
    mine = [v for v in versions if (v.tags or {}).get(RUN_KEY_TAG) == run_key]
    return min(mine, key=lambda v: int(v.version)) if mine else None


def register(
    cfg: RunConfig,
    run_id: str,
    student_path: Path,
    example: np.ndarray,
    tags: dict[str, str],
    class_names: Sequence[str] | None = None,
):
    """Register this run's student once, born `kr.decision=pending` with its files' digest (`kr.artifact_sha256`);
    a retried step finds the version it made before. Returns the MLflow ModelVersion. Raises RegistryError without
    a run key or for an unsafe model name, MlflowException when MLflow fails."""
    if not cfg.run.run_key:
        raise RegistryError("registering needs a run key (cfg.run.run_key); the pipeline sets one per run")
    checked_name(cfg.model_name)
    existing = find_version(cfg, cfg.run.run_key)
    c = client(cfg)
    if existing is None:
        uri, model_id, digest = log_student(cfg, run_id, student_path, example, class_names)
        if _registered_model(cfg) is None:
            _create_model(cfg)
        born = {RUN_KEY_TAG: cfg.run.run_key, DECISION_TAG: "pending", ARTIFACT_TAG: digest}
        existing = c.create_model_version(cfg.model_name, source=uri, run_id=run_id, tags=born, model_id=model_id)
        _wait_ready(cfg, existing.version)
    for key, value in tags.items():
        c.set_model_version_tag(cfg.model_name, existing.version, key, value)
    return c.get_model_version(cfg.model_name, existing.version)


def _create_model(cfg: RunConfig) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client(cfg).create_registered_model(cfg.model_name, tags={"kr.task": "image-classification"})
    except MlflowException as exc:  # another run created it a moment ago
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _wait_ready(cfg: RunConfig, version: str, timeout_s: float = 120) -> None:
    c = client(cfg)
    deadline = time.monotonic() + timeout_s
    while c.get_model_version(cfg.model_name, version).status != "READY":
        if time.monotonic() > deadline:
            raise RegistryError(f"model version {cfg.model_name}/{version} not READY after {timeout_s:.0f} s")
        time.sleep(0.5)


def why_not_promoted(tags: dict[str, str]) -> str:
    """A version's decision and, from its gate tags (`registry.gate_tags`: gate.<gate>.verdict and
    gate.<gate>.<check>.{value,threshold,verdict}), each gate that did not pass with its failed checks, e.g.
    "rejected: accuracy fail (student_test_accuracy 0.61, needs >= 0.7), privacy inconclusive"."""
    decision = tags.get(DECISION_TAG, "no decision")
    gates = []
    for key, state in sorted(tags.items()):
        parts = key.split(".")  # gate.<gate>.verdict; gate.passed and the checks' tags have another shape
        if len(parts) != 3 or parts[0] != "gate" or parts[2] != "verdict" or state == "pass":
            continue
        gate = parts[1]
        failed = [
            f"{check} {tags.get(f'gate.{gate}.{check}.value', '?')}, needs {tags.get(f'gate.{gate}.{check}.threshold')}"
            for check in sorted({k.split(".")[2] for k in tags if k.startswith(f"gate.{gate}.") and k.count(".") == 3})
            if tags.get(f"gate.{gate}.{check}.verdict") == "fail"
        ]
        gates.append(f"{gate} {state}" + (f" ({'; '.join(failed)})" if failed else ""))
    if gates:
        return f"{decision}: " + ", ".join(gates)
    return {
        "failed": "failed: the run failed before its gates decided (see its audit record)",
        "pending": "pending: no decision recorded yet (a run in progress, or one that stopped)",
    }.get(decision, f"{decision}: no failed gate recorded")


def gate_tags(gates: dict) -> dict[str, str]:
    """Every check of every gate as tags on the version: gate.<gate>.<check>.{value,threshold,verdict}, and each
    gate's gate.<gate>.verdict: its state (pass, fail, or for privacy inconclusive)."""
    tags: dict[str, str] = {"gate.passed": str(bool(gates.get("passed"))).lower()}
    for gate, verdict in gates.items():
        if not isinstance(verdict, dict):
            continue
        tags[f"gate.{gate}.verdict"] = verdict.get("state") or ("pass" if verdict.get("passed") else "fail")
        for check in verdict.get("checks", []):
            key = f"gate.{gate}.{_slug(check['check'])}"
            tags[f"{key}.value"] = "missing" if check["value"] is None else f"{check['value']:.6g}"
            tags[f"{key}.threshold"] = f"{check['op']} {check['threshold']:g}"
            tags[f"{key}.verdict"] = "pass" if check["passed"] else "fail"
    return tags


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text.lower()).strip("_")


def current_champion(cfg: RunConfig):
    """The model version the `champion` alias points to (an MLflow ModelVersion), None when there is none."""
    model = _registered_model(cfg)
    if model is None or CHAMPION not in (model.aliases or {}):
        return None
    return client(cfg).get_model_version(cfg.model_name, str(model.aliases[CHAMPION]))


def champion_gate(cfg: RunConfig, version: str, accuracy: float, champion, dataset_md5: str | None = None) -> dict:
    """Not worse than the current champion's test accuracy (fraction) by more than gates.champion.tolerance_pp
    (percentage points), compared only when both were scored on the same test set (the data file's MD5, tag
    kr.dataset_md5): a champion from another file, or without the tag, is kept and the reason recorded."""
    tolerance = cfg.gates.champion.tolerance_pp
    if champion is None:
        return {"passed": True, "champion_version": None, "reasons": [], "checks": [], "note": "no champion yet"}
    if str(champion.version) == str(version):
        return {
            "passed": True,
            "champion_version": str(champion.version),
            "reasons": [],
            "checks": [],
            "note": "is champion",
        }
    theirs = (champion.tags or {}).get(DATASET_TAG)
    if dataset_md5 is None or theirs != dataset_md5:
        reason = (
            f"champion version {champion.version} was scored on another test set (dataset MD5 {theirs or 'unknown'}, "
            f"this student's {dataset_md5 or 'unknown'}): accuracies on different test sets are not compared"
        )
        check = {"check": "same test set as the champion", "value": None, "threshold": 0.0, "op": ">="}
        return {
            "passed": False,
            "champion_version": str(champion.version),
            "checks": [{**check, "passed": False, "reason": reason}],
            "reasons": [reason],
        }
    raw = (champion.tags or {}).get("kr.student_test_accuracy")
    best = float(raw) if raw is not None else None
    if best is None:  # a champion without the number cannot be compared: keep it (fail closed)
        check = {"check": "student accuracy vs champion (pp)", "value": None, "threshold": -tolerance, "op": ">="}
        reason = f"champion version {champion.version} has no kr.student_test_accuracy tag to compare with"
        return {
            "passed": False,
            "champion_version": str(champion.version),
            "checks": [{**check, "passed": False, "reason": reason}],
            "reasons": [reason],
        }
    delta = 100 * (accuracy - best)
    passed = delta >= -tolerance
    reason = (
        f"student accuracy {accuracy:.4f} vs champion v{champion.version} {best:.4f}: {delta:+.2f} pp "
        f"{'within' if passed else 'beyond'} the {tolerance:g} pp tolerance"
    )
    check = {
        "check": "student accuracy vs champion (pp)",
        "value": delta,
        "threshold": -tolerance,
        "op": ">=",
        "passed": passed,
        "reason": reason,
    }
    return {
        "passed": passed,
        "champion_version": str(champion.version),
        "champion_accuracy": best,
        "checks": [check],
        "reasons": [] if passed else [reason],
    }


def judge_champion(cfg: RunConfig, version: str, accuracy: float, dataset_md5: str | None) -> dict:
    """The champion gate for `version` against the champion now, its verdict tagged on the version (gate.champion.*).
    Call it while holding the champion lease (`kr.governance.promotion`): the answer is only good until another run
    moves the alias. Returns the verdict with `previous_champion` (version string or None) and `evaluated` True."""
    before = current_champion(cfg)
    verdict = champion_gate(cfg, version, accuracy, before, dataset_md5)
    c = client(cfg)
    for key, value in gate_tags({"champion": verdict}).items():
        if key != "gate.passed":
            c.set_model_version_tag(cfg.model_name, version, key, value)
    return verdict | {"evaluated": True, "previous_champion": str(before.version) if before else None}


def decide(
    cfg: RunConfig,
    run_id: str,
    student_path: Path,
    example: np.ndarray,
    gates: dict,
    accuracy: float,
    promote: bool,
    move_alias: bool = True,
    dataset_md5: str | None = None,
) -> dict:
    """Register the student with its gate tags; `champion` goes to it only when promote and the champion gate pass.

    For one process alone (tests, notebooks): nothing here stops another run from moving the alias between the
    champion gate and the move; the pipeline concludes through `kr.governance.promotion.conclude`, which holds the
    champion lease. With move_alias=False the decision is made but the alias left to the caller.
    """
    version = register_student(cfg, run_id, student_path, example, gates, accuracy, dataset_md5)
    result = {"model_name": cfg.model_name, "version": str(version.version), "alias": None, "promoted": False}
    if not promote:
        result["champion_gate"] = {"passed": False, "evaluated": False, "reasons": ["an earlier gate failed"]}
        return result
    verdict = judge_champion(cfg, result["version"], accuracy, dataset_md5)
    result["champion_gate"] = verdict
    result["previous_champion"] = verdict["previous_champion"]
    if verdict["passed"]:
        result |= {"alias": CHAMPION, "promoted": True}
        if move_alias:
            set_champion(cfg, result["version"])
    return result


def register_student(
    cfg: RunConfig,
    run_id: str,
    student_path: Path,
    example: np.ndarray,
    gates: dict,
    accuracy: float,
    dataset_md5: str | None,
    class_names: Sequence[str] | None = None,
):
    """`register` with the tags every version carries: test accuracy, config digest, test-set MD5, gate verdicts.
    class_names: the dataset's, in label order, which the served model's predictions carry (default: a MedMNIST
    flag's own, else "0".."K-1")."""
    base_tags = {"kr.student_test_accuracy": f"{accuracy:.6f}", "kr.config_digest": cfg.digest()}
    if dataset_md5:  # the test set the accuracy was measured on: champions are compared only on the same one
        base_tags[DATASET_TAG] = dataset_md5
    return register(cfg, run_id, student_path, example, base_tags | gate_tags(gates), class_names)


def set_champion(cfg: RunConfig, version: str) -> None:
    """Point `champion` at `version` of the run's registered model (the only place the alias moves)."""
    client(cfg).set_registered_model_alias(cfg.model_name, CHAMPION, version)


def tag_decision(cfg: RunConfig, version: str, outcome: str, entry: dict | None) -> None:
    """The version's decision, once the trail holds it, and its record: the record's id and hash (the record already
    names the version), which double as a published trail head for `kr audit verify --expect-head`, and its model
    card (`model_card` of the record) as the version's description. The decision tag comes last: a version whose
    decision shows has its record tags and card. Raises TrailError when the record cannot be read back."""
    c = client(cfg)
    if entry:
        c.set_model_version_tag(cfg.model_name, version, "kr.audit_record_id", entry["record_id"])
        c.set_model_version_tag(cfg.model_name, version, "kr.audit_record_hash", entry["record_hash"])
        describe(cfg, version, entry)
    c.set_model_version_tag(cfg.model_name, version, DECISION_TAG, outcome)


def describe(cfg: RunConfig, version: str, entry: dict) -> None:
    """Set the version's description to the model card of its trail record (`entry`: the record's reference, with
    its trail's `uri`, else cfg.audit.uri). Raises TrailError when the record cannot be read."""
    from kr.governance.trail import open_trail

    record = open_trail(entry.get("uri") or cfg.audit.uri).get(entry["record_id"])
    client(cfg).update_model_version(cfg.model_name, version, description=model_card(record))


def model_card(record: dict) -> str:
    """A model version's card (markdown) from its run's trail record: what it was trained and tested on (data name
    and MD5), how well it does (teacher and student test accuracy, the CAS gap), every gate's verdict with the
    reasons of those that did not pass, and the record that holds all of it (id and hash, for `kr audit verify`)."""
    inputs, outputs = record.get("inputs") or {}, record.get("outputs") or {}
    dataset, reg = inputs.get("dataset") or {}, outputs.get("registry") or {}
    teacher, student = outputs.get("teacher_test_accuracy"), outputs.get("student_test_accuracy")
    gap = f"{100 * (student - teacher):+.2f} pp" if _numbers(teacher, student) else "-"
    lines = [
        f"## {reg.get('model_name', '?')} version {reg.get('version', '?')}: {record.get('outcome', '?')}",
        "",
        "A student classifier trained by Knowledge Recycling on synthetic images only; gated on accuracy and privacy.",
        "",
        "| | |",
        "|---|---|",
        f"| data | {_cell(dataset.get('name'))} (MD5 `{_cell(dataset.get('md5'))}`) |",
        f"| teacher test accuracy | {_accuracy(teacher)} |",
        f"| student test accuracy | {_accuracy(student)} |",
        f"| CAS gap (student minus teacher) | {gap} |",
        f"| audit record | `{_cell(record.get('record_id'))}` (record hash `{_cell(record.get('record_hash'))}`) |",
        f"| code | `{_cell(inputs.get('code_version'))}` |",
        "",
        "| gate | verdict | why not passed |",
        "|---|---|---|",
    ]
    for gate, verdict in (record.get("gates") or {}).items():
        if isinstance(verdict, dict):
            state = verdict.get("state") or ("pass" if verdict.get("passed") else "fail")
            lines.append(f"| {_cell(gate)} | {_cell(state)} | {_cell('; '.join(verdict.get('reasons') or []))} |")
    if record.get("error"):
        lines += ["", f"Error: {_cell(record['error'])}"]
    return "\n".join(lines) + "\n"


def _numbers(*values: object) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _accuracy(value: object) -> str:
    return f"{value:.4f}" if _numbers(value) else "-"


def _cell(value: object) -> str:
    """Text for a markdown table cell: one line, no column separators."""
    return " ".join(str("-" if value is None else value).split()).replace("|", "\\|")


def version_tags(cfg: RunConfig, version: str) -> dict[str, str]:
    """The tags of one version of the run's model."""
    return dict(client(cfg).get_model_version(cfg.model_name, version).tags or {})
