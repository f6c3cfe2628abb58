"""The pipeline's steps: the library's public step API, what every KFP component (`kr.components`) and the DAG
(`kr.pipelines`) call. Nothing else of the library is imported by them.

A step takes its config section (JSON text, `kr.run.step_table.step_config`), the folders of its input artifacts
and the typed results of the steps before it; it writes its output artifacts and returns its own typed result
(`kr.results`). No step reads another step's files from the run folder: what a step needs is an input.

The run folder is where people read a run (summary, report, plots, Data Docs) and where a failed step leaves its
failure note for the exit handler. Steps that KFP may cache are not given it as an input (it is different for every
run, so it would make every cache key unique): a runner that has one tells them through `KR_RUN_DIR` (`kr run`
does); on a cluster they run without it and their by-products stay in their artifacts.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from kr.config import ConfigError, DataConfig, RunConfig
from kr.data import load_dataset, load_saved_dataset, save_dataset
from kr.progress import console
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
from kr.run import tracking
from kr.run.report import decision_markdown, gates_markdown
from kr.run.request import (
    CLUSTER_RUNS_ROOT,
    DEFAULT_PROFILE,
    PIPELINE_PARAMETERS,
    STRUCTURED,
    RunRequest,
    checkpoints_root,
    from_parts,
    pipeline_signature,
    resolve_request,
    run_dir,
    started_at,
)
from kr.run.step_table import STEP, STEPS, StepSpec, by_task, load_step_config, step_config
from kr.serialization import write_json

__all__ = [
    "CLUSTER_RUNS_ROOT",
    "DEFAULT_PROFILE",
    "PIPELINE_PARAMETERS",
    "STEP",
    "STEPS",
    "STRUCTURED",
    "Conclusion",
    "ConfigError",
    "DataResult",
    "GatesResult",
    "GeneratorResult",
    "NaiveResult",
    "PrivacyResult",
    "RunRequest",
    "RunResults",
    "SelectionResult",
    "ShardResult",
    "StepSpec",
    "StudentResult",
    "TeacherResult",
    "by_task",
    "decision_markdown",
    "gates_markdown",
    "pipeline_signature",
]

TEACHER_FILE, STUDENT_FILE, SHARD_FILE, PLAN_FILE = "teacher.pt", "student.pt", "shard.npz", "plan.json"
RUN_DIR_ENV = "KR_RUN_DIR"
FAILURE_NOTE = "failure.json"
R = TypeVar("R", bound=StepResult)


# ---------------------------------------------------------------- running one step


def context_run_dir() -> Path | None:
    """The run folder a runner announced through KR_RUN_DIR (None on a cluster's cached steps)."""
    value = os.environ.get(RUN_DIR_ENV, "")
    return Path(value) if value else None


def peak_rss_mb() -> float:
    """This process's peak resident memory, MiB (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _run_step(
    cfg: RunConfig,
    name: str,
    fn: Callable[[], R],
    artifacts: Callable[[R | None], Iterable[Path]] = lambda _r: (),
    folder: Path | None = None,
) -> R:
    """Run one step in this process: threads and seed set, timed, mirrored as an MLflow run, stamped.

    A failure leaves a failure note in the run folder (when there is one) and a FAILED MLflow run, then re-raises.
    """
    from kr.runtime import configure_threads, seed_everything

    folder = folder or context_run_dir()
    # each step may be its own process (a KFP task): threads and seeds are set here, not once per run
    configure_threads()
    seed_everything(cfg.seed)
    parent = tracking.parent_run_id(folder) if folder else None
    console.rule(f"[bold]{name}")
    t0 = time.perf_counter()
    try:
        result = fn()
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        if folder:  # the summary names the step that failed and why, though another process writes it
            write_json(Path(folder) / FAILURE_NOTE, {"step": name, "error": error})
        try:
            left = [p for p in _paths(artifacts) if Path(p).exists()]
            tracking.log_step(cfg, parent, name, None, 0.0, left, error=error)
        except Exception as secondary:  # never let bookkeeping hide the error that matters
            tracking.log.warning("could not track the failed step %s: %s", name, secondary)
        raise
    seconds = time.perf_counter() - t0
    result = result.stamped(name, seconds, peak_rss_mb())
    run_id = tracking.log_step(cfg, parent, name, result.model_dump(mode="json"), seconds, artifacts(result))
    console.print(f"{name} done in {seconds:.1f} s")
    return result.model_copy(update={"mlflow_run_id": run_id})


def _paths(artifacts: Callable[[Any], Iterable[Path]]) -> list[Path]:
    try:
        return list(artifacts(None))
    except (AttributeError, KeyError, TypeError):  # the step's artifacts are named by a result it never produced
        return []


def publish(source: Path, name: str, folder: Path | None) -> None:
    """Copy a by-product (a Data Docs site) into the run folder, where people read the run; nothing without a run
    folder or when the run folder has it already."""
    if folder and Path(source).exists() and not (Path(folder) / name).exists():
        shutil.copytree(source, Path(folder) / name, dirs_exist_ok=True)


def shard_files(shard_dirs: Iterable[Path]) -> list[Path]:
    """The npz file of each regeneration shard artifact."""
    return [Path(d) / SHARD_FILE for d in shard_dirs]


# ---------------------------------------------------------------- the steps


def resolve_config(scalars: dict, overrides: list, gates: dict, out: Path) -> dict[str, str]:
    """The run's config, its folder, its start time and each step's config section; opens the MLflow parent run.

    Writes the full config JSON to `out`. Returns {"config": ..., "run_dir": ..., "started_at": ...,
    "checkpoints_root": ..., "<step>": section JSON for every step}. Raises ConfigError on a bad request.
    """
    req = from_parts(scalars, overrides, gates)
    cfg = resolve_request(req)
    folder = run_dir(req)
    folder.mkdir(parents=True, exist_ok=True)
    tracking.open_parent(cfg, folder)
    write_json(out, cfg.model_dump(mode="json"))
    sections = {s.name: step_config(cfg, s.name) for s in STEPS}
    return sections | {
        "config": cfg.model_dump_json(),
        "run_dir": str(folder),
        "started_at": started_at(req),
        "checkpoints_root": str(checkpoints_root(req)),
    }


def validate_data(config: str, data_dir: Path, docs_dir: Path) -> DataResult:
    """Load and check the file (MD5, layout), then the Great Expectations suites over every image. A failure stops
    the run before any training, with the Data Docs (`docs_dir`) kept for reading. Raises kr.data.DataError or
    kr.validation.ValidationFailed."""
    cfg = load_step_config(config)

    def step() -> DataResult:
        from kr.method.metrics import majority_rate
        from kr.validation import validate_real

        data = load_dataset(cfg.data.dataset, cfg.data.data_root, cfg.data.download)
        report = validate_real(data, cfg.validation, Path(docs_dir))
        save_dataset(data, data_dir)
        return DataResult(info=data.info.to_dict(), majority_rate_test=majority_rate(data.y_test), expectations=report)

    try:
        return _run_step(cfg, "validate_data", step, lambda _r: [Path(docs_dir)])
    finally:
        publish(Path(docs_dir), "validation/real", context_run_dir())


def train_teacher(config: str, data_dir: Path, teacher_dir: Path) -> TeacherResult:
    """Train the teacher on the real training split; weights in `teacher_dir`/teacher.pt."""
    from kr.method import teacher

    cfg = load_step_config(config)

    def step() -> TeacherResult:
        return TeacherResult(**teacher.train_teacher(load_saved_dataset(data_dir), cfg.teacher, teacher_dir, cfg.seed))

    return _run_step(cfg, "train_teacher", step, lambda r: [Path(r.path)])


def generator_workspace(cfg: RunConfig, data_md5: str, root: Path) -> Path:
    """The generator's resumable work folder: one per (generator config, seed, data file), so a retried or repeated
    task resumes from its own checkpoints and never from those of another recipe."""
    key = json.dumps({"generator": cfg.generator.model_dump(mode="json"), "seed": cfg.seed, "data": data_md5})
    return Path(root) / f"generator-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def train_generator(config: str, data_dir: Path, generator_dir: Path, checkpoints: Path) -> GeneratorResult:
    """Train (or resume) the diffusion generator in its work folder under `checkpoints` (a volume that outlives a
    task), then copy the checkpoints without optimiser state to the `generator_dir` artifact."""
    from kr.method import generator as gen

    cfg = load_step_config(config)

    def step() -> GeneratorResult:
        data = load_saved_dataset(data_dir)
        work = generator_workspace(cfg, data.info.md5, checkpoints)
        result = gen.train_generator(data.x_train, data.y_train, data.info.n_classes, cfg.generator, work, cfg.seed)
        if Path(generator_dir).resolve() != work.resolve():
            shutil.copytree(work, generator_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("state.pt"))
        return GeneratorResult(**result, workspace=str(work))

    return _run_step(cfg, "train_generator", step, lambda _r: [Path(generator_dir) / "spec.json"])


def select_generator(
    config: str, data_dir: Path, generator_dir: Path, teacher_dir: Path, selection_dir: Path
) -> SelectionResult:
    """Score the latest checkpoints at every guidance scale by validation CAS and fidelity and choose one cell;
    the chosen cell's samples go to `selection_dir`."""
    from kr.method import selection

    cfg = load_step_config(config)

    def step() -> SelectionResult:
        chosen = selection.select_generator(
            load_saved_dataset(data_dir),
            generator_dir,
            Path(teacher_dir) / TEACHER_FILE,
            cfg.selection,
            cfg.sampler,
            selection_dir,
            cfg.seed,
            cfg.validation.max_broken_fraction,
        )
        return SelectionResult(**chosen)

    return _run_step(cfg, "select_generator", step, lambda _r: [Path(selection_dir) / "selection.json"])


def plan_shards(config: str, data_dir: Path, plan_path: Path) -> list[int]:
    """Images per regeneration shard, written with the shards' config to `plan_path` (the regeneration tasks read
    both from it: inside a ParallelFor, kfp.local hands tasks the loop item instead of a task-output parameter).
    Returns the shard indices, one pipeline task each."""
    from kr.method import regeneration as regen

    cfg = load_step_config(config)
    n_train = json.loads((Path(data_dir) / "info.json").read_text())["n_train"]
    g = cfg.gkd
    _, total = regen.pool_size(n_train, g.images_per_epoch, g.pool_slices, g.max_images_per_epoch)
    sizes = regen.shard_sizes(total, g.shards)
    write_json(plan_path, {"config": config, "sizes": sizes})
    return list(range(len(sizes)))


def regenerate(
    plan_path: Path,
    shard: int,
    data_dir: Path,
    generator_dir: Path,
    teacher_dir: Path,
    selection: SelectionResult,
    shard_dir: Path,
) -> ShardResult:
    """Draw shard `shard` of the GKD pool with the selected checkpoint and guidance, label it with the teacher's
    logits and check it (Great Expectations); the shard is `shard_dir`/shard.npz with its Data Docs beside it.
    Raises kr.validation.ValidationFailed when the shard fails its suite."""
    from kr.method import regeneration as regen
    from kr.method.fidelity import fit_envelope
    from kr.validation import validate_shard

    plan = json.loads(Path(plan_path).read_text())
    cfg = load_step_config(plan["config"])
    scale = cfg.gkd.guidance_scale if cfg.gkd.guidance_scale is not None else selection.guidance_scale
    name = f"regenerate-{shard:03d}"
    shard_path = Path(shard_dir) / SHARD_FILE

    def step() -> ShardResult:
        data = load_saved_dataset(data_dir)
        shard_path.parent.mkdir(parents=True, exist_ok=True)
        result = regen.regenerate_shard(
            generator_dir,
            selection.checkpoint,
            Path(teacher_dir) / TEACHER_FILE,
            plan["sizes"][shard],
            scale,
            cfg.sampler,
            shard,
            cfg.seed,
            shard_path,
            data=data,
        )
        docs = Path(shard_dir) / "data_docs"
        try:
            report = validate_shard(
                shard_path,
                data.info.n_classes,
                cfg.validation,
                docs,
                channels=data.info.channels,
                envelope=fit_envelope(data.x_train),
            )
        finally:
            publish(docs, f"validation/shard-{shard:03d}", context_run_dir())
        return ShardResult(**result, expectations=report)

    return _run_step(cfg, name, step)


def train_student(config: str, data_dir: Path, shard_dirs: list[Path], student_dir: Path) -> StudentResult:
    """GKD: train the student on the regenerated pool with the teacher's soft labels; weights in
    `student_dir`/student.pt. It never sees a real training image; real val picks its epoch, real test scores it."""
    from kr.method import student

    cfg = load_step_config(config)

    def step() -> StudentResult:
        data = load_saved_dataset(data_dir)
        return StudentResult(**student.train_student(data, shard_files(shard_dirs), cfg.gkd, student_dir, cfg.seed))

    return _run_step(cfg, "train_student", step, lambda r: [Path(r.path)])


def train_naive(config: str, data_dir: Path, shard_dirs: list[Path]) -> NaiveResult:
    """The naive CAS baseline: the student's architecture on one fixed synthetic set with hard labels."""
    from kr.method import student

    cfg = load_step_config(config)

    def step() -> NaiveResult:
        data = load_saved_dataset(data_dir)
        return NaiveResult(**student.train_naive(data, shard_files(shard_dirs), cfg.gkd, cfg.naive, cfg.seed))

    return _run_step(cfg, "train_naive", step)


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
            data, models, accuracy, shard_files(shard_dirs), cfg.privacy, cfg.teacher, privacy_dir, cfg.seed
        )
        return PrivacyResult(**found)

    return _run_step(cfg, "audit_privacy", step, lambda _r: [Path(privacy_dir)])


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
        found = verdicts(cfg, data.info, data.majority_rate_test, teacher.test.accuracy, student.test.accuracy, audit)
        return GatesResult(**found)

    return _run_step(cfg, "evaluate_gates", step, folder=Path(run_folder))


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
        example = load_saved_dataset(data_dir).x_test[:2]
        found = promotion.conclude(
            cfg, Path(run_folder), Path(student_dir) / STUDENT_FILE, example, results, started, promote=promote
        )
        return Conclusion(**found)

    return _run_step(cfg, name, step, folder=Path(run_folder))


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


