"""Promotion rules on a real embedded MLflow store (SQLite, no server): every student registered, the champion
moved only by a passing student not worse than the champion beyond the tolerance, registration idempotent."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
from servers import moto_fixture  # noqa: F401  the `moto` fixture

from kr.config import ClassifierConfig, RunConfig
from kr.governance import registry
from kr.governance.gates import evaluate_gates
from kr.method.classifier import build_classifier, save_classifier
from mlflow import MlflowClient


@pytest.fixture
def store(tmp_path: Path) -> dict:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    student = save_classifier(
        build_classifier(ClassifierConfig(width=4, blocks_per_stage=1), 1, 2, 28, 0), tmp_path / "s.pt"
    )
    return {"uri": uri, "artifacts": (tmp_path / "artifacts").as_uri(), "student": student}


def config(store: dict, run_key: str, tolerance_pp: float = 1.0) -> RunConfig:
    return RunConfig.model_validate(
        {
            "tracking": {"uri": store["uri"], "artifact_location": store["artifacts"], "model_name": "m"},
            "run": {"run_key": run_key},
            "gates": {"champion": {"tolerance_pp": tolerance_pp}},
        }
    )


def passing_gates(cfg: RunConfig, accuracy: float) -> dict:
    privacy = {
        "n_nonmembers": 200,
        "student": {"strongest": {"auc": 0.5, "tpr_at_1pct_fpr": 0.01}},
        "canaries": {"teacher": {"auc": 0.95}, "student": {"auc": 0.5, "epsilon_lower_bound": {"epsilon": 0.0}}},
        "memorization": {"near_copy_fraction": 0.0},
    }
    recalls = {"0": {"n": 10, "recall": accuracy}, "1": {"n": 10, "recall": accuracy}}
    gates = evaluate_gates(cfg, {"md5": "x"}, 0.5, accuracy, accuracy, privacy, recalls)
    assert gates["passed"]
    return gates


def decide(
    store: dict, key: str, accuracy: float, promote: bool = True, tolerance_pp: float = 1.0, md5: str = "x"
) -> dict:
    cfg = config(store, key, tolerance_pp)
    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    exp = client.get_experiment_by_name("t") or client.get_experiment(
        client.create_experiment("t", artifact_location=store["artifacts"])
    )
    run_id = client.create_run(exp.experiment_id).info.run_id
    x = np.zeros((2, 1, 28, 28), np.uint8)
    gates = passing_gates(cfg, accuracy)
    return registry.decide(cfg, run_id, store["student"], x, gates, accuracy, promote=promote, dataset_md5=md5)


def champion(store: dict) -> str:
    return str(MlflowClient(tracking_uri=store["uri"]).get_model_version_by_alias("m", "champion").version)


def test_champion_rules_and_tolerance(store: dict) -> None:
    first = decide(store, "run-1", 0.80)
    assert first["promoted"] and first["version"] == "1" and champion(store) == "1"
    # 1.5 points worse with a 1-point tolerance: registered, not promoted
    worse = decide(store, "run-2", 0.785)
    assert not worse["promoted"] and worse["version"] == "2" and champion(store) == "1"
    assert (
        worse["champion_gate"]["passed"] is False
        and "beyond the 1 pp tolerance" in worse["champion_gate"]["reasons"][0]
    )
    # 0.5 points worse is within the tolerance: promoted
    close = decide(store, "run-3", 0.795)
    assert close["promoted"] and champion(store) == "3" and close["previous_champion"] == "1"
    # gates failed upstream: registered with its verdicts, champion untouched
    rejected = decide(store, "run-4", 0.99, promote=False)
    assert not rejected["promoted"] and rejected["version"] == "4" and champion(store) == "3"
    tags = MlflowClient(tracking_uri=store["uri"]).get_model_version("m", "4").tags
    assert tags["kr.run_key"] == "run-4" and tags["gate.privacy.verdict"] == "pass"
    assert tags["gate.privacy.student_attack_auc_distance_from_chance.threshold"] == "<= 0.1"


def test_registration_is_idempotent_per_run(store: dict) -> None:
    a = decide(store, "run-1", 0.8)
    again = decide(store, "run-1", 0.8)  # a retried promote step
    assert again["version"] == a["version"] == "1"
    assert len(MlflowClient(tracking_uri=store["uri"]).search_model_versions("name = 'm'")) == 1
    assert champion(store) == "1"


def test_a_champion_without_its_accuracy_is_kept(store: dict) -> None:
    decide(store, "run-1", 0.8)
    MlflowClient(tracking_uri=store["uri"]).delete_model_version_tag("m", "1", "kr.student_test_accuracy")
    challenger = decide(store, "run-2", 0.95)
    assert not challenger["promoted"] and champion(store) == "1"  # fail closed: no number, no comparison


def test_a_champion_scored_on_another_test_set_is_not_compared(store: dict) -> None:
    """Accuracies on two test sets are not comparable: any file named BreastMNIST.npz registers under one name."""
    decide(store, "run-1", 0.8, md5="a")
    other = decide(store, "run-2", 0.95, md5="b")
    assert not other["promoted"] and champion(store) == "1"
    assert "another test set" in other["champion_gate"]["reasons"][0]
    same = decide(store, "run-3", 0.81, md5="a")
    assert same["promoted"] and champion(store) == "3"


def test_gate_tags_cover_every_check(store: dict) -> None:
    cfg = config(store, "k")
    tags = registry.gate_tags(passing_gates(cfg, 0.8))
    checks = [k for k in tags if k.endswith(".verdict") and k.count(".") == 3]
    # 6 accuracy checks (floor, gap, majority, two class recalls, teacher) + 5 privacy (attacks, TPR, canaries,
    # near copies, the audit's power)
    assert len(checks) == 11
    assert tags["gate.privacy.verdict"] == "pass"
    assert tags["gate.privacy.audit_power__teacher_canary_auc.verdict"] == "pass"
    assert all(tags[k.replace(".verdict", ".threshold")] for k in checks)


def test_an_inconclusive_audit_blocks_promotion(store: dict) -> None:
    """A student that looks safe to an audit without power (the teacher did not tell its canaries apart) is
    registered with the verdict inconclusive and never becomes champion, however accurate it is."""
    decide(store, "run-1", 0.8)
    cfg = config(store, "run-2")
    privacy = {
        "n_nonmembers": 200,
        "student": {"strongest": {"auc": 0.5, "tpr_at_1pct_fpr": 0.01}},
        "canaries": {"teacher": {"auc": 0.62}, "student": {"auc": 0.5, "epsilon_lower_bound": {"epsilon": 0.0}}},
        "memorization": {"near_copy_fraction": 0.0},
    }
    recalls = {"0": {"n": 10, "recall": 0.95}, "1": {"n": 10, "recall": 0.95}}
    gates = evaluate_gates(cfg, {"md5": "x"}, 0.5, 0.95, 0.95, privacy, recalls)
    assert not gates["passed"] and gates["privacy"]["state"] == "inconclusive"
    client = MlflowClient(tracking_uri=store["uri"])
    run_id = client.create_run(client.get_experiment_by_name("t").experiment_id).info.run_id
    x = np.zeros((2, 1, 28, 28), np.uint8)
    result = registry.decide(cfg, run_id, store["student"], x, gates, 0.95, promote=gates["passed"], dataset_md5="x")
    assert not result["promoted"] and champion(store) == "1"
    assert client.get_model_version("m", result["version"]).tags["gate.privacy.verdict"] == "inconclusive"


def test_a_decided_version_carries_its_model_card(store: dict, tmp_path: Path) -> None:
    """The version's description: data name and MD5, teacher and student accuracy, CAS gap, gate verdicts and the
    audit record's id, from the record itself, once the decision is tagged."""
    from kr.governance.trail import open_trail

    result = decide(store, "run-1", 0.8, md5="a" * 32)
    cfg = config(store, "run-1").model_copy(update={"audit": {"uri": str(tmp_path / "audit")}})
    gates = passing_gates(cfg, 0.8)
    gates["privacy"] = {"passed": False, "state": "inconclusive", "reasons": ["audit power: teacher canary AUC low"]}
    record = open_trail(tmp_path / "audit").append(
        {
            "run_id": "run-1",
            "outcome": "rejected",
            "inputs": {"dataset": {"name": "breastmnist", "md5": "a" * 32}, "code_version": "0.1.0+abc"},
            "outputs": {
                "registry": {"model_name": "m", "version": result["version"]},
                "teacher_test_accuracy": 0.85,
                "student_test_accuracy": 0.8,
            },
            "gates": gates,
        }
    )
    entry = {k: record[k] for k in ("record_id", "record_hash")} | {"uri": str(tmp_path / "audit")}
    registry.tag_decision(cfg, result["version"], "rejected", entry)
    card = MlflowClient(tracking_uri=store["uri"]).get_model_version("m", result["version"]).description
    for text in (
        "m version 1: rejected",
        "| data | breastmnist (MD5 `" + "a" * 32 + "`) |",
        "| teacher test accuracy | 0.8500 |",
        "| student test accuracy | 0.8000 |",
        "| CAS gap (student minus teacher) | -5.00 pp |",
        f"| audit record | `{record['record_id']}` (record hash `{record['record_hash']}`) |",
        "| accuracy | pass |  |",
        "| privacy | inconclusive | audit power: teacher canary AUC low |",
    ):
        assert text in card, (text, card)
    assert registry.model_card({}).startswith("## ? version ?: ?")  # a damaged record still renders


