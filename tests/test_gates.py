"""Gates fail closed: a missing, NaN or non-numeric metric is a failed check with a reason, never a pass."""

from __future__ import annotations

import copy

import pytest

from kr.config import AccuracyGate, PrivacyGate
from kr.governance.gates import accuracy_gate, privacy_gate

PRIVACY = {
    "n_nonmembers": 200,
    "student": {"strongest": {"auc": 0.52, "tpr_at_1pct_fpr": 0.02}},
    "canaries": {"teacher": {"auc": 0.95}, "student": {"auc": 0.505, "epsilon_lower_bound": {"epsilon": 0.0}}},
    "memorization": {"near_copy_fraction": 0.0},
}
STUDENT, TEACHER, MAJORITY = 0.83, 0.85, 0.73
RECALLS = {"0": {"n": 40, "recall": 0.6}, "1": {"n": 110, "recall": 0.9}}


def test_privacy_gate_passes_within_thresholds() -> None:
    verdict = privacy_gate(PRIVACY, PrivacyGate(max_auc=0.55, max_tpr_at_1pct_fpr=0.05))
    assert verdict["passed"] and verdict["state"] == "pass" and verdict["reasons"] == []
    assert len(verdict["checks"]) == 5


def test_privacy_gate_names_what_failed() -> None:
    verdict = privacy_gate(PRIVACY, PrivacyGate(max_auc=0.51))
    assert not verdict["passed"]
    assert len(verdict["reasons"]) == 1 and verdict["reasons"][0].startswith("student attack AUC distance from chance")


@pytest.mark.parametrize("bad", [None, float("nan"), "0.5", True])
def test_privacy_gate_fails_closed_on_missing_or_bad_metric(bad) -> None:
    privacy = copy.deepcopy(PRIVACY)
    privacy["student"]["strongest"]["auc"] = bad
    verdict = privacy_gate(privacy, PrivacyGate())
    assert not verdict["passed"]
    assert any("missing" in r for r in verdict["reasons"])


def test_no_privacy_block_fails_every_check() -> None:
    verdict = privacy_gate(None, PrivacyGate())
    assert not verdict["passed"] and verdict["state"] == "fail" and len(verdict["reasons"]) == 5


def test_an_audit_without_power_is_inconclusive_and_does_not_pass() -> None:
    """The student looks safe, but the teacher, trained on the canaries, does not tell them apart either: the audit
    could not have seen a leak, so the verdict is inconclusive (fail closed), not pass."""
    weak = copy.deepcopy(PRIVACY)
    weak["canaries"]["teacher"]["auc"] = 0.62
    verdict = privacy_gate(weak, PrivacyGate())
    assert not verdict["passed"] and verdict["state"] == "inconclusive"
    assert any("audit power: teacher canary AUC" in r for r in verdict["reasons"])
    assert any(r.startswith("inconclusive") for r in verdict["reasons"])
    # without canaries the power is unknown: inconclusive too
    blind = copy.deepcopy(PRIVACY)
    blind["canaries"] = None
    assert privacy_gate(blind, PrivacyGate())["state"] == "inconclusive"
    # too few non-members to measure 1% FPR: inconclusive
    few = copy.deepcopy(PRIVACY) | {"n_nonmembers": 60}
    few["student"]["strongest"]["tpr_at_1pct_fpr"] = None
    verdict = privacy_gate(few, PrivacyGate())
    assert verdict["state"] == "inconclusive" and any("60 non-members" in r for r in verdict["reasons"])


def test_a_leak_seen_by_a_weak_audit_is_a_failure() -> None:
    leaky = copy.deepcopy(PRIVACY)
    leaky["canaries"]["teacher"]["auc"] = 0.62
    leaky["canaries"]["student"] = {"auc": 0.8, "epsilon_lower_bound": {"epsilon": 1.2}}
    assert privacy_gate(leaky, PrivacyGate())["state"] == "fail"


