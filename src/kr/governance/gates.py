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


def _check(
    checks: list[dict], name: str, value: Any, op: str, threshold: float, power: bool = False, missing: str = ""
) -> None:
    """Append one check. power: the check measures whether the evidence can see anything (the audit's power), not
    what it saw; failing it makes a verdict inconclusive rather than failed. missing: why a value may be absent."""
    if not _number(value):
        checks.append(
            {
                "check": name,
                "value": None,
                "threshold": threshold,
                "op": op,
                "passed": False,
                "power": power,
                "reason": f"{name} is missing{': ' + missing if missing else ''}: no verdict without a value",
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
            "power": power,
            "reason": f"{name} = {value:.4g} {'meets' if passed else 'violates'} {op} {threshold:g}",
        }
    )


PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"


def _verdict(checks: list[dict]) -> dict:
    """{"passed", "state", "checks", "reasons"}. state: fail when an evidence check failed (a leak seen by a weak
    audit is still a leak) or when there are no checks; inconclusive when only power checks failed (the evidence
    could not have seen a leak: fail closed, but say so); pass otherwise. passed is state == pass."""
    failed = [c for c in checks if not c["passed"]]
    if not checks or any(not c.get("power") for c in failed):
        state = FAIL
    elif failed:
        state = INCONCLUSIVE
    else:
        state = PASS
    reasons = [c["reason"] for c in failed]
    if state == INCONCLUSIVE:
        reasons.append("inconclusive: the audit lacks the power to show this model is safe, so it is not promoted")
    return {"passed": state == PASS, "state": state, "checks": checks, "reasons": reasons}


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


def _tpr_missing(privacy: dict | None) -> str:
    n = _dig(privacy, "n_nonmembers")
    return f"1% FPR cannot be measured with {n} non-members (privacy.max_candidates)" if _number(n) else ""


def privacy_gate(privacy: dict | None, cfg: PrivacyGate) -> dict[str, Any]:
    """The privacy verdict: pass, fail or inconclusive (`_verdict`).

    Evidence: every attack on the student judged by its ROC AUC's distance from chance (|AUC - 0.5| <= max_auc -
    0.5), the strongest TPR at 1% FPR, the one-run epsilon lower bound from the student's canaries (Steinke et al.
    2023), and the generator's near-copy fraction. Power: the teacher, trained on the real data and the inserted
    canaries, must tell inserted from held-out canaries with AUC >= min_teacher_canary_auc, and 1% FPR must be
    measurable (>= 100 non-members); a run without canaries has no measured power. `privacy` is the audit's result
    (kr.privacy.audit); None fails.
    """
    checks: list[dict] = []
    _check(checks, "student attack AUC distance from chance", chance_distance(privacy), "<=", cfg.max_auc - 0.5)
    tpr = _dig(privacy, "student.strongest.tpr_at_1pct_fpr")
    unmeasurable = privacy is not None and tpr is None and _number(_dig(privacy, "n_nonmembers"))
    _check(
        checks,
        "student TPR at 1% FPR",
        tpr,
        "<=",
        cfg.max_tpr_at_1pct_fpr,
        power=unmeasurable,
        missing=_tpr_missing(privacy) if unmeasurable else "",
    )
    _check(
        checks,
        "student canary epsilon lower bound",
        _dig(privacy, "canaries.student.epsilon_lower_bound.epsilon"),
        "<=",
        cfg.max_student_canary_epsilon,
        power=privacy is not None and privacy.get("canaries") is None,
        missing="no canaries were inserted (canaries.enabled)",
    )
    _check(
        checks,
        "generator near-copy fraction",
        _dig(privacy, "memorization.near_copy_fraction"),
        "<=",
        cfg.max_near_copy_fraction,
    )
    _check(
        checks,
        "audit power: teacher canary AUC",
        _dig(privacy, "canaries.teacher.auc"),
        ">=",
        cfg.min_teacher_canary_auc,
        power=privacy is not None,
        missing="no canaries were inserted (canaries.enabled), so the audit's power is unknown",
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
    """Every gate's verdict and the overall one: {"data", "accuracy", "privacy": verdict, "passed": bool}; the
    privacy verdict's "state" is pass, fail or inconclusive (only pass promotes).

    dataset: the validated file's info (its MD5 proves the data gate: reaching here passed the loader's checks and
    the expectation suites). privacy: the privacy audit's result as a dict, None when it did not run (fails).
    """
    dataset = dataset or {}
    gates = {
        "data": {
            "passed": "md5" in dataset,
            "state": PASS if "md5" in dataset else FAIL,
            "md5": dataset.get("md5"),
            "source": dataset.get("source"),
        },
        "accuracy": accuracy_gate(
            student_accuracy, teacher_accuracy, majority_rate, cfg.gates.accuracy, recalls=student_recalls
        ),
        "privacy": privacy_gate(privacy, cfg.gates.privacy),
    }
    gates["passed"] = all(g["passed"] for g in gates.values())
    return gates
