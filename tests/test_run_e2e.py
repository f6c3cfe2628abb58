"""`kr run` end to end on the smoke profile: the real BreastMNIST file, and a generated RGB 5-class file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datagen import REAL_ROOT, kr, needs_real, write_npz
from typer.testing import CliRunner

from kr.cli import app

SUMMARY_KEYS = {
    "schema",
    "runner",
    "dataset",
    "profile",
    "config",
    "teacher",
    "generator",
    "naive",
    "student",
    "cas_gap_pp",
    "timings_s",
    "total_wall_s",
}


def check_summary(out: Path, n_classes: int) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    assert summary.keys() >= SUMMARY_KEYS
    assert summary["schema"] == "kr.summary/1"
    assert summary["dataset"]["n_classes"] == n_classes
    for model in ("teacher", "student"):
        for split in ("val", "test"):
            assert 0.0 <= summary[model][split]["accuracy"] <= 1.0
    assert 0.0 <= summary["naive"]["test"]["accuracy"] <= 1.0
    assert summary["cas_gap_pp"] == pytest.approx(
        100 * (summary["student"]["test"]["accuracy"] - summary["teacher"]["test"]["accuracy"]), abs=0.01
    )
    cfg = summary["config"]
    grid = summary["generator"]["selection"]
    assert len(grid) == cfg["selection"]["checkpoints"] * len(cfg["selection"]["guidance_scales"])
    assert summary["generator"]["checkpoint"] in {g["checkpoint"] for g in grid}
    # the pool is class-balanced: every class gets the same count (+-1 per shard)
    counts = [sum(s["class_counts"][c] for s in summary["regeneration"]["shards"]) for c in range(n_classes)]
    assert max(counts) - min(counts) <= len(summary["regeneration"]["shards"])
    privacy = summary["privacy"]
    for model in ("teacher", "student"):
        assert set(privacy[model]["attacks"]) == set(cfg["privacy"]["attacks"])
        top = privacy[model]["strongest"]
        assert top["auc"] == max(a["auc"] for a in privacy[model]["attacks"].values())
        assert 0.0 <= top["tpr_at_1pct_fpr"] <= 1.0
    assert {"near_copy_fraction", "dcr_ratio_median"} <= privacy["memorization"].keys()
    gates = summary["gates"]
    assert gates["passed"] == all(gates[g]["passed"] for g in ("data", "accuracy", "privacy"))
    for name in (
        "report.md",
        "samples.png",
        "selection.png",
        "steps/student/student.pt",
        "steps/teacher/teacher.pt",
        "steps/privacy/mia_roc.png",
    ):
        assert (out / name).is_file(), name
    return summary


@pytest.mark.e2e
@needs_real
def test_smoke_run_on_real_breastmnist(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = kr("run", "--profile", "smoke", "--data-root", str(REAL_ROOT), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = check_summary(out, n_classes=2)
    assert summary["dataset"]["md5"] == "750601b1f35ba3300ea97c75c52ff8f6"
    assert summary["dataset"]["n_train"] == 546
    assert summary["profile"] == "smoke"

    # running again into the same folder keeps the first run's summary and resumes the finished generator
    again = kr("run", "--profile", "smoke", "--data-root", str(REAL_ROOT), "--out", str(out))
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(list((out / "history").glob("*/summary.json"))) == 1
    assert len(list((out / "history").glob("*/steps/student/student.pt"))) == 1
    second = json.loads((out / "summary.json").read_text())
    assert second["generator"]["training"]["resumed_from"] == summary["config"]["generator"]["train_steps"]
    assert second["teacher"]["test"] == summary["teacher"]["test"]  # seeded: the same teacher again


@pytest.mark.e2e
def test_smoke_run_on_generated_rgb_five_classes(tmp_path: Path) -> None:
    data = write_npz(tmp_path / "rgb5.npz", n_train=100, n_val=25, n_test=25, channels=3, n_classes=5)
    out = tmp_path / "run"
    result = kr("run", "--dataset", str(data), "--profile", "smoke", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = check_summary(out, n_classes=5)
    assert summary["dataset"]["channels"] == 3 and summary["dataset"]["task"] == "multi-class"
    assert summary["dataset"]["source"] == "file"


def test_missing_data_fails_clearly_and_leaves_a_failed_summary(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["run", "--profile", "smoke", "--data-root", str(tmp_path / "empty"), "--out", str(out)]
    )
    assert result.exit_code == 2
    assert "breastmnist.npz" in result.output and "not found" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "validate_data" in summary["error"]
    assert summary["gates"]["passed"] is False
    assert summary["teacher"] is None and not (out / "steps" / "teacher").exists()


def test_bad_override_fails_before_any_work(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", "--profile", "smoke", "--set", "gkd.epochz=2", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "gkd.epochz" in result.output


def test_config_command_shows_resolved_values() -> None:
    result = CliRunner().invoke(app, ["config", "--profile", "smoke", "--set", "gkd.epochs=9", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["gkd"]["epochs"] == 9
