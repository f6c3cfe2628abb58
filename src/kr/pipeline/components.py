"""KFP v2 components: one per step, each a few lines that call `kr.steps` (no ML logic here).

Components are made by `build_components(image)` so that the image is chosen when the pipeline is compiled
(`kr compile --image ...`); the local runner ignores it and runs the same code in this environment.
Artifact paths are used as folders (models, datasets) or files (regeneration shards).
"""

from types import SimpleNamespace
from typing import List  # noqa: UP035  KFP reads the annotations and wants typing.List

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output


def validate_data(config_json: str, run_dir: str, data: Output[Dataset]) -> None:
    from pathlib import Path

    from kr import steps
    from kr.config import RunConfig

    result = steps.validate_data(RunConfig.model_validate_json(config_json), Path(run_dir), Path(data.path))
    data.metadata.update({k: result["info"][k] for k in ("name", "md5", "n_classes", "channels", "n_train")})


def train_teacher(
    config_json: str, run_dir: str, data: Input[Dataset], teacher: Output[Model], metrics: Output[Metrics]
) -> None:
    from pathlib import Path

    from kr import steps
    from kr.config import RunConfig

    r = steps.train_teacher(
        RunConfig.model_validate_json(config_json), Path(run_dir), Path(data.path), Path(teacher.path)
    )
    teacher.metadata.update({"role": "teacher", "framework": "pytorch", "file": steps.TEACHER_FILE})
    for split in ("val", "test"):
        metrics.log_metric(f"{split}_accuracy", r[split]["accuracy"])
        if r[split]["auc"] == r[split]["auc"]:
            metrics.log_metric(f"{split}_auc", r[split]["auc"])


def train_generator(config_json: str, run_dir: str, data: Input[Dataset], generator: Output[Model]) -> None:
    from pathlib import Path

    from kr import steps
    from kr.config import RunConfig

    r = steps.train_generator(
        RunConfig.model_validate_json(config_json), Path(run_dir), Path(data.path), Path(generator.path)
    )
    generator.metadata.update(
        {"role": "generator", "framework": "diffusers", "steps": r["steps"], "params": r["params"]}
    )


def select_generator(
    config_json: str,
    run_dir: str,
    data: Input[Dataset],
    generator: Input[Model],
    teacher: Input[Model],
    selection: Output[Artifact],
) -> None:
    from pathlib import Path

    from kr import steps
    from kr.config import RunConfig

    r = steps.select_generator(
        RunConfig.model_validate_json(config_json),
        Path(run_dir),
        Path(data.path),
        Path(generator.path),
        Path(teacher.path),
        Path(selection.path),
    )
    selection.metadata.update(
        {"checkpoint": r["checkpoint"], "guidance_scale": r["guidance_scale"], "val_cas": r["val_cas"]}
    )


def plan_shards(config_json: str, data: Input[Dataset]) -> List[int]:  # noqa: UP006
    from pathlib import Path

    from kr import steps
    from kr.config import RunConfig

    return list(range(len(steps.plan_shards(RunConfig.model_validate_json(config_json), Path(data.path)))))


def regenerate(
    config_json: str,
    run_dir: str,
    shard: int,
    data: Input[Dataset],
    generator: Input[Model],
    teacher: Input[Model],
    selection: Input[Artifact],
    shard_data: Output[Dataset],
) -> None:
    from pathlib import Path

    from kr import steps
    from kr.config import RunConfig

    r = steps.regenerate(
        RunConfig.model_validate_json(config_json),
        Path(run_dir),
        shard,
        Path(data.path),
        Path(generator.path),
        Path(teacher.path),
        Path(selection.path),
        Path(shard_data.path),
    )
    shard_data.metadata.update({"shard": shard, "n": r["n"], "teacher_agreement": r["teacher_agreement"]})


