"""The GKD student (trained only on regenerated images with the teacher's soft labels) and the naive baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kr.config import GKDConfig, NaiveConfig
from kr.data import Dataset
from kr.method.classifier import build_classifier, fit, predict_logits, save_classifier
from kr.method.metrics import classification_metrics, softmax
from kr.method.regeneration import load_pool


def pool_slices(n: int, slices: int, seed: int) -> list[np.ndarray]:
    """`slices` disjoint, sorted int64 index arrays of n // slices each over a shuffled pool of n images (a fresh set
    of images per epoch); the n % slices left over are never used. Deterministic in `seed`."""
    order = np.random.default_rng(seed).permutation(n)
    size = n // slices
    return [np.sort(order[i * size : (i + 1) * size]) for i in range(slices)]


def _evaluate(model, data: Dataset) -> dict:
    return {
        "val": classification_metrics(predict_logits(model, data.x_val), data.y_val),
        "test": classification_metrics(predict_logits(model, data.x_test), data.y_test),
    }


def train_student(data: Dataset, pool_paths: list[Path], cfg: GKDConfig, out_dir: Path, seed: int) -> dict:
    """GKD (Lomurno and Matteucci 2025): epoch e trains on slice e mod cfg.pool_slices of the regenerated pool, with
    targets softmax(teacher logits / T) and the T^2-scaled soft cross-entropy (`soft_cross_entropy`).

    pool_paths: regeneration shards (`load_pool`); the student never sees a real training image, real val picks
    the best epoch. It trains for cfg.epochs epochs (cfg.student gives the architecture and optimiser; its own
    epochs are not read). Writes `out_dir/student.pt`.
    Returns {"path", "pool_images", "images_per_epoch", "best_epoch", "history", "train_s" (seconds), "val",
    "test" (`classification_metrics`)}. Raises ValueError when pool_paths is empty.
    """
    pool = load_pool(pool_paths)
    slices = pool_slices(len(pool["images"]), cfg.pool_slices, seed)
    targets = softmax(pool["teacher_logits"].astype(np.float64), cfg.temperature).astype(np.float32)
    model = build_classifier(cfg.student, data.info.channels, data.info.n_classes, data.info.image_size, seed)
    recipe = cfg.student.model_copy(update={"epochs": cfg.epochs})  # gkd.epochs is the one epoch count of GKD
    history = fit(
        model,
        lambda e: (pool["images"][slices[e % len(slices)]], targets[slices[e % len(slices)]]),
        (data.x_val, data.y_val),
        recipe,
        seed,
        "GKD student",
        temperature=cfg.temperature,
    )
    path = save_classifier(
        model,
        Path(out_dir) / "student.pt",
        extra={"role": "student", "dataset_md5": data.info.md5, "temperature": cfg.temperature},
    )
    return {
        "path": str(path),
        "pool_images": int(len(pool["images"])),
        "images_per_epoch": int(len(slices[0])),
        "best_epoch": history["best_epoch"],
        "history": history["history"],
        "train_s": history["train_s"],
        **_evaluate(model, data),
    }


def train_naive(data: Dataset, pool_paths: list[Path], gkd: GKDConfig, cfg: NaiveConfig, seed: int) -> dict:
    """Naive CAS (Classification Accuracy Score, Ravuri & Vinyals 2019): the student's architecture and recipe,
    for cfg.epochs, on one fixed synthetic set (the pool's first slice) with the generator's hard labels.

    Nothing is saved. Returns {"images", "best_epoch", "train_s" (seconds), "val", "test" (`classification_metrics`)}.
    Raises ValueError when pool_paths is empty.
    """
    pool = load_pool(pool_paths)
    fixed = pool_slices(len(pool["images"]), gkd.pool_slices, seed)[0]
    x, y = pool["images"][fixed], pool["gen_labels"][fixed].astype(np.int64)
    model = build_classifier(gkd.student, data.info.channels, data.info.n_classes, data.info.image_size, seed)
    train_cfg = gkd.student.model_copy(update={"epochs": cfg.epochs})
    history = fit(model, lambda _e: (x, y), (data.x_val, data.y_val), train_cfg, seed, "naive CAS")
    return {
        "images": int(len(x)),
        "best_epoch": history["best_epoch"],
        "train_s": history["train_s"],
        **_evaluate(model, data),
    }
