"""Generator training benchmark: speed against the machine's peak, and fidelity reached per minute of training.

Each recipe (a profile plus `KEY=VALUE` overrides) trains the generator from scratch on the real training split;
every checkpoint is then scored at every guidance scale exactly as the pipeline's selection step scores a cell:
validation CAS and fidelity against real val (teacher agreement, broken share, Frechet distance and
precision/recall in the teacher's feature space; see `kr.method.fidelity`). Speed: training steps/s, achieved GFLOP/s
(forward + backward, counted by torch) and its fraction of the bf16 and fp32 matmul peaks measured in the same
run. All recipes run one after the other in this process.

    .venv/bin/python benchmarks/generator_train.py --data-root ../shared/data/medmnist --dataset breastmnist \\
        --recipe baseline --recipe vpred:generator.prediction_type=v_prediction,generator.snr_gamma=5

A recipe is `NAME[:KEY=VALUE,KEY=VALUE...]`; without --recipe, the ablation `ABLATION` runs (one change at a time
from the project's former recipe to today's). The teacher is trained once per dataset and profile, then reused;
recipes with the same generator settings share one training.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from common import stamp, write_json
from hardware import count_gflop, peaks
from rich.console import Console
from rich.table import Table

from kr.config import RunConfig, resolve_config
from kr.data import Dataset, load_dataset
from kr.method.generator import _batch, build_noise_scheduler, build_unet, list_checkpoints, train_generator
from kr.method.selection import select_generator
from kr.method.teacher import train_teacher
from kr.runtime import autocast, configure_threads, device

# The recipe changes one at a time, from the recipe this project had (epsilon prediction on a linear schedule, a
# sampler that neither clipped nor started at the last timestep) to today's defaults. Every key is set, so the
# table does not depend on the profile's own choices.
_OLD = "generator.prediction_type=epsilon,generator.beta_schedule=linear,generator.snr_gamma=null"
ABLATION = [
    f"old:{_OLD},sampler.clip_denoised=false,sampler.timestep_spacing=leading",
    f"+clip x0:{_OLD},sampler.clip_denoised=true,sampler.timestep_spacing=leading",
    f"+trailing:{_OLD},sampler.clip_denoised=true,sampler.timestep_spacing=trailing",
    "+v-pred:generator.prediction_type=v_prediction,generator.beta_schedule=linear,generator.snr_gamma=null,"
    "sampler.clip_denoised=true,sampler.timestep_spacing=trailing",
    "+cosine:generator.prediction_type=v_prediction,generator.beta_schedule=squaredcos_cap_v2,"
    "generator.snr_gamma=null,sampler.clip_denoised=true,sampler.timestep_spacing=trailing",
    "+min-SNR 5:generator.prediction_type=v_prediction,generator.beta_schedule=squaredcos_cap_v2,"
    "generator.snr_gamma=5,sampler.clip_denoised=true,sampler.timestep_spacing=trailing",
]


def parse_recipe(text: str) -> tuple[str, list[str]]:
    name, _, rest = text.partition(":")
    return name, [item for item in rest.split(",") if item]


def teacher_for(data: Dataset, cfg: RunConfig, root: Path) -> Path:
    path = root / "teacher" / "teacher.pt"
    if not path.exists():
        train_teacher(data, cfg.teacher, path.parent, cfg.seed)
    return path


def train_step_gflop(cfg: RunConfig, data: Dataset) -> float:
    """FLOPs of one training step (forward + backward) of this recipe's UNet at its batch size."""
    unet = build_unet(cfg.generator, data.info.channels, data.info.n_classes, data.info.image_size).to(device())
    sched = build_noise_scheduler(cfg.generator)
    noisy, t, labels, target = _batch(
        data.x_train, data.y_train, cfg.generator, data.info.n_classes, sched, torch.Generator().manual_seed(0)
    )

    def step() -> None:
        with autocast(cfg.generator.bf16):
            pred = unet(noisy, t, class_labels=labels).sample
        ((pred.float() - target) ** 2).mean().backward()

    return count_gflop(step)


def evaluate(data: Dataset, cfg: RunConfig, gen_dir: Path, teacher_path: Path, out: Path, per_class: int) -> list:
    """The selection step's grid over every kept checkpoint: val CAS and fidelity per (checkpoint, scale)."""
    n_ckpts = len(list_checkpoints(gen_dir))
    selection = cfg.selection.model_copy(update={"checkpoints": n_ckpts, "images_per_class": per_class})
    result = select_generator(data, gen_dir, teacher_path, selection, cfg.sampler, out, cfg.seed,
                              cfg.validation.max_broken_fraction)  # fmt: skip
    return result["selection"]


