"""Quality benchmark: the `cpu` profile on BreastMNIST and PneumoniaMNIST.

Prints a table (teacher accuracy/AUC, naive CAS, GKD student accuracy/AUC, CAS gap, majority rate, wall time per
step, peak memory) and writes it as JSON. Each dataset runs in its own `kr run` process, so peak memory is that
run's own.

    .venv/bin/python benchmarks/quality.py --data-root ../shared/data/medmnist [--profile cpu] [--set KEY=VALUE]
    .venv/bin/python benchmarks/quality.py --seeds 0 1 2 ...          # three seeds per dataset, mean and spread
    .venv/bin/python benchmarks/quality.py --runs runs/a runs/b      # tabulate finished runs
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from common import parser, stamp, summaries, write_json
from rich.console import Console
from rich.table import Table

from kr.run.step_table import ORDER as STEP_ORDER

BOOKKEEPING = ("resolve_config", "validate_data", "plan_shards", "evaluate_gates", "summarize", "finalize_run")
STEPS = tuple(s for s in STEP_ORDER if s not in BOOKKEEPING)


def row(s: dict) -> dict:
    return {
        "dataset": s["dataset"]["name"],
        "n_train": s["dataset"]["n_train"],
        "majority_rate": s["dataset"]["majority_rate_test"],
        "teacher_acc": s["teacher"]["test"]["accuracy"],
        "teacher_auc": s["teacher"]["test"]["auc"],
        "naive_cas": s["naive"]["test"]["accuracy"] if s.get("naive") else None,
        "student_acc": s["student"]["test"]["accuracy"],
        "student_auc": s["student"]["test"]["auc"],
        "cas_gap_pp": s["cas_gap_pp"],
        "guidance_scale": s["generator"]["guidance_scale"],
        "checkpoint": s["generator"]["checkpoint"],
        "seed": s["config"]["seed"],
        "teacher_agreement": s["regeneration"]["teacher_agreement"],
        "broken_fraction": s["regeneration"].get("broken_fraction"),
        "frechet_distance": (s["generator"].get("fidelity") or {}).get("frechet_distance"),
        "timings_s": s["timings_s"],
        "wall_s": s["total_wall_s"],
        "peak_rss_mb": s["peak_rss_mb"],
    }


def table(rows: list[dict], profile: str) -> Table:
    t = Table(title=f"Knowledge Recycling quality, profile {profile}")
    cols = [
        "dataset",
        "seed",
        "majority",
        "teacher acc",
        "teacher AUC",
        "naive CAS",
        "student acc",
        "student AUC",
        "gap (pp)",
        "agreement",
        "broken",
        "w",
        *(s.replace("train_", "").replace("_generator", "").replace("audit_", "") + " s" for s in STEPS),
        "wall min",
        "peak MB",
    ]
    for c in cols:
        t.add_column(c, justify="right")
    f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    for r in rows:
        if "error" in r:
            t.add_row(r["dataset"], "[red]failed", *[""] * (len(cols) - 2))
            continue
        t.add_row(
            r["dataset"],
            str(r["seed"]),
            f(r["majority_rate"]),
            f(r["teacher_acc"]),
            f(r["teacher_auc"]),
            f(r["naive_cas"]),
            f(r["student_acc"]),
            f(r["student_auc"]),
            f"{r['cas_gap_pp']:+.2f}",
            f(r["teacher_agreement"]),
            f(r["broken_fraction"]),
            f"{r['guidance_scale']:g}",
            *(f"{r['timings_s'].get(s, 0):.0f}" for s in STEPS),
            f"{r['wall_s'] / 60:.1f}",
            f"{r['peak_rss_mb']:.0f}",
        )
    return t


SPREAD = ("teacher_acc", "student_acc", "naive_cas", "cas_gap_pp", "teacher_agreement", "wall_s")


def spread(rows: list[dict]) -> list[dict]:
    """Per dataset over its seeds: mean, min and max of the headline figures, and student minus naive."""
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows if "error" not in r):
        runs = [r for r in rows if r.get("dataset") == dataset and "error" not in r]
        stats = {"dataset": dataset, "seeds": [r["seed"] for r in runs]}
        for key in (*SPREAD, "student_minus_naive_pp"):
            vals = np.array(
                [100 * (r["student_acc"] - r["naive_cas"]) if key == "student_minus_naive_pp" else r[key] for r in runs]
            )
            stats[key] = {"mean": float(vals.mean()), "min": float(vals.min()), "max": float(vals.max())}
        out.append(stats)
    return out


def spread_table(stats: list[dict]) -> Table:
    t = Table(title="over seeds: mean [min, max]")
    for c in ("dataset", "seeds", *SPREAD, "student - naive (pp)"):
        t.add_column(c, justify="right")
    for s in stats:
        t.add_row(
            s["dataset"],
            str(len(s["seeds"])),
            *(f"{v['mean']:.3f} [{v['min']:.3f}, {v['max']:.3f}]" for k, v in s.items() if isinstance(v, dict)),
        )
    return t


def main() -> int:
    args = parser(__doc__).parse_args()
    out_root = Path(args.out) / "quality" / stamp()
    rows = [row(s) if s else {"dataset": d, "error": err} for d, s, err in summaries(args, out_root)]
    console = Console(width=250)
    console.print(table(rows, args.profile))
    stats = spread(rows)
    console.print(spread_table(stats))
    write_json(
        out_root / "quality.json",
        {"benchmark": "quality", "profile": args.profile, "overrides": args.set or [], "rows": rows, "spread": stats},
    )
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
