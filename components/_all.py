"""KFP v2 components: one per step, each a few lines that call `kr.steps` (no ML logic here).

Components are made by `build_components(image)` so that the image is chosen when the pipeline is compiled
(`kr compile --image ...`); the local runner ignores it and runs the same code in this environment.
Artifact paths are used as folders (models, datasets) or files (regeneration shards).
"""

from types import SimpleNamespace
from typing import List, NamedTuple  # noqa: UP035  KFP reads the annotations and wants typing.List

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output


def resolve_config(
    dataset: str,
    profile: str,
    overrides: list,
    config_yaml: str,
    gates: dict,
    data_root: str,
    model_name: str,
    tracking_uri: str,
    audit_uri: str,
    run_dir: str,
    runs_root: str,
    image: str,
    kfp_run_id: str,
    started_at: str,
    job_created_at: str,
    run_config: Output[Artifact],
) -> NamedTuple("Resolved", config_json=str, run_dir=str, started_at=str):
    import json
    from collections import namedtuple
    from pathlib import Path

    from kr.pipeline import params

    fields = params.RunRequest.__dataclass_fields__
    req = params.RunRequest(**{k: v for k, v in locals().items() if k in fields})
    resolved = (params.config_json(req), str(params.run_dir(req)), params.started_at(req))
    # also as a file: tasks inside the ParallelFor read it from there (kfp.local hands them the loop item instead
    # of a task-output parameter)
    names = ("config_json", "run_dir", "started_at")
    Path(run_config.path).write_text(json.dumps(dict(zip(names, resolved, strict=True))))
    run_config.metadata.update({"run_dir": resolved[1], "dataset": dataset, "profile": profile})
    return namedtuple("Resolved", names)(*resolved)


def validate_data(config_json: str, run_dir: str, data: Output[Dataset], data_docs: Output[HTML]) -> None:
    import shutil
    from pathlib import Path

    from kr import steps
    from kr.config import RunConfig

    docs = Path(run_dir) / "validation" / "real"  # the whole Data Docs site; the artifact is its index page
    try:
        result = steps.validate_data(RunConfig.model_validate_json(config_json), Path(run_dir), Path(data.path), docs)
    finally:
        # the Data Docs are the artifact most worth reading when validation fails: keep them either way
        if (docs / "index.html").exists():
            shutil.copyfile(docs / "index.html", data_docs.path)
    data.metadata.update({k: result["info"][k] for k in ("name", "md5", "n_classes", "channels", "n_train")})
    data_docs.metadata.update({"expectations_passed": result["expectations"]["passed"], "folder": str(docs)})


def train_teacher(
    config_json: str,
    run_dir: str,
    data: Input[Dataset],
    teacher: Output[Model],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
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
    names = [str(i) for i in range(len(r["test"]["confusion_matrix"]))]
    confusion.log_confusion_matrix(names, r["test"]["confusion_matrix"])


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
        | {k: v for k, v in r["fidelity"].items() if k != "per_class"}
    )


def plan_shards(config_json: str, data: Input[Dataset]) -> List[int]:  # noqa: UP006
    from pathlib import Path

    from kr import steps
    from kr.config import RunConfig

    return list(range(len(steps.plan_shards(RunConfig.model_validate_json(config_json), Path(data.path)))))


def regenerate(
    run_config: Input[Artifact],
    shard: int,
    data: Input[Dataset],
    generator: Input[Model],
    teacher: Input[Model],
    selection: Input[Artifact],
    shard_data: Output[Dataset],
) -> None:
    import json
    from pathlib import Path

    from kr import steps
    from kr.config import RunConfig

    resolved = json.loads(Path(run_config.path).read_text())
    r = steps.regenerate(
        RunConfig.model_validate_json(resolved["config_json"]),
        Path(resolved["run_dir"]),
        shard,
        Path(data.path),
        Path(generator.path),
        Path(teacher.path),
        Path(selection.path),
        Path(shard_data.path),
    )
    shard_data.metadata.update({"shard": shard, "n": r["n"]} | (r["fidelity"] or {}))


def train_student(
    config_json: str,
    run_dir: str,
    data: Input[Dataset],
    shards: Input[List[Dataset]],  # noqa: UP006
    student: Output[Model],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
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
    names = [str(i) for i in range(len(r["test"]["confusion_matrix"]))]
    confusion.log_confusion_matrix(names, r["test"]["confusion_matrix"])


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
    privacy: Output[Artifact],
    metrics: Output[Metrics],
    student_roc: Output[ClassificationMetrics],
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
    roc = r["student"]["strongest"].get("roc")
    if roc:  # the strongest attack's ROC curve on the student, for the KFP UI
        student_roc.log_roc_curve(roc["fpr"], roc["tpr"], roc["thresholds"])


def evaluate_gates(
    config_json: str, run_dir: str, profile: str, runner: str, started_at: str, verdict: Output[Markdown]
) -> bool:
    from pathlib import Path

    from kr import steps
    from kr.config import RunConfig
    from kr.run.report import gates_markdown

    r = steps.evaluate_gates(RunConfig.model_validate_json(config_json), Path(run_dir), profile, runner, started_at)
    Path(verdict.path).write_text(gates_markdown(r))
    verdict.metadata.update({"passed": bool(r["passed"])})
    return bool(r["passed"])


def promote(config_json: str, run_dir: str, data: Input[Dataset], started_at: str, decision: Output[Markdown]) -> None:
    from pathlib import Path

    from kr import steps
    from kr.config import RunConfig
    from kr.run.report import decision_markdown

    r = steps.promote(RunConfig.model_validate_json(config_json), Path(run_dir), Path(data.path), started_at)
    Path(decision.path).write_text(decision_markdown(r))
    decision.metadata.update({"outcome": r["outcome"], **{k: str(v) for k, v in (r["registry"] or {}).items()}})


def record_rejection(
    config_json: str, run_dir: str, data: Input[Dataset], started_at: str, decision: Output[Markdown]
) -> None:
    from pathlib import Path

    from kr import steps
    from kr.config import RunConfig
    from kr.run.report import decision_markdown

    r = steps.record_rejection(RunConfig.model_validate_json(config_json), Path(run_dir), Path(data.path), started_at)
    Path(decision.path).write_text(decision_markdown(r))
    decision.metadata.update({"outcome": r["outcome"], **{k: str(v) for k, v in (r["registry"] or {}).items()}})


def finalize_run(
    dataset: str,
    profile: str,
    overrides: list,
    config_yaml: str,
    gates: dict,
    data_root: str,
    model_name: str,
    tracking_uri: str,
    audit_uri: str,
    run_dir: str,
    runs_root: str,
    image: str,
    kfp_run_id: str,
    started_at: str,
    job_created_at: str,
    runner: str,
    status: dsl.PipelineTaskFinalStatus,
) -> None:
    """The exit handler: audit record, summary.json and report for whatever the run got to do, also on failure."""
    from kr.pipeline import params

    req = params.RunRequest(**{k: v for k, v in locals().items() if k in params.RunRequest.__dataclass_fields__})
    params.finalize(req, runner, failed=status.state != "SUCCEEDED", error=status.error_message or None)


STEP_FUNCTIONS = (
    resolve_config,
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
    promote,
    record_rejection,
    finalize_run,
)


def build_components(image: str) -> SimpleNamespace:
    """Every step as a KFP component running in `image` (which must have `kr` installed)."""
    return SimpleNamespace(
        **{fn.__name__: dsl.component(fn, base_image=image, install_kfp_package=False) for fn in STEP_FUNCTIONS}
    )
