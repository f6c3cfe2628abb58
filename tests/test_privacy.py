"""Privacy primitives: hand-checked ROC metrics, attacks that find leakage that is there and none that is not."""

from __future__ import annotations

import numpy as np
import pytest
from datagen import REAL_ROOT, needs_real

from kr.config import ClassifierConfig
from kr.method.classifier import build_classifier, fit, predict_logits
from kr.privacy.memorization import memorization
from kr.privacy.mia import (
    attack_metrics,
    auc_interval,
    clopper_pearson,
    half_splits,
    lira,
    loss_attack,
    rmia,
    shadow_attack,
    tpr_at_fpr,
    true_class_logit_margin,
)


def test_metrics_on_a_hand_checked_case() -> None:
    # members 0.9, 0.8, 0.3; non-members 0.7, 0.2, 0.1 -> 8 of 9 pairs ordered right -> AUC 8/9
    scores = np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1])
    member = np.array([1, 1, 1, 0, 0, 0], bool)
    m = attack_metrics(scores, member)
    assert m["auc"] == pytest.approx(8 / 9)
    # best threshold 0.3: TPR 1, FPR 1/3 -> balanced accuracy 5/6
    assert m["balanced_accuracy"] == pytest.approx(5 / 6)
    # at the smallest measurable FPR (1/3) the threshold 0.3 catches all; 1% cannot be measured from 3 non-members
    assert m["tpr_at_min_fpr"] == pytest.approx(1.0) and m["tpr_at_1pct_fpr"] is None
    assert m["n_members"] == 3 and m["n_nonmembers"] == 3


def test_perfect_and_inverted_attacks() -> None:
    member = np.array([1] * 50 + [0] * 50, bool)
    perfect = attack_metrics(np.r_[np.ones(50), np.zeros(50)], member)
    assert perfect["auc"] == 1.0 and perfect["tpr_at_min_fpr"] == 1.0
    inverted = attack_metrics(np.r_[np.zeros(50), np.ones(50)], member)
    assert inverted["auc"] == 0.0 and inverted["tpr_at_min_fpr"] == 0.0


def test_no_tpr_is_claimed_below_the_smallest_measurable_fpr() -> None:
    # 50 non-members: the smallest FPR above zero is 2%, so neither 1% nor 0.1% can be measured
    member = np.array([1] * 50 + [0] * 50, bool)
    m = attack_metrics(np.r_[np.ones(50), np.zeros(50)], member)
    assert m["min_measurable_fpr"] == pytest.approx(0.02)
    assert m["tpr_at_1pct_fpr"] is None and m["tpr_at_1pct_fpr_ci"] is None and m["tpr_at_01pct_fpr"] is None
    # 200 non-members: 1% is measurable (with its interval), 0.1% is not
    member = np.array([1] * 200 + [0] * 200, bool)
    m = attack_metrics(np.r_[np.ones(200), np.zeros(200)], member)
    assert m["tpr_at_1pct_fpr"] == 1.0 and m["tpr_at_1pct_fpr_ci"][0] > 0.98 and m["tpr_at_01pct_fpr"] is None


def test_tpr_at_fpr_reads_the_curve() -> None:
    fpr = np.array([0.0, 0.005, 0.02, 1.0])
    tpr = np.array([0.0, 0.3, 0.6, 1.0])
    assert tpr_at_fpr(fpr, tpr, 0.01) == 0.3
    assert tpr_at_fpr(fpr, tpr, 0.001) == 0.0


def test_intervals() -> None:
    lo, hi = clopper_pearson(0, 100)
    assert lo == 0.0 and hi == pytest.approx(0.0362, abs=1e-3)  # the textbook "rule of three" region
    lo, hi = clopper_pearson(50, 100)
    assert lo < 0.5 < hi
    lo, hi = auc_interval(0.5, 200, 200)
    assert lo < 0.5 < hi and hi - lo < 0.15


def test_bad_scores_are_refused() -> None:
    with pytest.raises(ValueError, match="NaN"):
        attack_metrics(np.array([np.nan, 1.0]), np.array([True, False]))
    with pytest.raises(ValueError, match="both"):
        attack_metrics(np.array([0.1, 1.0]), np.array([True, True]))


def test_logit_margin_matches_its_definition() -> None:
    logits = np.array([[2.0, 0.0, -1.0]])
    p = np.exp(logits) / np.exp(logits).sum()
    assert true_class_logit_margin(logits, np.array([0]))[0] == pytest.approx(np.log(p[0, 0] / (1 - p[0, 0])))


def test_half_splits_balance_membership() -> None:
    masks = half_splits(101, 8, seed=0)
    assert masks.shape == (8, 101)
    assert (masks.sum(0) == 4).all()  # each example IN for exactly half of the models


def _simulated_leak(n: int, k: int, leak: float, seed: int = 0):
    """Reference and target logits where membership raises the true-class logit by `leak`."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    difficulty = rng.normal(0, 1.5, n)  # per-example hardness: what reference models let LiRA subtract out
    ref_in = half_splits(n, k, seed)
    target_in = half_splits(n, 2, seed + 1)[0]

    def logits(is_in):
        margin = difficulty + leak * is_in + rng.normal(0, 0.3, n)
        z = np.zeros((n, 2))
        z[np.arange(n), labels] = margin
        return z

    ref = np.stack([logits(ref_in[i]) for i in range(k)])
    return logits(target_in), labels, ref, ref_in, target_in


def _population(k: int, z: int, seed: int = 1):
    """RMIA's population: examples no reference model and not the target trained on."""
    target, labels, ref, ref_in, _ = _simulated_leak(z, k, 0.0, seed)
    return target, labels, ref


