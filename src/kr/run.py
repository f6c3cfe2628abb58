"""One Knowledge Recycling run, step after step, in this process, with artifacts passed as files.

Run folder:
    summary.json, report.md, samples.png, selection.png
    steps/teacher/teacher.pt
    steps/generator/...              (resumable: running again with the same --out continues training)
    steps/selection/selection.json
    steps/regenerate/shard-000.npz ...
    steps/student/student.pt
"""

from __future__ import annotations

import json
import logging
import platform
import resource
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

import kr
from kr import plots
from kr.config import RunConfig
from kr.data import Dataset, load_dataset
from kr.gates import accuracy_gate, privacy_gate
from kr.generator import train_generator
from kr.metrics import majority_rate
from kr.privacy import audit_privacy
from kr.progress import console
from kr.regenerate import pool_size, regenerate_shard, shard_sizes
from kr.report import write_report
from kr.runtime import configure_threads, seed_everything
from kr.selection import select_generator
from kr.student import train_naive, train_student
from kr.teacher import train_teacher

log = logging.getLogger(__name__)
SUMMARY_SCHEMA = "kr.summary/1"


def _headline(metrics: dict) -> dict:
    return {"accuracy": metrics["accuracy"], "auc": metrics["auc"]}


class Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        console.rule(f"[bold]{name}")
        t0 = time.perf_counter()
        result = fn()
        self.timings[name] = round(time.perf_counter() - t0, 2)
        console.print(f"{name} done in {self.timings[name]:.1f} s")
        return result


def archive_previous(out: Path) -> None:
    """A run into a folder that already holds a finished run keeps the old summary and report under history/."""
    old = out / "summary.json"
    if not old.exists():
        return
    stamp = json.loads(old.read_text()).get("finished_at", "unknown").replace(":", "")
    dest = out / "history" / stamp
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("summary.json", "report.md", "samples.png", "selection.png"):
        if (out / name).exists():
            shutil.move(str(out / name), dest / name)


