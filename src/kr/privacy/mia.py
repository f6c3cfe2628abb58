"""Membership inference: attack scores per candidate and the metrics the privacy gate reads.

Threat model (see README): the attacker queries the model as a black box and sees its logits; it holds data from
the same distribution (the pooled real images) and can train reference models with the target's recipe.
Members are real training images, non-members real held-out images, in equal numbers.

Every attack returns one score per candidate, higher meaning "more likely a member"; `attack_metrics` turns scores
into the numbers the privacy gate reads.
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from scipy.special import logsumexp
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve

# ---------------------------------------------------------------- metrics


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact (Clopper-Pearson 1934) two-sided 1 - alpha interval (lo, hi) in [0, 1] for a binomial proportion with
    k successes in n trials; (0, 1) when n is 0."""
    if n == 0:
        return (0.0, 1.0)
    lo = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return (lo, hi)


def auc_interval(auc: float, n_pos: int, n_neg: int, alpha: float = 0.05) -> tuple[float, float]:
    """Hanley-McNeil (1982) normal 1 - alpha interval (lo, hi) for a ROC AUC over n_pos positives and n_neg
    negatives (both > 0), clipped to [0, 1]."""
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)) / (n_pos * n_neg)
    half = float(stats.norm.ppf(1 - alpha / 2) * np.sqrt(max(var, 0.0)))
    return (max(0.0, auc - half), min(1.0, auc + half))


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, max_fpr: float) -> float:
    """Highest TPR among thresholds whose FPR does not exceed max_fpr (0 when none does).

    fpr, tpr: float (T,) as sklearn's roc_curve returns them; the result is a fraction in [0, 1].
    """
    ok = fpr <= max_fpr + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def attack_metrics(scores: np.ndarray, is_member: np.ndarray) -> dict:
    """ROC AUC (with interval), balanced accuracy at the best threshold, and TPR at 1% and 0.1% FPR with
    Clopper-Pearson intervals, each only where it can be measured.

    With n non-members the smallest FPR above zero is 1/n ("min_measurable_fpr"): a TPR at a lower FPR would be
    read off the curve's first step, so it is None (with interval None), never a number. scores: float (N,),
    higher meaning "member"; is_member: bool (N,). Returns {"auc", "auc_ci", "balanced_accuracy", "n_members",
    "n_nonmembers", "min_measurable_fpr", "tpr_at_min_fpr", "tpr_at_min_fpr_ci", "tpr_at_1pct_fpr",
    "tpr_at_1pct_fpr_ci", "tpr_at_01pct_fpr", "tpr_at_01pct_fpr_ci"}, rates and AUC as fractions in [0, 1],
    intervals as [lo, hi] at 95%. Raises ValueError when a score is NaN or infinite, or when members or non-members
    are missing.
    """
    scores = np.asarray(scores, np.float64)
    is_member = np.asarray(is_member, bool)
    if not np.isfinite(scores).all():
        raise ValueError("attack scores contain NaN or infinity")
    n_pos, n_neg = int(is_member.sum()), int((~is_member).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("an attack needs both members and non-members")
    fpr, tpr, _ = roc_curve(is_member, scores)
    auc = float(roc_auc_score(is_member, scores))
    min_fpr = 1.0 / n_neg
    out = {
        "auc": auc,
        "auc_ci": list(auc_interval(auc, n_pos, n_neg)),
        "balanced_accuracy": float(np.max((tpr + 1 - fpr) / 2)),
        "n_members": n_pos,
        "n_nonmembers": n_neg,
        "min_measurable_fpr": min_fpr,
    }
    for key, level in (("tpr_at_min_fpr", min_fpr), ("tpr_at_1pct_fpr", 0.01), ("tpr_at_01pct_fpr", 0.001)):
        measurable = level >= min_fpr - 1e-12
        value = tpr_at_fpr(fpr, tpr, level) if measurable else None
        out[key] = value
        out[f"{key}_ci"] = list(clopper_pearson(round(value * n_pos), n_pos)) if value is not None else None
    return out


def roc(scores: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr), float (T,) each, of scores (N,) against bool is_member (N,), members the positive class."""
    fpr, tpr, _ = roc_curve(np.asarray(is_member, bool), np.asarray(scores, np.float64))
    return fpr, tpr


# ---------------------------------------------------------------- per-example statistics


def true_class_logit_margin(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """phi = log p_y - log(1 - p_y), computed stably as z_y - logsumexp(z_other): LiRA's Gaussian-friendly statistic
    (Carlini et al., "Membership Inference Attacks From First Principles", S&P 2022).

    logits: float (N, K), K >= 2; labels: int (N,) in [0, K). Returns float64 (N,).
    """
    logits = np.asarray(logits, np.float64)
    idx = np.arange(len(labels))
    z_y = logits[idx, labels]
    others = logits.copy()
    others[idx, labels] = -np.inf
    return z_y - logsumexp(others, axis=1)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-example cross-entropy -log softmax(logits)_y, in nats: float (N, K), int (N,) -> float64 (N,) >= 0."""
    logits = np.asarray(logits, np.float64)
    return logsumexp(logits, axis=1) - logits[np.arange(len(labels)), labels]


def true_class_prob(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """softmax(logits)_y per example: float (N, K), int (N,) -> float64 (N,) in [0, 1]."""
    return np.exp(-cross_entropy(logits, labels))


# ---------------------------------------------------------------- attacks


def loss_attack(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Loss attack (Yeom et al. 2018): members have lower loss. Returns -cross-entropy, float64 (N,)."""
    return -cross_entropy(logits, labels)


def _shadow_features(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    probs = np.exp(z - logsumexp(z, axis=1, keepdims=True))
    top = -np.sort(-probs, axis=1)[:, : min(3, probs.shape[1])]
    n_classes = z.shape[1]
    return np.column_stack(
        [top, true_class_margin_clip(z, labels), -cross_entropy(z, labels), np.eye(n_classes)[labels]]
    )


def true_class_margin_clip(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """`true_class_logit_margin` clipped to [-30, 30], float64 (N,): a saturated softmax gives an extreme margin that
    would dominate the Gaussian fits."""
    return np.clip(true_class_logit_margin(logits, labels), -30, 30)


def shadow_attack(
    target_logits: np.ndarray, labels: np.ndarray, ref_logits: np.ndarray, ref_in: np.ndarray, seed: int = 0
) -> np.ndarray:
    """Shokri et al. 2017: an attack classifier learns IN vs OUT from shadow models' outputs (their own training
    membership is known), then scores the target's outputs. Shadow models are the reference models here.

    target_logits: float (N, K); labels: int (N,); ref_logits: float (R, N, K); ref_in: bool (R, N). A logistic
    regression on standardised features (top-3 probabilities, clipped margin, -loss, one-hot label); returns its
    decision values (log-odds of "member"), float64 (N,).
    """
    k = ref_logits.shape[0]
    feats = np.concatenate([_shadow_features(ref_logits[i], labels) for i in range(k)])
    member = np.concatenate([ref_in[i] for i in range(k)])
    clf = LogisticRegression(max_iter=2000, random_state=seed)
    mean, std = feats.mean(0), feats.std(0) + 1e-9
    clf.fit((feats - mean) / std, member)
    return clf.decision_function((_shadow_features(target_logits, labels) - mean) / std)


def _gaussian_stats(phi_ref: np.ndarray, mask: np.ndarray, min_count: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-example mean and std of phi over the reference models selected by mask (K, N); a global std when an
    example has too few models (Carlini et al. recommend it for small K)."""
    count = mask.sum(0)
    mean = np.where(count > 0, (phi_ref * mask).sum(0) / np.maximum(count, 1), np.nan)
    resid = np.where(mask, phi_ref - mean[None, :], np.nan)
    global_std = float(np.nanstd(resid)) + 1e-6
    per_std = np.sqrt(np.nansum(resid**2, axis=0) / np.maximum(count - 1, 1)) + 1e-6
    std = np.where(count >= min_count, per_std, global_std)
    mean = np.where(np.isnan(mean), float(np.nanmean(phi_ref)), mean)  # no model of that side: the global mean
    return mean, std


def lira(
    target_logits: np.ndarray,
    labels: np.ndarray,
    ref_logits: np.ndarray,
    ref_in: np.ndarray,
    online: bool,
    min_count: int = 8,
) -> np.ndarray:
    """LiRA (Carlini et al., "Membership Inference Attacks From First Principles", S&P 2022). Online: log likelihood
    ratio of the target's phi under the IN and OUT Gaussians. Offline: how far the target's phi sits above the OUT
    Gaussian (one-sided, log CDF), needing no IN models.

    phi is the clipped true-class logit margin. target_logits: float (N, K); labels: int (N,); ref_logits: float
    (R, N, K); ref_in: bool (R, N). An example with fewer than `min_count` reference models on a side uses the
    global std of that side. Returns float64 (N,).
    """
    phi = true_class_margin_clip(target_logits, labels)
    phi_ref = np.stack([true_class_margin_clip(r, labels) for r in ref_logits])
    mu_out, sd_out = _gaussian_stats(phi_ref, ~ref_in, min_count)
    if not online:
        return stats.norm.logcdf(phi, mu_out, sd_out)
    mu_in, sd_in = _gaussian_stats(phi_ref, ref_in, min_count)
    return stats.norm.logpdf(phi, mu_in, sd_in) - stats.norm.logpdf(phi, mu_out, sd_out)


def rmia(
    target_logits: np.ndarray,
    labels: np.ndarray,
    ref_logits: np.ndarray,
    population: tuple[np.ndarray, np.ndarray, np.ndarray],
    gamma: float = 1.0,
) -> np.ndarray:
    """RMIA (Zarifzadeh et al., "Low-Cost High-Power Membership Inference Attacks", ICML 2024): how often x's
    likelihood ratio p(x|target)/p(x) beats that of population samples z by more than gamma.

    p is the true-class probability; p(x) averages the reference models (half trained with x, half without), p(z)
    too, and no reference model trained on any z, as the paper requires. target_logits: float (N, K); labels: int
    (N,); ref_logits: float (R, N, K); population: (target logits float (Z, K), labels int (Z,), reference logits
    float (R, Z, K)) of the population images, Z >= 1. Returns float64 (N,): the fraction in [0, 1] plus a 1e-9 *
    ratio tie-breaker.
    """
    pop_target, pop_labels, pop_ref = population

    def ratio(target: np.ndarray, refs: np.ndarray, y: np.ndarray) -> np.ndarray:
        p_ref = np.stack([true_class_prob(r, y) for r in refs]).mean(0)
        return true_class_prob(target, y) / np.maximum(p_ref, 1e-12)

    ratio_x = ratio(target_logits, ref_logits, labels)
    ratio_z = np.sort(ratio(pop_target, pop_ref, pop_labels))
    # fraction of population z with ratio_x / ratio_z > gamma, i.e. ratio_z < ratio_x / gamma
    return np.searchsorted(ratio_z, ratio_x / gamma, side="left") / len(ratio_z) + 1e-9 * ratio_x


def half_splits(n: int, k: int, seed: int) -> np.ndarray:
    """bool (k, n) IN masks: pairs of complementary random halves, so every example is IN for exactly half the
    models (k odd: one unpaired half at the end). Deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    masks = []
    while len(masks) < k:
        m = np.zeros(n, bool)
        m[rng.permutation(n)[: n // 2]] = True
        masks.append(m)
        if len(masks) < k:
            masks.append(~m)
    return np.stack(masks)
