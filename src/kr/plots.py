"""Pictures worth looking at: real vs synthetic samples per class, and the checkpoint/guidance grid."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: pipeline pods and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _tile(images: np.ndarray, n: int) -> np.ndarray:
    """n images (C,H,W uint8) side by side as one H x n*W (x3) strip, blank where there are fewer."""
    c, h, w = images.shape[1:] if len(images) else (1, 28, 28)
    strip = np.full((h, n * (w + 1), c), 255, np.uint8)
    for i, img in enumerate(images[:n]):
        strip[:, i * (w + 1) : i * (w + 1) + w] = img.transpose(1, 2, 0)
    return strip if c == 3 else strip[..., 0]


def sample_grid(
    real: tuple[np.ndarray, np.ndarray] | None,
    syn_x: np.ndarray,
    syn_y: np.ndarray,
    class_names: list[str],
    path: Path,
    per_class: int = 8,
    title: str = "",
) -> Path:
    """One row per class: synthetic images, with real training images on their left when `real` is given.

    real: (uint8 images (N, C, H, W), int labels (N,)) or None; syn_x: uint8 (M, C, H, W) with C 1 or 3; syn_y: int
    (M,); up to `per_class` images of each class and side. Writes a PNG at `path` (parents created), returns it.
    """
    n_classes = len(class_names)
    sides = ([(*real, "real")] if real is not None else []) + [(syn_x, syn_y, "synthetic")]
    width = len(sides) * per_class * 0.45 + 1.5
    fig, axes = plt.subplots(n_classes, len(sides), figsize=(width, n_classes * 0.6 + 0.8), squeeze=False)
    for c in range(n_classes):
        for col, (x, y, label) in enumerate(sides):
            ax = axes[c, col]
            ax.imshow(_tile(x[y == c], per_class), cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_title(label, fontsize=9)
            if col == 0:
                ax.set_ylabel(_short(class_names[c]), rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def selection_heatmap(grid: list[dict], chosen: dict, path: Path) -> Path:
    """Validation CAS (colour) for every (checkpoint, guidance scale) cell, with its teacher agreement and broken
    share written in the cell; the chosen cell is outlined.

    grid: the rows of `select_generator`'s "selection"; chosen: a dict with its "checkpoint" and "guidance_scale"
    (ValueError when the grid has no such cell). Writes a PNG at `path` (parents created) and returns the path.
    """
    ckpts = sorted({g["checkpoint"] for g in grid})
    scales = sorted({g["guidance_scale"] for g in grid})
    values = np.full((len(ckpts), len(scales)), np.nan)
    notes = np.full((len(ckpts), len(scales)), "", dtype=object)
    for g in grid:
        i, j = ckpts.index(g["checkpoint"]), scales.index(g["guidance_scale"])
        values[i, j] = g["val_cas"]
        notes[i, j] = f"CAS {g['val_cas']:.3f}\nagree {g['teacher_agreement']:.2f}"
        if g.get("broken_fraction") is not None:
            notes[i, j] += f"\nbroken {g['broken_fraction']:.0%}"
    fig, ax = plt.subplots(figsize=(1.6 * len(scales) + 2.5, 0.9 * len(ckpts) + 1.6))
    im = ax.imshow(values, cmap="viridis", aspect="auto")
    for i in range(len(ckpts)):
        for j in range(len(scales)):
            ax.text(j, i, notes[i, j], ha="center", va="center", color="w", fontsize=8)
    ax.add_patch(
        plt.Rectangle(
            (scales.index(chosen["guidance_scale"]) - 0.5, ckpts.index(chosen["checkpoint"]) - 0.5),
            1,
            1,
            fill=False,
            edgecolor="red",
            linewidth=2,
        )
    )
    ax.set_xticks(range(len(scales)), [f"w={s:g}" for s in scales])
    ax.set_yticks(range(len(ckpts)), ckpts)
    ax.set_title("validation CAS and fidelity by checkpoint and guidance scale", fontsize=10)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return _save(fig, path)


def roc_plot(
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], path: Path, min_fpr: dict[str, float] | None = None
) -> Path:
    """Log-log ROC of every attack (colour) on every model (line style); the diagonal is a guessing attacker.

    curves: {model: {attack: (fpr, tpr)}} as `kr.privacy.mia.roc` returns them; rates below 1e-4 are drawn at
    1e-4. min_fpr: {what: smallest measurable FPR}, drawn as dotted verticals: left of one, its curves say
    nothing. Writes a PNG at `path` (parents created) and returns the path.
    """
    styles = ["-", "--", ":", "-."]
    fig, ax = plt.subplots(figsize=(6.2, 5.2))
    attacks = sorted({a for per_model in curves.values() for a in per_model})
    colours = dict(zip(attacks, plt.cm.tab10.colors, strict=False))
    for m, (model, per_attack) in enumerate(curves.items()):
        for attack, (fpr, tpr) in per_attack.items():
            ax.plot(
                np.maximum(fpr, 1e-4),
                np.maximum(tpr, 1e-4),
                styles[m % len(styles)],
                color=colours[attack],
                label=f"{model}: {attack}",
                linewidth=1.3,
            )
    grid = np.logspace(-4, 0, 50)
    ax.plot(grid, grid, color="grey", linewidth=0.8, label="chance")
    for (what, fpr), style in zip((min_fpr or {}).items(), [":", (0, (1, 4)), "-."], strict=False):
        ax.axvline(fpr, color="black", linestyle=style, linewidth=0.9, label=f"smallest measurable FPR: {what}")
    ax.set(
        xscale="log",
        yscale="log",
        xlim=(1e-3, 1),
        ylim=(1e-3, 1),
        xlabel="false positive rate",
        ylabel="true positive rate",
        title="membership inference ROC (log-log)",
    )
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    return _save(fig, path)


def _short(name: str, n: int = 28) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
