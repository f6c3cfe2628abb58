"""The whole system in containers on a real Docker engine, as a site without Kubernetes would run it:

- the MLflow server image runs as a container with basic auth, its backend store and auth database in PostgreSQL
  (Debian's package, started here) and its artifacts in an S3 API (moto's server);
- the smoke pipeline runs every task in its own container of the CPU image (`kr run --image`, kfp.local's
  DockerRunner), reads BreastMNIST from the S3 API (`--dataset s3://...`, MD5 checked), tracks and registers into the
  containerized MLflow with a pipeline user's basic-auth credentials from the environment, and writes its audit
  trail to S3;
- the champion is served from a container of the CPU image (`kr serve`: verified against the trail, then MLflow's
  scoring server) and answers real test images.

Both images are built air-gapped from this checkout (tests/docker_engine.py's session fixtures). Everything started
here is stopped at the end.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from datagen import REAL_ROOT, kr, needs_real
from docker_engine import DOCKER, ROOT, docker
from servers import HOST, clean_env, free_port, moto_server, postgres_server
from test_run_e2e import LENIENT, MODEL, check_summary, sets

from kr.governance.trail import open_trail

pytestmark = [pytest.mark.e2e, pytest.mark.docker, needs_real, pytest.mark.timeout(3600)]

PIPELINE_USER = "kr-pipeline"


def call(url: str, auth: tuple[str, str] | None = None, body: dict | None = None, timeout: float = 60) -> tuple:
    """(status, parsed JSON or text) of a GET, or a POST of `body` as JSON, with basic auth when given."""
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def wait_for(url: str, name: str, timeout: float = 240) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if call(url, timeout=5)[0] == 200:
                return
        except OSError:
            pass
        if docker("inspect", "-f", "{{.State.Running}}", name, check=False).stdout.strip() != "true":
            raise AssertionError(f"container {name} stopped:\n{docker('logs', name, check=False).stdout[-3000:]}")
        time.sleep(2)
    raise AssertionError(
        f"{url} did not answer in {timeout:.0f} s:\n{docker('logs', name, check=False).stderr[-3000:]}"
    )


@contextmanager
def container(
    name: str, image: str, env: dict[str, str], args: list[str], logs: Path, mounts: list[str] = ()
) -> Iterator[str]:
    """`docker run -d` on the host network (the servers here listen on 127.0.0.1); its log is kept in `logs`, then
    it is removed."""
    flags = [f"--env={k}={v}" for k, v in env.items()] + [f"--volume={m}" for m in mounts]
    docker("run", "-d", "--name", name, "--network", "host", *flags, image, *args)
    try:
        yield name
    finally:
        done = docker("logs", name, check=False)
        (logs / f"{name}.log").write_text(done.stdout + done.stderr)
        subprocess.run([DOCKER, "rm", "-f", name], capture_output=True, check=False)


def test_pipeline_mlflow_and_serving_all_in_containers(cpu_image, mlflow_image, tmp_path: Path) -> None:
    from kr.data import load_dataset
    from mlflow import MlflowClient

    tag = secrets.token_hex(4)
    admin = ("admin", secrets.token_urlsafe(12))
    pipeline = (PIPELINE_USER, secrets.token_urlsafe(12))
    with moto_server(log_dir=tmp_path) as s3, postgres_server(tmp_path, ("mlflow", "mlflow_auth")) as pg:
        bucket = s3.create_bucket()
        s3.client().upload_file(str(REAL_ROOT / "breastmnist.npz"), bucket, "data/breastmnist.npz")
        port = free_port()
        uri = f"http://{HOST}:{port}"
        server_env = {
            **s3.env,
            "MLFLOW_BACKEND_STORE_URI": pg.uri("mlflow"),
            "MLFLOW_AUTH_DATABASE_URI": pg.uri("mlflow_auth"),
            "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{bucket}/mlflow",
            "MLFLOW_HOST": HOST,
            "MLFLOW_PORT": str(port),
            "MLFLOW_WORKERS": "1",
            "MLFLOW_SERVER_ALLOWED_HOSTS": f"{HOST}:{port},localhost:{port}",
            "MLFLOW_AUTH_ADMIN_PASSWORD": admin[1],
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
            "KR_MLFLOW_AUTH_TEMPLATE": "/etc/kr/basic_auth.ini",
        }
        ini = ROOT / "infra" / "base" / "mlflow" / "basic_auth.ini"  # the cluster's ConfigMap: NO_PERMISSIONS default
        mount = [f"{ini}:/etc/kr/basic_auth.ini:ro"]
        with container(f"kr-mlflow-{tag}", mlflow_image, server_env, [], tmp_path, mount) as name:
            wait_for(f"{uri}/health", name)
            # basic auth is on: nothing without credentials; the admin makes the pipeline's own user
            assert call(f"{uri}/api/2.0/mlflow/experiments/search?max_results=1")[0] == 401
            made = call(f"{uri}/api/2.0/mlflow/users/create", admin, {"username": pipeline[0], "password": pipeline[1]})
            assert made[0] == 200, made

            home, out = tmp_path / "home", tmp_path / "run"
            env = clean_env(
                {**s3.env, "KR_HOME": str(home), "MLFLOW_TRACKING_USERNAME": pipeline[0]}
                | {"MLFLOW_TRACKING_PASSWORD": pipeline[1]}
            )
            audit = f"s3://{bucket}/audit"
            args = ["run", "--profile", "smoke", "--dataset", f"s3://{bucket}/data/breastmnist.npz", "--out", str(out)]
            args += ["--image", cpu_image["cpu"], "--tracking-uri", uri, "--audit-uri", audit]
            done = kr(*args, *sets(LENIENT), env=env, timeout=3000)
            assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
            summary = check_summary(out, n_classes=2, runner="kfp.local/docker")
            print(f"containers: {summary['total_wall_s']:.0f} s")

            # the data came from the S3 API, MD5-checked, and was not copied into the artifact store
            assert summary["dataset"]["md5"] == "750601b1f35ba3300ea97c75c52ff8f6"
            assert not [k for k in s3.keys(bucket, "mlflow/") if k.endswith(".npz")]
            # registered in the containerized MLflow by the pipeline user, and recorded in the trail with the image
            assert summary["outcome"] == "promoted"
            os.environ.update({"MLFLOW_TRACKING_USERNAME": pipeline[0], "MLFLOW_TRACKING_PASSWORD": pipeline[1]})
            try:
                client = MlflowClient(tracking_uri=uri, registry_uri=uri)
                version = client.get_model_version_by_alias(MODEL, "champion")
            finally:
                for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                    os.environ.pop(key, None)
            assert version.version == summary["registry"]["version"] and version.tags["kr.decision"] == "promoted"
            assert any(k.endswith("MLmodel") for k in s3.keys(bucket, "mlflow/"))
            record = open_trail(audit, client=s3.client()).find(summary["audit"]["record_id"].split("-", 1)[1])
            assert record["inputs"]["image"] == cpu_image["cpu"] and record["outcome"] == "promoted"
            assert cpu_image["commit"][:12] in record["inputs"]["code_version"]
            assert f"s3://{bucket}/data/breastmnist.npz" in json.dumps(record["inputs"])

            # the champion served from a container of the CPU image, verified against the trail first
            serve_port = free_port()
            serve_env = {**s3.env, "MLFLOW_TRACKING_URI": uri, "MLFLOW_TRACKING_USERNAME": pipeline[0]}
            serve_env["MLFLOW_TRACKING_PASSWORD"] = pipeline[1]
            serve = ["kr", "serve", "--model-name", MODEL, "--audit-uri", audit, "--host", HOST]
            with container(
                f"kr-serve-{tag}", cpu_image["cpu"], serve_env, [*serve, "--port", str(serve_port)], tmp_path
            ) as s:
                wait_for(f"http://{HOST}:{serve_port}/ping", s, timeout=300)
                test = load_dataset("breastmnist", REAL_ROOT)
                x = test.x_test[:4].astype(np.float32)
                status, answer = call(f"http://{HOST}:{serve_port}/invocations", body={"inputs": x.tolist()})
    assert status == 200, answer
    rows = answer["predictions"]
    assert len(rows) == 4
    probs = np.asarray([list(r["probabilities"].values()) if isinstance(r, dict) else r for r in rows])
    assert probs.shape == (4, 2) and np.allclose(probs.sum(1), 1, atol=1e-4)
    print(f"served predictions for test images {test.y_test[:4].tolist()}: {rows}")
