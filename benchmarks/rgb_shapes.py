"""A generated RGB multi-class file in MedMNIST layout whose classes differ visibly, to measure fidelity on RGB.

Four classes, each a different colour, shape and texture on a smooth noisy background, at a random position and
size: 0 a red disc, 1 a green square, 2 blue horizontal stripes, 3 a yellow ring. A generator that learned the
classes draws them recognisably, so teacher agreement and the sample grid say whether the RGB path works.

    .venv/bin/python benchmarks/rgb_shapes.py --out runs/data/rgbshapes.npz [--n-train 1200]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SIZE = 28
COLOURS = np.array([[220, 60, 50], [60, 200, 80], [60, 90, 230], [230, 210, 60]], dtype=np.float64)


def _masks(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """float (N, 28, 28) in [0, 1]: where each image's shape lies."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    n = len(labels)
    cy, cx = rng.uniform(9, 19, n), rng.uniform(9, 19, n)
    r = rng.uniform(5, 8, n)
    dy, dx = yy - cy[:, None, None], xx - cx[:, None, None]
    dist = np.sqrt(dy**2 + dx**2)
    rr = r[:, None, None]
    disc = np.clip(rr - dist + 0.5, 0, 1)
    square = np.clip(rr - np.maximum(np.abs(dy), np.abs(dx)) + 0.5, 0, 1)
    stripes = (np.sin(yy[None] * 2 * np.pi / rng.uniform(4, 6, n)[:, None, None]) > 0) * np.clip(
        rr + 3 - np.maximum(np.abs(dy), np.abs(dx)), 0, 1
    )
    ring = np.clip(1.6 - np.abs(dist - rr), 0, 1)
    kinds = np.stack([disc, square, stripes, ring], axis=1)
    return kinds[np.arange(n), labels]


def make_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 (N, 3, 28, 28) images of the given int labels (0-3)."""
    n = len(labels)
    background = 40 + rng.normal(0, 6, (n, 3, 1, 1)) + rng.normal(0, 10, (n, 3, SIZE, SIZE))
    colour = COLOURS[labels] + rng.normal(0, 15, (n, 3))
    mask = _masks(labels, rng)[:, None]
    img = background * (1 - mask) + colour[:, :, None, None] * mask
    return np.clip(img, 0, 255).astype(np.uint8)


def write(path: Path, n_train: int, n_val: int, n_test: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        labels = rng.permutation(np.arange(n) % len(COLOURS))
        arrays[f"{split}_images"] = make_images(labels, rng).transpose(0, 2, 3, 1)  # MedMNIST layout: N, H, W, C
        arrays[f"{split}_labels"] = labels[:, None].astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/data/rgbshapes.npz"))
    p.add_argument("--n-train", type=int, default=1200)
    p.add_argument("--n-val", type=int, default=200)
    p.add_argument("--n-test", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(write(a.out, a.n_train, a.n_val, a.n_test, a.seed))


if __name__ == "__main__":
    main()
