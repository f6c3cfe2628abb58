"""Class-conditional diffusion generator: training with EMA and resumable checkpoints, and guided sampling.

Layout of a generator folder:
    spec.json                      what was trained (config digest, classes, channels): resuming checks it
    scheduler/                     the DDPM noise schedule used in training (diffusers format)
    checkpoints/step-000500/ema/   EMA UNet weights (diffusers format), kept for checkpoint selection
    checkpoints/step-000500/state.pt  optimiser, LR schedule, EMA and raw weights: only on the latest
Checkpoints are written to a temporary folder and renamed, so a kill never leaves a half checkpoint behind.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel, compute_snr

from kr.config import GeneratorConfig, SamplerConfig
from kr.progress import bar
from kr.runtime import autocast, device, maybe_compile, to_uint8, to_unit

log = logging.getLogger(__name__)


class GeneratorError(RuntimeError):
    """A generator folder that cannot be used: trained with other settings, or without the weights asked for."""

    pass


def build_unet(cfg: GeneratorConfig, channels: int, n_classes: int, image_size: int = 28) -> UNet2DModel:
    """An untrained class-conditional diffusers UNet2DModel for (channels, image_size, image_size) images.

    It embeds n_classes + 1 class indices: index n_classes is the "no label" token of classifier-free guidance
    (Ho & Salimans 2021). Called as unet(x float (N, C, S, S), t, class_labels=int64 (N,)).sample -> float (N, C,
    S, S): the noise or the velocity, as cfg.prediction_type says.
    """
    levels = list(zip(cfg.block_out_channels, cfg.attention_levels, strict=True))
    return UNet2DModel(
        sample_size=image_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(cfg.block_out_channels),
        down_block_types=tuple("AttnDownBlock2D" if attn else "DownBlock2D" for _, attn in levels),
        up_block_types=tuple("AttnUpBlock2D" if attn else "UpBlock2D" for _, attn in reversed(levels)),
        layers_per_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups,
        attention_head_dim=min(32, cfg.block_out_channels[-1]),
        add_attention=cfg.attention_levels[-1],
        # one extra class index is the "no label" token that label dropout trains for guidance
        num_class_embeds=n_classes + 1,
    )


def build_noise_scheduler(cfg: GeneratorConfig) -> DDPMScheduler:
    """The DDPM training schedule: cfg.num_train_timesteps steps, cfg.beta_schedule, and cfg.prediction_type
    (epsilon, or v-prediction as in Salimans & Ho 2022)."""
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type=cfg.prediction_type,
    )


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint: `step` optimiser steps done, its folder `path` (checkpoints/step-NNNNNN)."""

    step: int
    path: Path

    @property
    def name(self) -> str:
        """The folder name, e.g. "step-000500"."""
        return self.path.name


def list_checkpoints(gen_dir: Path) -> list[Checkpoint]:
    """Complete checkpoints (an ema/ folder, not a .tmp leftover) under gen_dir/checkpoints, by step ascending;
    [] when there is none."""
    root = Path(gen_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [
        Checkpoint(int(p.name.split("-")[1]), p)
        for p in root.glob("step-*")
        if p.is_dir() and not p.name.endswith(".tmp") and (p / "ema").is_dir()
    ]
    return sorted(found, key=lambda c: c.step)


def _spec(cfg: GeneratorConfig, channels: int, n_classes: int, seed: int) -> dict:
    # train_steps and checkpoint cadence may grow on resume; everything that shapes the model may not
    shaping = cfg.model_dump(exclude={"train_steps", "checkpoint_every", "keep_checkpoints", "compile"})
    return {"config": shaping, "channels": channels, "n_classes": n_classes, "seed": seed}


def _check_spec(gen_dir: Path, spec: dict) -> None:
    path = gen_dir / "spec.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != spec:
            diff = sorted(
                k for k in set(old["config"]) | set(spec["config"]) if old["config"].get(k) != spec["config"].get(k)
            )
            extra = [k for k in ("channels", "n_classes", "seed") if old.get(k) != spec.get(k)]
            raise GeneratorError(
                f"{gen_dir} holds a generator trained with other settings ({', '.join(diff + extra)}); "
                "use a new output folder or the same settings to resume"
            )
    else:
        gen_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(spec, indent=2))


