"""promote: every gate passed; register the student and move `champion` if it also passes the champion gate."""

from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output


def promote(
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
        config, Path(run_dir), started_at, Path(data.path), Path(student.path), files, Path(decision.path), True
    )
    decision.metadata.update({"outcome": r.outcome, **{k: str(v) for k, v in (r.registry or {}).items()}})
    return r.model_dump_json()