def trained(data: Dataset, cfg: RunConfig, root: Path) -> tuple[Path, dict]:
    """A generator trained from scratch with this recipe's generator settings, once: recipes that differ only in
    sampling share it (and its training figures)."""
    recipe = cfg.generator.model_dump_json(exclude={"resume"}) + str(cfg.seed) + data.info.md5
    key = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    gen_dir, record = root / "generators" / key / "generator", root / "generators" / key / "training.json"
    if record.exists():
        return gen_dir, json.loads(record.read_text())
    shutil.rmtree(gen_dir, ignore_errors=True)  # from scratch: the timing is of a whole training
    gflop = train_step_gflop(cfg, data)
    result = train_generator(
        data.x_train, data.y_train, data.info.n_classes, cfg.generator, gen_dir, cfg.seed, data.info.md5
    )
    steps_per_s = result["steps"] / result["train_s"]
    figures = {
        "train_steps": result["steps"],
        "train_s": result["train_s"],
        "steps_per_s": steps_per_s,
        "gflop_per_step": gflop,
        "gflops": gflop * steps_per_s,
        "final_loss": result["final_loss"],
    }
    record.write_text(json.dumps(figures, indent=2))
    return gen_dir, figures


def run_recipe(data: Dataset, cfg: RunConfig, root: Path, name: str, teacher_path: Path, per_class: int) -> dict:
    gen_dir, figures = trained(data, cfg, root)
    if per_class == 0:  # speed only
        return figures | {"checkpoints": []}
    return figures | {"checkpoints": evaluate(data, cfg, gen_dir, teacher_path, root / name, per_class)}


def table(rows: list[dict], peak: dict[str, float]) -> Table:
    t = Table(title=f"Generator training (matmul peak: bf16 {peak['bf16']:.0f}, fp32 {peak['fp32']:.0f} GFLOP/s)")
    cols = ("recipe", "step", "train min", "steps/s", "GFLOP/s", "% bf16 peak", "w", "val CAS", "agreement",
            "broken", "FD", "precision", "recall")  # fmt: skip
    for c in cols:
        t.add_column(c, justify="right")
    for r in rows:
        for c in r["checkpoints"] or [{"step": r["train_steps"]}]:
            minutes = r["train_s"] / 60 * c["step"] / r["train_steps"]
            t.add_row(
                r["recipe"],
                str(c["step"]),
                f"{minutes:.1f}",
                f"{r['steps_per_s']:.2f}",
                f"{r['gflops']:.0f}",
                f"{100 * r['gflops'] / peak['bf16']:.0f}",
                *(
                    [
                        f"{c['guidance_scale']:g}",
                        f"{c['val_cas']:.3f}",
                        f"{c['teacher_agreement']:.3f}",
                        f"{c['broken_fraction']:.3f}",
                        f"{c['frechet_distance']:.2f}",
                        f"{c['precision']:.3f}",
                        f"{c['recall']:.3f}",
                    ]
                    if "val_cas" in c
                    else [""] * 7
                ),
            )
    return t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="breastmnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--profile", default="laptop")
    p.add_argument("--recipe", action="append", help="NAME[:KEY=VALUE,...]; repeat to compare (default: ABLATION)")
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE for every recipe")
    p.add_argument("--per-class", type=int, default=100, help="samples per class scored per cell; 0: speed only")
    p.add_argument("--out", default="runs/benchmarks/generator_train")
    args = p.parse_args()
    configure_threads()
    base = resolve_config(args.profile, overrides=args.set)
    data = load_dataset(args.dataset, args.data_root, size=base.data.size)  # --set data.size=64: MedMNIST+ files
    ds_name = Path(args.dataset).stem.lower()  # a flag, or the stem of a .npz path
    root = Path(args.out) / f"{ds_name}-{args.profile}"
    peak = peaks()
    teacher_path = teacher_for(data, base, root)
    rows = []
    for name, overrides in map(parse_recipe, args.recipe or ABLATION):
        cfg = resolve_config(args.profile, overrides=[*args.set, *overrides])
        rows.append({"recipe": name, "overrides": overrides, **run_recipe(data, cfg, root, name, teacher_path,
                                                                         args.per_class)})  # fmt: skip
        Console(width=160).print(table(rows, peak))
    write_json(
        Path(args.out) / f"generator_train-{ds_name}-{stamp()}.json",
        {"dataset": args.dataset, "profile": args.profile, "peak_gflops": peak, "set": args.set, "recipes": rows,
         "torch": torch.__version__, "threads": torch.get_num_threads(), "np": np.__version__},
    )  # fmt: skip


if __name__ == "__main__":
    main()
