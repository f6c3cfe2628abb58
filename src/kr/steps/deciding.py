"""The steps that judge and decide: the privacy audit, the gates, and the conclusion (promote or record rejection)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from kr.data import load_saved_dataset
from kr.results import (
    Conclusion,
    DataResult,
    GatesResult,
    GeneratorResult,
    NaiveResult,
    PrivacyResult,
    RunResults,
    SelectionResult,
    ShardResult,
    StepResult,
    StudentResult,
    TeacherResult,
)
from kr.run.report import decision_markdown
from kr.run.step_table import load_step_config
from kr.steps.running import STUDENT_FILE, TEACHER_FILE, run_step, shard_files


def audit_privacy(
    config: str,
    data_dir: Path,
    teacher_dir: Path,
    student_dir: Path,
    shard_dirs: list[Path],
    teacher: TeacherResult,
    student: StudentResult,
    privacy_dir: Path,
) -> PrivacyResult:
    """Membership inference against teacher and student (their test accuracies come in with their results, for
    the accuracy-over-privacy score) and the generator's near copies; plots and JSON in `privacy_dir`."""
    from kr.privacy.audit import audit_privacy as run_audit

    cfg = load_step_config(config)

    def step() -> PrivacyResult:
        models = {"teacher": Path(teacher_dir) / TEACHER_FILE, "student": Path(student_dir) / STUDENT_FILE}
        accuracy = {"teacher": teacher.test.accuracy, "student": student.test.accuracy}
        data = load_saved_dataset(data_dir)
        found = run_audit(
            data,
            models,
            accuracy,
            shard_files(shard_dirs),
            cfg.privacy,
            cfg.teacher,
            cfg.canaries,
            privacy_dir,
            cfg.seed,
        )
        return PrivacyResult(**found)

    return run_step(cfg, "audit_privacy", step, lambda _r: [Path(privacy_dir)])


def evaluate_gates(
    config: str,
    run_folder: Path,
    data: DataResult,
    teacher: TeacherResult,
    student: StudentResult,
    privacy: PrivacyResult | None,
) -> GatesResult:
    """The data, accuracy and privacy gates' verdicts from the results they judge (fail closed on a missing value)."""
    from kr.governance.gates import evaluate_gates as verdicts

    cfg = load_step_config(config)

    def step() -> GatesResult:
        audit = privacy.model_dump(mode="json") if privacy else None
        recalls = student.test.model_extra.get("per_class")
        found = verdicts(
            cfg, data.info, data.majority_rate_test, teacher.test.accuracy, student.test.accuracy, audit, recalls
        )
        return GatesResult(**found)

    return run_step(cfg, "evaluate_gates", step, folder=Path(run_folder))


def conclude(
    config: str,
    run_folder: Path,
    data_dir: Path,
    student_dir: Path,
    results: RunResults,
    started: str,
    promote: bool,
) -> Conclusion:
    """promote (every gate passed) or record_rejection: register the student with its verdicts, move `champion`
    only when promoting and the champion gate passes, and append the run's trail record (before the alias moves)."""
    from kr.governance import promotion

    cfg = load_step_config(config)
    name = "promote" if promote else "record_rejection"

    def step() -> Conclusion:
        # the model's signature needs the input's shape and dtype, not a patient's image: the input example goes to
        # the registry's store, which more people read than the run's data
        info = results.data.info if results.data else load_saved_dataset(data_dir).info.to_dict()
        side = int(info["image_size"])
        example = np.zeros((2, int(info["channels"]), side, side), dtype=np.uint8)
        found = promotion.conclude(
            cfg, Path(run_folder), Path(student_dir) / STUDENT_FILE, example, results, started, promote=promote
        )
        return Conclusion(**found)

    return run_step(cfg, name, step, folder=Path(run_folder))


def conclude_task(
    config: str,
    run_folder: Path,
    started: str,
    data_dir: Path,
    student_dir: Path,
    result_files: dict[str, Any],
    decision_path: Path,
    promote: bool,
) -> Conclusion:
    """`conclude` for a component: the results from their artifact files (objects with a `.path`, or paths), and the
    decision written as Markdown to `decision_path`."""
    results = load_results(result_files)
    found = conclude(config, run_folder, data_dir, student_dir, results, started, promote)
    Path(decision_path).write_text(decision_markdown(found.model_dump(mode="json")))
    return found


RESULT_TYPES: dict[str, type[StepResult]] = {
    "data": DataResult,
    "teacher": TeacherResult,
    "generator": GeneratorResult,
    "selection": SelectionResult,
    "student": StudentResult,
    "naive": NaiveResult,
    "privacy": PrivacyResult,
    "gates": GatesResult,
}


def load_results(files: dict[str, Any], shard_files: Iterable[Any] = (), conclusion: str | None = None) -> RunResults:
    """RunResults from result artifact files: {"teacher": path or artifact, ...} (keys of RESULT_TYPES), the shards'
    result files, and the conclusion's JSON text. Raises KeyError for an unknown key, pydantic.ValidationError for
    a file of the wrong type."""

    def path(item: Any) -> Path:
        return Path(getattr(item, "path", item))

    values: dict[str, Any] = {k: RESULT_TYPES[k].load(path(v)) for k, v in files.items()}
    values["shards"] = [ShardResult.load(path(f)) for f in shard_files]
    if conclusion:
        values["conclusion"] = Conclusion.model_validate_json(conclusion)
    return RunResults(**values)
