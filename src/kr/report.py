"""The run report (Markdown): what a reviewer reads first."""

from __future__ import annotations

from pathlib import Path


def _pct(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.1f}%"


def _num(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{x:.3f}"


def _privacy_lines(privacy: dict | None) -> list[str]:
    if not privacy:
        return ["## Privacy", "", "The privacy audit was not run (privacy.enabled = false).", ""]
    lines = [
        "## Privacy (membership inference)",
        "",
        f"{privacy['n_members']} members (real training images) against {privacy['n_nonmembers']} non-members "
        f"(real held-out images); {privacy['reference_models']} reference models. Threat model: "
        f"{privacy['threat_model']}.",
        "",
        "| model | attack | AUC (95% CI) | balanced acc. | TPR @ 1% FPR | TPR @ 0.1% FPR |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for model in ("teacher", "student"):
        for name, a in privacy[model]["attacks"].items():
            lo, hi = a["auc_ci"]
            lines.append(
                f"| {model} | {name} | {a['auc']:.3f} ({lo:.3f}-{hi:.3f}) | {a['balanced_accuracy']:.3f} | "
                f"{_pct(a['tpr_at_1pct_fpr'])} | {_pct(a['tpr_at_01pct_fpr'])} |"
            )
    m = privacy["memorization"]
    lines += [
        "",
        f"Strongest attack: teacher {privacy['teacher']['strongest']['attack']} "
        f"(AUC {privacy['teacher']['strongest']['auc']:.3f}), student {privacy['student']['strongest']['attack']} "
        f"(AUC {privacy['student']['strongest']['auc']:.3f}). AOP: teacher {privacy['teacher']['aop']:.3f}, "
        f"student {privacy['student']['aop']:.3f}.",
        "",
        f"Generator memorisation: {_pct(m['near_copy_fraction'])} near copies; median distance ratio "
        f"(closest train / closest held-out) {m['dcr_ratio_median']:.3f}.",
        "",
        "![MIA ROC](steps/privacy/mia_roc.png)",
        "",
    ]
    return lines


def _gate_lines(gates: dict | None) -> list[str]:
    if not gates:
        return []
    lines = [
        "## Gates",
        "",
        f"Overall: **{'PASSED' if gates['passed'] else 'FAILED'}**",
        "",
        "| gate | check | value | threshold | verdict |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, gate in gates.items():
        if not isinstance(gate, dict):
            continue
        for c in gate.get("checks", []):
            value = "missing" if c["value"] is None else f"{c['value']:.4g}"
            lines.append(
                f"| {name} | {c['check']} | {value} | {c['op']} {c['threshold']:g} | "
                f"{'pass' if c['passed'] else '**fail**'} |"
            )
    return [*lines, ""]


def write_report(summary: dict, path: Path) -> Path:
    d, t, s, n = summary["dataset"], summary["teacher"], summary["student"], summary.get("naive")
    g = summary["generator"]
    lines = [
        f"# Knowledge Recycling run: {d['name']} ({summary['profile']} profile)",
        "",
        f"Finished {summary['finished_at']} in {summary['total_wall_s'] / 60:.1f} min; kr {summary['kr_version']}; "
        f"runner `{summary['runner']}`; config digest `{summary['config_digest'][:12]}`.",
        "",
        f"Data: {d['n_train']} / {d['n_val']} / {d['n_test']} images (train/val/test), {d['n_classes']} classes, "
        f"{d['channels']} channel(s), MD5 `{d['md5']}`. Majority-class rate on test: {_pct(d['majority_rate_test'])}.",
        "",
        "## Accuracy on the real test split",
        "",
        "| model | trained on | accuracy | ROC AUC |",
        "| --- | --- | --- | --- |",
        f"| teacher | real train | {_pct(t['test']['accuracy'])} | {_num(t['test']['auc'])} |",
    ]
    if n:
        lines.append(
            f"| naive CAS | one synthetic set, hard labels | {_pct(n['test']['accuracy'])} | {_num(n['test']['auc'])} |"
        )
    lines += [
        f"| **GKD student** | regenerated images, teacher soft labels | **{_pct(s['test']['accuracy'])}** | "
        f"{_num(s['test']['auc'])} |",
        "",
        f"CAS gap (student minus teacher): **{summary['cas_gap_pp']:+.2f} pp**.",
        "",
        "## Generator selection (validation CAS)",
        "",
        f"Chosen: `{g['checkpoint']}` with guidance scale {g['guidance_scale']:g}.",
        "",
        "| checkpoint | guidance | val CAS | teacher agrees with label |",
        "| --- | --- | --- | --- |",
        *(
            f"| {c['checkpoint']} | {c['guidance_scale']:g} | {_pct(c['val_cas'])} | {_pct(c['teacher_agreement'])} |"
            for c in g["selection"]
        ),
        "",
        "![selection](selection.png)",
        "",
        "## Samples",
        "",
        "![samples](samples.png)",
        "",
        *_privacy_lines(summary.get("privacy")),
        *_gate_lines(summary.get("gates")),
        "## Time per step",
        "",
        "| step | seconds |",
        "| --- | --- |",
        *(f"| {k} | {v:.1f} |" for k, v in summary["timings_s"].items()),
        "",
    ]
    path = Path(path)
    path.write_text("\n".join(lines))
    return path
