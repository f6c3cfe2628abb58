"""The run report (Markdown): what a reviewer reads first."""

from __future__ import annotations

from pathlib import Path


def _pct(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.1f}%"


def _num(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{x:.3f}"


def _canary_lines(canaries: dict | None) -> list[str]:
    if not canaries:
        return [
            "Canaries: none were inserted (canaries.enabled = false), so the audit's power is unknown and the privacy "
            "verdict cannot pass.",
            "",
        ]
    lines = [
        "### Canaries: the audit's power (one-run audit, Steinke, Nasr and Jagielski 2023)",
        "",
        f"{canaries['count']} {canaries.get('kind', '')} canaries (no patient's image, random labels); "
        f"{canaries['inserted']} inserted into the teacher's training set ({canaries['copies']} copies each)"
        + (
            f" and the generator's ({canaries['generator_copies']} each)"
            if canaries.get("generator_copies")
            else ", not the generator's"
        )
        + ", the rest held out. The teacher, trained on them, shows what the audit can see.",
        "",
        "| model | canary AUC (95% CI) | TPR @ smallest FPR (FPR) | epsilon lower bound (confidence) |",
        "| --- | --- | --- | --- |",
    ]
    for model in ("teacher", "student"):
        c = canaries.get(model)
        if not c:
            continue
        lo, hi = c["auc_ci"]
        eps = c["epsilon_lower_bound"]
        lines.append(
            f"| {model} | {c['auc']:.3f} ({lo:.3f}-{hi:.3f}) | {_pct(c['tpr_at_min_fpr'])} "
            f"({_pct(c['min_measurable_fpr'])}) | {eps['epsilon']:.2f} ({_pct(eps['confidence'])}, "
            f"{eps['correct']}/{eps['guesses']} guesses right) |"
        )
    pool = canaries.get("pool")
    if pool:
        lines += [
            "",
            f"Regenerated pool ({pool['n_pool']} images): inserted canaries closer to a pool image than held-out "
            f"ones with AUC {pool['auc']:.3f} (0.5: no trace); {pool['near_copies_inserted']} inserted canaries "
            "closer than every held-out one.",
        ]
    return [*lines, ""]


def _privacy_lines(privacy: dict | None, verdict: dict | None = None) -> list[str]:
    if not privacy:
        return ["## Privacy", "", "No privacy audit result: the privacy gate fails closed.", ""]
    lines = ["## Privacy (membership inference)", ""]
    if verdict:
        lines += [f"Verdict: **{verdict.get('state', 'pass' if verdict.get('passed') else 'fail')}**", ""]
        lines += [f"- {r}" for r in verdict.get("reasons", [])] + ([""] if verdict.get("reasons") else [])
    lines += [f"**Warning:** {w}" for w in privacy.get("warnings", [])] + ([""] if privacy.get("warnings") else [])
    lines += [
        f"{privacy['n_members']} members (real training images) against {privacy['n_nonmembers']} non-members "
        f"(real held-out images; the smallest measurable FPR is {_pct(privacy.get('min_measurable_fpr'))}, no TPR "
        f"is claimed below it); {privacy['reference_models']} reference models; RMIA's population "
        f"{privacy.get('population', 'n/a')} held-out images no model trained on. Threat model: "
        f"{privacy['threat_model']}.",
        "",
        "| model | attack | AUC (95% CI) | balanced acc. | TPR @ 1% FPR (95% CI) | TPR @ 0.1% FPR |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for model in ("teacher", "student"):
        for name, a in privacy[model]["attacks"].items():
            lo, hi = a["auc_ci"]
            ci = a.get("tpr_at_1pct_fpr_ci")
            tpr = _pct(a["tpr_at_1pct_fpr"]) + (f" ({_pct(ci[0])}-{_pct(ci[1])})" if ci else "")
            lines.append(
                f"| {model} | {name} | {a['auc']:.3f} ({lo:.3f}-{hi:.3f}) | {a['balanced_accuracy']:.3f} | "
                f"{tpr} | {_pct(a['tpr_at_01pct_fpr'])} |"
            )
    m = privacy["memorization"]
    lines += [
        "",
        f"Strongest attack: teacher {privacy['teacher']['strongest']['attack']} "
        f"(AUC {privacy['teacher']['strongest']['auc']:.3f}), student {privacy['student']['strongest']['attack']} "
        f"(AUC {privacy['student']['strongest']['auc']:.3f}). AOP: teacher {privacy['teacher']['aop']:.3f}, "
        f"student {privacy['student']['aop']:.3f}. n/a: not measurable with these non-members.",
        "",
        *_canary_lines(privacy.get("canaries")),
        f"Generator memorisation: {_pct(m['near_copy_fraction'])} near copies; median distance ratio "
        f"(closest train / closest held-out) {m['dcr_ratio_median']:.3f}.",
        "",
        "![MIA ROC](mia_roc.png)",
        "",
    ]
    return lines


def _gate_lines(gates: dict | None) -> list[str]:
    if not gates:
        return []
    lines = [
        "## Gates",
        "",
        f"Overall: **{'PASSED' if gates['passed'] else 'FAILED'}**"
        + (
            f" (privacy verdict: {gates['privacy'].get('state', 'n/a')})"
            if isinstance(gates.get("privacy"), dict)
            else ""
        ),
        "",
        "| gate | check | value | threshold | verdict |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, gate in gates.items():
        if not isinstance(gate, dict):
            continue
        if not gate.get("checks") and gate.get("reasons"):
            lines.append(f"| {name} | not evaluated | | | {'; '.join(gate['reasons'])} |")
        for c in gate.get("checks", []):
            value = "missing" if c["value"] is None else f"{c['value']:.4g}"
            lines.append(
                f"| {name} | {c['check']} | {value} | {c['op']} {c['threshold']:g} | "
                f"{'pass' if c['passed'] else '**fail**'} |"
            )
    return [*lines, ""]


def gates_markdown(gates: dict) -> str:
    """The gate verdict as its own document (a pipeline artifact)."""
    return "\n".join(_gate_lines(gates)).replace("## Gates", "# Gates", 1) + "\n"


def _registry_lines(summary: dict) -> list[str]:
    reg, audit, outcome = summary.get("registry"), summary.get("audit"), summary.get("outcome")
    lines = ["## Registry and audit trail", ""]
    if reg:
        alias = f"alias `{reg['alias']}`" if reg.get("alias") else "no alias (the champion is unchanged)"
        lines.append(f"Outcome: **{outcome}**. `{reg['model_name']}` version {reg['version']}, {alias}.")
    else:
        lines.append(f"Outcome: **{outcome or 'not concluded'}**; no model version was registered.")
    if audit:
        lines += [
            "",
            f"Audit record `{audit['record_id']}` (sha256 `{audit['record_hash'][:16]}...`) in {audit['uri']}.",
        ]
    return [*lines, ""]


def decision_markdown(result: dict) -> str:
    """The promote / record-rejection step's artifact: what happened to the model and why."""
    summary = {k: result.get(k) for k in ("registry", "audit", "outcome")}
    return "\n".join(["# Decision", "", *_registry_lines(summary)[2:], *_gate_lines(result.get("gates"))]) + "\n"


def _header(summary: dict) -> list[str]:
    d = summary["dataset"]
    lines = [
        f"# Knowledge Recycling run: {d['name']} ({summary['profile']} profile)",
        "",
        f"Status **{summary['status']}**, finished {summary['finished_at']} in {summary['total_wall_s'] / 60:.1f} "
        f"min; kr {summary['kr_version']}; runner `{summary['runner']}`; config digest "
        f"`{summary['config_digest'][:12]}`.",
        "",
    ]
    if summary.get("reused_steps"):
        lines += [f"Reused from an earlier run (KFP cache, same inputs): {', '.join(summary['reused_steps'])}.", ""]
    if summary.get("error"):
        lines += [f"Error: `{summary['error']}`", ""]
    if "n_train" in d:
        lines += [
            f"Data: {d['n_train']} / {d['n_val']} / {d['n_test']} images (train/val/test), {d['n_classes']} "
            f"classes, {d['channels']} channel(s), MD5 `{d['md5']}`. Majority-class rate on test: "
            f"{_pct(d['majority_rate_test'])}.",
            "",
        ]
    return lines


def _model_lines(summary: dict) -> list[str]:
    t, s, n, g = summary["teacher"], summary["student"], summary.get("naive"), summary["generator"]
    if not (t and s and g):
        return []
    lines = [
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
    return [
        *lines,
        f"| **GKD student** | regenerated images, teacher soft labels | **{_pct(s['test']['accuracy'])}** | "
        f"{_num(s['test']['auc'])} |",
        "",
        f"CAS gap (student minus teacher): **{summary['cas_gap_pp']:+.2f} pp**.",
        "",
        "## Generator selection and fidelity",
        "",
        f"Chosen: `{g['checkpoint']}` with guidance scale {g['guidance_scale']:g}: the best validation CAS among cells "
        "whose broken share is within `validation.max_broken_fraction` and whose teacher agreement reaches "
        "`selection.min_teacher_agreement` (if none does, the most agreeing); val CAS within 1.96 standard errors "
        "of the best counts as a tie, and ties go to the lowest FD.",
        "Fidelity is measured against real val: teacher agreement (the teacher assigns the sample to the class it was "
        "drawn for), broken share (outside the envelope of real images' statistics), Frechet distance (FD) and "
        "precision/recall in the teacher's feature space.",
        "",
        "| checkpoint | guidance | val CAS | teacher agreement | broken | FD | precision | recall |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *(
            f"| {c['checkpoint']} | {c['guidance_scale']:g} | {_pct(c['val_cas'])} | {_pct(c['teacher_agreement'])} | "
            f"{_pct(c.get('broken_fraction'))} | {_num(c.get('frechet_distance'))} | {_pct(c.get('precision'))} | "
            f"{_pct(c.get('recall'))} |"
            for c in g["selection"]
        ),
        "",
        *_pool_lines(summary.get("regeneration")),
        "![selection](selection.png)",
        "",
        "## Samples",
        "",
        "![samples](samples.png)",
        "",
    ]


def _pool_lines(regeneration: dict | None) -> list[str]:
    if not regeneration:
        return []
    broken = regeneration.get("broken_fraction")
    return [
        f"Regenerated pool: {regeneration['images']} images at guidance {regeneration['guidance_scale']:g}, teacher "
        f"agreement {_pct(regeneration['teacher_agreement'])}"
        + (f", broken {_pct(broken)}." if broken is not None else "."),
        "",
    ]


def write_report(summary: dict, path: Path) -> Path:
    """Whatever the run got to: a failed run's report says where it stopped and shows what it finished."""
    lines = [
        *_header(summary),
        *_model_lines(summary),
        *(
            _privacy_lines(summary["privacy"], (summary.get("gates") or {}).get("privacy"))
            if summary.get("privacy")
            else []
        ),
        *_gate_lines(summary.get("gates")),
        *_registry_lines(summary),
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
