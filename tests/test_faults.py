"""Faults at the end of a run, injected into real servers on 127.0.0.1 (an `mlflow server`, a moto S3 trail):
what the registry, the trail and the conclusion say afterwards must agree, and nothing recorded may be lost.

Each test is a row of docs/reliability.md's fault table. A fault is injected by stopping the real server, or by
pointing the client at a closed port at the moment named (a network partition), never by a stand-in server.
"""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from servers import free_port, mlflow_server, moto_server
from test_registry import passing_gates

from kr.config import ClassifierConfig, RunConfig
from kr.governance import promotion, registry
from kr.governance.trail import open_trail
from kr.method.classifier import build_classifier, save_classifier
from kr.results import DataResult, GatesResult, RunResults, StudentResult
from mlflow import MlflowClient

EXAMPLE = np.zeros((2, 1, 28, 28), np.uint8)
MD5 = "0" * 32


@pytest.fixture(autouse=True)
def _fail_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unreachable server must fail in seconds, not after MLflow's minutes of retries."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory):
    with moto_server(log_dir=tmp_path_factory.mktemp("moto-faults")) as server:
        yield server


@pytest.fixture
def stack(tmp_path: Path, s3, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """An mlflow server (SQLite, artifacts on disk) and a trail in a fresh moto bucket; a tiny student file."""
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    artifacts = (tmp_path / "mlartifacts").as_uri()
    student = save_classifier(
        build_classifier(ClassifierConfig(width=4, blocks_per_stage=1), 1, 2, 28, 0), tmp_path / "student.pt"
    )
    with mlflow_server(tmp_path / "mlflow", artifacts, {}) as server:
        MlflowClient(tracking_uri=server.uri).create_experiment("faults")  # before runs race to create it
        yield {
            "server": server,
            "tmp": tmp_path,
            "artifacts": artifacts,
            "audit": f"s3://{s3.create_bucket()}/audit",
            "student": student,
            "s3_env": s3.env,
        }


def config(stack: dict, key: str, uri: str | None = None) -> RunConfig:
    return RunConfig.model_validate(
        {
            "tracking": {"uri": uri or stack["server"].uri, "model_name": stack.get("model", "m")},
            "audit": {"uri": stack["audit"]},
            "run": {"run_key": key},
            "gates": {"champion": {"tolerance_pp": 1.0}},
        }
    )


def results(cfg: RunConfig, accuracy: float) -> RunResults:
    """What the steps before the conclusion hand it: passing gates and a student scored `accuracy`."""
    gates = passing_gates(cfg, accuracy)
    c = MlflowClient(tracking_uri=cfg.tracking.uri)
    exp = c.get_experiment_by_name("faults")
    run_id = c.create_run(exp.experiment_id).info.run_id
    evaluation = {"accuracy": accuracy, "auc": accuracy}
    student = StudentResult(
        path="student.pt",
        best_epoch=1,
        train_s=1.0,
        val=evaluation,
        test=evaluation,
        pool_images=10,
        images_per_epoch=10,
        mlflow_run_id=run_id,
    )
    data = DataResult(info={"md5": MD5, "name": "breastmnist", "channels": 1}, majority_rate_test=0.5, expectations={})
    return RunResults(data=data, student=student, gates=GatesResult(**gates))


def conclude(stack: dict, key: str, accuracy: float, uri: str | None = None) -> dict:
    cfg = config(stack, key, uri)
    run_dir = stack["tmp"] / key
    run_dir.mkdir(exist_ok=True)
    return promotion.conclude(
        cfg, run_dir, stack["student"], EXAMPLE, results(cfg, accuracy), "2026-01-01T00:00:00+00:00", True
    )


def champion(uri: str, model: str = "m") -> str | None:
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    aliases = c.get_registered_model(model).aliases or {}
    return str(aliases["champion"]) if "champion" in aliases else None


def decisions(uri: str, model: str = "m") -> dict[str, str]:
    """run key -> kr.decision tag of every version of `model`."""
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return {v.tags["kr.run_key"]: v.tags.get("kr.decision") for v in c.search_model_versions(f"name = '{model}'")}


@contextmanager
def restarted(stack: dict):
    """The same MLflow store (SQLite file, artifact folder) behind a fresh server: the outage is over."""
    with mlflow_server(stack["tmp"] / "mlflow", stack["artifacts"], {}) as server:
        yield server.uri


@pytest.mark.fault
def test_two_runs_concluding_at_once_leave_the_better_champion(stack) -> None:
    """20 repetitions of two runs concluding at once on one model name (0.90 and 0.80, tolerance 1 pp): the 0.90
    student is champion every time, both decisions are in the trail, and the registry tags say the same."""
    uri, trail = stack["server"].uri, open_trail(stack["audit"])
    for rep in range(20):
        stack["model"] = f"race-{rep}"
        start = threading.Barrier(2)

        def run(key: str, accuracy: float, start: threading.Barrier = start) -> dict:
            start.wait()
            return conclude(stack, key, accuracy)

        with ThreadPoolExecutor(2) as pool:
            good, bad = pool.map(run, [f"good-{rep}", f"bad-{rep}"], [0.90, 0.80])
        assert champion(uri, f"race-{rep}") == good["registry"]["version"], (rep, good, bad)
        assert good["outcome"] == "promoted"
        tags = decisions(uri, f"race-{rep}")
        for key, outcome in ((f"good-{rep}", good["outcome"]), (f"bad-{rep}", bad["outcome"])):
            assert trail.find(key)["outcome"] == outcome == tags[key]
        if bad["outcome"] == "promoted":  # it went first; the good one then replaced it, and says so
            assert trail.find(f"good-{rep}")["outputs"]["registry"]["previous_champion"] == bad["registry"]["version"]
    assert open_trail(stack["audit"]).verify().ok


@pytest.mark.fault
def test_mlflow_down_at_registration(stack) -> None:
    """The registry is down when the run registers: the conclusion fails, the exit handler's record says failed,
    the champion is untouched, and no version claims a decision."""
    first = conclude(stack, "champion-run", 0.85)
    stack["server"].process.stop()
    with pytest.raises(Exception, match="(?i)connect|refused|max retries"):
        conclude(stack, "unlucky-run", 0.95)
    cfg = config(stack, "unlucky-run")
    reference = promotion.record_failure(
        cfg, stack["tmp"] / "unlucky-run", "2026-01-01T00:00:00+00:00", "registry down"
    )
    record = open_trail(stack["audit"]).get(reference["record_id"])
    assert record["outcome"] == "failed" and record["error"] == "registry down"
    with restarted(stack) as uri:
        assert champion(uri) == first["registry"]["version"]
        assert decisions(uri) == {"champion-run": "promoted"}


@pytest.mark.fault
def test_mlflow_down_at_the_alias_move(stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry goes down after the trail recorded a promotion, before the alias moved: the conclusion fails,
    the champion is untouched, the version stays pending; once MLflow is back, the retry completes the recorded
    decision (alias moved, version tagged promoted) and the trail keeps one record for the run."""
    first = conclude(stack, "champion-run", 0.85)
    move = registry.set_champion

    def outage(cfg, version):
        stack["server"].process.stop()
        return move(cfg, version)

    monkeypatch.setattr(registry, "set_champion", outage)
    with pytest.raises(Exception, match="(?i)connect|refused|max retries"):
        conclude(stack, "better-run", 0.95)
    monkeypatch.setattr(registry, "set_champion", move)
    trail = open_trail(stack["audit"])
    assert trail.find("better-run")["outcome"] == "promoted"
    with restarted(stack) as uri:
        assert champion(uri) == first["registry"]["version"]
        assert decisions(uri)["better-run"] == "pending"
        again = conclude(stack, "better-run", 0.95, uri=uri)  # what KFP's retry of the step does
        assert again["outcome"] == "promoted" and champion(uri) == again["registry"]["version"]
        assert decisions(uri) == {"champion-run": "promoted", "better-run": "promoted"}
    assert [r["run_id"] for r in trail.records()] == ["champion-run", "better-run"] and trail.verify().ok


@pytest.mark.fault
def test_s3_down_at_the_trail_append(stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """The trail's S3 becomes unreachable at the append: no alias moves without its record, the version is tagged
    failed by the exit handler, and the trail holds no half record."""
    from kr.governance.trail import Trail
    from kr.governance.trail.stores import s3_client

    first = conclude(stack, "champion-run", 0.85)
    append, endpoint = Trail.append, os.environ["AWS_ENDPOINT_URL_S3"]

    def partition(self, body):
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
        self.store.client = s3_client()
        return append(self, body)

    monkeypatch.setattr(Trail, "append", partition)
    with pytest.raises(Exception, match="(?i)cannot|connect"):
        conclude(stack, "cut-off-run", 0.95)
    cfg = config(stack, "cut-off-run")
    with pytest.raises(Exception, match="(?i)cannot|connect"):
        promotion.record_failure(cfg, stack["tmp"] / "cut-off-run", "2026-01-01T00:00:00+00:00", "trail down")
    uri = stack["server"].uri
    assert champion(uri) == first["registry"]["version"]
    assert decisions(uri) == {"champion-run": "promoted", "cut-off-run": "failed"}
    monkeypatch.setattr(Trail, "append", append)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)  # the partition is over
    trail = open_trail(stack["audit"])
    assert [r["run_id"] for r in trail.records()] == ["champion-run"] and trail.verify().ok


@pytest.mark.fault
def test_a_repeated_run_key_is_refused_before_any_work(stack) -> None:
    """A second run presenting the key of a concluded run is refused by the first task, with a message."""
    from kr.steps import resolve_config

    conclude(stack, "once", 0.85)
    scalars = {
        "dataset": "breastmnist",
        "run_dir": str(stack["tmp"] / "second"),
        "run_key": "once",
        "tracking_uri": stack["server"].uri,
        "audit_uri": stack["audit"],
        "model_name": "m",
    }
    with pytest.raises(promotion.RunKeyUsed, match="already used by trail record"):
        resolve_config(scalars, [], {}, stack["tmp"] / "config.json")
    note = json.loads((stack["tmp"] / "second" / "failure.json").read_text())
    assert note["step"] == "resolve_config"


@pytest.mark.fault
def test_run_keys_do_not_repeat_under_a_seeded_random() -> None:
    """kfp.local's run id comes from Python's global `random`: seeded, it repeats. kr's keys do not."""
    import random

    from kr.pipelines.local import new_run_key

    random.seed(0)
    first = new_run_key()
    random.seed(0)
    assert new_run_key() != first


@pytest.mark.fault
def test_the_exit_handler_completes_a_recorded_promotion(stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that recorded its promotion and then died before the alias moved (no retry left): the exit handler
    moves the alias under the lease and writes a summary that tells the trail's story (promoted, with the version),
    not "failed" beside a champion nobody recorded."""
    from kr.steps import finalize_run

    conclude(stack, "champion-run", 0.85)
    monkeypatch.setattr(registry, "set_champion", lambda cfg, version: (_ for _ in ()).throw(SystemExit("killed")))
    with pytest.raises(SystemExit):
        conclude(stack, "dying-run", 0.95)
    monkeypatch.undo()
    for key, value in stack["s3_env"].items():
        monkeypatch.setenv(key, value)
    run_dir = stack["tmp"] / "dying-run"
    scalars = {
        "dataset": "breastmnist",
        "run_dir": str(run_dir),
        "run_key": "dying-run",
        "tracking_uri": stack["server"].uri,
        "audit_uri": stack["audit"],
        "model_name": "m",
        "started_at": "2026-01-01T00:00:00+00:00",
    }
    finalize_run(scalars, [], {}, "kfp.local", failed=True, error="the pod was killed")
    summary = json.loads((run_dir / "summary.json").read_text())
    version = open_trail(stack["audit"]).find("dying-run")["outputs"]["registry"]["version"]
    assert summary["status"] == "failed" and summary["outcome"] == "promoted"
    assert summary["registry"]["version"] == version == champion(stack["server"].uri)
    assert decisions(stack["server"].uri)["dying-run"] == "promoted"


@pytest.mark.fault
def test_logging_the_dataset_leaves_the_parent_run_running(tmp_path: Path) -> None:
    """The parent run stays RUNNING until `summarize` closes it: it used to read FINISHED as soon as the dataset was
    logged, so a run that then failed in its conclusion showed as a finished run in MLflow."""
    from datagen import write_npz

    from kr.data import load_dataset
    from kr.run import tracking

    cfg = RunConfig.model_validate(
        {"tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}, "run": {"run_key": "k"}}
    )
    parent = tracking.open_parent(cfg, tmp_path)
    tracking.log_dataset(cfg, parent, load_dataset(str(write_npz(tmp_path / "tiny.npz"))))
    run = MlflowClient(tracking_uri=cfg.tracking.uri).get_run(parent)
    assert run.info.status == "RUNNING" and run.inputs.dataset_inputs[0].dataset.digest
