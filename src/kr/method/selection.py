"""Checkpoint optimisation and guidance tuning: the (checkpoint, guidance scale) pair with the best validation CAS.

Validation CAS: a quick classifier trained only on a class-balanced synthetic set with the generator's labels,
scored on the real validation split. Every cell uses the same noise, so cells differ only by what is tuned.
Every cell's fidelity is measured too (`kr.method.fidelity`: teacher agreement, broken share, Frechet distance and
precision/recall in the teacher's feature space, against real val), and it takes part in the choice (`choose`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from kr.config import SamplerConfig, SelectionConfig
from kr.data import Dataset
from kr.method.classifier import build_classifier, fit, load_classifier, predict_logits
from kr.method.fidelity import FIDELITY_KEYS, fidelity, real_reference
from kr.method.generator import (
    GeneratorError,
    balanced_labels,
    list_checkpoints,
    load_generator,
    sample,
    sampling_scheduler,
)
from kr.method.metrics import classification_metrics
from kr.runtime import derive_seed


def choose(
    grid: list[dict], max_broken_fraction: float = 1.0, min_teacher_agreement: float = 0.0, n_val: int | None = None
) -> dict:
    """The cell to regenerate with: among the cells with enough fidelity, the best validation CAS, where val CAS
    differences within its noise are decided by the Frechet distance.

    1. Eligible cells: broken share at most `max_broken_fraction` and teacher agreement at least
       `min_teacher_agreement`. If none is eligible, the least broken cells compete on agreement alone (then the
       shard checks decide).
    2. Val CAS is a binomial proportion over `n_val` images: cells whose val CAS lies within 1.96 standard errors
       (sqrt(p (1 - p) / n_val), at the best cell's p) of the best are tied with it. Without `n_val`, only equal
       values tie.
    3. Among the tied cells, the lowest Frechet distance in the teacher's features (the closest match to the real
       distribution), then the higher agreement, then the smaller guidance scale, then the later checkpoint.

    grid: rows with "val_cas" and "teacher_agreement" (fractions in [0, 1]), "guidance_scale" and "step";
    "broken_fraction" (missing: 0) and "frechet_distance" (missing or NaN: ranks last) are optional. Returns the
    chosen row itself. Raises ValueError on an empty grid.

    Why: val CAS alone cannot choose at MedMNIST's sizes. On BreastMNIST's 78 val images one image is 1.3 points,
    and the quick classifier latched onto darkened malignant samples (val CAS 0.27-0.58 at 92% agreement). On
    PneumoniaMNIST, val CAS picked guidance 3 by 2 points (76.3% against 74.2%: within noise over 524 images)
    whose samples had FD 85, precision 0.70 and recall 0.58 against FD 3, 0.84 and 0.84 unguided, and the student
    trained on them scored 8 points below its teacher.
    """
    broken = lambda g: g.get("broken_fraction", 0.0)  # noqa: E731
    fine = [g for g in grid if broken(g) <= max_broken_fraction]
    eligible = [g for g in fine if g["teacher_agreement"] >= min_teacher_agreement]
    if not eligible:
        pool = fine or [g for g in grid if broken(g) == min(map(broken, grid))]
        return max(pool, key=lambda g: (g["teacher_agreement"], g["val_cas"], -g["guidance_scale"], g["step"]))
    best = max(g["val_cas"] for g in eligible)
    band = 1.96 * math.sqrt(best * (1 - best) / n_val) if n_val else 0.0
    tied = [g for g in eligible if g["val_cas"] >= best - band - 1e-12]
    return min(tied, key=lambda g: (_fd(g), -g["teacher_agreement"], g["guidance_scale"], -g["step"]))


def _fd(cell: dict) -> float:
    value = cell.get("frechet_distance")
    return math.inf if value is None or value != value else value  # missing or NaN ranks last


def select_generator(
    data: Dataset,
    gen_dir: Path,
    teacher_path: Path,
    cfg: SelectionConfig,
    sampler: SamplerConfig,
    out_dir: Path,
    seed: int,
    max_broken_fraction: float = 1.0,
) -> dict:
    """Score every (checkpoint, guidance scale) cell of the latest `cfg.checkpoints` checkpoints and choose one.

    Every cell draws cfg.images_per_class images per class from the same noise (derive_seed(seed, "selection")),
    trains a quick classifier (cfg.classifier) on them with the generator's labels and scores it on real val
    (val CAS, Ravuri & Vinyals 2019); `choose` then picks with `max_broken_fraction` and cfg.min_teacher_agreement.
    Writes `selection.json` and `selection_samples.npz` (the chosen cell's uint8 (N, C, H, W) samples and int64
    labels) to `out_dir`; returns {"checkpoint", "checkpoint_path", "guidance_scale", "val_cas", "fidelity",
    "envelope", "envelope_false_positive_rate", "selection"}: the chosen cell, its fidelity, the real-image envelope,
    and the grid (one row per cell: val CAS, val CAS AUC and the fidelity measures of
    `kr.method.fidelity.FIDELITY_KEYS`). Raises GeneratorError when there is no checkpoint.
    """
    checkpoints = list_checkpoints(gen_dir)[-cfg.checkpoints :]
    if not checkpoints:
        raise GeneratorError(f"no generator checkpoints under {gen_dir}; train the generator first")
    n_classes = data.info.n_classes
    labels = balanced_labels(cfg.images_per_class * n_classes, n_classes)
    teacher = load_classifier(teacher_path)
    reference = real_reference(teacher, data.x_train, data.x_val, data.y_val)
    noise_seed = derive_seed(seed, "selection")
    grid, previews = [], {}
    for ckpt in checkpoints:
        unet = load_generator(ckpt.path)
        scheduler = sampling_scheduler(gen_dir, sampler)
        for scale in cfg.guidance_scales:
            images = sample(unet, scheduler, labels, scale, sampler, noise_seed, f"select {ckpt.name} w={scale:g}")
            quick = build_classifier(cfg.classifier, data.info.channels, n_classes, data.info.image_size, seed)
            fit(
                quick,
                lambda _e, x=images: (x, labels),
                (data.x_val, data.y_val),
                cfg.classifier,
                seed,
                f"val CAS {ckpt.name} w={scale:g}",
            )
            val = classification_metrics(predict_logits(quick, data.x_val), data.y_val)
            fid = fidelity(teacher, reference, images, labels)
            grid.append(
                {
                    "checkpoint": ckpt.name,
                    "step": ckpt.step,
                    "guidance_scale": scale,
                    "val_cas": val["accuracy"],
                    "val_cas_auc": val["auc"],
                    **{k: fid[k] for k in FIDELITY_KEYS},
                    "per_class": fid["per_class"],
                }
            )
            previews[(ckpt.name, scale)] = images
    best = choose(grid, max_broken_fraction, cfg.min_teacher_agreement, n_val=len(data.y_val))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out_dir / "selection_samples.npz", images=previews[(best["checkpoint"], best["guidance_scale"])], labels=labels
    )
    result = {
        "checkpoint": best["checkpoint"],
        "checkpoint_path": str(Path(gen_dir) / "checkpoints" / best["checkpoint"]),
        "guidance_scale": best["guidance_scale"],
        "val_cas": best["val_cas"],
        "fidelity": {k: best[k] for k in (*FIDELITY_KEYS, "per_class")},
        "envelope": reference.envelope.to_dict(),
        "envelope_false_positive_rate": reference.envelope_false_positive_rate,
        "selection": [{k: v for k, v in g.items() if k != "per_class"} for g in grid],
    }
    (out_dir / "selection.json").write_text(json.dumps(result, indent=2))
    return result
