"""Checkpoint optimisation and guidance tuning: the (checkpoint, guidance scale) pair with the best validation CAS.

Validation CAS: a quick classifier trained only on a class-balanced synthetic set with the generator's labels,
scored on the real validation split. Every cell uses the same noise, so cells differ only by what is tuned.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kr.classifier import build_classifier, fit, load_classifier, predict_logits
from kr.config import SamplerConfig, SelectionConfig
from kr.data import Dataset
from kr.generator import (
    GeneratorError,
    balanced_labels,
    list_checkpoints,
    load_generator,
    sample,
    sampling_scheduler,
)
from kr.metrics import classification_metrics
from kr.runtime import derive_seed


def choose(grid: list[dict]) -> dict:
    """The cell with the best validation CAS. Ties go to the smaller scale (guidance doubles the sampling cost of the
    whole GKD pool, and unguided samples are more diverse), then to the later checkpoint."""
    return max(grid, key=lambda g: (g["val_cas"], -g["guidance_scale"], g["step"], g["teacher_agreement"]))


def select_generator(
    data: Dataset,
    gen_dir: Path,
    teacher_path: Path,
    cfg: SelectionConfig,
    sampler: SamplerConfig,
    out_dir: Path,
    seed: int,
) -> dict:
    checkpoints = list_checkpoints(gen_dir)[-cfg.checkpoints :]
    if not checkpoints:
        raise GeneratorError(f"no generator checkpoints under {gen_dir}; train the generator first")
    n_classes = data.info.n_classes
    labels = balanced_labels(cfg.images_per_class * n_classes, n_classes)
    teacher = load_classifier(teacher_path)
    noise_seed = derive_seed(seed, "selection")
    grid, previews = [], {}
    for ckpt in checkpoints:
        unet = load_generator(ckpt.path)
        scheduler = sampling_scheduler(gen_dir, sampler)
        for scale in cfg.guidance_scales:
            images = sample(unet, scheduler, labels, scale, sampler, noise_seed, f"select {ckpt.name} w={scale:g}")
            quick = build_classifier(cfg.classifier, data.info.channels, n_classes, seed)
            fit(
                quick,
                lambda _e, x=images: (x, labels),
                (data.x_val, data.y_val),
                cfg.classifier,
                seed,
                f"val CAS {ckpt.name} w={scale:g}",
            )
            val = classification_metrics(predict_logits(quick, data.x_val), data.y_val)
            agreement = float((predict_logits(teacher, images).argmax(1) == labels).mean())
            grid.append(
                {
                    "checkpoint": ckpt.name,
                    "step": ckpt.step,
                    "guidance_scale": scale,
                    "val_cas": val["accuracy"],
                    "val_cas_auc": val["auc"],
                    "teacher_agreement": agreement,
                }
            )
            previews[(ckpt.name, scale)] = images
    best = choose(grid)
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
        "selection": grid,
    }
    (out_dir / "selection.json").write_text(json.dumps(result, indent=2))
    return result
