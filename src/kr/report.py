"""The run report (Markdown): what a reviewer reads first."""

from __future__ import annotations

from pathlib import Path


def _pct(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.1f}%"


def _num(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{x:.3f}"


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
