"""Models sized per image resolution (MedMNIST+ 28/64/128/224): the classifier's stem and the UNet's levels."""

from __future__ import annotations

import pytest
import torch

from kr.config import ClassifierConfig, GeneratorConfig
from kr.method.classifier import build_classifier, load_classifier, save_classifier, stem_downsamples
from kr.method.generator import build_unet, unet_levels


@pytest.mark.parametrize(("size", "downsamples", "stage_px"), [(28, 0, 28), (64, 1, 32), (128, 2, 32), (224, 3, 28)])
def test_the_classifier_stem_brings_every_size_to_about_28_pixels(size: int, downsamples: int, stage_px: int) -> None:
    model = build_classifier(ClassifierConfig(width=4, blocks_per_stage=1), 3, 5, size, seed=0)
    assert stem_downsamples(size) == downsamples and model.arch["downsamples"] == downsamples
    x = torch.zeros(2, 3, size, size)
    assert model.stem(x).shape[-1] == stage_px
    assert model(x).shape == (2, 5)


def test_a_sized_classifier_reloads_with_its_stem(tmp_path) -> None:
    model = build_classifier(ClassifierConfig(width=4, blocks_per_stage=1), 1, 2, 64, seed=0).eval()
    x = torch.rand(3, 1, 64, 64) * 2 - 1
    again = load_classifier(save_classifier(model, tmp_path / "m.pt")).cpu()
    assert again.arch["downsamples"] == 1
    assert torch.allclose(model(x), again(x))


@pytest.mark.parametrize(("size", "n_levels", "bottom_px"), [(28, 3, 7), (64, 4, 8), (128, 5, 8), (224, 6, 7)])
def test_the_unet_grows_a_level_per_doubling(size: int, n_levels: int, bottom_px: int) -> None:
    cfg = GeneratorConfig(block_out_channels=[16, 32, 32], attention_levels=[False, False, True], norm_num_groups=8)
    levels = unet_levels(cfg, size)
    assert len(levels) == n_levels and size // 2 ** (n_levels - 1) == bottom_px
    # the configured levels (and their attention) stay at the bottom; added ones are cheap and attention-free
    assert levels[-3:] == [(16, False), (32, False), (32, True)]
    assert all(level == (16, False) for level in levels[:-3])


def test_the_unet_denoises_64_pixel_images() -> None:
    cfg = GeneratorConfig(block_out_channels=[16, 32, 32], attention_levels=[False, False, True], norm_num_groups=8)
    unet = build_unet(cfg, channels=1, n_classes=2, image_size=64)
    x = torch.zeros(2, 1, 64, 64)
    out = unet(x, torch.tensor([10, 500]), class_labels=torch.tensor([0, 2])).sample
    assert out.shape == x.shape


def test_a_size_the_levels_cannot_halve_is_refused() -> None:
    cfg = GeneratorConfig(block_out_channels=[16, 32, 32], attention_levels=[False, False, True], norm_num_groups=8)
    with pytest.raises(ValueError, match="cannot pass 3 halvings"):
        unet_levels(cfg, 60)


@pytest.mark.parametrize("size", [28, 64, 128])
def test_augmentation_shifts_every_size_by_the_same_fraction(size: int) -> None:
    from kr.method.classifier import augment

    x = torch.arange(size, dtype=torch.float32).expand(8, 1, size, size).contiguous()  # columns numbered 0..S-1
    out = augment(x, torch.Generator().manual_seed(0), hflip=False)
    assert out.shape == x.shape
    # a shift by d moves column j to j - d (reflected at the border): the largest shift scales with the side
    shifts = (out[:, 0, 0, size // 2] - size // 2).abs()
    assert shifts.max() <= max(2, round(2 * size / 28))
