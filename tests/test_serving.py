"""Serving on a real embedded MLflow store (SQLite, artifacts in a folder) and a real folder trail: the student is
logged without pickle, the run it is logged into keeps its status, and a version is served only when its files match
the digest its audit record keeps."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import mlflow
from kr.cli import app
from kr.config import ClassifierConfig
from kr.governance import serving
from kr.governance.trail import open_trail, sha256_file
from kr.method.classifier import build_classifier, load_classifier, save_classifier
from mlflow import MlflowClient

NAME = "m"


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite database with its tables made once (several seconds) and copied for each test."""
    path = tmp_path_factory.mktemp("db") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(tmp_path: Path, empty_db: Path) -> dict:
    shutil.copy(empty_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment("t", artifact_location=(tmp_path / "mlartifacts").as_uri())
    student = save_classifier(
        build_classifier(ClassifierConfig(width=4, blocks_per_stage=1), 1, 2, 28, 0), tmp_path / "student.pt"
    )
    return {
        "uri": uri,
        "client": client,
        "experiment": exp,
        "student": student,
        "artifacts": tmp_path / "mlartifacts",
        "trail": str(tmp_path / "audit"),
    }


class PickledClassifier(torch.nn.Module):
    """What the registry used to log with MLflow's PyTorch flavour (pickled whole): pixels in, probabilities out."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x / 127.5 - 1.0), dim=1)


def blank() -> np.ndarray:
    return np.zeros((1, 1, 28, 28), np.uint8)


def log(store: dict, class_names: list[str] | None = None) -> dict:
    run_id = store["client"].create_run(store["experiment"]).info.run_id
    uri, model_id, digest = serving.log_student_model(store["uri"], run_id, store["student"], blank(), class_names)
    return {"run_id": run_id, "uri": uri, "model_id": model_id, "digest": digest}


def register(store: dict, logged: dict, **body) -> str:
    """Register `logged` as a new version, point champion at it, append its trail record (`body` over the default
    one) and tag the version with it."""
    client = store["client"]
    if not client.search_registered_models(f"name = '{NAME}'"):
        client.create_registered_model(NAME)
    version = client.create_model_version(
        NAME, source=logged["uri"], run_id=logged["run_id"], model_id=logged["model_id"]
    ).version
    client.set_registered_model_alias(NAME, "champion", version)
    block = {"model_name": NAME, "version": str(version), "promoted": True, "artifact_sha256": logged["digest"]}
    entry = open_trail(store["trail"]).append(
        {
            "run_id": f"run-{version}",
            "outcome": "promoted",
            "outputs": {"model_sha256": sha256_file(store["student"]), "registry": block},
        }
        | body
    )
    client.set_model_version_tag(NAME, version, serving.AUDIT_RECORD_TAG, entry["record_id"])
    client.set_model_version_tag(NAME, version, serving.AUDIT_HASH_TAG, entry["record_hash"])
    return str(version)


def downloaded(store: dict, model_id: str, dst: Path) -> Path:
    location = store["client"].get_logged_model(model_id).artifact_location
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(dst)))


def model_folder(store: dict, model_id: str) -> Path:
    """Where the store keeps the logged model's files (what an attacker with write access to it would change)."""
    return store["artifacts"] / "models" / model_id / "artifacts"


def test_logged_student_is_pickle_free_and_its_run_keeps_its_status(store: dict, tmp_path: Path) -> None:
    logged = log(store)
    run = store["client"].get_run(logged["run_id"])
    assert run.info.status == "RUNNING" and run.info.end_time is None and mlflow.active_run() is None
    assert logged["uri"] == f"models:/{logged['model_id']}"
    assert store["client"].get_logged_model(logged["model_id"]).source_run_id == logged["run_id"]

    local = downloaded(store, logged["model_id"], tmp_path / "dl")
    assert serving.artifact_digest(local) == logged["digest"]
    files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    assert "serving_model.py" in files and "MLmodel" in files
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".pth"))], files
    for f in files:
        head = (local / f).read_bytes()[:2]
        assert not (head[:1] == b"\x80" and head[1:] in (b"\x02", b"\x03", b"\x04", b"\x05")), f"{f} is a pickle"
    assert serving.pickle_files(local) == []
    # the weights are the student's own file, byte for byte, in torch's zip format (read with weights_only=True)
    (weights,) = [f for f in files if f.startswith("artifacts/")]
    assert sha256_file(local / weights) == sha256_file(store["student"])
    assert (local / weights).read_bytes()[:2] == b"PK"
    # the stored input example is the blank image passed in
    example = json.loads((local / "input_example.json").read_text())
    assert np.asarray(example).shape == (1, 1, 28, 28) and not np.asarray(example).any()


