"""Synthetic MedMNIST-layout .npz files for tests."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SIZE = 28


def _images(labels: np.ndarray, channels: int, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Noisy images with a bright blob whose position (and RGB tint) depends on the class."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    angles = 2 * np.pi * labels / n_classes
    cy = SIZE / 2 + 8 * np.sin(angles) + rng.normal(0, 1.0, len(labels))
    cx = SIZE / 2 + 8 * np.cos(angles) + rng.normal(0, 1.0, len(labels))
    blob = np.exp(-((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2) / (2 * 3.0**2))
    base = 40 + 170 * blob + rng.normal(0, 12, (len(labels), SIZE, SIZE))
    if channels == 1:
        return np.clip(base, 0, 255).astype(np.uint8)
    # per-class tint so colour also carries signal
    tint = 0.6 + 0.4 * np.stack([np.cos(angles + k * 2 * np.pi / 3) ** 2 for k in range(3)], axis=-1)
    rgb = base[..., None] * tint[:, None, None, :]
    return np.clip(rgb, 0, 255).astype(np.uint8)


# The real MedMNIST files live in ../shared/data/medmnist beside the repository (KR_TEST_DATA_ROOT overrides).
REAL_ROOT = Path(
    os.environ.get("KR_TEST_DATA_ROOT") or Path(__file__).resolve().parents[1].parent / "shared" / "data" / "medmnist"
)
needs_real = pytest.mark.skipif(
    not (REAL_ROOT / "breastmnist.npz").is_file(), reason=f"real MedMNIST files not found in {REAL_ROOT}"
)


def make_arrays(
    n_train: int = 60, n_val: int = 20, n_test: int = 20, channels: int = 3, n_classes: int = 5, seed: int = 0
) -> dict[str, np.ndarray]:
    """MedMNIST-layout arrays; every class appears in every split (needs n >= n_classes per split)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        labels = rng.permutation(np.arange(n) % n_classes)
        arrays[f"{split}_images"] = _images(labels, channels, n_classes, rng)
        arrays[f"{split}_labels"] = labels.astype(np.uint8).reshape(-1, 1)
    return arrays


_MAKE_ARGS = set(inspect.signature(make_arrays).parameters)


def write_npz(path: str | Path, **overrides) -> Path:
    """Write make_arrays(...) to path; make_arrays kwargs pass through, other kwargs replace keys (None drops)."""
    arrays = make_arrays(**{k: v for k, v in overrides.items() if k in _MAKE_ARGS})
    for key, value in overrides.items():
        if key in _MAKE_ARGS:
            continue
        if value is None:
            arrays.pop(key, None)
        else:
            arrays[key] = value
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # a file object stops np.savez from appending '.npz'
        np.savez(f, **arrays)
    return path


def kr(*args: str, timeout: int = 900, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The real `kr` command in its own process, as a user runs it (`env` adds to the current environment)."""
    return subprocess.run(
        [sys.executable, "-m", "kr.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def git(*args: str, cwd: Path) -> str:
    """`git ARGS` in `cwd` with a throwaway identity and no signing; its stdout, stripped. Raises CalledProcessError."""
    identity = ["-c", "user.name=kr test", "-c", "user.email=kr@test.invalid", "-c", "commit.gpgsign=false"]
    return subprocess.run(["git", *identity, *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
