"""kr.method.fidelity: the envelope of real images, Frechet distance, precision/recall, and the shard check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datagen import REAL_ROOT, needs_real
from test_validation import CFG, shard_fails, write_shard

from kr.data import load_dataset
from kr.method.classifier import SmallResNet
from kr.method.fidelity import (
    Envelope,
    fidelity,
    fit_envelope,
    frechet_distance,
    precision_recall,
    real_reference,
    teacher_outputs,
)
from kr.method.selection import choose
from kr.validation import ValidationConfig, validate_shard


def broken_kinds(n: int = 16, channels: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """The ways a diverged sampler's samples look: saturated black or white, flat grey, salt-and-pepper noise."""
    rng = np.random.default_rng(seed)
    shape = (n, channels, 28, 28)
    return {
        "black": np.zeros(shape, np.uint8),
        "white": np.full(shape, 255, np.uint8),
        "grey": np.full(shape, 128, np.uint8),
        "salt_and_pepper": (rng.random(shape) < 0.5).astype(np.uint8) * 255,
        "uniform_noise": rng.integers(0, 256, shape, dtype=np.uint8),
    }


@needs_real
@pytest.mark.parametrize("flag", ["breastmnist", "pneumoniamnist"])
def test_envelope_accepts_real_held_out_images_and_rejects_every_broken_kind(flag: str) -> None:
    data = load_dataset(flag, REAL_ROOT)
    env = fit_envelope(data.x_train)
    assert env.broken(data.x_val).mean() <= 0.02
    assert env.broken(data.x_test).mean() <= 0.02
    for kind, x in broken_kinds().items():
        assert env.broken(x).all(), kind


def test_frechet_distance_is_zero_for_one_set_and_the_squared_shift_for_a_moved_one() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2000, 4))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, a + np.array([3.0, 0, 0, 4.0])) == pytest.approx(25.0, rel=1e-6)
    assert np.isnan(frechet_distance(a[:1], a))


def test_precision_and_recall_separate_fidelity_from_coverage() -> None:
    rng = np.random.default_rng(0)
    real = rng.normal(size=(400, 3))
    assert precision_recall(real, real.copy()) == (1.0, 1.0)
    far = real + 100.0
    assert precision_recall(real, far) == (0.0, 0.0)
    # a generator that draws only one corner of the real distribution: faithful samples, poor coverage
    corner = real[real[:, 0] > 1.0]
    precision, recall = precision_recall(real, corner)
    assert precision == 1.0 and recall < 0.5


def test_fidelity_reports_agreement_broken_share_and_per_class() -> None:
    torch.manual_seed(0)
    teacher = SmallResNet(1, 2, width=8, blocks_per_stage=1).eval()
    rng = np.random.default_rng(0)
    real = rng.integers(60, 200, (40, 1, 28, 28), dtype=np.uint8)
    ref = real_reference(teacher, real, real, np.arange(40) % 2)
    fake = np.concatenate([real[:20], broken_kinds(10)["black"], broken_kinds(10)["white"]])
    labels = np.arange(40) % 2
    out = fidelity(teacher, ref, fake, labels)
    logits, feats = teacher_outputs(teacher, fake)
    assert logits.shape == (40, 2) and feats.shape == (40, 32)
    assert out["broken_fraction"] == pytest.approx(0.5)
    assert out["teacher_agreement"] == pytest.approx(float((logits.argmax(1) == labels).mean()))
    assert set(out["per_class"]) == {"0", "1"} and out["per_class"]["0"]["n"] == 20


def test_selection_sets_aside_broken_cells_and_breaks_ties_by_agreement() -> None:
    cell = {"val_cas": 0.8, "teacher_agreement": 0.7, "guidance_scale": 1.0, "step": 500, "broken_fraction": 0.0}
    broken_best = cell | {"val_cas": 0.9, "broken_fraction": 0.4, "checkpoint": "broken"}
    agreeing = cell | {"teacher_agreement": 0.9, "guidance_scale": 2.0, "checkpoint": "agreeing"}
    assert choose([cell, broken_best, agreeing], max_broken_fraction=0.1)["checkpoint"] == "agreeing"
    # when every cell is broken beyond the tolerance, the least broken ones compete (the shard checks then decide)
    worse = broken_best | {"broken_fraction": 0.6, "val_cas": 0.95, "checkpoint": "worse"}
    assert choose([broken_best, worse], max_broken_fraction=0.1)["checkpoint"] == "broken"
    # an agreement floor sets aside a cell whose val CAS is high by chance; with none above it, the most agreeing
    lucky = cell | {"val_cas": 0.95, "teacher_agreement": 0.6, "checkpoint": "lucky"}
    assert choose([lucky, agreeing], min_teacher_agreement=0.85)["checkpoint"] == "agreeing"
    assert choose([lucky, cell | {"checkpoint": "cell"}], min_teacher_agreement=0.85)["checkpoint"] == "cell"


def test_val_cas_within_its_noise_is_decided_by_frechet_distance() -> None:
    """The PneumoniaMNIST laptop grid (524 val images): val CAS preferred guidance 3 by 2 points, within noise."""

    def cell(w: float, cas: float, agree: float, fd: float) -> dict:
        return {"checkpoint": f"w{w}", "step": 500, "guidance_scale": w, "val_cas": cas, "teacher_agreement": agree,
                "broken_fraction": 0.0, "frechet_distance": fd}  # fmt: skip

    grid = [cell(1.0, 0.742, 0.914, 3.2), cell(2.0, 0.761, 1.0, 41.0), cell(3.0, 0.763, 1.0, 84.6)]
    assert choose(grid, 0.1, 0.85, n_val=524)["guidance_scale"] == 1.0
    # without the interval only equal val CAS ties; a clear val CAS lead wins whatever the FD
    assert choose(grid, 0.1, 0.85)["guidance_scale"] == 3.0
    assert choose([cell(1.0, 0.60, 0.9, 3.0), cell(3.0, 0.76, 0.9, 80.0)], 0.1, 0.85, n_val=524)["guidance_scale"] == 3


def test_all_black_shard_fails_its_checks(tmp_path: Path) -> None:
    """A run whose regenerated images were all black passed every shard check before the envelope existed."""
    rng = np.random.default_rng(0)
    real = rng.integers(40, 220, (200, 3, 28, 28), dtype=np.uint8)
    env = fit_envelope(real)
    black = np.zeros((50, 3, 28, 28), np.uint8)
    msg = shard_fails(write_shard(tmp_path / "s.npz", images=black), tmp_path / "docs", envelope=env)
    assert "images: 50 of 50 samples (100%) are broken" in msg
    assert "validation.max_broken_fraction=0.1" in msg
    # within the tolerance: 4 broken samples of 50 (8%) pass, and without an envelope nothing is judged
    mixed = rng.integers(40, 220, (50, 3, 28, 28), dtype=np.uint8)
    mixed[:4] = 0
    ok = validate_shard(write_shard(tmp_path / "m.npz", images=mixed), 5, CFG, tmp_path / "ok", envelope=env)
    assert ok["passed"], ok["failures"]
    strict = ValidationConfig(max_shared_fraction=0.0, max_broken_fraction=0.0)
    assert "4 of 50 samples" in shard_fails(tmp_path / "m.npz", tmp_path / "strict", strict, envelope=env)


def test_an_envelope_survives_its_json_form() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 1, 28, 28), dtype=np.uint8)
    env = fit_envelope(x)
    again = Envelope.from_dict(json.loads(json.dumps(env.to_dict())))
    assert again == env and (again.broken(x) == env.broken(x)).all()
