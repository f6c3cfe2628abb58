"""The compact ResNet-style CNN used as teacher, student, naive baseline and quick CAS scorer.

One training loop serves all of them: targets are hard labels (int) or soft distributions (float rows),
and the data of each epoch comes from a callable, so the student can see a fresh synthetic slice per epoch.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kr.config import ClassifierConfig
from kr.method.metrics import classification_metrics
from kr.progress import bar
from kr.runtime import autocast, device, to_unit

EpochData = Callable[[int], tuple[np.ndarray, np.ndarray]]


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016): two 3x3 conv-BN layers and a residual connection, projected by a 1x1
    conv-BN when the stride or the width changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
            if stride != 1 or c_in != c_out
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float (N, c_in, H, W) -> float (N, c_out, ceil(H / stride), ceil(W / stride))."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.skip(x))


BASE_SIZE = 28  # the side the three stages are laid out for (MedMNIST's original resolution)


def stem_downsamples(image_size: int) -> int:
    """How many stride-2 convolutions the stem adds so that the first stage sees about BASE_SIZE pixels:
    round(log2(image_size / 28)), at least 0. 28 -> 0, 64 -> 1 (32 px), 128 -> 2 (32 px), 224 -> 3 (28 px).
    Keeping the stages' resolution fixed keeps compute and receptive field per stage near the 28-pixel network's,
    the usual ResNet recipe (He et al. 2016, sec. 3.4: a strided stem before the stages)."""
    return max(0, round(math.log2(image_size / BASE_SIZE)))


class SmallResNet(nn.Module):
    """A stem, then three stages at S, S/2 and S/4 pixels (S about 28 whatever the input side); about 0.7 M
    parameters at width 32.

    Input float (N, channels, image_size, image_size) scaled to [-1, 1] (`kr.runtime.to_unit`); output float logits
    (N, n_classes). `downsamples` stride-2 3x3 conv-BN-ReLU layers in the stem bring larger images to about 28
    pixels (`stem_downsamples`). `arch` holds the constructor arguments, saved with the weights so
    `load_classifier` can rebuild the model.
    """

    def __init__(
        self,
        channels: int,
        n_classes: int,
        width: int = 32,
        blocks_per_stage: int = 2,
        dropout: float = 0.1,
        downsamples: int = 0,
    ) -> None:
        super().__init__()
        self.arch = dict(
            channels=channels,
            n_classes=n_classes,
            width=width,
            blocks_per_stage=blocks_per_stage,
            dropout=dropout,
            downsamples=downsamples,
        )
        stem: list[nn.Module] = [nn.Conv2d(channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        for _ in range(downsamples):
            stem += [nn.Conv2d(width, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        self.stem = nn.Sequential(*stem)
        layers, c_in = [], width
        for i, mult in enumerate((1, 2, 4)):
            for j in range(blocks_per_stage):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(BasicBlock(c_in, width * mult, stride))
                c_in = width * mult
        self.stages = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in, n_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float (N, channels, H, W) in [-1, 1] -> float logits (N, n_classes)."""
        return self.head(self.stages(self.stem(x)))


def build_classifier(cfg: ClassifierConfig, channels: int, n_classes: int, image_size: int, seed: int) -> SmallResNet:
    """A fresh, untrained SmallResNet of cfg's width, blocks_per_stage and dropout for image_size-pixel square
    images (its stem sized by `stem_downsamples`), on the CPU.

    Seeds torch's global generator with `seed` first (a side effect), so the initial weights depend on it alone.
    """
    torch.manual_seed(seed)  # initial weights are part of what makes a run reproducible
    return SmallResNet(channels, n_classes, cfg.width, cfg.blocks_per_stage, cfg.dropout, stem_downsamples(image_size))


