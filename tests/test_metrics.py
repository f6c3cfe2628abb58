"""Hand-checked metric cases and the building blocks of distillation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kr.method.classifier import augment, soft_cross_entropy
from kr.method.metrics import classification_metrics, majority_rate, softmax
from kr.method.regeneration import pool_size, shard_sizes
from kr.method.selection import choose
from kr.method.student import pool_slices


def test_binary_metrics_hand_checked() -> None:
    # scores for class 1 (via logits [0, s]): 0.1, 0.4, 0.35, 0.8 with labels 0, 0, 1, 1 -> AUC 0.75
    s = np.array([0.1, 0.4, 0.35, 0.8])
    logits = np.stack([np.zeros(4), np.log(s / (1 - s))], axis=1)
    m = classification_metrics(logits, np.array([0, 0, 1, 1]))
    assert m["auc"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(0.75)  # predictions 0, 0, 0, 1
    assert m["per_class"]["1"] == {"n": 2, "recall": 0.5}


def test_multiclass_auc_is_macro_ovr() -> None:
    logits = np.eye(3)[[0, 1, 2, 0, 1, 2]] * 5.0
    m = classification_metrics(logits, np.array([0, 1, 2, 0, 1, 2]))
    assert m["accuracy"] == 1.0 and m["auc"] == pytest.approx(1.0)


def test_auc_undefined_with_one_class() -> None:
    assert np.isnan(classification_metrics(np.zeros((3, 2)), np.array([1, 1, 1]))["auc"])


def test_softmax_temperature_flattens() -> None:
    z = np.array([[2.0, 0.0]])
    assert softmax(z, 4.0)[0, 0] < softmax(z, 1.0)[0, 0]
    assert softmax(z, 1.0).sum() == pytest.approx(1.0)
    assert majority_rate(np.array([0, 1, 1, 1])) == 0.75


def test_soft_cross_entropy_matches_hard_ce_on_one_hot() -> None:
    logits = torch.randn(8, 3)
    labels = torch.randint(0, 3, (8,))
    one_hot = F.one_hot(labels, 3).float()
    assert soft_cross_entropy(logits, one_hot, 1.0) == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)


def test_augment_shifts_without_changing_content_much() -> None:
    x = torch.zeros(4, 1, 28, 28)
    x[:, :, 14, 14] = 1.0
    out = augment(x, torch.Generator().manual_seed(0), hflip=False)
    assert out.shape == x.shape
    assert torch.allclose(out.sum(dim=(1, 2, 3)), torch.ones(4))  # the dot moved, it was not lost


def test_pool_and_shard_arithmetic() -> None:
    assert pool_size(546, 1.0, 10) == (546, 5460)
    assert pool_size(4708, 0.5, 4, cap=1000) == (1000, 4000)
    assert shard_sizes(10, 3) == [4, 3, 3]
    slices = pool_slices(100, 4, seed=0)
    flat = np.concatenate(slices)
    assert len(slices) == 4 and all(len(s) == 25 for s in slices)
    assert len(np.unique(flat)) == 100  # disjoint: each epoch sees images no other epoch saw


def test_selection_prefers_best_cas_then_agreement_then_cheaper_guidance_then_later_checkpoint() -> None:
    cell = lambda step, w, cas, agree=0.5: {
        "step": step,
        "guidance_scale": w,
        "val_cas": cas,  # noqa: E731
        "teacher_agreement": agree,
    }
    grid = [
        cell(500, 1.0, 0.80),
        cell(1000, 2.0, 0.876, agree=0.88),
        cell(1000, 1.0, 0.876, agree=0.82),
        cell(500, 1.0, 0.876),
    ]
    assert choose(grid) == cell(1000, 2.0, 0.876, agree=0.88)
    # equal agreement: the cheaper scale, then the later checkpoint
    assert choose(grid[2:] + [cell(1000, 2.0, 0.876, agree=0.82)]) == cell(1000, 1.0, 0.876, agree=0.82)
    assert choose([cell(500, 1.0, 0.7), cell(500, 3.0, 0.9)])["guidance_scale"] == 3.0
