"""The whole DAG in containers: `kr run --image` runs every task in its own container of the CPU image built from
this checkout (kfp.local's DockerRunner on a real Docker engine), against the embedded MLflow store and a folder
trail that the containers reach through bind mounts, on the real BreastMNIST file. The result must be of the same
kind as the subprocess runner's: summary, report, a registered version and a trail record."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from datagen import REAL_ROOT, kr, needs_real
from test_images import base, cpu_image, engine  # noqa: F401  the module's fixtures: engine, base, image
from test_run_e2e import LENIENT, MODEL, check_summary, sets

from kr.governance.trail import open_trail

pytestmark = [pytest.mark.e2e, pytest.mark.docker, needs_real, pytest.mark.timeout(3600)]


def test_smoke_pipeline_runs_in_containers(cpu_image, tmp_path: Path) -> None:  # noqa: F811
    from mlflow import MlflowClient

    home, out = tmp_path / "home", tmp_path / "run"
    env = {**os.environ, "KR_HOME": str(home)}
    args = ["run", "--profile", "smoke", "--data-root", str(REAL_ROOT), "--out", str(out), "--image", cpu_image["cpu"]]
    done = kr(*args, *sets(LENIENT), env=env, timeout=3000)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    summary = check_summary(out, n_classes=2, runner="kfp.local/docker")
    assert summary["outcome"] == "promoted"
    # each task ran in the image: its MLflow runs carry the image and the code version baked into it
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    version = client.get_model_version(MODEL, summary["registry"]["version"])
    assert version.tags["kr.decision"] == "promoted"
    record = open_trail(home / "audit").find(summary["audit"]["record_id"].split("-", 1)[1])
    assert record["inputs"]["image"] == cpu_image["cpu"] and record["outcome"] == "promoted"
    assert cpu_image["commit"][:12] in record["inputs"]["code_version"]
    assert json.loads((out / "summary.json").read_text())["total_wall_s"] > 0
    print(f"containers: {summary['total_wall_s']:.0f} s")
