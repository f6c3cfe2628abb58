"""Gates: explicit verdicts with reasons. A missing or non-numeric metric fails its gate (fail closed)."""

from __future__ import annotations

import math
from typing import Any

from kr.config import AccuracyGate, PrivacyGate, RunConfig


def _dig(tree: dict | None, path: str) -> Any:
    node: Any = tree
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check(checks: list[dict], name: str, value: Any, op: str, threshold: float) -> None:
    if not _number(value):
        checks.append(
            {
                "check": name,
                "value": None,
                "threshold": threshold,
                "op": op,
                "passed": False,
                "reason": f"{name} is missing: no verdict without a value",
            }
        )
        return
    passed = {"<=": value <= threshold, ">=": value >= threshold, ">": value > threshold}[op]
    checks.append(
        {
            "check": name,
            "value": value,
            "threshold": threshold,
            "op": op,
            "passed": passed,
            "reason": f"{name} = {value:.4g} {'meets' if passed else 'violates'} {op} {threshold:g}",
        }
    )


def _verdict(checks: list[dict]) -> dict:
    return {
        "passed": bool(checks) and all(c["passed"] for c in checks),
        "checks": checks,
        "reasons": [c["reason"] for c in checks if not c["passed"]],
    }


def chance_distance(privacy: dict | None) -> float | None:
    """The largest |AUC - 0.5| of any attack on the student: an attack with AUC 0.1 separates members from
    non-members as well as one with 0.9 (its scores inverted), so both are equally leaky. None without attacks."""
    attacks = _dig(privacy, "student.attacks")
    aucs = [a.get("auc") for a in attacks.values()] if isinstance(attacks, dict) else []
    aucs = [a for a in aucs if _number(a)]
    if not aucs:  # an audit without per-attack results: judge the strongest alone
        strongest = _dig(privacy, "student.strongest.auc")
        aucs = [strongest] if _number(strongest) else []
    return max(abs(a - 0.5) for a in aucs) if aucs else None


def privacy_gate(privacy: dict | None, cfg: PrivacyGate) -> dict[str, Any]:
    """Every attack on the student judged by its ROC AUC's distance from chance (|AUC - 0.5| <= max_auc - 0.5), the
    strongest attack's TPR at 1% FPR, and the generator's near-copy fraction, against the configured ceilings.
    `privacy` is the privacy audit's result (kr.privacy.audit); None fails every check."""
    checks: list[dict] = []
    _check(checks, "student attack AUC distance from chance", chance_distance(privacy), "<=", cfg.max_auc - 0.5)
    _check(
        checks,
        "student TPR at 1% FPR",
        _dig(privacy, "student.strongest.tpr_at_1pct_fpr"),
        "<=",
        cfg.max_tpr_at_1pct_fpr,
    )
    _check(
        checks,
        "generator near-copy fraction",
        _dig(privacy, "memorization.near_copy_fraction"),
        "<=",
        cfg.max_near_copy_fraction,
    )
    return _verdict(checks)


def accuracy_gate(
    student: float | None,
    teacher: float | None,
    majority: float | None,
    cfg: AccuracyGate,
    recalls: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The student's real test accuracy against a floor, its gap to the teacher, its lead over the majority-class
    rate (strictly above `min_above_majority_pp`), every class's recall (strictly above `min_class_recall`), and the
    teacher's own lead over the majority rate. Accuracies and recalls are fractions in [0, 1]; gaps and leads
    percentage points. recalls: `classification_metrics`'s per_class ({class: {"n", "recall"}}); a class absent from
    the test split (recall None) is skipped, no recalls at all is a failed check. A None value is a failed check."""
    checks: list[dict] = []
    _check(checks, "student test accuracy", student, ">=", cfg.min_student_accuracy)
    gap = 100 * (teacher - student) if isinstance(student, float) and isinstance(teacher, float) else None
    _check(checks, "teacher minus student (pp)", gap, "<=", cfg.max_gap_pp)
    above = 100 * (student - majority) if isinstance(student, float) and isinstance(majority, float) else None
    _check(checks, "student above majority rate (pp)", above, ">", cfg.min_above_majority_pp)
    present = {c: r["recall"] for c, r in (recalls or {}).items() if r.get("n")}
    if not present:
        _check(checks, "per-class recall", None, ">", cfg.min_class_recall)
    for name, recall in sorted(present.items()):
        _check(checks, f"class {name} recall", recall, ">", cfg.min_class_recall)
    learned = 100 * (teacher - majority) if isinstance(teacher, float) and isinstance(majority, float) else None
    _check(checks, "teacher above majority rate (pp)", learned, ">", cfg.teacher_min_above_majority_pp)
    if checks[-1]["value"] is not None and not checks[-1]["passed"]:
        checks[-1]["reason"] += ": the teacher did not learn, so its student is not promoted"
    return _verdict(checks)


def evaluate_gates(
    cfg: RunConfig,
    dataset: dict[str, Any] | None,
    majority_rate: float | None,
    teacher_accuracy: float | None,
    student_accuracy: float | None,
    privacy: dict[str, Any] | None,
    student_recalls: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Every gate's verdict and the overall one: {"data", "accuracy", "privacy": verdict, "passed": bool}.

    dataset: the validated file's info (its MD5 proves the data gate: reaching here passed the loader's checks and
    the expectation suites). privacy: the privacy audit's result as a dict, None when it did not run (fails).
    """
    dataset = dataset or {}
    gates = {
        "data": {"passed": "md5" in dataset, "md5": dataset.get("md5"), "source": dataset.get("source")},
        "accuracy": accuracy_gate(
            student_accuracy, teacher_accuracy, majority_rate, cfg.gates.accuracy, recalls=student_recalls
        ),
        "privacy": privacy_gate(privacy, cfg.gates.privacy),
    }
    gates["passed"] = all(g["passed"] for g in gates.values())
    return gates
