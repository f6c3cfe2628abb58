"""Privacy audit step: membership inference on teacher and student, and the generator's memorisation.

Candidates are real training images (members) and as many real held-out images (non-members, from val and test).
K reference models of the teacher's architecture and recipe are each trained on a random half of the pooled
candidates, so every candidate is IN for half of them: LiRA, RMIA and the shadow-model attack read them. The
teacher (trained on real data) is the baseline that shows what the attacks can do; the student is what ships.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kr.config import ClassifierConfig, PrivacyConfig
from kr.data import Dataset
from kr.method.classifier import build_classifier, fit, load_classifier, predict_logits
from kr.method.regeneration import load_pool
from kr.plots import roc_plot
from kr.privacy import mia
from kr.privacy.memorization import memorization
from kr.runtime import derive_seed


def audit_candidates(
    data: Dataset, max_candidates: int | None, seed: int, nonmember_splits: tuple[str, ...] = ("val", "test")
) -> tuple[np.ndarray, ...]:
    """(images, labels, is_member, source index) with equal numbers of members and non-members.
    Source index: the position in the train split for members, in the concatenated non-member splits otherwise.

    n = min(train size, held-out size, max_candidates) of each, drawn without replacement; members first. Returns
    uint8 (2n, C, H, W), int64 (2n,), bool (2n,), int64 (2n,). Raises DataError for an unknown split name.
    """
    held_x = np.concatenate([data.split(s)[0] for s in nonmember_splits])
    held_y = np.concatenate([data.split(s)[1] for s in nonmember_splits])
    n = min(len(data.x_train), len(held_x), max_candidates or len(held_x))
    rng = np.random.default_rng(derive_seed(seed, "audit-candidates"))
    mem = np.sort(rng.choice(len(data.x_train), n, replace=False))
    non = np.sort(rng.choice(len(held_x), n, replace=False))
    x = np.concatenate([data.x_train[mem], held_x[non]])
    y = np.concatenate([data.y_train[mem], held_y[non]])
    is_member = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    return x, y, is_member, np.r_[mem, non]


def train_reference_models(
    x: np.ndarray, y: np.ndarray, ref_in: np.ndarray, cfg: ClassifierConfig, channels: int, n_classes: int, seed: int
) -> np.ndarray:
    """Logits (K, N, C) of K reference models on all candidates; model k trained on the candidates in ref_in[k].

    x: uint8 (N, C, H, W); y: int (N,); ref_in: bool (K, N). No validation split: each keeps its last epoch.
    Returns float32 (K, N, n_classes).
    """
    out = []
    for k, mask in enumerate(ref_in):
        model = build_classifier(cfg, channels, n_classes, derive_seed(seed, "reference", k))
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
    is_member: np.ndarray,
    ref_logits: np.ndarray,
    ref_in: np.ndarray,
    attacks: list[str],
    seed: int,
) -> dict[str, np.ndarray]:
    """Scores of each named attack (names of kr.config.ATTACKS) on the target's logits: {name: float (N,)}, higher
    meaning "more likely a member".

    logits: float (N, K); y: int (N,); ref_logits: float (R, N, K); ref_in: bool (R, N); seed drives the shadow
    attack and RMIA's population. is_member is not read (no attack sees the truth). Raises KeyError for an unknown
    attack name.
    """
    scorers = {
        "loss": lambda: mia.loss_attack(logits, y),
        "shadow": lambda: mia.shadow_attack(logits, y, ref_logits, ref_in, seed),
        "lira_offline": lambda: mia.lira(logits, y, ref_logits, ref_in, online=False),
        "lira_online": lambda: mia.lira(logits, y, ref_logits, ref_in, online=True),
        "rmia": lambda: mia.rmia(logits, y, ref_logits, ref_in, seed=seed),
    }
    return {name: scorers[name]() for name in attacks}


def strongest(attacks: dict[str, dict]) -> dict:
    """The attack with the highest AUC; the TPR at 1% FPR is the highest of any attack (the gate reads both).

    attacks: {name: `mia.attack_metrics` dict}, at least one. Returns {"attack", "auc", "auc_ci", "tpr_at_1pct_fpr",
    "tpr_at_1pct_fpr_attack", "tpr_at_01pct_fpr"}.
    """
    name = max(attacks, key=lambda a: attacks[a]["auc"])
    return {
        "attack": name,
        "auc": attacks[name]["auc"],
        "auc_ci": attacks[name]["auc_ci"],
        "tpr_at_1pct_fpr": max(a["tpr_at_1pct_fpr"] for a in attacks.values()),
        "tpr_at_1pct_fpr_attack": max(attacks, key=lambda a: attacks[a]["tpr_at_1pct_fpr"]),
        "tpr_at_01pct_fpr": max(a["tpr_at_01pct_fpr"] for a in attacks.values()),
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
    out_dir: Path,
    seed: int,
) -> dict:
    """Attack every model in `models` (name -> weights, e.g. teacher and student) and check memorisation.

    accuracy: name -> test accuracy (fraction in [0, 1]) for every model, for its AOP. Candidates come from
    `audit_candidates`; cfg.reference_models reference models (cfg.reference, else teacher_cfg) each train on a
    random half of them. Memorisation samples cfg.memorization_samples images of the pool (`pool_paths`) against
    real train and real val+test. Writes out_dir/privacy.json and out_dir/mia_roc.png. Returns {"threat_model",
    "n_members", "n_nonmembers", "reference_models", <model name>: {"attacks", "strongest", "aop",
    "most_exposed_train_indices"}, "memorization", "roc_plot"}. Raises KeyError when `accuracy` lacks a model,
    ValueError when `pool_paths` is empty.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    x, y, is_member, source = audit_candidates(data, cfg.max_candidates, seed, tuple(cfg.nonmember_splits))
    ref_in = mia.half_splits(len(x), cfg.reference_models, derive_seed(seed, "reference-splits"))
    ref_cfg = cfg.reference or teacher_cfg
    ref_logits = train_reference_models(x, y, ref_in, ref_cfg, data.info.channels, data.info.n_classes, seed)
    result: dict = {
        "threat_model": "black-box logits; attacker holds same-distribution data and reference models",
        "n_members": int(is_member.sum()),
        "n_nonmembers": int((~is_member).sum()),
        "reference_models": cfg.reference_models,
    }
    curves = {}
    for name, path in models.items():
        logits = predict_logits(load_classifier(path), x)
        scores = run_attacks(logits, y, is_member, ref_logits, ref_in, cfg.attacks, seed)
        metrics = {a: mia.attack_metrics(s, is_member) for a, s in scores.items()}
        top = strongest(metrics) | {"roc": roc_points(scores[strongest(metrics)["attack"]], is_member)}
        exposed = np.argsort(-scores[top["attack"]][is_member])[:10]
        result[name] = {
            "attacks": metrics,
            "strongest": top,
            "aop": aop(accuracy[name], top["auc"]),
            "most_exposed_train_indices": source[is_member][exposed].tolist(),
        }
        curves[name] = {a: mia.roc(s, is_member) for a, s in scores.items()}
    pool = load_pool(pool_paths)
    rng = np.random.default_rng(derive_seed(seed, "memorization"))
    pick = rng.choice(len(pool["images"]), min(cfg.memorization_samples, len(pool["images"])), replace=False)
    result["memorization"] = memorization(
        pool["images"][pick], data.x_train, np.concatenate([data.x_val, data.x_test]), seed, cfg.near_copy_quantile
    )
    result["roc_plot"] = str(roc_plot(curves, out_dir / "mia_roc.png"))
    (out_dir / "privacy.json").write_text(json.dumps(result, indent=2))
    return result