def augment(x: torch.Tensor, gen: torch.Generator, hflip: bool) -> torch.Tensor:
    """Random shifts of up to 2 pixels per 28 of image side (2 at 28, 5 at 64: the same fraction of the image;
    reflect padding) and optional horizontal flips (p = 0.5), on a whole batch.

    x: float (N, C, H, W) on the CPU (where `gen` draws); returns a new tensor of the same shape; x is unchanged.
    """
    n = x.shape[0]
    h, w = x.shape[-2:]
    pad = max(2, round(2 * h / BASE_SIZE))
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, x.shape[1], h, w + 2 * pad)
    out = torch.gather(padded, 2, rows)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, x.shape[1], h, w)
    out = torch.gather(out, 3, cols)
    if hflip:
        flip = torch.rand(n, generator=gen) < 0.5
        out[flip] = out[flip].flip(-1)
    return out


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """The GKD distillation loss: KL(teacher || student) up to the teacher's entropy (a constant), scaled by T^2 so
    gradients keep their size (Hinton et al. 2015, sec. 2; Lomurno and Matteucci 2025).

    logits: float student logits (N, K); target_probs: float (N, K) rows summing to 1, the teacher's
    softmax(logits / T); returns a scalar: T^2 * mean over rows of -sum_k p_k log softmax(logits / T)_k.
    """
    log_p = F.log_softmax(logits / temperature, dim=1)
    return -(target_probs * log_p).sum(dim=1).mean() * temperature**2


@torch.no_grad()
def predict_logits(
    model: nn.Module, x_uint8: np.ndarray, batch_size: int = 512, bf16: bool | str = "auto"
) -> np.ndarray:
    """Logits of uint8 (N, C, H, W) images -> float32 numpy (N, K); float32 (0, 0) for no images.

    `model` must already be on `kr.runtime.device()`; it is put in eval mode (and left there).
    """
    model.eval()
    dev = device()
    outs = []
    for i in range(0, len(x_uint8), batch_size):
        xb = to_unit(x_uint8[i : i + batch_size]).to(dev)
        with autocast(bf16, dev):
            outs.append(model(xb).float().cpu())
    return torch.cat(outs).numpy() if outs else np.zeros((0, 0), np.float32)


def _score(metrics: dict) -> tuple[float, float]:
    auc = metrics["auc"]
    return (metrics["accuracy"], -1.0 if auc != auc else auc)  # accuracy first, AUC breaks ties


