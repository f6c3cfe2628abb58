"""`kr submit` / `kr schedule`: what can be checked without a Kubeflow Pipelines API server (none runs here)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from kr.cli import app
from kr.pipelines.cluster import ClusterError, check_cron, cluster_arguments
from kr.pipelines.settings import ClusterSettings
from kr.run.request import RunRequest, resolve_request

IMAGE = "registry.example.org/kr:0.1.0-abc"


@pytest.mark.parametrize("cron", ["0 0 3 * * 0", "0 */30 * * * *", "0 0 2 1 * ?", "0 0 4 * * MON-FRI"])
def test_six_field_cron_accepted(cron: str) -> None:
    assert check_cron(cron) == cron


def test_five_field_cron_gets_a_hint() -> None:
    with pytest.raises(ClusterError, match=r"did you mean '0 0 3 \* \* 0'"):
        check_cron("0 3 * * 0")


@pytest.mark.parametrize("cron", ["", "0 0 3 * * 0 2026 x", "0 0 3 * * $(rm)"])
def test_bad_cron_refused(cron: str) -> None:
    with pytest.raises(ClusterError):
        check_cron(cron)


def test_schedule_refuses_a_bad_cron_before_contacting_the_cluster() -> None:
    result = CliRunner().invoke(
        app, ["schedule", "--host", "http://127.0.0.1:9", "--image", IMAGE, "--cron", "0 3 * * 0"]
    )
    assert result.exit_code == 2 and "6, seconds first" in result.output


def test_submit_to_an_unreachable_host_fails_clearly() -> None:
    result = CliRunner().invoke(app, ["submit", "--host", "http://127.0.0.1:9", "--image", IMAGE, "--profile", "smoke"])
    assert result.exit_code == 1
    assert "127.0.0.1:9" in result.output


def test_submit_refuses_a_bad_override_first() -> None:
    result = CliRunner().invoke(
        app, ["submit", "--host", "http://127.0.0.1:9", "--image", IMAGE, "--set", "gates.privacy.max_auc=2"]
    )
    assert result.exit_code == 2 and "gates.privacy.max_auc" in result.output


def test_cluster_arguments_use_the_shared_volume_and_resolve_per_run() -> None:
    cluster = ClusterSettings()
    args = cluster_arguments(RunRequest(dataset="pneumoniamnist", gates={"privacy": {"max_auc": 0.55}}), cluster)
    assert args["run_dir"] == "" and args["runs_root"] == cluster.runs_mount
    assert args["data_root"] == f"{cluster.runs_mount}/data"
    # inside the pipeline, the run id names the run folder and keys the registry and the audit trail
    req = RunRequest(**{**args, "kfp_run_id": "3f2a-run", "image": IMAGE})
    cfg = resolve_request(req)
    assert cfg.run.run_key == "3f2a-run" and cfg.run.image == IMAGE
    assert cfg.gates.privacy.max_auc == 0.55 and cfg.model_name == "kr-pneumoniamnist-student"