def log_kfp_metrics(result: TeacherResult | StudentResult, metrics: Any, confusion: Any) -> None:
    """A classifier's val/test accuracy and AUC as KFP Metrics, and its test confusion matrix (KFP
    ClassificationMetrics), for the KFP UI."""
    for split in ("val", "test"):
        evaluation = getattr(result, split)
        metrics.log_metric(f"{split}_accuracy", evaluation.accuracy)
        if evaluation.auc is not None:
            metrics.log_metric(f"{split}_auc", evaluation.auc)
    matrix = result.test.model_extra.get("confusion_matrix") or []
    confusion.log_confusion_matrix([str(i) for i in range(len(matrix))], matrix)
    keep_metrics(metrics, confusion)


def keep_metrics(*artifacts: Any) -> None:
    """Write each KFP metrics artifact's values as JSON at its path. KFP keeps metrics in metadata and writes no
    file; kfp.local's cache treats an output without a file as missing, so a task with metrics would never be
    reused."""
    for artifact in artifacts:
        write_json(Path(artifact.path), artifact.metadata)


def summarize(
    config: str,
    run_folder: Path,
    profile: str,
    runner: str,
    started: str,
    results: RunResults,
    data_dir: Path,
    shard_dirs: list[Path],
    privacy_dir: Path | None,
) -> dict:
    """Write summary.json (schema kr.summary/1), the plots and report.md into the run folder from the step results,
    and put them on the MLflow parent run, which it closes. Returns the summary."""
    from kr.run.summary import write_summary

    cfg = load_step_config(config)
    folder = Path(run_folder)
    wall_s = (datetime.now(UTC) - datetime.fromisoformat(started)).total_seconds()
    summary = write_summary(
        folder,
        cfg,
        results,
        profile=profile,
        runner=runner,
        started_at=started,
        wall_s=wall_s,
        data_dir=Path(data_dir),
        shard_files=shard_files(shard_dirs),
        roc_plot=Path(privacy_dir) / "mia_roc.png" if privacy_dir else None,
    )
    parent = tracking.parent_run_id(folder)
    if parent:
        tracking.log_dataset(cfg, parent, load_saved_dataset(data_dir))
        tracking.adopt(cfg, parent, {r.step: r.mlflow_run_id for r in results.executed()})
    tracking.finish_parent(cfg, folder, summary, _run_files(folder))
    return summary


