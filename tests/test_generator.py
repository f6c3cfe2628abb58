"""Generator: shapes, class-balanced guided sampling, and resuming after a killed training run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from datagen import make_arrays

from kr.config import GeneratorConfig, SamplerConfig
from kr.method.generator import (
    GeneratorError,
    balanced_labels,
    list_checkpoints,
    load_generator,
    sample,
    sampling_scheduler,
    train_generator,
)

TINY = dict(
    block_out_channels=[8, 16],
    attention_levels=[False, False],
    norm_num_groups=4,
    batch_size=8,
    warmup_steps=2,
    label_dropout=0.2,
)
MD5 = "0123456789abcdef0123456789abcdef"  # the data file's MD5 that spec.json records


def tiny_data(channels: int = 1, n_classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    a = make_arrays(n_train=30, n_val=6, n_test=6, channels=channels, n_classes=n_classes)
    x = a["train_images"]
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x), a["train_labels"][:, 0].astype(np.int64)


def test_train_then_sample_balanced_rgb(tmp_path: Path) -> None:
    x, y = tiny_data(channels=3, n_classes=5)
    cfg = GeneratorConfig(**TINY, train_steps=6, checkpoint_every=2, keep_checkpoints=3)
    result = train_generator(x, y, 5, cfg, tmp_path, seed=0, dataset_md5=MD5)
    assert result["complete"] and result["steps"] == 6 and result["skipped_checkpoints"] == []
    assert [c.step for c in list_checkpoints(tmp_path)] == [2, 4, 6]
    # the newest two checkpoints keep the optimiser state needed to resume (two, so a damaged newest one has a
    # fallback); older ones keep their EMA weights only
    assert not (tmp_path / "checkpoints/step-000002/state.pt").exists()
    assert (tmp_path / "checkpoints/step-000004/state.pt").exists()
    assert (tmp_path / "checkpoints/step-000006/state.pt").exists()
    unet = load_generator(tmp_path / "checkpoints/step-000006")
    labels = balanced_labels(10, 5)
    sampler = SamplerConfig(steps=3, batch_size=4)
    for scale in (1.0, 2.5):  # plain conditional and classifier-free guidance
        images = sample(unet, sampling_scheduler(tmp_path, sampler), labels, scale, sampler, seed=1)
        assert images.shape == (10, 3, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [2, 2, 2, 2, 2]
    again = sample(unet, sampling_scheduler(tmp_path, sampler), labels, 1.0, sampler, seed=1)
    assert np.array_equal(again, sample(unet, sampling_scheduler(tmp_path, sampler), labels, 1.0, sampler, seed=1))


def test_other_settings_refuse_to_resume(tmp_path: Path) -> None:
    x, y = tiny_data()
    train_generator(x, y, 3, GeneratorConfig(**TINY, train_steps=2, checkpoint_every=2), tmp_path, 0, MD5)
    with pytest.raises(GeneratorError, match="label_dropout"):
        train_generator(x, y, 3, GeneratorConfig(**{**TINY, "label_dropout": 0.5}, train_steps=2), tmp_path, 0, MD5)


TRAIN_SCRIPT = """
import json, sys
import numpy as np
from kr.config import GeneratorConfig
from kr.method.generator import train_generator
x, y = np.load(sys.argv[1])["x"], np.load(sys.argv[1])["y"]
cfg = GeneratorConfig(**json.loads(sys.argv[2]))
print(json.dumps(train_generator(x, y, 3, cfg, sys.argv[3], seed=0, dataset_md5="0" * 32)))
"""


def _train_cmd(data: Path, cfg: dict, out: Path) -> list[str]:
    return [sys.executable, "-c", TRAIN_SCRIPT, str(data), json.dumps(cfg), str(out)]


def test_killed_training_resumes_to_the_same_weights(tmp_path: Path) -> None:
    x, y = tiny_data()
    data = tmp_path / "data.npz"
    np.savez(data, x=x, y=y)
    cfg = {**TINY, "train_steps": 120, "checkpoint_every": 5, "keep_checkpoints": 1}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    proc = subprocess.Popen(
        _train_cmd(data, cfg, tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not list_checkpoints(tmp_path / "killed") and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = list_checkpoints(tmp_path / "killed")[-1].step
    assert 0 < killed_at < 120, "training must be killed part-way for this test to mean anything"

    resumed = subprocess.run(
        _train_cmd(data, cfg, tmp_path / "killed"), env=env, capture_output=True, text=True, check=True
    )
    result = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert result["resumed_from"] >= killed_at and result["complete"]

    straight = subprocess.run(
        _train_cmd(data, cfg, tmp_path / "straight"), env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(straight.stdout.strip().splitlines()[-1])["resumed_from"] == 0
    a = load_generator(tmp_path / "killed/checkpoints/step-000120").state_dict()
    b = load_generator(tmp_path / "straight/checkpoints/step-000120").state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "a resumed run must end with the weights of an unbroken one"


def test_min_snr_weighting_follows_the_paper_for_epsilon_and_v() -> None:
    """Hang et al. 2023: epsilon targets weigh min(SNR, g) / SNR, v targets min(SNR, g) / (SNR + 1)."""
    from diffusers.training_utils import compute_snr

    from kr.method.generator import _loss, build_noise_scheduler

    t = torch.tensor([5, 500, 990])
    pred, target = torch.ones(3, 1, 4, 4), torch.zeros(3, 1, 4, 4)  # per-sample squared error 1
    for prediction_type, extra in (("epsilon", 0.0), ("v_prediction", 1.0)):
        cfg = GeneratorConfig(prediction_type=prediction_type, snr_gamma=5.0)
        sched = build_noise_scheduler(cfg)
        snr = compute_snr(sched, t)
        expected = (torch.clamp(snr, max=5.0) / (snr + extra)).mean()
        assert _loss(pred, target, t, sched, cfg).item() == pytest.approx(expected.item(), rel=1e-5)
        plain = GeneratorConfig(prediction_type=prediction_type, snr_gamma=None)
        assert _loss(pred, target, t, sched, plain).item() == pytest.approx(1.0)


def test_sampler_clips_the_clean_image_estimate_by_default(tmp_path: Path) -> None:
    """Without clipping, an epsilon model's x0 estimate at high noise is amplified ~160x and the samples saturate."""
    from kr.method.generator import build_noise_scheduler

    build_noise_scheduler(GeneratorConfig()).save_pretrained(tmp_path / "scheduler")
    assert SamplerConfig().clip_denoised
    for scheduler, key in (("dpmsolver++", "thresholding"), ("ddim", "clip_sample")):
        on = sampling_scheduler(tmp_path, SamplerConfig(scheduler=scheduler))
        off = sampling_scheduler(tmp_path, SamplerConfig(scheduler=scheduler, clip_denoised=False))
        assert on.config[key] is True and off.config[key] is False
        # steps start at the last training timestep (Lin et al. 2024), not 1000/steps earlier as "leading" does
        on.set_timesteps(10)
        assert on.config["timestep_spacing"] == "trailing" and int(on.timesteps[0]) == 999