def run_pipeline(cfg: RunConfig, out: Path, profile: str) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    archive_previous(out)
    configure_threads()
    seed_everything(cfg.seed)
    started = datetime.now(UTC)
    t_start = time.perf_counter()
    timer = Timer()
    steps = out / "steps"

    data: Dataset = timer.run(
        "validate_data", lambda: load_dataset(cfg.data.dataset, cfg.data.data_root, cfg.data.download)
    )
    info = data.info
    console.print(
        f"{info.name}: {info.n_train}/{info.n_val}/{info.n_test} images, {info.n_classes} classes, "
        f"{info.channels} channel(s), md5 {info.md5}"
    )
    teacher = timer.run("train_teacher", lambda: train_teacher(data, cfg.teacher, steps / "teacher", cfg.seed))
    generator = timer.run(
        "train_generator",
        lambda: train_generator(
            data.x_train, data.y_train, info.n_classes, cfg.generator, steps / "generator", cfg.seed
        ),
    )
    selection = timer.run(
        "select_generator",
        lambda: select_generator(
            data, steps / "generator", Path(teacher["path"]), cfg.selection, cfg.sampler, steps / "selection", cfg.seed
        ),
    )

    scale = cfg.gkd.guidance_scale if cfg.gkd.guidance_scale is not None else selection["guidance_scale"]
    per_slice, total = pool_size(
        info.n_train, cfg.gkd.images_per_epoch, cfg.gkd.pool_slices, cfg.gkd.max_images_per_epoch
    )
    shards = timer.run(
        "regenerate",
        lambda: [
            regenerate_shard(
                steps / "generator",
                selection["checkpoint"],
                Path(teacher["path"]),
                n,
                scale,
                cfg.sampler,
                k,
                cfg.seed,
                steps / "regenerate" / f"shard-{k:03d}.npz",
            )
            for k, n in enumerate(shard_sizes(total, cfg.gkd.shards))
        ],
    )
    pool_paths = [Path(s["path"]) for s in shards]
    student = timer.run("train_student", lambda: train_student(data, pool_paths, cfg.gkd, steps / "student", cfg.seed))
    naive = (
        timer.run("train_naive", lambda: train_naive(data, pool_paths, cfg.gkd, cfg.naive, cfg.seed))
        if cfg.naive.enabled
        else None
    )

    privacy = (
        timer.run(
            "audit_privacy",
            lambda: audit_privacy(
                data,
                {"teacher": Path(teacher["path"]), "student": Path(student["path"])},
                {"teacher": teacher["test"]["accuracy"], "student": student["test"]["accuracy"]},
                pool_paths,
                cfg.privacy,
                cfg.teacher,
                steps / "privacy",
                cfg.seed,
            ),
        )
        if cfg.privacy.enabled
        else None
    )

    samples_png = _sample_grid(data, pool_paths[0], out / "samples.png", info.class_names)
    plots.selection_heatmap(selection["selection"], selection, out / "selection.png")

    summary = {
        "schema": SUMMARY_SCHEMA,
        "runner": "local",
        "kr_version": kr.__version__,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": {"python": platform.python_version(), "machine": platform.machine()},
        "dataset": {
            "name": info.name,
            "md5": info.md5,
            "task": info.task,
            "n_classes": info.n_classes,
            "channels": info.channels,
            "n_train": info.n_train,
            "n_val": info.n_val,
            "n_test": info.n_test,
            "source": info.source,
            "class_names": list(info.class_names),
            "majority_rate_test": majority_rate(data.y_test),
        },
        "profile": profile,
        "config": cfg.model_dump(mode="json"),
        "config_digest": cfg.digest(),
        "teacher": {
            "val": _headline(teacher["val"]),
            "test": _headline(teacher["test"]),
            "test_per_class": teacher["test"]["per_class"],
            "best_epoch": teacher["best_epoch"],
            "params": teacher["params"],
        },
        "generator": {
            "checkpoint": selection["checkpoint"],
            "guidance_scale": selection["guidance_scale"],
            "val_cas": selection["val_cas"],
            "selection": selection["selection"],
            "training": {k: generator[k] for k in ("steps", "resumed_from", "params", "final_loss")},
        },
        "regeneration": {
            "images": total,
            "images_per_epoch": per_slice,
            "guidance_scale": scale,
            "shards": [{k: s[k] for k in ("shard", "n", "class_counts", "teacher_agreement")} for s in shards],
            "teacher_agreement": float(
                np.average([s["teacher_agreement"] for s in shards], weights=[s["n"] for s in shards])
            ),
        },
        "naive": {"test": _headline(naive["test"]), "val": _headline(naive["val"])} if naive else None,
        "student": {
            "val": _headline(student["val"]),
            "test": _headline(student["test"]),
            "test_per_class": student["test"]["per_class"],
            "best_epoch": student["best_epoch"],
        },
        "cas_gap_pp": round(100 * (student["test"]["accuracy"] - teacher["test"]["accuracy"]), 2),
        "privacy": privacy,
        "artifacts": {
            "teacher": teacher["path"],
            "student": student["path"],
            "samples": str(samples_png),
            "selection_plot": str(out / "selection.png"),
            "report": str(out / "report.md"),
            "mia_roc": privacy["roc_plot"] if privacy else None,
        },
        "timings_s": timer.timings,
        "total_wall_s": round(time.perf_counter() - t_start, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    summary["gates"] = evaluate_gates(summary, cfg)
    write_summary(out, summary)
    write_report(summary, out / "report.md")
    return summary


def evaluate_gates(summary: dict, cfg: RunConfig) -> dict:
    gates = {
        # the data gate is load_dataset's checks: a run that got here passed them
        "data": {"passed": True, "md5": summary["dataset"]["md5"], "source": summary["dataset"]["source"]},
        "accuracy": accuracy_gate(summary, cfg.gates.accuracy),
        "privacy": privacy_gate(summary.get("privacy"), cfg.gates.privacy),
    }
    gates["passed"] = all(g["passed"] for g in gates.values())
    return gates


def _sample_grid(data: Dataset, shard: Path, path: Path, class_names: tuple[str, ...]) -> Path:
    with np.load(shard) as z:
        syn_x, syn_y = z["images"], z["gen_labels"]
    return plots.sample_grid(
        data.x_train,
        data.y_train,
        syn_x,
        syn_y,
        list(class_names),
        path,
        title=f"{data.info.name}: real (left) and regenerated (right) images per class",
    )


def write_summary(out: Path, summary: dict) -> Path:
    path = Path(out) / "summary.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_finite(summary), indent=2, default=_json_default, allow_nan=False))
    tmp.replace(path)
    return path


def _finite(value: Any) -> Any:
    """NaN (an undefined AUC) becomes null: JSON has no NaN, and a missing value must read as missing."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float | np.floating) and not np.isfinite(value):
        return None
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