def _batch(
    x_train: np.ndarray,
    y_train: np.ndarray,
    cfg: GeneratorConfig,
    n_classes: int,
    sched: DDPMScheduler,
    gen: torch.Generator,
) -> tuple[torch.Tensor, ...]:
    idx = torch.randint(0, len(x_train), (cfg.batch_size,), generator=gen).numpy()
    x = to_unit(x_train[idx])
    if cfg.hflip:
        flip = torch.rand(len(idx), generator=gen) < 0.5
        x[flip] = x[flip].flip(-1)
    labels = torch.as_tensor(y_train[idx]).long()
    drop = torch.rand(len(idx), generator=gen) < cfg.label_dropout
    labels = torch.where(drop, torch.full_like(labels, n_classes), labels)
    noise = torch.randn(x.shape, generator=gen)
    t = torch.randint(0, sched.config.num_train_timesteps, (len(idx),), generator=gen)
    noisy = sched.add_noise(x, noise, t)
    target = noise if cfg.prediction_type == "epsilon" else sched.get_velocity(x, noise, t)
    return noisy, t, labels, target


def train_generator(
    x_train: np.ndarray,
    y_train: np.ndarray,
    n_classes: int,
    cfg: GeneratorConfig,
    out_dir: Path,
    seed: int,
    stop_after: int | None = None,
) -> dict:
    """Train (or resume) the generator in `out_dir`. `stop_after` ends early after that many steps (tests).

    x_train: uint8 (N, C, H, H); y_train: int (N,) in [0, n_classes). Each step draws cfg.batch_size images with
    replacement, replaces a cfg.label_dropout share of labels by the "no label" token (for classifier-free
    guidance, Ho & Salimans 2021) and regresses the epsilon or v target (Salimans & Ho 2022) with MSE, min-SNR-gamma
    weighted when cfg.snr_gamma is set (Hang et al. 2023). Resumes from the latest checkpoint with optimiser state;
    batches depend only on (seed, step), so a resumed run matches an unbroken one.
    Raises GeneratorError when `out_dir/spec.json` records other model-shaping settings, channels, classes or seed.
    Returns {"steps" (reached), "resumed_from", "complete" (bool), "params", "final_loss" (mean of the last 100
    steps, None when no step ran), "loss_curve" ([step, mean loss] per window of up to 50 steps), "train_s"
    (seconds), "checkpoints" (names)}.
    """
    out_dir = Path(out_dir)
    channels = int(x_train.shape[1])
    _check_spec(out_dir, _spec(cfg, channels, n_classes, seed))
    dev = device()
    torch.manual_seed(seed)  # the initial weights are part of the run's reproducibility
    unet = build_unet(cfg, channels, n_classes, int(x_train.shape[-1])).to(dev)
    noise_sched = build_noise_scheduler(cfg)
    noise_sched.save_pretrained(out_dir / "scheduler")
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    lr_sched = get_scheduler("cosine", opt, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.train_steps)
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, power=2 / 3)
    start = _resume(out_dir, unet, opt, lr_sched, ema)
    net = maybe_compile(unet, cfg.compile, dev)  # weights are shared: checkpoints save `unet` itself
    n_params = sum(p.numel() for p in unet.parameters())
    losses: list[float] = []
    t0 = time.perf_counter()
    end = cfg.train_steps if stop_after is None else min(cfg.train_steps, start + stop_after)
    with bar("generator", total=cfg.train_steps, unit="step", completed=start) as progress:
        if start:
            progress.note(f"resumed at step {start}")
        for step in range(start, end):
            # batches depend only on (seed, step): a resumed run sees exactly the batches of an unbroken one
            gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
            noisy, t, labels, target = (v.to(dev) for v in _batch(x_train, y_train, cfg, n_classes, noise_sched, gen))
            unet.train()
            with autocast(cfg.bf16, dev):
                pred = net(noisy, t, class_labels=labels).sample
            loss = _loss(pred.float(), target, t, noise_sched, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
            lr_sched.step()
            ema.step(unet.parameters())
            losses.append(loss.item())
            done = step + 1
            if done % cfg.checkpoint_every == 0 or done == cfg.train_steps:
                _save_checkpoint(out_dir, done, unet, opt, lr_sched, ema, cfg.keep_checkpoints)
            progress.advance()
            if done % 20 == 0:
                progress.note(f"loss {np.mean(losses[-100:]):.4f}")
    return {
        "steps": end,
        "resumed_from": start,
        "complete": end >= cfg.train_steps,
        "params": n_params,
        "final_loss": float(np.mean(losses[-100:])) if losses else None,
        # the training curve at a readable resolution: mean loss per window of up to 50 steps
        "loss_curve": [
            [start + i + len(losses[i : i + 50]), float(np.mean(losses[i : i + 50]))] for i in range(0, len(losses), 50)
        ],
        "train_s": time.perf_counter() - t0,
        "checkpoints": [c.name for c in list_checkpoints(out_dir)],
    }


def _loss(pred: torch.Tensor, target: torch.Tensor, t: torch.Tensor, sched: DDPMScheduler, cfg: GeneratorConfig):
    """Mean squared error on the prediction target, per-sample weighted by min-SNR-gamma when `cfg.snr_gamma` is set
    (Hang et al. 2023, "Efficient diffusion training via min-SNR weighting strategy", eq. 8 and sec. 3.4 for v)."""
    if cfg.snr_gamma is None:
        return F.mse_loss(pred, target)
    snr = compute_snr(sched, t.cpu()).to(pred.device)
    clipped = torch.clamp(snr, max=cfg.snr_gamma)
    # epsilon targets weigh min(snr, g) / snr; v targets carry an extra (snr + 1) factor, hence min(snr, g) / (snr + 1)
    weight = clipped / snr if cfg.prediction_type == "epsilon" else clipped / (snr + 1)
    per_sample = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * weight).mean()