def train_student(
    config_json: str,
    run_dir: str,
    data: Input[Dataset],
    shards: Input[List[Dataset]],  # noqa: UP006
    student: Output[Model],
    metrics: Output[Metrics],
) -> None:
    from pathlib import Path

    from kr import steps
    from kr.config import RunConfig

    r = steps.train_student(
        RunConfig.model_validate_json(config_json),
        Path(run_dir),
        Path(data.path),
        [Path(s.path) for s in shards],
        Path(student.path),
    )
    student.metadata.update({"role": "student", "framework": "pytorch", "file": steps.STUDENT_FILE})
    for split in ("val", "test"):
        metrics.log_metric(f"{split}_accuracy", r[split]["accuracy"])


def train_naive(
    config_json: str,
    run_dir: str,
    data: Input[Dataset],
    shards: Input[List[Dataset]],  # noqa: UP006
    metrics: Output[Metrics],
) -> None:
    from pathlib import Path

    from kr import steps
    from kr.config import RunConfig

    r = steps.train_naive(
        RunConfig.model_validate_json(config_json), Path(run_dir), Path(data.path), [Path(s.path) for s in shards]
    )
    metrics.log_metric("test_accuracy", r["test"]["accuracy"])


def audit_privacy(
    config_json: str,
    run_dir: str,
    data: Input[Dataset],
    teacher: Input[Model],
    student: Input[Model],
    shards: Input[list[Dataset]],
    privacy: Output[Artifact],  # noqa: UP006
    metrics: Output[Metrics],
) -> None:
    from pathlib import Path

    from kr import steps
    from kr.config import RunConfig

    r = steps.audit_privacy(
        RunConfig.model_validate_json(config_json),
        Path(run_dir),
        Path(data.path),
        Path(teacher.path),
        Path(student.path),
        [Path(s.path) for s in shards],
        Path(privacy.path),
    )
    for model in ("teacher", "student"):
        metrics.log_metric(f"{model}_strongest_auc", r[model]["strongest"]["auc"])
        metrics.log_metric(f"{model}_tpr_at_1pct_fpr", r[model]["strongest"]["tpr_at_1pct_fpr"])
    metrics.log_metric("near_copy_fraction", r["memorization"]["near_copy_fraction"])


def evaluate_gates(
    config_json: str, run_dir: str, profile: str, runner: str, started_at: str, verdict: Output[Markdown]
) -> bool:
    from pathlib import Path

    from kr import steps
    from kr.config import RunConfig

    r = steps.evaluate_gates(RunConfig.model_validate_json(config_json), Path(run_dir), profile, runner, started_at)
    lines = [f"# Gates: {'PASSED' if r['passed'] else 'FAILED'}", ""]
    for name, gate in r.items():
        if isinstance(gate, dict):
            lines += [f"- {name}: {'pass' if gate['passed'] else 'FAIL'}"]
            lines += [f"  - {reason}" for reason in gate.get("reasons", [])]
    Path(verdict.path).write_text("\n".join(lines) + "\n")
    return bool(r["passed"])


def finalize_run(
    config_json: str, run_dir: str, profile: str, runner: str, started_at: str, status: dsl.PipelineTaskFinalStatus
) -> None:
    """The exit handler: summary.json and the report for whatever the run got to do, also when a step failed."""
    import time
    from datetime import UTC, datetime
    from pathlib import Path

    from kr.config import RunConfig
    from kr.summary import finalize_run as finalize

    started = datetime.fromisoformat(started_at) if started_at else datetime.now(UTC)
    finalize(
        Path(run_dir),
        RunConfig.model_validate_json(config_json),
        profile,
        runner,
        started.isoformat(),
        time.time() - started.timestamp(),
        status="succeeded" if status.state == "SUCCEEDED" else "failed",
        error=status.error_message or None,
    )


STEP_FUNCTIONS = (
    validate_data,
    train_teacher,
    train_generator,
    select_generator,
    plan_shards,
    regenerate,
    train_student,
    train_naive,
    audit_privacy,
    evaluate_gates,
    finalize_run,
)


def build_components(image: str) -> SimpleNamespace:
    """Every step as a KFP component running in `image` (which must have `kr` installed)."""
    return SimpleNamespace(
        **{fn.__name__: dsl.component(fn, base_image=image, install_kfp_package=False) for fn in STEP_FUNCTIONS}
    )
