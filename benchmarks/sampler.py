"""Sampler benchmark: images/s and fidelity of the project's sampler against the loop a user would write.

For one trained generator checkpoint and its teacher, draws the same class-balanced label set with each variant
and prints, side by side: images/s, achieved GFLOP/s (UNet forwards counted by torch) as a fraction of the bf16
and fp32 matmul peaks measured in the same run, teacher agreement, broken share and Frechet distance
(`kr.method.fidelity`). The baseline is diffusers' DDIM at 50 steps in fp32, eager, with guidance as two forward passes.

    .venv/bin/python benchmarks/sampler.py --run runs/breastmnist-laptop-...     # a finished `kr run` folder
    .venv/bin/python benchmarks/sampler.py --generator DIR --teacher teacher.pt --dataset breastmnist \\
        --data-root ../shared/data/medmnist

With --run, the generator, chosen checkpoint, teacher and dataset are the run's own.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from common import stamp, write_json
from diffusers import DDIMScheduler
from hardware import count_gflop, peaks
from rich.console import Console
from rich.table import Table

from kr.config import SamplerConfig
from kr.data import load_dataset
from kr.method.classifier import load_classifier
from kr.method.fidelity import fidelity, real_reference
from kr.method.generator import balanced_labels, list_checkpoints, load_generator, sample, sampling_scheduler
from kr.runtime import configure_threads, device, to_uint8


@torch.no_grad()
def naive_ddim(unet, gen_dir: Path, labels: np.ndarray, scale: float, steps: int, seed: int) -> np.ndarray:
    """What a user writes from diffusers' docs: DDIM from the training schedule's config (so its "leading" step
    spacing and `clip_sample`), fp32, eager, guidance as two separate forward passes."""
    scheduler = DDIMScheduler.from_pretrained(gen_dir / "scheduler")
    n_classes = unet.config.num_class_embeds - 1
    size, ch = unet.config.sample_size, unet.config.in_channels
    out = []
    for b, start in enumerate(range(0, len(labels), 64)):
        y = torch.as_tensor(labels[start : start + 64]).long().to(device())
        x = torch.randn((len(y), ch, size, size), generator=torch.Generator().manual_seed(seed + b)).to(device())
        scheduler.set_timesteps(steps)
        for t in scheduler.timesteps:
            eps = unet(x, t, class_labels=y).sample
            if scale != 1.0:
                eps_u = unet(x, t, class_labels=torch.full_like(y, n_classes)).sample
                eps = eps_u + scale * (eps - eps_u)
            x = scheduler.step(eps, t, x).prev_sample
        out.append(to_uint8(x))
    return np.concatenate(out)


def forward_gflop(unet, batch: int) -> float:
    size, ch = unet.config.sample_size, unet.config.in_channels
    x = torch.randn(batch, ch, size, size, device=device())
    y = torch.zeros(batch, dtype=torch.long, device=device())
    with torch.no_grad():
        return count_gflop(lambda: unet(x, 10, class_labels=y))


def variants(args: argparse.Namespace) -> list[tuple[str, dict | None]]:
    """(name, SamplerConfig fields or None for the naive DDIM loop)."""
    out: list[tuple[str, dict | None]] = [("naive DDIM-50 fp32", None)]
    for steps in args.steps:
        out.append((f"dpm++ {steps} bf16", {"steps": steps, "bf16": "auto", "compile": False}))
    out.append((f"dpm++ {args.steps[-1]} fp32", {"steps": args.steps[-1], "bf16": False}))
    out.append((f"dpm++ {args.steps[-1]} no clip", {"steps": args.steps[-1], "clip_denoised": False}))
    out.append((f"ddim {args.steps[-1]} bf16", {"steps": args.steps[-1], "scheduler": "ddim"}))
    if args.compile:  # the first batch pays the compile time, as in a regeneration task
        out.append((f"dpm++ {args.steps[-1]} bf16 compiled", {"steps": args.steps[-1], "compile": True}))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="breastmnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--run", type=Path, help="a finished `kr run` folder: its generator, checkpoint and teacher")
    p.add_argument("--generator", type=Path, help="a generator folder (spec.json, scheduler/, checkpoints/)")
    p.add_argument("--checkpoint", help="checkpoint name, e.g. step-000500 (default: the latest)")
    p.add_argument("--teacher", type=Path)
    p.add_argument("--guidance-scale", type=float, default=1.0)
    p.add_argument("--steps", type=int, nargs="+", default=[6, 10], help="DPM-Solver++ step counts to compare")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--per-class", type=int, default=128)
    p.add_argument("--compile", action="store_true", help="add a torch.compile variant (minutes to compile on CPU)")
    p.add_argument("--out", default="runs/benchmarks/sampler")
    args = p.parse_args()
    configure_threads()
    if args.run:
        summary = json.loads((args.run / "summary.json").read_text())
        gen_dir, teacher_path = Path(summary["artifacts"]["generator"]), Path(summary["artifacts"]["teacher"])
        args.checkpoint = args.checkpoint or summary["generator"]["checkpoint"]
        args.dataset, args.data_root = summary["config"]["data"]["dataset"], summary["config"]["data"]["data_root"]
    elif args.generator and args.teacher:
        gen_dir, teacher_path = args.generator, args.teacher
    else:
        raise SystemExit("give --run RUN_DIR, or --generator DIR and --teacher FILE")
    ckpts = {c.name: c for c in list_checkpoints(gen_dir)}
    if not ckpts:
        raise SystemExit(f"no generator checkpoints under {gen_dir}")
    ckpt = ckpts[args.checkpoint] if args.checkpoint else list(ckpts.values())[-1]
    data = load_dataset(args.dataset, args.data_root)
    teacher = load_classifier(teacher_path)
    ref = real_reference(teacher, data.x_train, data.x_val, data.y_val)
    unet = load_generator(ckpt.path)
    labels = balanced_labels(args.per_class * data.info.n_classes, data.info.n_classes)
    guided = 2 if args.guidance_scale != 1.0 else 1
    gflop_fwd = forward_gflop(unet, args.batch_size) / args.batch_size
    peak = peaks()
    rows = []
    for name, fields in variants(args):
        t0 = time.perf_counter()
        if fields is None:
            steps = 50
            images = naive_ddim(unet, gen_dir, labels, args.guidance_scale, steps, seed=7)
        else:
            cfg = SamplerConfig(batch_size=args.batch_size, **fields)
            steps = cfg.steps
            images = sample(unet, sampling_scheduler(gen_dir, cfg), labels, args.guidance_scale, cfg, 7, name)
        seconds = time.perf_counter() - t0
        fid = fidelity(teacher, ref, images, labels)
        gflops = len(images) * steps * guided * gflop_fwd / seconds
        rows.append(
            {
                "variant": name,
                "steps": steps,
                "images_per_s": len(images) / seconds,
                "gflops": gflops,
                "frac_bf16_peak": gflops / peak["bf16"],
                "frac_fp32_peak": gflops / peak["fp32"],
                **{k: v for k, v in fid.items() if k != "per_class"},
            }
        )
    base = rows[0]["images_per_s"]
    t = Table(title=f"Sampler, {args.dataset} {ckpt.name}, w={args.guidance_scale:g}, {len(labels)} images "
                    f"(peak bf16 {peak['bf16']:.0f}, fp32 {peak['fp32']:.0f} GFLOP/s)")  # fmt: skip
    for c in ("variant", "img/s", "x naive", "GFLOP/s", "% bf16 peak", "% fp32 peak", "agreement", "broken", "FD"):
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(
            r["variant"],
            f"{r['images_per_s']:.1f}",
            f"{r['images_per_s'] / base:.1f}",
            f"{r['gflops']:.0f}",
            f"{100 * r['frac_bf16_peak']:.0f}",
            f"{100 * r['frac_fp32_peak']:.0f}",
            f"{r['teacher_agreement']:.3f}",
            f"{r['broken_fraction']:.3f}",
            f"{r['frechet_distance']:.2f}",
        )
    Console(width=160).print(t)
    write_json(
        Path(args.out) / f"sampler-{args.dataset}-{stamp()}.json",
        {"dataset": args.dataset, "generator": str(gen_dir), "checkpoint": ckpt.name, "peak_gflops": peak,
         "gflop_per_forward_image": gflop_fwd, "guidance_scale": args.guidance_scale, "rows": rows},
    )  # fmt: skip


if __name__ == "__main__":
    main()
