"""train-student: the GKD student, trained only on regenerated images with the teacher's soft labels."""

from typing import List  # noqa: UP035  KFP reads the annotation and wants typing.List

from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output


def train_student(
    config: str,
    data: Input[Dataset],
    shards: Input[List[Dataset]],  # noqa: UP006
    student: Output[Model],
    result: Output[Artifact],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
) -> None:
    """Inputs: `config` (gkd section), `data` (real val and test only: model selection and scoring), every shard.
    Outputs: `student` (student.pt), `result` (kr.results.StudentResult), `metrics` and the test `confusion`."""
    from pathlib import Path

    from kr import steps

    r = steps.train_student(config, Path(data.path), [Path(s.path) for s in shards], Path(student.path))
    r.save(Path(result.path))
    student.metadata.update({"role": "student", "framework": "pytorch", "file": steps.STUDENT_FILE})
    steps.log_kfp_metrics(r, metrics, confusion)
