"""`kr run --image`: each task in its own container (kfp.local's DockerRunner). What can be checked without an
engine: the mounts and environment the containers get, and a clear refusal when no engine or image is there."""

from __future__ import annotations

from pathlib import Path

import pytest

from kr.cli import app
from kr.config import RunConfig
from kr.pipelines import local as runner


def test_a_run_without_an_engine_is_refused_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-engine.sock'}")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--profile", "smoke", "--image", "kr-cpu:test", "--out", str(out)])
    assert result.exit_code == 2 and "no Docker engine answers" in result.output, result.output
    assert not (out / "summary.json").exists() and not (out / "kfp").exists()


def test_the_containers_get_every_host_folder_the_tasks_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    data = tmp_path / "data"
    cfg = RunConfig.model_validate(
        {
            "data": {"dataset": "breastmnist", "data_root": str(data)},
            "tracking": {"uri": f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"},
            "audit": {"uri": str(tmp_path / "home" / "audit")},
        }
    )
    docker_runner = runner.container_runner(cfg, tmp_path / "run", tmp_path / "run" / "checkpoints")
    args = docker_runner.container_run_args
    mounts = {m["Target"]: m for m in args["mounts"]}
    home = str((tmp_path / "home").resolve())
    assert mounts[str((tmp_path / "run").resolve())]["ReadOnly"] is False
    assert mounts[home]["ReadOnly"] is False and mounts[str((tmp_path / "home" / "audit").resolve())]
    assert mounts[str(data.resolve())]["ReadOnly"] is True
    assert all(m["Source"] == m["Target"] for m in mounts.values())  # the same paths inside and out
    assert args["network_mode"] == "host" and args["environment"]["KR_RUN_DIR"] == str(tmp_path / "run")
    assert args["environment"]["AWS_ACCESS_KEY_ID"] == "test-key" and "AWS_SECRET_ACCESS_KEY" not in args["environment"]