def test_behind_basic_auth_with_no_default_permission_a_new_model_is_found_absent_then_registered(
    tmp_path: Path, moto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cluster's MLflow (basic auth, NO_PERMISSIONS by default): getting a model that does not exist yet is
    refused with 403, so the run-key check and the first registration must not depend on it."""
    import requests
    from servers import mlflow_server

    admin = ("admin", uuid.uuid4().hex)
    with mlflow_server(
        tmp_path / "mlflow", f"s3://{moto.create_bucket()}/mlflow", moto.env, admin_password=admin[1]
    ) as s:
        user = ("kr-pipeline", uuid.uuid4().hex)
        made = requests.post(
            f"{s.uri}/api/2.0/mlflow/users/create", auth=admin, json={"username": user[0], "password": user[1]}
        )
        assert made.status_code == 200, made.text
        for key, value in {
            **moto.env,
            "MLFLOW_TRACKING_USERNAME": user[0],
            "MLFLOW_TRACKING_PASSWORD": user[1],
        }.items():
            monkeypatch.setenv(key, value)
        store = {
            "uri": s.uri,
            "artifacts": None,
            "student": save_classifier(
                build_classifier(ClassifierConfig(width=4, blocks_per_stage=1), 1, 2, 28, 0), tmp_path / "s.pt"
            ),
        }
        cfg = config(store, "run-1")
        assert registry.find_version(cfg, "run-1") is None  # was: 403 Permission denied
        client = MlflowClient(tracking_uri=s.uri)
        run_id = client.create_run(client.create_experiment("t")).info.run_id
        x = np.zeros((2, 1, 28, 28), np.uint8)
        first = registry.decide(cfg, run_id, store["student"], x, passing_gates(cfg, 0.8), 0.8, promote=True)
        assert first["promoted"] and registry.find_version(cfg, "run-1").version == first["version"]
