"""Quality benchmark: the `cpu` profile on BreastMNIST and PneumoniaMNIST.

Prints a table (teacher accuracy/AUC, naive CAS, GKD student accuracy/AUC, CAS gap, majority rate, wall time per
step, peak memory) and writes it as JSON. Each dataset runs in its own `kr run` process, so peak memory is that
run's own.

    .venv/bin/python benchmarks/quality.py --data-root ../shared/data/medmnist [--profile cpu] [--set KEY=VALUE]
    .venv/bin/python benchmarks/quality.py --runs runs/a runs/b      # tabulate finished runs
"""

from __future__ import annotations

from pathlib import Path

from common import parser, stamp, summaries, write_json
from rich.console import Console
from rich.table import Table

from kr.summary import STEP_ORDER

STEPS = tuple(s for s in STEP_ORDER if s not in ("validate_data", "evaluate_gates"))


def row(dataset: str, s: dict) -> dict:
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
    args = parser(__doc__).parse_args()
    out_root = Path(args.out) / "quality" / stamp()
    rows = [row(d, s) if s else {"dataset": d, "error": err} for d, s, err in summaries(args, out_root)]
    Console().print(table(rows, args.profile))
    write_json(
        out_root / "quality.json",
        {"benchmark": "quality", "profile": args.profile, "overrides": args.set or [], "rows": rows},
    )
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