def _resume(out_dir: Path, unet, opt, lr_sched, ema) -> int:
    with_state = [c for c in list_checkpoints(out_dir) if (c.path / "state.pt").exists()]
    if not with_state:
        return 0
    last = with_state[-1]
    state = torch.load(last.path / "state.pt", map_location="cpu", weights_only=False)
    unet.load_state_dict(state["unet"])
    opt.load_state_dict(state["optimizer"])
    lr_sched.load_state_dict(state["lr_scheduler"])
    ema.load_state_dict(state["ema"])
    log.info("resuming generator training from %s", last.path)
    return int(state["step"])


def _save_checkpoint(out_dir: Path, step: int, unet, opt, lr_sched, ema, keep: int) -> None:
    root = out_dir / "checkpoints"
    final = root / f"step-{step:06d}"
    tmp = root / f"step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    ema_unet = copy.deepcopy(unet)
    ema.copy_to(ema_unet.parameters())
    ema_unet.save_pretrained(tmp / "ema")
    torch.save(
        {
            "step": step,
            "unet": unet.state_dict(),
            "optimizer": opt.state_dict(),
            "lr_scheduler": lr_sched.state_dict(),
            "ema": ema.state_dict(),
        },
        tmp / "state.pt",
    )
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    kept = list_checkpoints(out_dir)
    for old in kept[:-1]:
        (old.path / "state.pt").unlink(missing_ok=True)  # only the newest needs the optimiser to resume
    for old in kept[:-keep]:
        shutil.rmtree(old.path, ignore_errors=True)


def load_generator(checkpoint_dir: Path) -> UNet2DModel:
    """The EMA UNet of a checkpoint folder (`Checkpoint.path`), in eval mode on `kr.runtime.device()`.

    Raises GeneratorError when checkpoint_dir/ema does not exist.
    """
    path = Path(checkpoint_dir) / "ema"
    if not path.is_dir():
        raise GeneratorError(f"no generator weights at {path}")
    unet = UNet2DModel.from_pretrained(path, low_cpu_mem_usage=False)
    unet.eval()
    return unet.to(device())