def test_artifact_digest_is_what_sha256sum_gives(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    (folder / "artifacts" / "sub dir").mkdir(parents=True)
    (folder / "MLmodel").write_text("flavors: {}\n")
    (folder / "artifacts" / "w.pt").write_bytes(b"PK\x03\x04weights")
    (folder / "artifacts" / "sub dir" / "Ä.txt").write_text("x")
    (folder / "empty").write_bytes(b"")
    if shutil.which("sha256sum") is None:
        pytest.skip("no coreutils sha256sum")
    script = "find . -type f | sed 's|^\\./||' | LC_ALL=C sort | xargs -d '\\n' sha256sum | sha256sum"
    out = subprocess.run(["bash", "-c", script], cwd=folder, capture_output=True, text=True, check=True).stdout
    assert serving.artifact_digest(folder) == out.split()[0]
    before = serving.artifact_digest(folder)
    (folder / "artifacts" / "w.pt").rename(folder / "artifacts" / "v.pt")  # a rename alone changes the digest
    assert serving.artifact_digest(folder) != before
    with pytest.raises(serving.ServingError, match="no files"):
        serving.artifact_digest(tmp_path / "nothing-here")


def test_verified_champion_predicts_the_students_probabilities(store: dict) -> None:
    """By class name (the default), or as bare probability rows with output="probabilities"; the scoring server
    sends either as its "predictions"."""
    from mlflow.pyfunc.scoring_server import predictions_to_json

    names = ["malignant", "normal, benign"]
    logged = log(store, names)
    version = register(store, logged)
    local, record = serving.fetch_verified(store["uri"], NAME, "champion", store["trail"])
    try:
        assert record["outputs"]["registry"]["version"] == version and record["outcome"] == "promoted"
        assert serving.artifact_digest(local) == logged["digest"]
        x = np.random.default_rng(0).integers(0, 256, (5, 1, 28, 28)).astype(np.float32)
        model = mlflow.pyfunc.load_model(str(local))
        probs = model.predict(x, params={"output": "probabilities"})
        student = load_classifier(store["student"]).cpu().eval()
        with torch.no_grad():
            expected = torch.softmax(student(torch.from_numpy(x) / 127.5 - 1.0), dim=1).numpy()
        assert probs.shape == (5, 2) and probs.dtype == np.float32
        np.testing.assert_allclose(probs, expected, atol=1e-6)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)

        rows = model.predict(x)
        assert [r["class"] for r in rows] == [names[k] for k in expected.argmax(axis=1)]
        for row, p in zip(rows, expected, strict=True):
            assert list(row["probabilities"]) == names
            np.testing.assert_allclose(list(row["probabilities"].values()), p, atol=1e-6)
        served = io.StringIO()
        predictions_to_json(rows, served)
        assert json.loads(served.getvalue())["predictions"][0]["probabilities"].keys() == set(names)
        assert model.metadata.get_params_schema().to_dict()[0]["name"] == "output"
    finally:
        shutil.rmtree(local.parent)


def test_a_model_logged_without_class_names_names_classes_by_index(store: dict, tmp_path: Path) -> None:
    logged = log(store)
    model = mlflow.pyfunc.load_model(str(downloaded(store, logged["model_id"], tmp_path / "dl")))
    rows = model.predict(blank().astype(np.float32))
    assert list(rows[0]["probabilities"]) == ["0", "1"] and rows[0]["class"] in ("0", "1")
    with pytest.raises(ValueError, match="3 class names for a student with 2 outputs"):
        log(store, ["a", "b", "c"])


