"""Canaries: the audit's measured power, and a one-run lower bound on epsilon.

Steinke, Nasr and Jagielski, "Privacy Auditing with One (1) Training Run" (NeurIPS 2023): m canaries, none of them a
patient's image, each with a random label; a seeded random half is inserted into the teacher's training set (and,
with `generator_copies`, the generator's), the other half is kept out. After training, a model that memorises its
training data scores the inserted canaries higher than the held-out ones; the student, which never sees a canary,
shows how much of that memorisation distillation carries over. How well the teacher (trained on the real data) tells
them apart is the audit's power: an audit that cannot see the real-trained model memorise cannot vouch that the
student does not. The same scores give an empirical lower bound on the epsilon of any differential-privacy
guarantee the training could claim (sec. 3, pure DP, delta = 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import optimize, stats
from scipy.special import expit

from kr.config import CanaryConfig, ClassifierConfig
from kr.data import Dataset
from kr.privacy import mia
from kr.runtime import derive_seed


@dataclass(frozen=True, eq=False)
class Canaries:
    """The canary set of a run: images uint8 (m, C, H, W), labels int64 (m,), inserted bool (m,) (exactly half
    True), and how many copies of each inserted canary the training set holds."""

    images: np.ndarray
    labels: np.ndarray
    inserted: np.ndarray
    copies: int

    @property
    def n_inserted(self) -> int:
        """Canaries in the training set (each `copies` times)."""
        return int(self.inserted.sum())


def canary_images(kind: str, count: int, channels: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """`count` images uint8 (count, channels, size, size) that are no patient's image.

    noise: every pixel uniform in [0, 255], so no two canaries (and no real image) look alike. texture: uniform
    noise on a 7x7 grid, bilinearly upsampled: smooth blobs. Raises ValueError for another kind.
    """
    if kind == "noise":
        return rng.integers(0, 256, (count, channels, size, size), dtype=np.uint8)
    if kind == "texture":
        low = torch.from_numpy(rng.random((count, channels, 7, 7), dtype=np.float32))
        up = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
        return (up.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    raise ValueError(f"unknown canary kind {kind!r}; expected noise or texture")


def copies_for(cfg: CanaryConfig, n_train: int, teacher: ClassifierConfig) -> int:
    """Copies of each inserted canary: cfg.copies, or (auto) the fewest with which the teacher sees every inserted
    canary at least cfg.exposures times (copies x epochs run; a larger set trains fewer epochs under max_steps)."""
    from kr.method.classifier import epochs_run

    if cfg.copies is not None:
        return cfg.copies
    half = cfg.count // 2
    for copies in range(1, cfg.exposures + 1):
        if copies * epochs_run(n_train + half * copies, teacher) >= cfg.exposures:
            return copies
    return cfg.exposures


def make_canaries(
    cfg: CanaryConfig, channels: int, size: int, n_classes: int, n_train: int, teacher: ClassifierConfig, seed: int
) -> Canaries:
    """The run's canaries, the same in every step that derives them from (cfg, seed, dataset shape).

    Labels uniform over the n_classes classes; inserted: a uniformly random half (cfg.count // 2) of them.
    """
    rng = np.random.default_rng(derive_seed(seed, "canaries"))
    images = canary_images(cfg.kind, cfg.count, channels, size, rng)
    labels = rng.integers(0, n_classes, cfg.count).astype(np.int64)
    inserted = np.zeros(cfg.count, bool)
    inserted[rng.permutation(cfg.count)[: cfg.count // 2]] = True
    return Canaries(images, labels, inserted, copies_for(cfg, n_train, teacher))


def run_canaries(data: Dataset, cfg: CanaryConfig, teacher: ClassifierConfig, seed: int) -> Canaries | None:
    """The run's canaries for `data` (None when cfg.enabled is false)."""
    if not cfg.enabled:
        return None
    info = data.info
    return make_canaries(cfg, info.channels, info.image_size, info.n_classes, info.n_train, teacher, seed)


def with_canaries(data: Dataset, canaries: Canaries | None, copies: int | None = None) -> Dataset:
    """`data` with the inserted canaries appended to the training split, each `copies` times (None: the canaries'
    own count, the teacher's); val and test unchanged, and so is `data.info` (it describes the validated file).
    `data` itself when canaries is None."""
    if canaries is None:
        return data
    copies = canaries.copies if copies is None else copies
    x = np.repeat(canaries.images[canaries.inserted], copies, axis=0)
    y = np.repeat(canaries.labels[canaries.inserted], copies)
    return replace(data, x_train=np.concatenate([data.x_train, x]), y_train=np.concatenate([data.y_train, y]))


def augmented_views(images: np.ndarray) -> np.ndarray:
    """Every view the training augmentation can make of each image (`kr.method.classifier.augment`): shifts of up
    to 2 pixels with reflect padding, each unflipped and flipped. uint8 (N, C, H, W) -> uint8 (50, N, C, H, W)."""
    x = torch.from_numpy(images).float()
    h, w = x.shape[-2:]
    padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
    views = []
    for dy in range(5):
        for dx in range(5):
            view = padded[..., dy : dy + h, dx : dx + w]
            views += [view, view.flip(-1)]
    return torch.stack(views).round().clamp(0, 255).to(torch.uint8).numpy()


def canary_scores(model: torch.nn.Module, canaries: Canaries) -> np.ndarray:
    """Membership score per canary, higher meaning "inserted": the true-class logit margin averaged over every
    augmented view (querying augmentations strengthens the attack: Carlini et al. 2022, sec. VI-B), minus the median
    of canaries with the same label (a model sends unseen noise to some class; centring per label removes that
    default so only memorisation moves a canary up). float64 (m,); membership is not read.

    Logits in float32 and margins unclipped: a model that sends every canary to one class with a margin of 50 would
    otherwise score them all alike (bf16 steps, a clip at 30), and a tie reads as chance whatever the truth.
    """
    from kr.method.classifier import predict_logits

    views = augmented_views(canaries.images)
    margins = np.mean(
        [mia.true_class_logit_margin(predict_logits(model, v, bf16=False), canaries.labels) for v in views], axis=0
    )
    scores = margins.copy()
    for label in np.unique(canaries.labels):
        same = canaries.labels == label
        scores[same] -= np.median(margins[same])
    return scores


def epsilon_bound(correct: int, guesses: int, beta: float) -> float:
    """The largest epsilon that `correct` right guesses out of `guesses` refute at significance beta.

    Steinke et al. 2023, Thm. 3.1 (delta = 0): under epsilon-DP the number of right guesses is dominated by
    Binomial(guesses, e^eps / (1 + e^eps)). Returns eps* with P[Binomial >= correct] = beta, 0.0 when even eps = 0
    is not refuted (or no guess was made).
    """
    if guesses == 0:
        return 0.0

    def tail(eps: float) -> float:
        return float(stats.binom.sf(correct - 1, guesses, expit(eps))) - beta

    if tail(0.0) >= 0:
        return 0.0
    if tail(50.0) < 0:
        return 50.0
    return float(optimize.brentq(tail, 0.0, 50.0, xtol=1e-6))


def one_run_epsilon(scores: np.ndarray, inserted: np.ndarray, confidence: float = 0.95) -> dict:
    """Empirical epsilon lower bound of the one-run audit (Steinke et al. 2023, sec. 3 and 6).

    The auditor guesses "inserted" for the k highest scores and "held out" for the k lowest and abstains on the
    rest; k runs over 1, 2, 4, ... up to m/2. Trying several k is multiple testing, so each is held to
    (1 - confidence) / (number of k) (Bonferroni) and the best bound is reported. scores: float (m,); inserted:
    bool (m,). Returns {"epsilon", "confidence", "delta": 0.0, "guesses", "correct", "k_tried"}.
    """
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    inserted = np.asarray(inserted, bool)[order]
    half = len(scores) // 2
    ks = sorted({2**i for i in range(int(math.log2(max(half, 1))) + 1)} | {half}) if half else []
    beta = (1 - confidence) / max(len(ks), 1)
    best = {"epsilon": 0.0, "guesses": 0, "correct": 0}
    for k in reversed(ks):  # from the most guesses down: with no bound, the record shows all m guesses
        correct = int(inserted[:k].sum() + (~inserted[-k:]).sum())
        eps = epsilon_bound(correct, 2 * k, beta)
        if eps > best["epsilon"] or not best["guesses"]:
            best = {"epsilon": eps, "guesses": 2 * k, "correct": correct}
    return best | {"confidence": confidence, "delta": 0.0, "k_tried": ks}


def detection(scores: np.ndarray, inserted: np.ndarray, confidence: float) -> dict:
    """How well `scores` tell inserted from held-out canaries: ROC AUC with its interval, the TPR at the smallest
    FPR these canaries can measure (1 / held-out count) with its Clopper-Pearson interval, and the one-run epsilon
    lower bound. Returns {"n_inserted", "n_held_out", "auc", "auc_ci", "min_measurable_fpr", "tpr_at_min_fpr",
    "tpr_at_min_fpr_ci", "epsilon_lower_bound": `one_run_epsilon`'s dict, "roc": [fpr list, tpr list]}."""
    from sklearn.metrics import roc_auc_score, roc_curve

    inserted = np.asarray(inserted, bool)
    n_in, n_out = int(inserted.sum()), int((~inserted).sum())
    auc = float(roc_auc_score(inserted, scores))
    fpr, tpr, _ = roc_curve(inserted, scores)
    min_fpr = 1.0 / n_out
    tpr_min = mia.tpr_at_fpr(fpr, tpr, min_fpr)
    return {
        "n_inserted": n_in,
        "n_held_out": n_out,
        "auc": auc,
        "auc_ci": list(mia.auc_interval(auc, n_in, n_out)),
        "min_measurable_fpr": min_fpr,
        "tpr_at_min_fpr": tpr_min,
        "tpr_at_min_fpr_ci": list(mia.clopper_pearson(round(tpr_min * n_in), n_in)),
        "epsilon_lower_bound": one_run_epsilon(scores, inserted, confidence),
        "roc": [fpr.tolist(), tpr.tolist()],
    }


def pool_copies(canaries: Canaries, pool: np.ndarray) -> dict:
    """Does the regenerated pool reproduce inserted canaries more closely than held-out ones?

    Distance (L2 over pixels in [0, 1]) from each canary to its nearest pool image; score = -distance. pool: uint8
    (P, C, H, W). Returns {"n_pool", "auc" (inserted closer than held out; 0.5: no trace), "median_distance_inserted",
    "median_distance_held_out", "near_copies_inserted": inserted canaries closer than every held-out canary}.
    """
    from sklearn.metrics import roc_auc_score

    from kr.privacy.memorization import nearest_distances

    dist = nearest_distances(canaries.images, pool)
    held = dist[~canaries.inserted]
    return {
        "n_pool": int(len(pool)),
        "auc": float(roc_auc_score(canaries.inserted, -dist)),
        "median_distance_inserted": float(np.median(dist[canaries.inserted])),
        "median_distance_held_out": float(np.median(held)),
        "near_copies_inserted": int((dist[canaries.inserted] < held.min()).sum()),
    }


def audit_canaries(
    canaries: Canaries, models: dict[str, Path], pool: np.ndarray | None, confidence: float = 0.95
) -> dict:
    """Score the canaries on every model (name -> weights) and look for them in the regenerated pool.

    Returns {"count", "inserted", "copies", <model name>: `detection` dict, "pool": `pool_copies` dict or None}.
    """
    from kr.method.classifier import load_classifier

    out: dict = {"count": len(canaries.labels), "inserted": canaries.n_inserted, "copies": canaries.copies}
    for name, path in models.items():
        out[name] = detection(canary_scores(load_classifier(path), canaries), canaries.inserted, confidence)
    out["pool"] = pool_copies(canaries, pool) if pool is not None and len(pool) else None
    return out