@pytest.mark.parametrize("attack", ["loss", "shadow", "lira_online", "lira_offline", "rmia"])
def test_attacks_find_leakage_that_is_there_and_none_that_is_not(attack: str) -> None:
    def run(leak: float) -> float:
        target, labels, ref, ref_in, member = _simulated_leak(600, 16, leak)
        scores = {
            "loss": lambda: loss_attack(target, labels),
            "shadow": lambda: shadow_attack(target, labels, ref, ref_in),
            "lira_online": lambda: lira(target, labels, ref, ref_in, online=True),
            "lira_offline": lambda: lira(target, labels, ref, ref_in, online=False),
            "rmia": lambda: rmia(target, labels, ref, _population(16, 200)),
        }[attack]()
        return attack_metrics(scores, member)

    leaky, clean = run(1.0), run(0.0)
    assert leaky["auc"] > 0.6
    assert clean["auc_ci"][0] <= 0.5 <= clean["auc_ci"][1]


def test_reference_models_make_lira_stronger_than_the_loss_attack() -> None:
    target, labels, ref, ref_in, member = _simulated_leak(800, 16, 0.6)
    assert (
        attack_metrics(lira(target, labels, ref, ref_in, online=True), member)["auc"]
        > attack_metrics(loss_attack(target, labels), member)["auc"] + 0.05
    )


@needs_real
def test_attack_controls_on_real_images() -> None:
    """Positive control: a classifier overfit (no augmentation, no regularisation, last epoch) on 64 real images is
    caught (loss AUC >= 0.8). Negative control: one that never saw those 64 is not (AUC interval holds 0.5)."""
    from kr.data import load_dataset

    data = load_dataset("breastmnist", REAL_ROOT)
    rng = np.random.default_rng(0)
    members = rng.choice(len(data.x_train), 64, replace=False)
    nonmembers = rng.choice(len(data.x_test), 64, replace=False)
    x = np.concatenate([data.x_train[members], data.x_test[nonmembers]])
    y = np.concatenate([data.y_train[members], data.y_test[nonmembers]])
    is_member = np.r_[np.ones(64, bool), np.zeros(64, bool)]
    cfg = ClassifierConfig(
        width=16, blocks_per_stage=1, epochs=60, batch_size=16, augment=False, dropout=0.0, weight_decay=0.0, bf16=False
    )

    overfit = build_classifier(cfg, 1, 2, 28, seed=0)
    fit(overfit, lambda _e: (data.x_train[members], data.y_train[members]), None, cfg, 0, "overfit")
    leaky = attack_metrics(loss_attack(predict_logits(overfit, x), y), is_member)
    assert leaky["auc"] >= 0.8

    # trained on other training images: the 64 members are as unseen to it as the non-members
    others = np.setdiff1d(np.arange(len(data.x_train)), members)[:200]
    unseen = build_classifier(cfg, 1, 2, 28, seed=0)
    fit(unseen, lambda _e: (data.x_train[others], data.y_train[others]), None, cfg, 0, "unseen")
    clean = attack_metrics(loss_attack(predict_logits(unseen, x), y), is_member)
    assert clean["auc_ci"][0] <= 0.5 <= clean["auc_ci"][1], (leaky["auc"], clean["auc"])


def test_memorization_flags_copies_and_passes_fresh_samples() -> None:
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (200, 1, 28, 28), dtype=np.uint8)
    holdout = rng.integers(0, 256, (200, 1, 28, 28), dtype=np.uint8)
    copies = np.clip(train[:100].astype(int) + rng.integers(-3, 4, (100, 1, 28, 28)), 0, 255).astype(np.uint8)
    fresh = rng.integers(0, 256, (100, 1, 28, 28), dtype=np.uint8)
    copied = memorization(copies, train, holdout)
    assert copied["near_copy_fraction"] > 0.9 and copied["dcr_ratio_median"] < 0.2
    clean = memorization(fresh, train, holdout)
    assert clean["near_copy_fraction"] < 0.05 and 0.9 < clean["dcr_ratio_median"] < 1.1


@needs_real
def test_a_non_member_split_from_another_source_is_named_and_left_out() -> None:
    """PneumoniaMNIST's test split comes from another source than its training split: a membership attack would
    read the source. BreastMNIST's splits share one source: both are kept."""
    from kr.config import PrivacyConfig
    from kr.data import load_dataset
    from kr.privacy.audit import nonmember_splits

    splits, shift, notes = nonmember_splits(load_dataset("pneumoniamnist", REAL_ROOT), PrivacyConfig(), seed=0)
    assert splits == ("val",) and shift["test"] > 0.6
    assert len(notes) == 1 and "'test'" in notes[0] and "left out" in notes[0]
    splits, _, notes = nonmember_splits(load_dataset("breastmnist", REAL_ROOT), PrivacyConfig(), seed=0)
    assert splits == ("val", "test") and notes == []
