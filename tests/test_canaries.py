"""Canaries: the audit's power and the one-run epsilon lower bound (Steinke, Nasr and Jagielski 2023)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from datagen import REAL_ROOT, needs_real

from kr.config import CanaryConfig, ClassifierConfig
from kr.privacy.canaries import (
    audit_canaries,
    augmented_views,
    copies_for,
    epsilon_bound,
    make_canaries,
    one_run_epsilon,
    pool_copies,
    with_canaries,
)

TEACHER = ClassifierConfig(width=8, blocks_per_stage=1, epochs=40, batch_size=64)


def test_epsilon_bound_matches_the_closed_form() -> None:
    # all r guesses right: P[Bin(r, p) >= r] = p^r = beta, so p = beta^(1/r) and eps = log(p / (1 - p))
    for r in (8, 32, 64):
        p = 0.05 ** (1 / r)
        assert epsilon_bound(r, r, 0.05) == pytest.approx(math.log(p / (1 - p)), rel=1e-4)
    # half right is what a coin does: nothing refuted
    assert epsilon_bound(16, 32, 0.05) == 0.0
    assert epsilon_bound(0, 0, 0.05) == 0.0


def test_one_run_epsilon_sees_separation_and_not_chance() -> None:
    inserted = np.r_[np.ones(32, bool), np.zeros(32, bool)]
    perfect = one_run_epsilon(np.r_[np.ones(32), np.zeros(32)] + np.linspace(0, 0.1, 64), inserted)
    assert perfect["epsilon"] > 2.0 and perfect["correct"] == perfect["guesses"]
    rng = np.random.default_rng(0)
    chance = [one_run_epsilon(rng.normal(size=64), inserted)["epsilon"] for _ in range(40)]
    # Bonferroni over the k tried keeps false bounds rarer than 1 - confidence
    assert np.mean(np.asarray(chance) > 0) <= 0.1


def test_canaries_are_seeded_half_inserted_and_appended_with_copies(tmp_path) -> None:
    from datagen import write_npz

    from kr.data import load_dataset

    cfg = CanaryConfig(count=16, copies=3)
    a = make_canaries(cfg, 1, 28, 2, 100, TEACHER, seed=7)
    b = make_canaries(cfg, 1, 28, 2, 100, TEACHER, seed=7)
    assert (a.images == b.images).all() and (a.inserted == b.inserted).all() and a.n_inserted == 8
    assert not (a.images == make_canaries(cfg, 1, 28, 2, 100, TEACHER, seed=8).images).all()
    data = load_dataset(str(write_npz(tmp_path / "t.npz", n_train=40, channels=1, n_classes=2)))
    grown = with_canaries(data, a)
    assert len(grown.x_train) == 40 + 8 * 3 and grown.info == data.info and len(grown.x_test) == len(data.x_test)
    assert (grown.x_train[40:43] == a.images[a.inserted][0]).all()  # each inserted canary `copies` times


def test_auto_copies_reach_the_exposures() -> None:
    # 40 epochs without a step cap: 6 copies give 240 exposures
    assert copies_for(CanaryConfig(exposures=240), 546, ClassifierConfig(epochs=40, max_steps=600)) == 6
    # a large set trains fewer epochs under max_steps, so more copies are needed
    assert copies_for(CanaryConfig(exposures=240), 4708, ClassifierConfig(epochs=40, max_steps=600)) == 16
    assert copies_for(CanaryConfig(copies=2), 4708, ClassifierConfig()) == 2


def test_augmented_views_hold_the_image_itself() -> None:
    x = np.random.default_rng(0).integers(0, 256, (3, 1, 28, 28), dtype=np.uint8)
    views = augmented_views(x)
    assert views.shape == (50, 3, 1, 28, 28) and (views == x[None]).all(axis=(2, 3, 4)).any(axis=0).all()


def test_the_pool_check_finds_reproduced_canaries() -> None:
    canaries = make_canaries(CanaryConfig(count=32, copies=1, kind="noise"), 1, 28, 2, 100, TEACHER, seed=0)
    rng = np.random.default_rng(0)
    unrelated = rng.integers(0, 256, (200, 1, 28, 28), dtype=np.uint8)
    assert pool_copies(canaries, unrelated)["near_copies_inserted"] <= 1
    copied = np.concatenate([unrelated, canaries.images[canaries.inserted]])
    found = pool_copies(canaries, copied)
    assert found["auc"] == 1.0 and found["near_copies_inserted"] == canaries.n_inserted


@needs_real
def test_canaries_catch_a_model_that_learned_them_and_not_one_that_did_not(tmp_path) -> None:
    """Positive control: a classifier trained on real BreastMNIST with the inserted canaries tells them from the
    held-out ones (AUC >= 0.9, epsilon bound > 0). Negative control: one trained without them shows no membership
    (epsilon bound 0; with 32 against 32 canaries its AUC scatters by +-0.14 around 0.5, so only a bound decides)."""
    from kr.data import load_dataset
    from kr.method.classifier import build_classifier, fit, save_classifier

    data = load_dataset("breastmnist", REAL_ROOT)
    cfg = ClassifierConfig(width=16, blocks_per_stage=1, epochs=30, batch_size=64, bf16=False)
    canaries = make_canaries(CanaryConfig(copies=6, kind="noise"), 1, 28, 2, len(data.x_train), cfg, seed=0)
    paths = {}
    for name, train in (("with", with_canaries(data, canaries)), ("without", data)):
        model = build_classifier(cfg, 1, 2, 28, seed=0)
        fit(model, lambda _e, t=train: (t.x_train, t.y_train), None, cfg, 0, name)
        paths[name] = save_classifier(model, tmp_path / f"{name}.pt")
    found = audit_canaries(canaries, paths, pool=None)
    assert found["with"]["auc"] >= 0.9 and found["with"]["epsilon_lower_bound"]["epsilon"] > 0
    assert found["without"]["epsilon_lower_bound"]["epsilon"] == 0.0 and abs(found["without"]["auc"] - 0.5) < 0.2


def test_canary_scores_keep_the_order_of_saturated_margins(tmp_path) -> None:
    """A model that sends every canary to one class with a margin far beyond 30 must still rank them by that
    margin: clipped or bf16-rounded margins tie, and a tie reads as chance whatever the truth."""
    import torch

    from kr.privacy.canaries import canary_scores

    canaries = make_canaries(CanaryConfig(count=16, copies=1, kind="noise"), 1, 28, 2, 100, TEACHER, seed=0)

    class Saturated(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # margin 50 plus a small image-dependent part, for class 1 whatever the image
            level = x.mean(dim=(1, 2, 3))
            return torch.stack([-25 - level, 25 + level], dim=1)

    scores = canary_scores(Saturated(), canaries)
    assert len(np.unique(np.round(scores, 9))) > len(scores) // 2  # not all tied
