"""train-teacher: the teacher classifier, trained on the real training split."""

from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output


def train_teacher(
    config: str,
    data: Input[Dataset],
    teacher: Output[Model],
    result: Output[Artifact],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
) -> None:
    """Inputs: `config` (teacher section), `data`. Outputs: `teacher` (teacher.pt), `result`
    (kr.results.TeacherResult), `metrics` (val/test accuracy and AUC) and the test `confusion` matrix."""
    from pathlib import Path

    from kr import steps

    r = steps.train_teacher(config, Path(data.path), Path(teacher.path))
    r.save(Path(result.path))
    teacher.metadata.update({"role": "teacher", "framework": "pytorch", "file": steps.TEACHER_FILE})
    steps.log_kfp_metrics(r, metrics, confusion)