def sampling_scheduler(gen_dir: Path, cfg: SamplerConfig):
    """The sampling scheduler for a generator trained in `gen_dir`, from its saved training schedule: diffusers'
    DPMSolverMultistepScheduler (DPM-Solver++, Lu et al. 2022, of order cfg.solver_order) or DDIMScheduler.
    diffusers raises OSError when gen_dir/scheduler holds no saved schedule.

    Steps are spaced "trailing" by default, so the first step starts at the last training timestep, where the
    schedule's noise is what sampling starts from. DDPMScheduler's own default, "leading", starts 1000/steps
    timesteps early (t = 900 for 10 steps): the model is asked to denoise pure noise as if it held 2.4% signal
    (cosine schedule), and the samples come out washed out and biased towards grey (Lin et al. 2024, "Common
    diffusion noise schedules and sample steps are flawed", sec. 3.3). Measured on BreastMNIST (v prediction,
    cosine, 10 DPM-Solver++ steps): mean intensity 104 against 86 real, teacher agreement 0.64 with "leading";
    90 and 0.74 with "trailing".

    With `cfg.clip_denoised`, every step's estimate of the clean image is clipped to the data range [-1, 1]
    (DDIM's `clip_sample`; for DPM-Solver++, thresholding with `sample_max_value` 1, which reduces Saharia et al.
    2022's dynamic thresholding to a static clip). Without it, an epsilon-predicting model's clean-image estimate
    at high noise, x0 = (x_t - sigma_t * eps) / alpha_t, amplifies the prediction error by sigma_t / alpha_t (about
    160 at the last step of the linear schedule), and the sampler diverges to saturated or noise tiles.
    """
    train_cfg = DDPMScheduler.from_pretrained(Path(gen_dir) / "scheduler").config
    if cfg.scheduler == "ddim":
        return DDIMScheduler.from_config(
            train_cfg, clip_sample=cfg.clip_denoised, clip_sample_range=1.0, timestep_spacing=cfg.timestep_spacing
        )
    return DPMSolverMultistepScheduler.from_config(
        train_cfg,
        algorithm_type="dpmsolver++",
        solver_order=cfg.solver_order,
        thresholding=cfg.clip_denoised,
        sample_max_value=1.0,
        timestep_spacing=cfg.timestep_spacing,
    )


def balanced_labels(n: int, n_classes: int, offset: int = 0) -> np.ndarray:
    """int64 (n,) labels cycling through the classes from `offset` (label i is (i + offset) mod n_classes), so every
    class gets n / n_classes (+-1) images."""
    return ((np.arange(n) + offset) % n_classes).astype(np.int64)


@torch.no_grad()
def sample(
    unet: UNet2DModel,
    scheduler,
    labels: np.ndarray,
    guidance_scale: float,
    cfg: SamplerConfig,
    seed: int,
    description: str = "sampling",
) -> np.ndarray:
    """Draw one image per label. guidance_scale 1 is plain conditional sampling; otherwise classifier-free
    guidance (Ho & Salimans 2021) against the "no label" token, pred_u + w (pred_c - pred_u) (twice the compute).

    unet: from `load_generator` (on `kr.runtime.device()`); scheduler: from `sampling_scheduler` (its timesteps are
    reset per batch); labels: int (N,) in [0, n_classes). Batch b's starting noise comes from seed * 1_000_003 + b,
    so the images depend on cfg.batch_size too. Returns uint8 (N, C, H, W), H = W = the UNet's sample_size
    (uint8 (0, C, H, W) for no labels).
    """
    dev = device()
    n_classes = unet.config.num_class_embeds - 1
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    net = maybe_compile(unet, cfg.compile, dev)
    out = []
    with bar(description, total=len(labels), unit="img") as progress:
        for b, start in enumerate(range(0, len(labels), cfg.batch_size)):
            y = torch.as_tensor(labels[start : start + cfg.batch_size]).long().to(dev)
            gen = torch.Generator().manual_seed(seed * 1_000_003 + b)
            x = torch.randn((len(y), *shape), generator=gen).to(dev)
            scheduler.set_timesteps(cfg.steps)
            guided = guidance_scale != 1.0
            cond = torch.cat([y, torch.full_like(y, n_classes)]) if guided else y
            for t in scheduler.timesteps:
                inp = torch.cat([x, x]) if guided else x
                with autocast(cfg.bf16, dev):
                    pred = net(inp, t, class_labels=cond).sample.float()  # epsilon or v, as trained
                if guided:  # linear in the model output, so the same formula holds for epsilon and v
                    pred_c, pred_u = pred.chunk(2)
                    pred = pred_u + guidance_scale * (pred_c - pred_u)
                x = scheduler.step(pred, t, x).prev_sample
            out.append(to_uint8(x))
            progress.advance(len(y))
    return np.concatenate(out) if out else np.zeros((0, *shape), np.uint8)
