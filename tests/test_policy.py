"""The gate policy: the loosest thresholds a platform allows; a run may tighten them, never loosen them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kr.config import ConfigError, GatesConfig
from kr.run.policy import CEILINGS, FLOORS, POLICY_ENV, enforce, load_policy
from kr.run.request import RunRequest, resolve_request

POLICY = {
    "accuracy": {"max_gap_pp": 5, "min_class_recall": 0.1},
    "privacy": {"max_auc": 0.6, "min_teacher_canary_auc": 0.9},
}


@pytest.fixture
def policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "gates.yaml"
    path.write_text(yaml.safe_dump(POLICY))
    monkeypatch.setenv(POLICY_ENV, str(path))
    return path


def request(**gates) -> RunRequest:
    return RunRequest(profile="smoke", gates=gates, run_dir="/tmp/kr-policy-test", run_key="policy-test")


def test_every_gate_threshold_is_a_floor_or_a_ceiling() -> None:
    fields = {f"{g}.{f}" for g, model in GatesConfig.model_fields.items() for f in model.annotation.model_fields}
    assert fields == CEILINGS | FLOORS and not CEILINGS & FLOORS


def test_a_run_may_tighten_the_policy(policy: Path) -> None:
    cfg = resolve_request(request(privacy={"max_auc": 0.55}, accuracy={"min_class_recall": 0.3}))
    assert cfg.gates.privacy.max_auc == 0.55 and cfg.gates.accuracy.min_class_recall == 0.3


@pytest.mark.parametrize(
    ("gates", "key"),
    [
        ({"privacy": {"max_auc": 1.0}}, "privacy.max_auc"),
        ({"accuracy": {"max_gap_pp": 100}}, "accuracy.max_gap_pp"),
        ({"accuracy": {"min_class_recall": -1}}, "accuracy.min_class_recall"),
        # an audit without power may not be let through by lowering its floor
        ({"privacy": {"min_teacher_canary_auc": 0.5}}, "privacy.min_teacher_canary_auc"),
    ],
)
def test_a_run_may_not_loosen_the_policy(policy: Path, gates: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        resolve_request(request(**gates))


def test_overrides_and_config_files_are_held_to_the_policy_too(policy: Path) -> None:
    req = RunRequest(
        profile="smoke", overrides=["gates.privacy.max_auc=0.9"], run_dir="/tmp/kr-policy-test", run_key="policy-test"
    )
    with pytest.raises(ConfigError, match="privacy.max_auc"):
        resolve_request(req)


def test_a_policy_with_an_unknown_or_non_finite_threshold_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("privacy: {max_acu: 0.6}\n")
    with pytest.raises(ConfigError, match="max_acu"):
        load_policy(bad)
    bad.write_text("privacy: {max_auc: .inf}\n")
    with pytest.raises(ConfigError, match="max_auc"):
        load_policy(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_policy(tmp_path / "missing.yaml")


def test_without_a_policy_the_config_alone_decides() -> None:
    enforce(GatesConfig(), None)  # nothing to enforce
    assert resolve_request(request(privacy={"max_auc": 0.9})).gates.privacy.max_auc == 0.9


def test_the_clusters_policy_lets_the_default_thresholds_through() -> None:
    path = Path(__file__).resolve().parents[1] / "infra" / "base" / "pipeline" / "gates.yaml"
    assert load_policy(path)  # every threshold it names is a known one, finite
    enforce(GatesConfig(), path)


def test_kr_run_refuses_a_loosening_override_before_any_work(policy: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from kr.cli import app

    out = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["run", "--gate-policy", str(policy), "--set", "gates.privacy.max_auc=1", "--out", str(out)]
    )
    assert result.exit_code == 2 and "privacy.max_auc" in result.output and not out.exists()
