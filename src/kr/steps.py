"""The pipeline's steps with files in and files out: what `kr run` and every KFP component call.

Each step reads its inputs from artifact folders, writes its outputs to its own folder, records its result in
`<run_dir>/records/<step>.json` and returns it. Nothing is passed in memory, so the same step runs in this
process, in a local KFP subprocess or in a pod.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from kr.config import RunConfig
from kr.data import load_dataset, load_saved_dataset, save_dataset
from kr.governance import promotion
from kr.governance.gates import evaluate_gates as gate_verdicts
from kr.method import generator as gen
from kr.method import regeneration as regen
from kr.method import selection, student, teacher
from kr.method.fidelity import fit_envelope
from kr.method.metrics import majority_rate
from kr.privacy import audit as privacy
from kr.run import tracking
from kr.run.summary import build_summary
from kr.runtime import configure_threads, seed_everything
from kr.serialization import read_records, timed_step, write_json

TEACHER_FILE, STUDENT_FILE, SELECTION_FILE = "teacher.pt", "student.pt", "selection.json"


def _tracked(
    cfg: RunConfig,
    run_dir: Path,
    name: str,
    fn: Callable[[], dict],
    artifacts: Callable[[dict], Iterable[Path]] = lambda _r: (),
) -> dict:
    """Run a step and mirror it as a nested MLflow run; the nested run's id goes into the step's record."""
    # each step may be its own process (a KFP task): threads and seeds are set here, not once per run
    configure_threads()
    seed_everything(cfg.seed)
    try:
        result = timed_step(run_dir, name, fn)
    except Exception as exc:
        try:
            # what a failed step left behind (e.g. the Data Docs of a failed validation) is worth keeping too
            left = [p for p in _paths(artifacts) if Path(p).exists()]
            tracking.log_step(cfg, run_dir, name, None, 0.0, left, error=f"{type(exc).__name__}: {exc}")
        except Exception as secondary:  # never let bookkeeping hide the error that matters
            tracking.log.warning("could not track the failed step %s: %s", name, secondary)
        raise
    path = Path(run_dir) / "records" / f"{name}.json"
    record = json.loads(path.read_text())
    run_id = tracking.log_step(cfg, run_dir, name, result, record["seconds"], artifacts(result))
    if run_id:
        write_json(path, record | {"mlflow_run_id": run_id})
    return result


def _paths(artifacts: Callable[[dict], Iterable[Path]]) -> list[Path]:
    try:
        return list(artifacts({}))
    except (KeyError, TypeError):  # the step's artifacts are named by a result it never produced
        return []


def validate_data(cfg: RunConfig, run_dir: Path, data_dir: Path, docs_dir: Path) -> dict:
    """Load and check the file (MD5, layout), then the Great Expectations suite over every image: a failure stops
    the run before any training, with the Data Docs saved for reading."""

    def step() -> dict:
        from kr.validation import validate_real

        data = load_dataset(cfg.data.dataset, cfg.data.data_root, cfg.data.download)
        tracking.log_dataset(cfg, run_dir, data)
        report = validate_real(data, cfg.validation, Path(docs_dir))
        save_dataset(data, data_dir)
        return {
            "info": data.info.to_dict(),
            "majority_rate_test": majority_rate(data.y_test),
            "data_dir": str(data_dir),
            "expectations": report,
        }

    tracking.open_parent(cfg, run_dir)
    return _tracked(cfg, run_dir, "validate_data", step, lambda _r: [Path(docs_dir)])


def train_teacher(cfg: RunConfig, run_dir: Path, data_dir: Path, teacher_dir: Path) -> dict:
    return _tracked(
        cfg,
        run_dir,
        "train_teacher",
        lambda: teacher.train_teacher(load_saved_dataset(data_dir), cfg.teacher, teacher_dir, cfg.seed),
        lambda r: [Path(r["path"])],
    )


def train_generator(cfg: RunConfig, run_dir: Path, data_dir: Path, generator_dir: Path) -> dict:
    """Train in the run folder, which outlives a task (a shared volume on a cluster), so a killed or retried run
    resumes from its last checkpoint; the task's artifact gets a copy without the optimiser state."""

    def step() -> dict:
        data = load_saved_dataset(data_dir)
        work = Path(run_dir) / "steps" / "generator"
        result = gen.train_generator(data.x_train, data.y_train, data.info.n_classes, cfg.generator, work, cfg.seed)
        if Path(generator_dir).resolve() != work.resolve():
            shutil.copytree(work, generator_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("state.pt"))
        return result

    return _tracked(cfg, run_dir, "train_generator", step, lambda r: [Path(generator_dir) / "spec.json"])


def select_generator(
    cfg: RunConfig, run_dir: Path, data_dir: Path, generator_dir: Path, teacher_dir: Path, selection_dir: Path
) -> dict:
    return _tracked(
        cfg,
        run_dir,
        "select_generator",
        lambda: selection.select_generator(
            load_saved_dataset(data_dir),
            generator_dir,
            Path(teacher_dir) / TEACHER_FILE,
            cfg.selection,
            cfg.sampler,
            selection_dir,
            cfg.seed,
            cfg.validation.max_broken_fraction,
        ),
        lambda _r: [Path(selection_dir) / SELECTION_FILE],
    )


def plan_shards(cfg: RunConfig, data_dir: Path) -> list[int]:
    """Images per regeneration shard (one pipeline task each)."""
    n_train = json.loads((Path(data_dir) / "info.json").read_text())["n_train"]
    g = cfg.gkd
    _, total = regen.pool_size(n_train, g.images_per_epoch, g.pool_slices, g.max_images_per_epoch)
    return regen.shard_sizes(total, g.shards)


