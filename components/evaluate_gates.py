"""evaluate-gates: the data, accuracy and privacy gates, from the results they judge."""

from kfp.dsl import Artifact, Input, Markdown, Output


def evaluate_gates(
    config: str,
    run_dir: str,
    data_result: Input[Artifact],
    teacher_result: Input[Artifact],
    student_result: Input[Artifact],
    privacy_result: Input[Artifact],
    verdict: Output[Markdown],
    result: Output[Artifact],
) -> bool:
    """Inputs: the full `config`, the run folder, and the results of validation, teacher, student and privacy
    audit. Outputs: `verdict` (the gates as Markdown), `result` (kr.results.GatesResult) and whether every gate
    passed (the condition promotion hangs on)."""
    from pathlib import Path

    from kr import steps

    r = steps.evaluate_gates(
        config,
        Path(run_dir),
        steps.DataResult.load(Path(data_result.path)),
        steps.TeacherResult.load(Path(teacher_result.path)),
        steps.StudentResult.load(Path(student_result.path)),
        steps.PrivacyResult.load(Path(privacy_result.path)),
    )
    r.save(Path(result.path))
    Path(verdict.path).write_text(steps.gates_markdown(r.verdicts()))
    verdict.metadata.update({"passed": r.passed})
    return r.passed
