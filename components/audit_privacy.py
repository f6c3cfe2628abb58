"""audit-privacy: membership inference against teacher and student, and the generator's near copies."""

from typing import List  # noqa: UP035  KFP reads the annotation and wants typing.List

from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output


def audit_privacy(
    config: str,
    data: Input[Dataset],
    teacher: Input[Model],
    student: Input[Model],
    shards: Input[List[Dataset]],  # noqa: UP006
    teacher_result: Input[Artifact],
    student_result: Input[Artifact],
    privacy: Output[Artifact],
    result: Output[Artifact],
    metrics: Output[Metrics],
    student_roc: Output[ClassificationMetrics],
) -> None:
    """Inputs: `config` (privacy and teacher sections), `data`, both models, every shard, and the two models'
    results (their test accuracies). Outputs: `privacy` (ROC plot, privacy.json), `result`
    (kr.results.PrivacyResult), `metrics` (strongest attack's AUC and TPR at 1% FPR, near copies) and the
    strongest attack's ROC curve on the student."""
    from pathlib import Path

    from kr import steps

    r = steps.audit_privacy(
        config,
        Path(data.path),
        Path(teacher.path),
        Path(student.path),
        [Path(s.path) for s in shards],
        steps.TeacherResult.load(Path(teacher_result.path)),
        steps.StudentResult.load(Path(student_result.path)),
        Path(privacy.path),
    )
    r.save(Path(result.path))
    for model in ("teacher", "student"):
        metrics.log_metric(f"{model}_strongest_auc", getattr(r, model)["strongest"]["auc"])
        tpr = getattr(r, model)["strongest"]["tpr_at_1pct_fpr"]
        if tpr is not None:  # None: 1% FPR is not measurable with these non-members
            metrics.log_metric(f"{model}_tpr_at_1pct_fpr", tpr)
        if r.canaries:
            metrics.log_metric(f"{model}_canary_auc", r.canaries[model]["auc"])
            metrics.log_metric(
                f"{model}_canary_epsilon_lower_bound", r.canaries[model]["epsilon_lower_bound"]["epsilon"]
            )
    metrics.log_metric("near_copy_fraction", r.memorization["near_copy_fraction"])
    roc = r.student["strongest"].get("roc")
    if roc:
        student_roc.log_roc_curve(roc["fpr"], roc["tpr"], roc["thresholds"])
    steps.keep_metrics(metrics, student_roc)
