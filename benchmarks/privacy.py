"""Privacy benchmark: teacher against GKD student on BreastMNIST and PneumoniaMNIST at the `cpu` profile.

Prints AUC, TPR at 1% and 0.1% FPR per attack and model, AOP, memorisation and the audit's wall time, and writes
them as JSON. Runs `kr run` per dataset, or reads finished runs with --runs.

    .venv/bin/python benchmarks/privacy.py --data-root ../shared/data/medmnist
    .venv/bin/python benchmarks/privacy.py --runs runs/benchmarks/quality/<stamp>/breastmnist ...
"""

from __future__ import annotations

from pathlib import Path

from common import parser, stamp, summaries, write_json
from rich.console import Console
from rich.table import Table


def rows_of(dataset: str, s: dict) -> list[dict]:
    p = s["privacy"]
    out = []
    for model in ("teacher", "student"):
        for attack, a in p[model]["attacks"].items():
            out.append(
                {
                    "dataset": dataset,
                    "model": model,
                    "attack": attack,
                    "auc": a["auc"],
                    "auc_ci": a["auc_ci"],
                    "tpr_at_1pct_fpr": a["tpr_at_1pct_fpr"],
                    "tpr_at_01pct_fpr": a["tpr_at_01pct_fpr"],
                    "balanced_accuracy": a["balanced_accuracy"],
                    "strongest": attack == p[model]["strongest"]["attack"],
                    "aop": p[model]["aop"],
                    "accuracy": s[model]["test"]["accuracy"],
                }
            )
    return out


def main() -> int:
    args = parser(__doc__).parse_args()
    out_root = Path(args.out) / "privacy" / stamp()
    rows, per_dataset, failed = [], [], False
    for dataset, s, err in summaries(args, out_root):
        if s is None or not s.get("privacy"):
            failed = True
            per_dataset.append({"dataset": dataset, "error": err or "no privacy block in summary.json"})
            continue
        rows += rows_of(dataset, s)
        p = s["privacy"]
        per_dataset.append(
            {
                "dataset": dataset,
                "audit_wall_s": s["timings_s"].get("audit_privacy"),
                "n_members": p["n_members"],
                "reference_models": p["reference_models"],
                "teacher_strongest": p["teacher"]["strongest"],
                "student_strongest": p["student"]["strongest"],
                "teacher_aop": p["teacher"]["aop"],
                "student_aop": p["student"]["aop"],
                "memorization": p["memorization"],
            }
        )
    t = Table(title=f"Membership inference, profile {args.profile}")
    for c in ("dataset", "model", "attack", "AUC (95% CI)", "TPR@1%", "TPR@0.1%", "bal. acc", "AOP"):
        t.add_column(c, justify="right")
    for r in rows:
        mark = "*" if r["strongest"] else ""
        t.add_row(
            r["dataset"],
            r["model"],
            r["attack"] + mark,
            f"{r['auc']:.3f} ({r['auc_ci'][0]:.3f}-{r['auc_ci'][1]:.3f})",
            f"{r['tpr_at_1pct_fpr']:.3f}",
            f"{r['tpr_at_01pct_fpr']:.3f}",
            f"{r['balanced_accuracy']:.3f}",
            f"{r['aop']:.3f}",
        )
    console = Console()
    console.print(t)
    for d in per_dataset:
        if "error" not in d:
            console.print(
                f"{d['dataset']}: audit {d['audit_wall_s']:.0f} s, {d['n_members']} members, "
                f"K={d['reference_models']}, near copies {d['memorization']['near_copy_fraction']:.3f}, "
                f"DCR ratio {d['memorization']['dcr_ratio_median']:.3f}  (* = strongest attack)"
            )
    write_json(
        out_root / "privacy.json",
        {"benchmark": "privacy", "profile": args.profile, "rows": rows, "datasets": per_dataset},
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
