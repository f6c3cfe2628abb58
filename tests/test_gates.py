"""Gates fail closed: a missing, NaN or non-numeric metric is a failed check with a reason, never a pass."""

from __future__ import annotations

import copy

import pytest

from kr.config import AccuracyGate, PrivacyGate
from kr.governance.gates import accuracy_gate, privacy_gate

PRIVACY = {
    "student": {"strongest": {"auc": 0.52, "tpr_at_1pct_fpr": 0.02}},
    "memorization": {"near_copy_fraction": 0.0},
}
STUDENT, TEACHER, MAJORITY = 0.83, 0.85, 0.73


def test_privacy_gate_passes_within_thresholds() -> None:
    verdict = privacy_gate(PRIVACY, PrivacyGate(max_auc=0.55, max_tpr_at_1pct_fpr=0.05))
    assert verdict["passed"] and verdict["reasons"] == []
    assert len(verdict["checks"]) == 3


def test_privacy_gate_names_what_failed() -> None:
    verdict = privacy_gate(PRIVACY, PrivacyGate(max_auc=0.51))
    assert not verdict["passed"]
    assert verdict["reasons"] == ["student strongest attack AUC = 0.52 violates <= 0.51"]


@pytest.mark.parametrize("bad", [None, float("nan"), "0.5", True])
def test_privacy_gate_fails_closed_on_missing_or_bad_metric(bad) -> None:
    privacy = copy.deepcopy(PRIVACY)
    privacy["student"]["strongest"]["auc"] = bad
    verdict = privacy_gate(privacy, PrivacyGate())
    assert not verdict["passed"]
    assert any("missing" in r for r in verdict["reasons"])


def test_no_privacy_block_fails_every_check() -> None:
    verdict = privacy_gate(None, PrivacyGate())
    assert not verdict["passed"] and len(verdict["reasons"]) == 3


def test_accuracy_gate_checks_floor_gap_and_majority() -> None:
    strict = AccuracyGate(min_student_accuracy=0.8, max_gap_pp=3, min_above_majority_pp=8)
    assert accuracy_gate(STUDENT, TEACHER, MAJORITY, strict)["passed"]
    gap = accuracy_gate(STUDENT, TEACHER, MAJORITY, AccuracyGate(max_gap_pp=1))
    assert not gap["passed"] and "teacher minus student" in gap["reasons"][0]
    verdict = accuracy_gate(STUDENT, None, MAJORITY, AccuracyGate())
    assert not verdict["passed"] and any("missing" in r for r in verdict["reasons"])
