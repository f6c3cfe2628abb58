"""record-rejection: a gate failed; register the student with its verdicts (no alias) and record the rejection."""

from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output


def record_rejection(
    config: str,
    run_dir: str,
    started_at: str,
    data: Input[Dataset],
    student: Input[Model],
    data_result: Input[Artifact],
    teacher_result: Input[Artifact],
    student_result: Input[Artifact],
    gates_result: Input[Artifact],
    decision: Output[Markdown],
) -> str:
    """Inputs: the full `config`, the run folder and start, `data` (two test images for the model signature), the
    `student`, and the results the trail record names. Outputs: `decision` (Markdown) and the conclusion
    (kr.results.Conclusion as JSON text) that `summarize` receives."""
    from pathlib import Path

    from kr import steps

    files = {"data": data_result, "teacher": teacher_result, "student": student_result, "gates": gates_result}
    r = steps.conclude_task(
        config, Path(run_dir), started_at, Path(data.path), Path(student.path), files, Path(decision.path), False
    )
    decision.metadata.update({"outcome": r.outcome, **{k: str(v) for k, v in (r.registry or {}).items()}})
    return r.model_dump_json()