def _run_files(folder: Path) -> list[Path]:
    from kr.governance.promotion import TRAIL_RECORD_COPY

    return [folder / n for n in ("summary.json", "report.md", "samples.png", "selection.png", "mia_roc.png")] + [
        folder / TRAIL_RECORD_COPY
    ]


def finalize_run(scalars: dict, overrides: list, gates: dict, runner: str, failed: bool, error: str | None) -> None:
    """The exit handler's work: a failed run (or one that could not start) still gets its trail record (outcome
    `failed`), a summary that says where it stopped and why, a report, and a closed MLflow parent run. A run that
    succeeded was summarised by `summarize`: nothing to do."""
    from kr.governance import promotion
    from kr.run.summary import write_summary

    if not failed:
        return
    try:
        req = from_parts(scalars, overrides, gates)
        cfg = resolve_request(req)
    except (ConfigError, ValueError) as exc:
        # the run could not even start; still leave a summary that says why (no tracking: no valid settings)
        req = RunRequest.model_validate({k: v for k, v in scalars.items() if k in ("dataset", "run_dir", "runs_root")})
        cfg, error = RunConfig(data=DataConfig(dataset=req.dataset)), str(exc)
    folder = run_dir(req)
    note = folder / FAILURE_NOTE
    if note.exists():  # the failed step's own words beat the orchestrator's "task X failed"
        failure = json.loads(note.read_text())
        error = f"step {failure['step']} failed: {failure['error']}"
    error = error or "a pipeline task failed"
    started = started_at(req)
    trail = promotion.record_failure(cfg, folder, started, error)
    wall_s = (datetime.now(UTC) - datetime.fromisoformat(started)).total_seconds()
    summary = write_summary(
        folder,
        cfg,
        RunResults(),
        profile=req.profile,
        runner=runner,
        started_at=started,
        wall_s=wall_s,
        status="failed",
        error=error,
        trail=trail,
    )
    tracking.finish_parent(cfg, folder, summary, _run_files(folder))