def test_accuracy_gate_checks_floor_gap_and_majority() -> None:
    strict = AccuracyGate(min_student_accuracy=0.8, max_gap_pp=3, min_above_majority_pp=8)
    assert accuracy_gate(STUDENT, TEACHER, MAJORITY, strict, recalls=RECALLS)["passed"]
    gap = accuracy_gate(STUDENT, TEACHER, MAJORITY, AccuracyGate(max_gap_pp=1), recalls=RECALLS)
    assert not gap["passed"] and "teacher minus student" in gap["reasons"][0]
    verdict = accuracy_gate(STUDENT, None, MAJORITY, AccuracyGate(), recalls=RECALLS)
    assert not verdict["passed"] and any("missing" in r for r in verdict["reasons"])


def test_a_constant_predictor_fails_the_default_accuracy_gate() -> None:
    """Measured on BreastMNIST smoke: a student at exactly the majority rate (0.731), recall 0 on malignant, 1 on
    benign, was promoted by the old defaults."""
    majority = 114 / 156
    constant = {"0": {"n": 42, "recall": 0.0}, "1": {"n": 114, "recall": 1.0}}
    verdict = accuracy_gate(majority, 0.84, majority, AccuracyGate(), recalls=constant)
    assert not verdict["passed"]
    assert any("above majority rate" in r for r in verdict["reasons"])
    assert any("class 0 recall" in r for r in verdict["reasons"])


def test_near_constant_predictor_fails_on_its_weakest_class() -> None:
    recalls = {"0": {"n": 42, "recall": 0.05}, "1": {"n": 114, "recall": 1.0}}
    verdict = accuracy_gate(0.745, 0.84, 0.731, AccuracyGate(min_above_majority_pp=0), recalls=recalls)
    assert not verdict["passed"] and any("class 0 recall" in r for r in verdict["reasons"])


def test_a_teacher_that_did_not_learn_fails_the_gate() -> None:
    recalls = {"0": {"n": 42, "recall": 0.7}, "1": {"n": 114, "recall": 0.9}}
    verdict = accuracy_gate(0.85, 0.462, 0.731, AccuracyGate(max_gap_pp=100), recalls=recalls)
    assert not verdict["passed"] and any("teacher did not learn" in r for r in verdict["reasons"])


def test_the_default_runs_pass_the_default_accuracy_gate() -> None:
    """laptop profile, seed 0 (README): BreastMNIST student 0.872 / teacher 0.840 / majority 0.731, recalls 0.667 and
    0.947; PneumoniaMNIST 0.873 / 0.880 / 0.625, recalls 0.701 and 0.977."""
    breast = {"0": {"n": 42, "recall": 0.667}, "1": {"n": 114, "recall": 0.947}}
    pneumonia = {"0": {"n": 234, "recall": 0.701}, "1": {"n": 390, "recall": 0.977}}
    assert accuracy_gate(0.872, 0.840, 0.731, AccuracyGate(), recalls=breast)["passed"]
    assert accuracy_gate(0.873, 0.880, 0.625, AccuracyGate(), recalls=pneumonia)["passed"]


@pytest.mark.parametrize(
    "override", ["gates.champion.tolerance_pp=.inf", "gates.accuracy.max_gap_pp=.inf", "gates.privacy.max_auc=.nan"]
)
def test_non_finite_thresholds_are_refused_at_resolve_time(override: str) -> None:
    from kr.config import ConfigError, resolve_config

    with pytest.raises(ConfigError, match=override.split("=")[0].split(".", 1)[1]):
        resolve_config("smoke", overrides=[override])


def test_an_inverted_attack_is_as_leaky_as_its_mirror() -> None:
    """An attack with AUC 0.1 separates members as well as one with 0.9: the gate judges the distance from chance."""
    inverted = copy.deepcopy(PRIVACY)
    inverted["student"]["attacks"] = {"loss": {"auc": 0.1, "tpr_at_1pct_fpr": 0.0}, "rmia": {"auc": 0.52}}
    inverted["student"]["strongest"] = {"attack": "rmia", "auc": 0.52, "tpr_at_1pct_fpr": 0.02}
    verdict = privacy_gate(inverted, PrivacyGate(max_auc=0.6))
    assert not verdict["passed"] and any("distance from chance" in r for r in verdict["reasons"])
    assert privacy_gate(PRIVACY, PrivacyGate(max_auc=0.6))["passed"]
