"""Generator memorisation: does the generator copy its training images?

Distance to closest record (DCR): each synthetic image against real training images and real held-out images of
the same count. Fresh samples sit as close to held-out images as to training images; copies sit much closer to
training images.
"""

from __future__ import annotations

import numpy as np


def nearest_distances(queries: np.ndarray, refs: np.ndarray, batch: int = 512) -> np.ndarray:
    """L2 distance (pixels scaled to [0, 1]) from each query image to its closest reference image.

    queries: uint8 (M, ...) and refs: uint8 (R, ...), R >= 1, of the same per-image size; returns float32 (M,).
    `batch` queries are compared at a time (memory M_batch x R).
    """
    q = queries.reshape(len(queries), -1).astype(np.float32) / 255.0
    r = refs.reshape(len(refs), -1).astype(np.float32) / 255.0
    r_sq = (r**2).sum(1)
    out = np.empty(len(q), np.float32)
    for i in range(0, len(q), batch):
        qb = q[i : i + batch]
        d2 = (qb**2).sum(1)[:, None] + r_sq[None, :] - 2.0 * qb @ r.T
        out[i : i + batch] = np.sqrt(np.maximum(d2.min(1), 0.0))
    return out


def memorization(
    synthetic: np.ndarray, train: np.ndarray, holdout: np.ndarray, seed: int = 0, near_copy_quantile: float = 0.01
) -> dict:
    """Distance to closest record: each synthetic image against real train and real held-out images (same count).
    A generator that copies sits much closer to train than to held-out (median ratio well below 1). A near copy is
    a synthetic image closer to a training image than all but `near_copy_quantile` of real held-out images are.

    synthetic, train, holdout: uint8 (N, C, H, W), train and holdout non-empty; both reference sets are subsampled
    (with `seed`) to min(len(train), len(holdout)). Distances are L2 over pixels scaled to [0, 1]. Returns
    {"n_synthetic", "n_reference", "near_copy_threshold", "near_copy_fraction", "dcr_train_median",
    "dcr_holdout_median", "dcr_ratio_median", "closer_to_train_fraction"}; fractions in [0, 1].
    """
    rng = np.random.default_rng(seed)
    n_ref = min(len(train), len(holdout))
    train_ref = train[rng.choice(len(train), n_ref, replace=False)]
    holdout_ref = holdout[rng.choice(len(holdout), n_ref, replace=False)]
    d_train = nearest_distances(synthetic, train_ref)
    d_hold = nearest_distances(synthetic, holdout_ref)
    # how close genuinely unseen real images come to the training images: the yardstick for "near copy"
    real_unseen = nearest_distances(holdout_ref, train_ref)
    threshold = float(np.quantile(real_unseen, near_copy_quantile))
    ratio = d_train / np.maximum(d_hold, 1e-9)
    return {
        "n_synthetic": int(len(synthetic)),
        "n_reference": int(n_ref),
        "near_copy_threshold": threshold,
        "near_copy_fraction": float((d_train < threshold).mean()),
        "dcr_train_median": float(np.median(d_train)),
        "dcr_holdout_median": float(np.median(d_hold)),
        "dcr_ratio_median": float(np.median(ratio)),
        "closer_to_train_fraction": float((d_train < d_hold).mean()),
    }
