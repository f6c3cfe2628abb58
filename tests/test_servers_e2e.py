"""The smoke pipeline against real servers on 127.0.0.1: an `mlflow server` (SQLite) whose artifacts live on a moto
S3 server, and the audit trail on that S3 too. Then the champion is served with `mlflow models serve`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from datagen import REAL_ROOT, kr, needs_real
from servers import BIN, HOST, ServerProcess, clean_env, free_port, mlflow_server, moto_server
from test_run_e2e import IMPOSSIBLE, LENIENT, MODEL, check_summary, sets

pytestmark = [pytest.mark.e2e, needs_real]


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict:
    """moto + mlflow server; a passing smoke run, then one with a failing gate (same run folder)."""
    root = tmp_path_factory.mktemp("servers")
    with moto_server(log_dir=root) as s3:
        bucket = s3.create_bucket()
        with mlflow_server(root / "mlflow", f"s3://{bucket}/mlflow", s3.env) as server:
            env = clean_env({**s3.env, "KR_HOME": str(root / "home")})
            audit = f"s3://{bucket}/audit"
            common = ["run", "--profile", "smoke", "--data-root", str(REAL_ROOT), "--out", str(root / "run")]
            common += ["--tracking-uri", server.uri, "--audit-uri", audit]
            first = kr(*common, *sets(LENIENT), env=env)
            assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
            passed = check_summary(root / "run", n_classes=2)
            second = kr(*common, *sets(IMPOSSIBLE), env=env)
            assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
            rejected = check_summary(root / "run", n_classes=2)
            yield {
                "s3": s3,
                "bucket": bucket,
                "uri": server.uri,
                "env": env,
                "audit": audit,
                "root": root,
                "passed": passed,
                "rejected": rejected,
            }


def test_champion_moves_only_for_the_passing_run(stack) -> None:
    from mlflow import MlflowClient

    assert stack["passed"]["registry"]["alias"] == "champion" and stack["passed"]["registry"]["version"] == "1"
    assert stack["rejected"]["registry"]["alias"] is None and stack["rejected"]["registry"]["version"] == "2"
    c = MlflowClient(tracking_uri=stack["uri"], registry_uri=stack["uri"])
    assert str(c.get_model_version_by_alias(MODEL, "champion").version) == "1"
    # the server proxies artifacts to S3: the logged student model is in the bucket, not on this disk
    keys = stack["s3"].keys(stack["bucket"], "mlflow/")
    assert any(k.endswith("MLmodel") for k in keys), keys[:20]
    assert any(k.endswith("summary.json") for k in keys)


def test_audit_trail_on_s3_verifies_and_names_a_changed_record(stack) -> None:
    env = stack["env"]
    ok = kr("audit", "verify", "--uri", stack["audit"], env=env)
    assert ok.returncode == 0 and "2 record(s)" in ok.stdout + ok.stderr, ok.stdout + ok.stderr
    client, key = stack["s3"].client(), "audit/000002.json"
    original = client.get_object(Bucket=stack["bucket"], Key=key)["Body"].read()
    changed = bytearray(original)
    changed[changed.index(b'"rejected"') + 1] ^= 0x01  # one bit of one byte
    client.put_object(Bucket=stack["bucket"], Key=key, Body=bytes(changed))
    try:
        bad = kr("audit", "verify", "--uri", stack["audit"], env=env)
        assert bad.returncode == 1 and "000002.json" in bad.stdout + bad.stderr, bad.stdout + bad.stderr
    finally:
        client.put_object(Bucket=stack["bucket"], Key=key, Body=original)


def test_served_champion_answers_a_real_test_image(stack) -> None:
    from kr.data import load_dataset

    port = free_port()
    env = clean_env({**stack["env"], "MLFLOW_TRACKING_URI": stack["uri"]})
    # `kr serve`: the champion's files are matched to its trail record before anything of them is loaded
    cmd = [str(BIN / "kr"), "serve", "--model-name", MODEL, "--tracking-uri", stack["uri"]]
    cmd += ["--audit-uri", stack["audit"], "--host", HOST, "--port", str(port)]
    server = ServerProcess.start("kr serve", cmd, env, stack["root"] / "serve.log")
    try:
        server.wait_until(lambda: _answers(f"http://{HOST}:{port}/ping"), 120)
        x = load_dataset("breastmnist", REAL_ROOT).x_test[:3].astype(np.float32)

        def ask(body: dict) -> list:
            request = urllib.request.Request(
                f"http://{HOST}:{port}/invocations",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())["predictions"]

        rows = ask({"inputs": x.tolist()})
        probs = np.asarray(ask({"inputs": x.tolist(), "params": {"output": "probabilities"}}))
    finally:
        server.stop()
    assert probs.shape == (3, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    names = ["malignant", "normal, benign"]  # BreastMNIST's, from medmnist's catalogue
    assert [r["class"] for r in rows] == [names[k] for k in probs.argmax(1)]
    assert np.allclose([[r["probabilities"][n] for n in names] for r in rows], probs, atol=1e-6)
    # the served model is the registered one: same answer as loading it in a fresh process
    local = subprocess.run(
        [
            sys.executable,
            "-c",
            "import mlflow.pyfunc, numpy as np, json, sys; "
            f"m = mlflow.pyfunc.load_model('models:/{MODEL}@champion'); "
            "x = np.asarray(json.load(sys.stdin), dtype=np.float32); "
            "print(json.dumps(np.asarray(m.predict(x, params={'output': 'probabilities'})).tolist()))",
        ],
        input=json.dumps(x.tolist()),
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    assert np.allclose(probs, json.loads(local.stdout), atol=1e-5)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        time.sleep(0.5)
        return False


def test_no_credentials_in_tracked_params(stack) -> None:
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=stack["uri"])
    runs = c.search_runs([c.get_experiment_by_name("knowledge-recycling").experiment_id])
    secret = stack["env"]["AWS_SECRET_ACCESS_KEY"]
    for run in runs:
        assert all(secret != v for v in run.data.params.values())
        assert all(secret != v for v in run.data.tags.values())
    assert not any(Path(stack["root"], "run").rglob("*.env"))