@pytest.mark.fault
@pytest.mark.parametrize("target", ["weights", "serving_model.py", "MLmodel"])
def test_a_changed_file_in_the_store_is_refused(store: dict, tmp_path: Path, target: str) -> None:
    logged = log(store)
    version = register(store, logged)
    folder = model_folder(store, logged["model_id"])
    if target == "weights":
        other = build_classifier(ClassifierConfig(width=4, blocks_per_stage=1), 1, 2, 28, seed=1)
        save_classifier(other, folder / "artifacts" / store["student"].name)
    elif target == "serving_model.py":
        path = folder / target
        path.write_text(path.read_text() + "\nimport os  # anything could run here\n")
    else:
        path = folder / target
        path.write_text(path.read_text().replace("loaders.code_model", "model"))
    with pytest.raises(serving.ServingError) as err:
        serving.fetch_verified(store["uri"], NAME, "champion", store["trail"])
    message = str(err.value)
    assert f"version {version}" in message and logged["digest"] in message and "do not match" in message
    found = re.search(r"found ([0-9a-f]{64})", message)
    assert found and found.group(1) != logged["digest"]


def test_a_record_with_another_digest_is_refused(store: dict) -> None:
    logged = log(store)
    register(store, logged | {"digest": "0" * 64})
    with pytest.raises(serving.ServingError, match=f"expected artifact digest {'0' * 64}, found {logged['digest']}"):
        serving.fetch_verified(store["uri"], NAME, "champion", store["trail"])


def test_versions_without_a_valid_promoted_record_are_refused(store: dict, tmp_path: Path) -> None:
    client = store["client"]
    logged = log(store)
    version = register(store, logged, outcome="rejected")

    def refused(match: str, trail: str | None = store["trail"]) -> None:
        with pytest.raises(serving.ServingError, match=match):
            serving.fetch_verified(store["uri"], NAME, "champion", trail)

    refused("outcome 'rejected', expected 'promoted'")
    refused("no audit trail given", trail=None)
    refused("cannot be read", trail=str(tmp_path / "another-trail"))  # the record is not in this trail
    # a record of another version
    other = register(store, logged, run_id="run-other", outputs={"registry": {"model_name": NAME, "version": "9"}})
    refused(f"describes {NAME} version 9, expected {NAME} version {other}")
    # the hash tag must be the record's
    client.set_registered_model_alias(NAME, "champion", version)
    client.set_model_version_tag(NAME, version, serving.AUDIT_HASH_TAG, "f" * 64)
    refused("kr.audit_record_hash")
    client.delete_model_version_tag(NAME, version, serving.AUDIT_RECORD_TAG)
    refused("has no kr.audit_record_id tag")
    client.delete_registered_model_alias(NAME, "champion")
    refused("no champion for m: no version has been promoted")


@pytest.mark.fault
@pytest.mark.parametrize("serialization", ["pickle", "pt2"])
def test_a_pytorch_flavour_model_is_refused(store: dict, tmp_path: Path, serialization: str) -> None:
    """A version logged with MLflow's PyTorch flavour (the whole module pickled, or MLflow 3's default torch.export
    archive) is refused even with a record that holds its true digest."""
    client = store["client"]
    run_id = client.create_run(store["experiment"]).info.run_id
    mlflow.set_tracking_uri(store["uri"])
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            PickledClassifier(load_classifier(store["student"]).cpu()).eval(),
            name="student",
            input_example=blank().astype(np.float32),
            pip_requirements=serving.pip_requirements(),
            serialization_format=serialization,
        )
    digest = serving.artifact_digest(downloaded(store, info.model_id, tmp_path / "dl"))
    register(store, {"run_id": run_id, "uri": info.model_uri, "model_id": info.model_id, "digest": digest})
    with pytest.raises(serving.ServingError, match="expected only python_function"):
        serving.fetch_verified(store["uri"], NAME, "champion", store["trail"])


