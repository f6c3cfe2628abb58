"""The gated model registry: every run's student is registered; only a student that passes every gate and is not
worse than the current champion (beyond a tolerance) gets the `champion` alias.

Like TFX's Pusher, promotion needs an explicit verdict: no verdict, no alias. Registration is idempotent (a
version is found again by its run key, never created twice), and the champion is re-read right before the alias
moves, so two runs finishing together cannot both demote a better model.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kr.config import RunConfig
from kr.method.classifier import load_classifier
from kr.run.tracking import client

log = logging.getLogger(__name__)

CHAMPION = "champion"
RUN_KEY_TAG = "kr.run_key"
DATASET_TAG = "kr.dataset_md5"


class RegistryError(RuntimeError):
    """The registry cannot register or read a model version (e.g. a version that never becomes READY)."""


class ServingClassifier(nn.Module):
    """What the registry serves: raw pixel values (float32, 0..255, N x C x 28 x 28) in, class probabilities out.

    Clients send images as they are stored; the [-1, 1] scaling the classifier was trained with stays inside.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float32 (N, C, 28, 28) pixel values in [0, 255] -> float32 (N, K) class probabilities (rows sum to 1)."""
        return torch.softmax(self.model(x / 127.5 - 1.0), dim=1)


def _pip_requirements() -> list[str]:
    # explicit requirements: MLflow's inference of them takes ~10 s and records the local "+cpu" tag anyway
    import mlflow

    return [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", "numpy"]


def log_student(cfg: RunConfig, run_id: str, student_path: Path, example: np.ndarray) -> tuple[str, str | None]:
    """Log the student as an MLflow PyTorch model (signature and input example) in `run_id`: (model URI, model id)."""
    from mlflow.models import infer_signature

    import mlflow

    model = ServingClassifier(load_classifier(student_path).cpu()).eval()
    x = example.astype(np.float32)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).numpy()
    mlflow.set_tracking_uri(cfg.tracking.uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            model,
            name="student",
            signature=infer_signature(x, y),
            input_example=x,
            pip_requirements=_pip_requirements(),
        )
    return info.model_uri, getattr(info, "model_id", None)


def _registered_model(cfg: RunConfig):
    from mlflow.exceptions import MlflowException

    try:
        return client(cfg).get_registered_model(cfg.model_name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def find_version(cfg: RunConfig, run_key: str):
    """This run's registered version, if an earlier attempt already registered it."""
    if _registered_model(cfg) is None:
        return None
    versions = client(cfg).search_model_versions(f"name = '{cfg.model_name}'")
    mine = [v for v in versions if (v.tags or {}).get(RUN_KEY_TAG) == run_key]
    return min(mine, key=lambda v: int(v.version)) if mine else None


def register(cfg: RunConfig, run_id: str, student_path: Path, example: np.ndarray, tags: dict[str, str]):
    """Register this run's student once; a retried step finds the version it made before."""
    if not cfg.run.run_key:
        raise RegistryError("registering needs a run key (cfg.run.run_key); the pipeline sets one per run")
    existing = find_version(cfg, cfg.run.run_key)
    c = client(cfg)
    if existing is None:
        uri, model_id = log_student(cfg, run_id, student_path, example)
        if _registered_model(cfg) is None:
            _create_model(cfg)
        existing = c.create_model_version(
            cfg.model_name, source=uri, run_id=run_id, tags={RUN_KEY_TAG: cfg.run.run_key}, model_id=model_id
        )
        _wait_ready(cfg, existing.version)
    for key, value in tags.items():
        c.set_model_version_tag(cfg.model_name, existing.version, key, value)
    return existing


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

    With move_alias=False the decision is made but the alias left to the caller, which records it first.
    """
    base_tags = {"kr.student_test_accuracy": f"{accuracy:.6f}", "kr.config_digest": cfg.digest()}
    if dataset_md5:  # the test set the accuracy was measured on: champions are compared only on the same one
        base_tags[DATASET_TAG] = dataset_md5
    version = register(cfg, run_id, student_path, example, base_tags | gate_tags(gates))
    result = {"model_name": cfg.model_name, "version": str(version.version), "alias": None, "promoted": False}
    if not promote:
        result["champion_gate"] = {"passed": False, "evaluated": False, "reasons": ["an earlier gate failed"]}
        return result
    before = current_champion(cfg)
    verdict = champion_gate(cfg, version.version, accuracy, before, dataset_md5)
    if verdict["passed"]:
        # re-read right before the move: another run may have promoted while this one was registering
        now = current_champion(cfg)
        if (now and now.version) != (before and before.version):
            verdict = champion_gate(cfg, version.version, accuracy, now, dataset_md5)
    c = client(cfg)
    for key, value in gate_tags({"champion": verdict}).items():
        if key != "gate.passed":
            c.set_model_version_tag(cfg.model_name, version.version, key, value)
    result["champion_gate"] = verdict | {"evaluated": True}
    result["previous_champion"] = str(before.version) if before else None
    if verdict["passed"]:
        result |= {"alias": CHAMPION, "promoted": True}
        if move_alias:
            set_champion(cfg, result["version"])
    return result


def set_champion(cfg: RunConfig, version: str) -> None:
    """Point `champion` at `version` of the run's registered model (the only place the alias moves)."""
    client(cfg).set_registered_model_alias(cfg.model_name, CHAMPION, version)


def tag_trail_record(cfg: RunConfig, version: str, entry: dict) -> None:
    """The version points to its trail record (the record already names the version); the tag names are kept."""
    c = client(cfg)
    c.set_model_version_tag(cfg.model_name, version, "kr.audit_record_id", entry["record_id"])
    c.set_model_version_tag(cfg.model_name, version, "kr.audit_record_hash", entry["record_hash"])