def epochs_run(n_images: int, cfg: ClassifierConfig) -> int:
    """Epochs `fit` trains on n_images per epoch: cfg.epochs, fewer when cfg.max_steps caps the optimiser steps
    (max(1, n_images // batch_size) steps per epoch)."""
    steps_per_epoch = max(1, n_images // cfg.batch_size)
    return cfg.epochs if cfg.max_steps is None else max(1, min(cfg.epochs, -(-cfg.max_steps // steps_per_epoch)))


def fit(
    model: SmallResNet,
    epoch_data: EpochData,
    val: tuple[np.ndarray, np.ndarray] | None,
    cfg: ClassifierConfig,
    seed: int,
    name: str,
    temperature: float = 1.0,
    on_epoch: Callable[[int, dict], None] | None = None,
) -> dict:
    """Train in place (moved to `kr.runtime.device()`); with `val`, keep the weights of the best epoch on it (else
    the last). Returns the training history.

    `epoch_data(e)` gives (uint8 images (N, C, H, W), targets); int targets (N,) are hard labels (cross-entropy with
    cfg.label_smoothing), float (N, K) rows soft labels (`soft_cross_entropy` at `temperature`). Every epoch should
    hold as many images as epoch 0, which sets steps per epoch = max(1, N // cfg.batch_size).
    val: (uint8 images, int labels) scored after every epoch; the best epoch has the highest accuracy, AUC breaking
    ties. AdamW with a one-cycle schedule; cfg.epochs epochs, or fewer when cfg.max_steps caps the steps.
    on_epoch(epoch, record) is called after each epoch with that epoch's history record.
    Returns {"history": [{"epoch", "train_loss", and with val "val_accuracy", "val_auc", "best"}], "best_epoch":
    int, "val": the best epoch's `classification_metrics` (None without val), "train_s": seconds}.
    """
    dev = device()
    model.to(dev)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    first = epoch_data(0)
    steps_per_epoch = max(1, len(first[0]) // cfg.batch_size)
    epochs = epochs_run(len(first[0]), cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=epochs * steps_per_epoch, pct_start=0.15
    )
    best, best_state, history = None, None, []
    t0 = time.perf_counter()
    with bar(name, total=epochs, unit="epoch") as progress:
        for epoch in range(epochs):
            x_np, y_np = first if epoch == 0 else epoch_data(epoch)
            loss_sum, seen = _train_epoch(model, opt, sched, x_np, y_np, cfg, gen, temperature, steps_per_epoch, dev)
            record = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1)}
            history.append(record)
            if val is not None:
                val_metrics = classification_metrics(predict_logits(model, val[0], bf16=cfg.bf16), val[1])
                record.update(val_accuracy=val_metrics["accuracy"], val_auc=val_metrics["auc"])
                if best is None or _score(val_metrics) > _score(best):
                    best, best_state = val_metrics, copy.deepcopy(model.state_dict())
                    record["best"] = True
                progress.note(
                    f"loss {record['train_loss']:.3f} val acc {val_metrics['accuracy']:.3f} "
                    f"(best {best['accuracy']:.3f})"
                )
            if on_epoch:
                on_epoch(epoch, record)
            progress.advance()
    if best_state is not None:
        model.load_state_dict(best_state)
    return {
        "history": history,
        "best_epoch": max((i for i, h in enumerate(history) if h.get("best")), default=len(history) - 1),
        "val": best,
        "train_s": time.perf_counter() - t0,
    }


def _train_epoch(model, opt, sched, x_np, y_np, cfg, gen, temperature, steps, dev) -> tuple[float, int]:
    model.train()
    soft = np.issubdtype(np.asarray(y_np).dtype, np.floating)
    perm = torch.randperm(len(x_np), generator=gen).numpy()
    loss_sum, seen = 0.0, 0
    for s in range(steps):  # drop the ragged last batch: BatchNorm on a batch of 1 fails
        idx = np.sort(perm[s * cfg.batch_size : (s + 1) * cfg.batch_size])
        xb = to_unit(x_np[idx])
        if cfg.augment:
            xb = augment(xb, gen, cfg.hflip)
        yb = torch.as_tensor(y_np[idx])
        xb, yb = xb.to(dev), yb.to(dev)
        with autocast(cfg.bf16, dev):
            logits = model(xb).float()
        if soft:
            loss = soft_cross_entropy(logits, yb.float(), temperature)
        else:
            loss = F.cross_entropy(logits, yb.long(), label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_sum += loss.item() * len(idx)
        seen += len(idx)
    return loss_sum, seen


def save_classifier(model: SmallResNet, path: Path, extra: dict | None = None) -> Path:
    """Write {"arch", "state_dict", "extra"} to `path` (parents created) atomically and durably; returns the path.

    `extra` must hold plain values (str, numbers, lists, dicts): `load_classifier` reads with weights_only=True.
    Raises OSError when the write fails (e.g. ENOSPC); a file already at `path` is then left as it was.
    """
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save({"arch": model.arch, "state_dict": model.state_dict(), "extra": extra or {}}, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename, or a power cut could leave an empty file at `path`
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)  # a crash mid-write never leaves a half model where a good one is expected
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # makes the rename itself durable
    finally:
        os.close(fd)
    return path


def load_classifier(path: Path) -> SmallResNet:
    """The SmallResNet that `save_classifier` wrote, in eval mode on `kr.runtime.device()`.

    torch.load's errors propagate (FileNotFoundError for a missing file).
    """
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    model = SmallResNet(**blob["arch"])
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return model.to(device())
