"""The method's steps: resolve the run, validate the data, train teacher and generator, select, regenerate, train the
student and the naive baseline."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from kr.config import ConfigError, RunConfig
from kr.data import FolderOptions, NpzLimits, load_dataset, load_saved_dataset, save_dataset
from kr.results import (
    DataResult,
    GeneratorResult,
    NaiveResult,
    SelectionResult,
    ShardResult,
    StudentResult,
    TeacherResult,
)
from kr.run import tracking
from kr.run.request import checkpoints_root, from_parts, resolve_request, run_dir, started_at
from kr.run.step_table import STEPS, load_step_config, step_config
from kr.serialization import write_json
from kr.steps.running import (
    FAILURE_NOTE,
    SHARD_FILE,
    TEACHER_FILE,
    context_run_dir,
    publish,
    run_step,
    shard_files,
)


def resolve_config(scalars: dict, overrides: list, gates: dict, out: Path) -> dict[str, str]:
    """The run's config, its folder, its start time and each step's config section; opens the MLflow parent run.

    Writes the full config JSON to `out`. Returns {"config": ..., "run_dir": ..., "started_at": ...,
    "checkpoints_root": ..., "<step>": section JSON for every step}. Raises ConfigError on a bad request.
    """
    req = from_parts(scalars, overrides, gates)
    cfg = resolve_request(req)
    folder = run_dir(req)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        from kr.governance.promotion import refuse_used_run_key

        refuse_used_run_key(cfg)
    except ConfigError as exc:  # the exit handler must know this run never started: the key is another run's
        write_json(folder / FAILURE_NOTE, {"step": "resolve_config", "error": str(exc)})
        raise
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

        data = load_dataset(
            cfg.data.dataset,
            cfg.data.data_root,
            cfg.data.download,
            size=cfg.data.size,
            limits=NpzLimits.of(cfg.data),
            folder=FolderOptions.of(cfg.data),
        )
        report = validate_real(data, cfg.validation, Path(docs_dir))
        save_dataset(data, data_dir)
        return DataResult(info=data.info.to_dict(), majority_rate_test=majority_rate(data.y_test), expectations=report)

    try:
        return run_step(cfg, "validate_data", step, lambda _r: [Path(docs_dir)])
    finally:
        publish(Path(docs_dir), "validation/real", context_run_dir())


def train_teacher(config: str, data_dir: Path, teacher_dir: Path) -> TeacherResult:
    """Train the teacher on the real training split and the inserted canaries; weights in `teacher_dir`/teacher.pt."""
    from kr.method import teacher
    from kr.privacy.canaries import run_canaries, with_canaries

    cfg = load_step_config(config)

    def step() -> TeacherResult:
        data = load_saved_dataset(data_dir)
        learned = with_canaries(data, run_canaries(data, cfg.canaries, cfg.teacher, cfg.seed))
        return TeacherResult(**teacher.train_teacher(learned, cfg.teacher, teacher_dir, cfg.seed))

    # the teacher learned real images: its weights stay out of MLflow unless the config asks for them
    return run_step(cfg, "train_teacher", step, lambda r: [Path(r.path)] if cfg.tracking.log_teacher_weights else [])


def generator_workspace(cfg: RunConfig, data_md5: str, root: Path) -> Path:
    """The generator's resumable work folder: one per (generator config, seed, data file, canaries), so a retried or
    repeated task resumes from its own checkpoints and never from those of another recipe or training set."""
    fields = {"count", "kind", "generator_copies"}
    seen = cfg.canaries.enabled and cfg.canaries.generator_copies > 0
    canaries = cfg.canaries.model_dump(mode="json", include=fields) if seen else None
    key = json.dumps(
        {
            # `resume` says what to do with a folder, not what is trained in it: it must not name another folder
            "generator": cfg.generator.model_dump(mode="json", exclude={"resume"}),
            "seed": cfg.seed,
            "data": data_md5,
            "canaries": canaries,
        }
    )
    return Path(root) / f"generator-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def train_generator(config: str, data_dir: Path, generator_dir: Path, checkpoints: Path) -> GeneratorResult:
    """Train (or resume) the diffusion generator in its work folder under `checkpoints` (a volume that outlives a
    task), then copy the checkpoints without optimiser state to the `generator_dir` artifact."""
    from kr.method import generator as gen
    from kr.privacy.canaries import run_canaries, with_canaries

    cfg = load_step_config(config)

    def step() -> GeneratorResult:
        data = load_saved_dataset(data_dir)
        # the same canaries as the teacher's; only their copies differ (generator_copies), so the teacher's recipe,
        # which sets its own copies, is not needed here
        canaries = run_canaries(data, cfg.canaries, cfg.teacher, cfg.seed)
        work = generator_workspace(cfg, data.info.md5, checkpoints)
        learned = with_canaries(data, canaries, cfg.canaries.generator_copies)
        result = gen.train_generator(
            learned.x_train, learned.y_train, data.info.n_classes, cfg.generator, work, cfg.seed, data.info.md5
        )
        if Path(generator_dir).resolve() != work.resolve():
            shutil.copytree(work, generator_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("state.pt"))
        return GeneratorResult(**result, workspace=str(work))

    return run_step(cfg, "train_generator", step, lambda _r: [Path(generator_dir) / "spec.json"])


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

    return run_step(cfg, "select_generator", step, lambda _r: [Path(selection_dir) / "selection.json"])


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
    from kr.method.fidelity import Envelope
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
                image_size=data.info.image_size,
                # the envelope selection fitted on the same real training split: no second fit per shard
                envelope=Envelope.from_dict(selection.envelope),
            )
        finally:
            publish(docs, f"validation/shard-{shard:03d}", context_run_dir())
        return ShardResult(**result, expectations=report)

    return run_step(cfg, name, step)


def train_student(config: str, data_dir: Path, shard_dirs: list[Path], student_dir: Path) -> StudentResult:
    """GKD: train the student on the regenerated pool with the teacher's soft labels; weights in
    `student_dir`/student.pt. It never sees a real training image; real val picks its epoch, real test scores it."""
    from kr.method import student

    cfg = load_step_config(config)

    def step() -> StudentResult:
        data = load_saved_dataset(data_dir)
        return StudentResult(**student.train_student(data, shard_files(shard_dirs), cfg.gkd, student_dir, cfg.seed))

    return run_step(cfg, "train_student", step, lambda r: [Path(r.path)])


def train_naive(config: str, data_dir: Path, shard_dirs: list[Path]) -> NaiveResult:
    """The naive CAS baseline: the student's architecture on one fixed synthetic set with hard labels."""
    from kr.method import student

    cfg = load_step_config(config)

    def step() -> NaiveResult:
        data = load_saved_dataset(data_dir)
        return NaiveResult(**student.train_naive(data, shard_files(shard_dirs), cfg.gkd, cfg.naive, cfg.seed))

    return run_step(cfg, "train_naive", step)
