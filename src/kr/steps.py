"""The pipeline's steps with files in and files out: what `kr run` and every KFP component call.

Each step reads its inputs from artifact folders, writes its outputs to its own folder, records its result in
`<run_dir>/records/<step>.json` and returns it. Nothing is passed in memory, so the same step runs in this
process, in a local KFP subprocess or in a pod.
"""

from __future__ import annotations

import json
from pathlib import Path

from kr import generator as gen
from kr import privacy, selection, student, teacher
from kr import regenerate as regen
from kr.config import RunConfig
from kr.data import load_dataset, load_saved_dataset, save_dataset
from kr.gates import evaluate_gates as gate_verdicts
from kr.metrics import majority_rate
from kr.records import read_records, timed_step
from kr.summary import build_summary

TEACHER_FILE, STUDENT_FILE, SELECTION_FILE = "teacher.pt", "student.pt", "selection.json"


def validate_data(cfg: RunConfig, run_dir: Path, data_dir: Path) -> dict:
    def step() -> dict:
        data = load_dataset(cfg.data.dataset, cfg.data.data_root, cfg.data.download)
        save_dataset(data, data_dir)
        return {
            "info": data.info.to_dict(),
            "majority_rate_test": majority_rate(data.y_test),
            "data_dir": str(data_dir),
        }

    return timed_step(run_dir, "validate_data", step)


def train_teacher(cfg: RunConfig, run_dir: Path, data_dir: Path, teacher_dir: Path) -> dict:
    return timed_step(
        run_dir,
        "train_teacher",
        lambda: teacher.train_teacher(load_saved_dataset(data_dir), cfg.teacher, teacher_dir, cfg.seed),
    )


def train_generator(cfg: RunConfig, run_dir: Path, data_dir: Path, generator_dir: Path) -> dict:
    def step() -> dict:
        data = load_saved_dataset(data_dir)
        return gen.train_generator(
            data.x_train, data.y_train, data.info.n_classes, cfg.generator, generator_dir, cfg.seed
        )

    return timed_step(run_dir, "train_generator", step)


def select_generator(
    cfg: RunConfig, run_dir: Path, data_dir: Path, generator_dir: Path, teacher_dir: Path, selection_dir: Path
) -> dict:
    return timed_step(
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
        ),
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
    return timed_step(
        run_dir,
        f"regenerate-{shard:03d}",
        lambda: regen.regenerate_shard(
            generator_dir,
            chosen["checkpoint"],
            Path(teacher_dir) / TEACHER_FILE,
            n,
            scale,
            cfg.sampler,
            shard,
            cfg.seed,
            shard_path,
        ),
    )


def train_student(cfg: RunConfig, run_dir: Path, data_dir: Path, shard_paths: list[Path], student_dir: Path) -> dict:
    return timed_step(
        run_dir,
        "train_student",
        lambda: student.train_student(load_saved_dataset(data_dir), shard_paths, cfg.gkd, student_dir, cfg.seed),
    )


def train_naive(cfg: RunConfig, run_dir: Path, data_dir: Path, shard_paths: list[Path]) -> dict:
    return timed_step(
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

    return timed_step(run_dir, "audit_privacy", step)


def evaluate_gates(cfg: RunConfig, run_dir: Path, profile: str, runner: str, started_at: str) -> dict:
    return timed_step(
        run_dir, "evaluate_gates", lambda: gate_verdicts(build_summary(run_dir, cfg, profile, runner, started_at), cfg)
    )
