"""Privacy benchmark: teacher against GKD student on BreastMNIST and PneumoniaMNIST at the `cpu` profile.

Prints AUC, TPR at 1% and 0.1% FPR (n/a below the smallest measurable FPR) per attack and model, AOP, the canaries
(the audit's power: canary AUC, TPR at the smallest FPR, one-run epsilon lower bound), the privacy verdict,
memorisation and the audit's wall time and share of the run, and writes them as JSON. Runs `kr run` per dataset,
or reads finished runs with --runs.

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


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def canary_table(per_dataset: list[dict]) -> Table:
    """Canary AUC (95% CI), TPR at the smallest FPR, epsilon lower bound per dataset and model."""
    t = Table(title="Canaries: the audit's power (one-run audit)")
    for c in ("dataset", "model", "accuracy", "canary AUC (95% CI)", "TPR@min FPR (FPR)", "epsilon LB", "copies"):
        t.add_column(c, justify="right")
    for d in per_dataset:
        c = d.get("canaries")
        if not c:
            continue
        for model in ("teacher", "student"):
            m = c[model]
            t.add_row(
                d["dataset"],
                model,
                f"{d[f'{model}_accuracy']:.3f}",
                f"{m['auc']:.3f} ({m['auc_ci'][0]:.3f}-{m['auc_ci'][1]:.3f})",
                f"{m['tpr_at_min_fpr']:.3f} ({m['min_measurable_fpr']:.3f})",
                f"{m['epsilon_lower_bound']['epsilon']:.2f}",
                f"{c['inserted']}x{c['copies']}",
            )
    return t


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
                "min_measurable_fpr": p.get("min_measurable_fpr"),
                "canaries": p.get("canaries"),
                "verdict": (s.get("gates") or {}).get("privacy", {}).get("state"),
                "audit_share_of_wall": (s["timings_s"].get("audit_privacy") or 0) / s["total_wall_s"],
                "teacher_accuracy": s["teacher"]["test"]["accuracy"],
                "student_accuracy": s["student"]["test"]["accuracy"],
                "warnings": p.get("warnings", []),
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
            _num(r["tpr_at_1pct_fpr"]),
            _num(r["tpr_at_01pct_fpr"]),
            f"{r['balanced_accuracy']:.3f}",
            f"{r['aop']:.3f}",
        )
    console = Console()
    console.print(t)
    console.print(canary_table(per_dataset))
    for d in per_dataset:
        if "error" not in d:
            console.print(
                f"{d['dataset']}: verdict {d['verdict']}; audit {d['audit_wall_s']:.0f} s "
                f"({100 * d['audit_share_of_wall']:.0f}% of the run), {d['n_members']} members, smallest measurable "
                f"FPR {_num(d['min_measurable_fpr'])}, K={d['reference_models']}, near copies "
                f"{d['memorization']['near_copy_fraction']:.3f}, DCR ratio {d['memorization']['dcr_ratio_median']:.3f}"
                "  (* = strongest attack)"
            )
            for w in d["warnings"]:
                console.print(f"  warning: {w}")
    write_json(
        out_root / "privacy.json",
        {"benchmark": "privacy", "profile": args.profile, "rows": rows, "datasets": per_dataset},
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