def regenerate(
    cfg: RunConfig,
    run_dir: Path,
    shard: int,
    data_dir: Path,
    generator_dir: Path,
    teacher_dir: Path,
    selection_dir: Path,
    shard_path: Path,
) -> dict:
    chosen = json.loads((Path(selection_dir) / SELECTION_FILE).read_text())
    scale = cfg.gkd.guidance_scale if cfg.gkd.guidance_scale is not None else chosen["guidance_scale"]
    n = plan_shards(cfg, data_dir)[shard]

    def step() -> dict:
        from kr.validation import validate_shard

        data = load_saved_dataset(data_dir)
        result = regen.regenerate_shard(
            generator_dir,
            chosen["checkpoint"],
            Path(teacher_dir) / TEACHER_FILE,
            n,
            scale,
            cfg.sampler,
            shard,
            cfg.seed,
            shard_path,
            data=data,
        )
        docs = Path(run_dir) / "validation" / f"shard-{shard:03d}"
        report = validate_shard(
            Path(shard_path),
            data.info.n_classes,
            cfg.validation,
            docs,
            channels=data.info.channels,
            envelope=fit_envelope(data.x_train),
        )
        return result | {"expectations": report}

    return _tracked(
        cfg,
        run_dir,
        f"regenerate-{shard:03d}",
        step,
    )


def train_student(cfg: RunConfig, run_dir: Path, data_dir: Path, shard_paths: list[Path], student_dir: Path) -> dict:
    return _tracked(
        cfg,
        run_dir,
        "train_student",
        lambda: student.train_student(load_saved_dataset(data_dir), shard_paths, cfg.gkd, student_dir, cfg.seed),
        lambda r: [Path(r["path"])],
    )


def train_naive(cfg: RunConfig, run_dir: Path, data_dir: Path, shard_paths: list[Path]) -> dict:
    return _tracked(
        cfg,
        run_dir,
        "train_naive",
        lambda: student.train_naive(load_saved_dataset(data_dir), shard_paths, cfg.gkd, cfg.naive, cfg.seed),
    )


def audit_privacy(
    cfg: RunConfig,
    run_dir: Path,
    data_dir: Path,
    teacher_dir: Path,
    student_dir: Path,
    shard_paths: list[Path],
    privacy_dir: Path,
) -> dict:
    def step() -> dict:
        models = {"teacher": Path(teacher_dir) / TEACHER_FILE, "student": Path(student_dir) / STUDENT_FILE}
        # the models' own training steps recorded their test accuracy: read it rather than score again
        records = read_records(run_dir)
        accuracy = {name: records[f"train_{name}"]["result"]["test"]["accuracy"] for name in models}
        return privacy.audit_privacy(
            load_saved_dataset(data_dir), models, accuracy, shard_paths, cfg.privacy, cfg.teacher, privacy_dir, cfg.seed
        )

    return _tracked(cfg, run_dir, "audit_privacy", step, lambda r: [Path(privacy_dir)])


def evaluate_gates(cfg: RunConfig, run_dir: Path, profile: str, runner: str, started_at: str) -> dict:
    return _tracked(
        cfg,
        run_dir,
        "evaluate_gates",
        lambda: gate_verdicts(build_summary(run_dir, cfg, profile, runner, started_at), cfg),
    )


def promote(cfg: RunConfig, run_dir: Path, data_dir: Path, started_at: str) -> dict:
    """Every gate passed: register the student, move `champion` if it beats the champion, write the audit record."""
    return _tracked(
        cfg, run_dir, "promote", lambda: promotion.conclude(cfg, run_dir, data_dir, started_at, promote=True)
    )


def record_rejection(cfg: RunConfig, run_dir: Path, data_dir: Path, started_at: str) -> dict:
    """A gate failed: register the student with its verdicts (no alias) and write the audit record."""
    return _tracked(
        cfg,
        run_dir,
        "record_rejection",
        lambda: promotion.conclude(cfg, run_dir, data_dir, started_at, promote=False),
    )


def finalize(
    cfg: RunConfig, run_dir: Path, profile: str, runner: str, started_at: str, wall_s: float, error: str | None
) -> dict:
    """The exit handler's work, also after a failure: the audit record (if the run has none yet), summary.json and
    the report, then everything on the parent MLflow run."""
    from kr.run.summary import finalize_run

    run_dir = Path(run_dir)
    failure = run_dir / "failure.json"
    if failure.exists():  # the failed step's own words beat the orchestrator's "task X failed"
        failed_step = json.loads(failure.read_text())
        error = f"step {failed_step['step']} failed: {failed_step['error']}"
    failed = error is not None or failure.exists()
    status = "failed" if failed else "succeeded"
    # only a failed run gets its record here; a concluded one wrote it in promote / record-rejection
    audit = promotion.record_failure(cfg, run_dir, started_at, error) if failed else promotion.recorded(cfg, run_dir)
    summary = finalize_run(run_dir, cfg, profile, runner, started_at, wall_s, status=status, error=error, audit=audit)
    artifacts = [run_dir / n for n in ("summary.json", "report.md", "samples.png", "selection.png")]
    artifacts += [Path(summary["artifacts"].get("mia_roc") or run_dir / "missing"), run_dir / promotion.AUDIT_COPY]
    tracking.finish_parent(cfg, run_dir, summary, artifacts)
    return summary
