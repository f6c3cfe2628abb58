"""Privacy audit step: membership inference on teacher and student, and the generator's memorisation.

Candidates are real training images (members) and as many real held-out images (non-members, from val and test).
K reference models of the teacher's architecture and recipe are each trained on a random half of the pooled
candidates, so every candidate is IN for half of them: LiRA, RMIA and the shadow-model attack read them. The
teacher (trained on real data) is the baseline that shows what the attacks can do; the student is what ships.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kr.config import CanaryConfig, ClassifierConfig, PrivacyConfig
from kr.data import Dataset
from kr.method.classifier import build_classifier, fit, load_classifier, predict_logits
from kr.method.regeneration import load_pool
from kr.plots import roc_plot
from kr.privacy import mia
from kr.privacy.canaries import audit_canaries, run_canaries
from kr.privacy.memorization import memorization
from kr.runtime import derive_seed


@dataclass(frozen=True, eq=False)
class Candidates:
    """The audited images: n members (real train) then n non-members (real held-out), and RMIA's population.

    x uint8 (2n, C, H, W), y int64 (2n,), is_member bool (2n,), source int64 (2n,): the position in the train split
    for members, in the concatenated non-member splits otherwise. population_x uint8 (Z, C, H, W), population_y
    int64 (Z,): further held-out images that are neither candidates nor in any reference model's training set.
    """

    x: np.ndarray
    y: np.ndarray
    is_member: np.ndarray
    source: np.ndarray
    population_x: np.ndarray
    population_y: np.ndarray


def audit_candidates(
    data: Dataset,
    max_candidates: int | None,
    seed: int,
    nonmember_splits: tuple[str, ...] = ("val", "test"),
    population: int = 64,
) -> Candidates:
    """Equal numbers of members and non-members, from the same distribution, and RMIA's population.

    The population (`population` held-out images, at most a third of them on a small set) is set aside first; then
    n = min(train size, held-out left, max_candidates) members and as many non-members are drawn without
    replacement. Raises DataError for an unknown split name, ValueError when the non-member splits hold fewer than
    3 images.
    """
    held_x = np.concatenate([data.split(s)[0] for s in nonmember_splits])
    held_y = np.concatenate([data.split(s)[1] for s in nonmember_splits])
    if len(held_x) < 3:
        raise ValueError(f"the non-member splits {', '.join(nonmember_splits)} hold {len(held_x)} images: too few")
    population = min(population, len(held_x) // 3)
    rng = np.random.default_rng(derive_seed(seed, "audit-candidates"))
    order = rng.permutation(len(held_x))
    pop, rest = np.sort(order[:population]), order[population:]
    n = min(len(data.x_train), len(rest), max_candidates or len(rest))
    mem = np.sort(rng.choice(len(data.x_train), n, replace=False))
    non = np.sort(rest[:n])
    return Candidates(
        x=np.concatenate([data.x_train[mem], held_x[non]]),
        y=np.concatenate([data.y_train[mem], held_y[non]]),
        is_member=np.r_[np.ones(n, bool), np.zeros(n, bool)],
        source=np.r_[mem, non],
        population_x=held_x[pop],
        population_y=held_y[pop],
    )


def domain_shift(data: Dataset, splits: tuple[str, ...], seed: int, max_images: int = 500) -> dict[str, float]:
    """How well a domain classifier tells the training split from each non-member split: 5-fold cross-validated
    ROC AUC of a logistic regression on 7x7 average-pooled pixels and each image's mean and std, over up to
    `max_images` images of each side. 0.5: same distribution; well above: members and non-members differ by source
    (PneumoniaMNIST's test split), and a membership attack would read that difference as leakage. {split: AUC}."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def features(x: np.ndarray) -> np.ndarray:
        f = x.astype(np.float32) / 255.0
        n, c, h, w = f.shape
        pooled = f[..., : h // 4 * 4, : w // 4 * 4].reshape(n, c, h // 4, 4, w // 4, 4).mean((3, 5))
        return np.column_stack([pooled.reshape(n, -1), f.mean((1, 2, 3)), f.std((1, 2, 3))])

    rng = np.random.default_rng(derive_seed(seed, "domain-shift"))
    out = {}
    for split in splits:
        held = data.split(split)[0]
        k = min(len(data.x_train), len(held), max_images)
        a = data.x_train[rng.choice(len(data.x_train), k, replace=False)]
        b = held[rng.choice(len(held), k, replace=False)]
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
        label = np.r_[np.zeros(k), np.ones(k)]
        aucs = cross_val_score(model, features(np.concatenate([a, b])), label, cv=5, scoring="roc_auc")
        out[split] = float(np.mean(aucs))
    return out


def nonmember_splits(
    data: Dataset, cfg: PrivacyConfig, seed: int
) -> tuple[tuple[str, ...], dict[str, float], list[str]]:
    """The configured non-member splits without those a domain classifier tells from the training split (ROC AUC
    above cfg.max_domain_shift_auc, `domain_shift`), and a warning naming each split left out. When every split
    differs, all are kept and the warning says the attacks may measure the source instead of membership.
    Returns (splits kept, {split: domain classifier AUC}, warnings)."""
    shift = domain_shift(data, tuple(cfg.nonmember_splits), seed)
    shifted = [s for s in cfg.nonmember_splits if shift[s] > cfg.max_domain_shift_auc]
    kept = tuple(s for s in cfg.nonmember_splits if s not in shifted) or tuple(cfg.nonmember_splits)
    notes = [
        f"non-member split {s!r} differs from the training split (domain classifier AUC {shift[s]:.2f} > "
        f"{cfg.max_domain_shift_auc}): "
        + (
            "left out of the non-members"
            if s not in kept
            else "kept, as no other split is configured: attacks may read the source rather than membership"
        )
        for s in shifted
    ]
    return kept, shift, notes


def train_reference_models(
    x: np.ndarray, y: np.ndarray, ref_in: np.ndarray, cfg: ClassifierConfig, channels: int, n_classes: int, seed: int
) -> np.ndarray:
    """Logits (K, N, C) of K reference models on all candidates; model k trained on the candidates in ref_in[k].

    x: uint8 (N, C, H, W); y: int (N,); ref_in: bool (K, N). No validation split: each keeps its last epoch.
    Returns float32 (K, N, n_classes).
    """
    out = []
    for k, mask in enumerate(ref_in):
        model = build_classifier(cfg, channels, n_classes, x.shape[-1], derive_seed(seed, "reference", k))
        fit(
            model,
            lambda _e, m=mask: (x[m], y[m]),
            None,
            cfg,
            derive_seed(seed, "reference", k),
            f"reference model {k + 1}/{len(ref_in)}",
        )
        out.append(predict_logits(model, x))
    return np.stack(out)


def run_attacks(
    logits: np.ndarray,
    y: np.ndarray,
    ref_logits: np.ndarray,
    ref_in: np.ndarray,
    population: tuple[np.ndarray, np.ndarray, np.ndarray],
    attacks: list[str],
    seed: int,
) -> dict[str, np.ndarray]:
    """Scores of each named attack (names of kr.config.ATTACKS) on the target's logits: {name: float (N,)}, higher
    meaning "more likely a member". No attack sees the truth.

    logits: float (N, K); y: int (N,); ref_logits: float (R, N, K); ref_in: bool (R, N); population: RMIA's
    (target logits (Z, K), labels (Z,), reference logits (R, Z, K)); seed drives the shadow attack. Raises KeyError
    for an unknown attack name.
    """
    scorers = {
        "loss": lambda: mia.loss_attack(logits, y),
        "shadow": lambda: mia.shadow_attack(logits, y, ref_logits, ref_in, seed),
        "lira_offline": lambda: mia.lira(logits, y, ref_logits, ref_in, online=False),
        "lira_online": lambda: mia.lira(logits, y, ref_logits, ref_in, online=True),
        "rmia": lambda: mia.rmia(logits, y, ref_logits, population),
    }
    return {name: scorers[name]() for name in attacks}


def _top(attacks: dict[str, dict], key: str) -> tuple[float | None, str | None]:
    measured = {name: a[key] for name, a in attacks.items() if a.get(key) is not None}
    if not measured:
        return None, None
    name = max(measured, key=measured.get)
    return measured[name], name


def strongest(attacks: dict[str, dict]) -> dict:
    """The attack with the highest AUC; each TPR at FPR is the highest any attack reached (the gate reads both),
    None where the non-members are too few to measure that FPR (`mia.attack_metrics`).

    attacks: {name: `mia.attack_metrics` dict}, at least one. Returns {"attack", "auc", "auc_ci",
    "min_measurable_fpr", "tpr_at_min_fpr", "tpr_at_1pct_fpr", "tpr_at_1pct_fpr_ci", "tpr_at_1pct_fpr_attack",
    "tpr_at_01pct_fpr"}.
    """
    name = max(attacks, key=lambda a: attacks[a]["auc"])
    at_1pct, at_1pct_attack = _top(attacks, "tpr_at_1pct_fpr")
    return {
        "attack": name,
        "auc": attacks[name]["auc"],
        "auc_ci": attacks[name]["auc_ci"],
        "min_measurable_fpr": attacks[name]["min_measurable_fpr"],
        "tpr_at_min_fpr": _top(attacks, "tpr_at_min_fpr")[0],
        "tpr_at_1pct_fpr": at_1pct,
        "tpr_at_1pct_fpr_ci": attacks[at_1pct_attack]["tpr_at_1pct_fpr_ci"] if at_1pct_attack else None,
        "tpr_at_1pct_fpr_attack": at_1pct_attack,
        "tpr_at_01pct_fpr": _top(attacks, "tpr_at_01pct_fpr")[0],
    }


def roc_points(scores: np.ndarray, is_member: np.ndarray, max_points: int = 200) -> dict[str, list[float]]:
    """The ROC curve thinned to at most max_points, with finite thresholds (for KFP's ROC artifact and JSON)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(np.asarray(is_member, bool), np.asarray(scores, np.float64))
    thresholds = np.where(np.isfinite(thresholds), thresholds, np.nanmax(scores) + 1.0)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(max_points, len(fpr))).round().astype(int))
    return {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist(), "thresholds": thresholds[keep].tolist()}


def aop(accuracy: float, auc: float) -> float:
    """Accuracy-over-privacy: accuracy x (0.5 / AUC)^2, AUC floored at chance.

    accuracy: a fraction in [0, 1]; returns a value in [0, accuracy] (accuracy itself at AUC <= 0.5).
    """
    return float(accuracy * (0.5 / max(auc, 0.5)) ** 2)


def audit_privacy(
    data: Dataset,
    models: dict[str, Path],
    accuracy: dict[str, float],
    pool_paths: list[Path],
    cfg: PrivacyConfig,
    teacher_cfg: ClassifierConfig,
    canary_cfg: CanaryConfig,
    out_dir: Path,
    seed: int,
) -> dict:
    """Attack every model in `models` (name -> weights, e.g. teacher and student), score the canaries on each, and
    check the generator's memorisation.

    accuracy: name -> test accuracy (fraction in [0, 1]) for every model, for its AOP. Candidates and RMIA's
    population come from `audit_candidates`; cfg.reference_models reference models (cfg.reference, else
    teacher_cfg) each train on a random half of the candidates. The canaries are the run's own
    (`kr.privacy.canaries.run_canaries`, the same the teacher and generator learned). Memorisation samples
    cfg.memorization_samples images of the pool (`pool_paths`) against real train and real val+test. Writes
    out_dir/privacy.json and out_dir/mia_roc.png. Returns {"threat_model", "n_members", "n_nonmembers",
    "min_measurable_fpr", "population", "reference_models", "domain_shift", "warnings", <model name>: {"attacks",
    "strongest", "aop", "most_exposed_train_indices"}, "canaries" (None when disabled), "memorization",
    "roc_plot"}. Raises KeyError when `accuracy` lacks a model, ValueError when `pool_paths` is empty or the
    non-member splits are too small.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits, shift, notes = nonmember_splits(data, cfg, seed)
    cand = audit_candidates(data, cfg.max_candidates, seed, splits, cfg.population)
    x, y, is_member = cand.x, cand.y, cand.is_member
    for note in notes:
        warnings.warn(note, stacklevel=1)
    ref_in = mia.half_splits(len(x), cfg.reference_models, derive_seed(seed, "reference-splits"))
    ref_cfg = cfg.reference or teacher_cfg
    both = np.concatenate([x, cand.population_x])
    both_y = np.concatenate([y, cand.population_y])
    # the population rides along as OUT for every reference model: none trains on it
    both_in = np.concatenate([ref_in, np.zeros((len(ref_in), len(cand.population_x)), bool)], axis=1)
    ref_all = train_reference_models(both, both_y, both_in, ref_cfg, data.info.channels, data.info.n_classes, seed)
    ref_logits, ref_pop = ref_all[:, : len(x)], ref_all[:, len(x) :]
    result: dict = {
        "threat_model": "black-box logits; attacker holds same-distribution data and reference models",
        "n_members": int(is_member.sum()),
        "n_nonmembers": int((~is_member).sum()),
        "min_measurable_fpr": 1.0 / int((~is_member).sum()),
        "population": int(len(cand.population_x)),
        "reference_models": cfg.reference_models,
        "nonmember_splits": list(splits),
        "domain_shift": shift,
        "warnings": notes,
    }
    curves = {}
    for name, path in models.items():
        logits = predict_logits(load_classifier(path), both)
        population = (logits[len(x) :], cand.population_y, ref_pop)
        scores = run_attacks(logits[: len(x)], y, ref_logits, ref_in, population, cfg.attacks, seed)
        metrics = {a: mia.attack_metrics(s, is_member) for a, s in scores.items()}
        top = strongest(metrics) | {"roc": roc_points(scores[strongest(metrics)["attack"]], is_member)}
        exposed = np.argsort(-scores[top["attack"]][is_member])[:10]
        result[name] = {
            "attacks": metrics,
            "strongest": top,
            "aop": aop(accuracy[name], top["auc"]),
            "most_exposed_train_indices": cand.source[is_member][exposed].tolist(),
        }
        curves[name] = {a: mia.roc(s, is_member) for a, s in scores.items()}
    pool = load_pool(pool_paths)
    found = run_canaries(data, canary_cfg, teacher_cfg, seed)
    if found is None:
        result["canaries"] = None
    else:
        result["canaries"] = audit_canaries(found, models, pool["images"], canary_cfg.confidence) | {
            "kind": canary_cfg.kind,
            "generator_copies": canary_cfg.generator_copies,
        }
        for name in models:
            curves[name]["canaries"] = tuple(np.asarray(v) for v in result["canaries"][name].pop("roc"))
    rng = np.random.default_rng(derive_seed(seed, "memorization"))
    pick = rng.choice(len(pool["images"]), min(cfg.memorization_samples, len(pool["images"])), replace=False)
    result["memorization"] = memorization(
        pool["images"][pick], data.x_train, np.concatenate([data.x_val, data.x_test]), seed, cfg.near_copy_quantile
    )
    min_fpr = {"real data": result["min_measurable_fpr"]}
    if result["canaries"]:
        min_fpr["canaries"] = 1.0 / (result["canaries"]["count"] - result["canaries"]["inserted"])
    result["roc_plot"] = str(roc_plot(curves, out_dir / "mia_roc.png", min_fpr))
    (out_dir / "privacy.json").write_text(json.dumps(result, indent=2))
    return result
