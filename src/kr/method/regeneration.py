"""GKD regeneration: fresh class-balanced synthetic images, each labelled with the teacher's logits.

The pool is cut into shards that can be drawn in parallel (one pipeline task each); every shard has its own
noise stream and its own class rotation, so shards never repeat each other and the union stays balanced.
Logits, not probabilities, are stored: the distillation temperature stays a training-time choice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kr.config import SamplerConfig
from kr.data import SHARD_KEYS, Dataset, read_shard
from kr.method.classifier import load_classifier, predict_logits
from kr.method.fidelity import FIDELITY_KEYS, fidelity, real_reference
from kr.method.generator import balanced_labels, load_generator, sample, sampling_scheduler
from kr.runtime import derive_seed


def pool_size(n_train: int, images_per_epoch: float, pool_slices: int, cap: int | None = None) -> tuple[int, int]:
    """(images per slice, total images) of the GKD pool for a real training set of n_train images.

    images per slice = max(2, round(images_per_epoch * n_train)), at most `cap`; total = that * pool_slices.
    """
    per_slice = max(2, round(images_per_epoch * n_train))
    per_slice = per_slice if cap is None else min(per_slice, cap)
    return per_slice, per_slice * pool_slices


def shard_sizes(total: int, shards: int) -> list[int]:
    """`total` images split into `shards` sizes that differ by at most 1 (the larger first) and sum to `total`."""
    base, extra = divmod(total, shards)
    return [base + (1 if i < extra else 0) for i in range(shards)]


def regenerate_shard(
    gen_dir: Path,
    checkpoint: str,
    teacher_path: Path,
    n_images: int,
    guidance_scale: float,
    sampler: SamplerConfig,
    shard: int,
    seed: int,
    out_path: Path,
    data: Dataset | None = None,
) -> dict:
    """Draw one shard and write it as .npz: images (uint8 N,C,H,W), gen_labels (int64 N), teacher_logits
    (float32 N,K). With `data`, the shard's fidelity against real val is measured (`kr.method.fidelity`) and returned
    under "fidelity"; its teacher agreement is always returned.

    Labels are class-balanced, rotated by `shard`; noise comes from derive_seed(seed, "regenerate", shard), so
    shards never repeat each other. Returns {"path", "shard", "checkpoint", "guidance_scale", "n", "class_counts",
    "teacher_agreement" (fraction in [0, 1]), "fidelity" (None without data)}. Raises GeneratorError when
    `gen_dir/checkpoints/<checkpoint>` holds no EMA weights.
    """
    unet = load_generator(Path(gen_dir) / "checkpoints" / checkpoint)
    n_classes = unet.config.num_class_embeds - 1
    labels = balanced_labels(n_images, n_classes, offset=shard)
    images = sample(
        unet,
        sampling_scheduler(gen_dir, sampler),
        labels,
        guidance_scale,
        sampler,
        derive_seed(seed, "regenerate", shard),
        f"regenerate shard {shard}",
    )
    teacher = load_classifier(teacher_path)
    logits = predict_logits(teacher, images)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "wb") as f:  # a file handle: np.savez would append .npz to a bare path
        np.savez(f, images=images, gen_labels=labels, teacher_logits=logits.astype(np.float32))
    return {
        "path": str(out_path),
        "shard": shard,
        "checkpoint": checkpoint,
        "guidance_scale": guidance_scale,
        "n": int(len(images)),
        "class_counts": np.bincount(labels, minlength=n_classes).tolist(),
        "teacher_agreement": float((logits.argmax(1) == labels).mean()),
        "fidelity": None if data is None else _fidelity(teacher, data, images, labels),
    }


def _fidelity(teacher, data: Dataset, images: np.ndarray, labels: np.ndarray) -> dict:
    measured = fidelity(teacher, real_reference(teacher, data.x_train, data.x_val, data.y_val), images, labels)
    return {k: measured[k] for k in FIDELITY_KEYS}


def load_pool(paths: list[Path]) -> dict[str, np.ndarray]:
    """The regeneration shards at `paths`, concatenated in path order: {"images": uint8 (N, C, H, W),
    "gen_labels": int64 (N,), "teacher_logits": float32 (N, K)}.

    Raises ValueError when `paths` is empty, kr.data.DataError for a shard `read_shard` refuses.
    """
    parts = []
    for p in sorted(paths, key=str):
        found = read_shard(p)  # bounded: a shard is read back from an artifact store others can write
        parts.append({k: found[k] for k in SHARD_KEYS})
    if not parts:
        raise ValueError("the GKD pool is empty: no regeneration shard was produced")
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
