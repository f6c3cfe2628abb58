"""Quality benchmark: the `cpu` profile on BreastMNIST and PneumoniaMNIST.

Prints a table (teacher accuracy/AUC, naive CAS, GKD student accuracy/AUC, CAS gap, majority rate, wall time per
step, peak memory) and writes it as JSON. Each dataset runs in its own `kr run` process, so peak memory is that
run's own.

    .venv/bin/python benchmarks/quality.py --data-root ../shared/data/medmnist [--profile cpu] [--set KEY=VALUE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

STEPS = ("train_teacher", "train_generator", "select_generator", "regenerate", "train_student", "train_naive")


def run_one(dataset: str, args: argparse.Namespace, out_root: Path) -> dict:
    out = out_root / dataset
    cmd = [sys.executable, "-m", "kr.cli", "run", "--dataset", dataset, "--profile", args.profile, "--out", str(out)]
    if args.data_root:
        cmd += ["--data-root", args.data_root]
    for item in args.set or []:
        cmd += ["--set", item]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=not args.verbose, text=True)
    if proc.returncode != 0:
        return {"dataset": dataset, "error": (proc.stderr or "")[-2000:], "wall_s": time.perf_counter() - t0}
    s = json.loads((out / "summary.json").read_text())
    return {
        "dataset": dataset,
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
        "teacher_agreement": s["regeneration"]["teacher_agreement"],
        "timings_s": s["timings_s"],
        "wall_s": s["total_wall_s"],
        "peak_rss_mb": s["peak_rss_mb"],
        "run_folder": str(out),
    }


def table(rows: list[dict], profile: str) -> Table:
    t = Table(title=f"Knowledge Recycling quality, profile {profile}")
    cols = [
        "dataset",
        "majority",
        "teacher acc",
        "teacher AUC",
        "naive CAS",
        "student acc",
        "student AUC",
        "gap (pp)",
        *(s.replace("train_", "").replace("_generator", "") + " s" for s in STEPS),
        "wall min",
        "peak MB",
    ]
    for c in cols:
        t.add_column(c, justify="right")
    for r in rows:
        if "error" in r:
            t.add_row(r["dataset"], "[red]failed", *[""] * (len(cols) - 2))
            continue
        f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        t.add_row(
            r["dataset"],
            f(r["majority_rate"]),
            f(r["teacher_acc"]),
            f(r["teacher_auc"]),
            f(r["naive_cas"]),
            f(r["student_acc"]),
            f(r["student_auc"]),
            f"{r['cas_gap_pp']:+.2f}",
            *(f"{r['timings_s'].get(s, 0):.0f}" for s in STEPS),
            f"{r['wall_s'] / 60:.1f}",
            f"{r['peak_rss_mb']:.0f}",
        )
    return t


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["breastmnist", "pneumoniamnist"])
    p.add_argument("--profile", default="cpu")
    p.add_argument("--data-root", default=None)
    p.add_argument("--set", action="append", help="KEY=VALUE passed to every run")
    p.add_argument("--out", default="runs/benchmarks/quality")
    p.add_argument("--verbose", action="store_true", help="show the runs' progress")
    args = p.parse_args()
    out_root = Path(args.out) / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    rows = [run_one(d, args, out_root) for d in args.datasets]
    Console().print(table(rows, args.profile))
    result = {
        "benchmark": "quality",
        "profile": args.profile,
        "overrides": args.set or [],
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows": rows,
    }
    path = out_root / "quality.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