def test_kr_serve_refuses_unverified_and_serves_the_verified_copy(store: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    logged = log(store)
    register(store, logged | {"digest": "0" * 64})
    runner = CliRunner()
    args = ["serve", "--model-name", NAME, "--tracking-uri", store["uri"], "--audit-uri", store["trail"]]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "not serving" in result.output and "do not match" in result.output

    register(store, logged)  # a new version, recorded with the true digest, is now the champion
    served = {}

    def fake_call(cmd: list[str], env: dict) -> int:
        local = Path(cmd[cmd.index("-m", 3) + 1])
        served.update(cmd=cmd, digest=serving.artifact_digest(local), folder=local)
        return 0

    monkeypatch.setattr(subprocess, "call", fake_call)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert served["digest"] == logged["digest"] and "--env-manager" in served["cmd"]
    assert not served["folder"].exists()  # the verified copy is removed when the server exits


def test_kr_serve_without_a_champion_says_why_each_version_was_not_promoted(store: dict) -> None:
    """The normal state while every run is rejected: one line, then every version's reason; no traceback."""
    client = store["client"]
    client.create_registered_model(NAME)
    reasons = {
        "1": {"kr.decision": "failed"},
        "2": {
            "kr.decision": "rejected",
            "gate.passed": "false",
            "gate.accuracy.verdict": "fail",
            "gate.accuracy.student_test_accuracy.value": "0.61",
            "gate.accuracy.student_test_accuracy.threshold": ">= 0.7",
            "gate.accuracy.student_test_accuracy.verdict": "fail",
            "gate.accuracy.teacher_minus_student_pp.verdict": "pass",
            "gate.privacy.verdict": "inconclusive",
        },
    }
    logged = log(store)
    for tags in reasons.values():
        client.create_model_version(NAME, source=logged["uri"], run_id=logged["run_id"], tags=tags)
    args = ["serve", "--model-name", NAME, "--tracking-uri", store["uri"], "--audit-uri", store["trail"]]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    lines = result.output.splitlines()
    assert lines[0] == f"error: no champion for {NAME}: no version has been promoted (2 registered)"
    assert lines[1:] == [
        "  version 2: rejected: accuracy fail (student_test_accuracy 0.61, needs >= 0.7), privacy inconclusive",
        "  version 1: failed: the run failed before its gates decided (see its audit record)",
    ]

    result = CliRunner().invoke(app, ["serve", "--model-name", "nosuch", *args[3:]])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert " ".join(result.output.split()) == f"error: no registered model 'nosuch' in {store['uri']}"


def test_through_a_tracking_server_with_proxied_artifacts(tmp_path: Path, empty_db: Path) -> None:
    """The production shape: an `mlflow server` proxying artifacts (mlflow-artifacts:/ locations); a file changed in
    its artifact destination is caught."""
    from servers import mlflow_server

    artifacts = tmp_path / "proxied"
    with mlflow_server(tmp_path / "server", artifacts.as_uri(), {}) as server:
        client = MlflowClient(tracking_uri=server.uri, registry_uri=server.uri)
        student = save_classifier(
            build_classifier(ClassifierConfig(width=4, blocks_per_stage=1), 1, 2, 28, 0), tmp_path / "student.pt"
        )
        store = {
            "uri": server.uri,
            "client": client,
            "experiment": client.create_experiment("t"),
            "student": student,
            "trail": str(tmp_path / "audit"),
        }
        logged = log(store)
        assert client.get_run(logged["run_id"]).info.status == "RUNNING"
        register(store, logged)
        assert client.get_model_version_download_uri(NAME, "1").startswith("mlflow-artifacts:/")
        local, _ = serving.fetch_verified(server.uri, NAME, "champion", store["trail"])
        assert serving.artifact_digest(local) == logged["digest"]
        shutil.rmtree(local.parent)
        (weights,) = artifacts.rglob(f"models/{logged['model_id']}/artifacts/artifacts/{student.name}")
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one bit pattern in the middle of the weights
        weights.write_bytes(bytes(data))
        with pytest.raises(serving.ServingError, match="do not match"):
            serving.fetch_verified(server.uri, NAME, "champion", store["trail"])
