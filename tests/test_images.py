"""The images, really built and run: the air-gapped build (scripts/build-base + scripts/build-images --wheelhouse,
`docker build --network none`) of the CPU component image, then checks inside it with no network.

Needs a Docker engine. One that is running is used as it is; else, as root, the test starts `dockerd` (installed with
`apt-get install -y docker.io debootstrap`) with no bridge and the vfs storage driver, and stops it at the end.
The base image (scripts/build-base) is reused when present; the image build is cached by the engine, so a second run
rebuilds nothing. Slow the first time (minutes: docs/deploy.md, "Building the images without network access"):
marked e2e and docker.
"""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.timeout(3600)]

ROOT = Path(__file__).resolve().parents[1]
BASE = os.environ.get("KR_TEST_BASE_IMAGE", "kr-base:bookworm-python3.11")
REGISTRY = "kr.test"
DOCKER = shutil.which("docker") or "docker"


def docker(*args, timeout=600, check=True, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    if check:
        assert done.returncode == 0, f"docker {' '.join(args)}: {done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done


def engine_answers() -> bool:
    if not shutil.which(DOCKER):
        return False
    return subprocess.run([DOCKER, "info"], capture_output=True, timeout=60, check=False).returncode == 0


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """A running Docker engine: the one already running, else a dockerd started here and stopped afterwards."""
    if engine_answers():
        yield None
        return
    if os.geteuid() != 0:
        pytest.skip("no Docker engine answers `docker info`, and starting dockerd needs root")
    dockerd = shutil.which("dockerd")
    if not dockerd or not shutil.which(DOCKER) or not shutil.which("debootstrap"):
        pytest.skip("no Docker engine installed: apt-get install -y docker.io debootstrap")
    log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [dockerd, "--iptables=false", "--bridge=none", "--storage-driver=vfs"], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 90
        while not engine_answers():
            assert process.poll() is None, f"dockerd exited: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"dockerd does not answer: {log.read_text()[-3000:]}"
            time.sleep(1)
        yield process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def script(*args, timeout=3000) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": str(ROOT / ".venv" / "bin" / "python"), "KR": str(ROOT / ".venv" / "bin" / "kr")}
    started = time.monotonic()
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    print(f"{args[0]}: {time.monotonic() - started:.0f} s")
    return done


@pytest.fixture(scope="module")
def base(engine) -> str:
    done = script("scripts/build-base", "--tag", BASE)
    assert "id sha256:" in done.stdout, done.stdout
    return BASE


def prebuilt(variable: str) -> dict | None:
    """An image named by `variable` instead of a build (iterating on a test): its tag and the commit it carries."""
    image = os.environ.get(variable)
    if not image:
        return None
    labels = json.loads(docker("image", "inspect", "-f", "{{json .Config.Labels}}", image).stdout)
    return {"image": image, "commit": labels["org.opencontainers.image.revision"]}


@pytest.fixture(scope="module")
def cpu_image(base, tmp_path_factory) -> dict:
    """The CPU component image built from this checkout (air-gapped); $KR_TEST_CPU_IMAGE names a prebuilt one."""
    if given := prebuilt("KR_TEST_CPU_IMAGE"):
        return {"cpu": given["image"], "commit": given["commit"]}
    out = tmp_path_factory.mktemp("images")
    lock = out / "images.lock"
    script(
        "scripts/build-images", "--registry", REGISTRY, "--no-push", "--allow-dirty", "--wheelhouse", "--images", "cpu",
        "--cpu", "--cpu-base", base, "--out", str(out / "pipeline.yaml"), "--lock", str(lock),
    )  # fmt: skip
    entries = dict(line.split("=", 1) for line in lock.read_text().splitlines() if line and not line.startswith("#"))
    return entries


@pytest.fixture(scope="module")
def mlflow_image(base, tmp_path_factory) -> str:
    """The MLflow server image (docker/mlflow.Dockerfile), built air-gapped on the local base like the CPU image;
    $KR_TEST_MLFLOW_IMAGE names a prebuilt one."""
    if given := prebuilt("KR_TEST_MLFLOW_IMAGE"):
        return given["image"]
    out = tmp_path_factory.mktemp("mlflow-image")
    lock = out / "images.lock"
    script(
        "scripts/build-images", "--registry", REGISTRY, "--no-push", "--allow-dirty", "--wheelhouse", "--images",
        "mlflow", "--mlflow-base", base, "--out", str(out / "pipeline.yaml"), "--lock", str(lock),
    )  # fmt: skip
    entries = dict(line.split("=", 1) for line in lock.read_text().splitlines() if line and not line.startswith("#"))
    return entries["mlflow"]


def git_head() -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def constraint_pin(name: str) -> str:
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.lower().startswith(name + "=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"constraints.txt pins no {name}")


INSIDE = r"""
import json, os, shutil, subprocess, sys
import torch, mlflow, kfp, diffusers
from kr.run.tracking import code_version
verify = subprocess.run(
    [sys.executable, "/opt/kr/verify_image.py", "--root", "kr", "--constraints", "/opt/kr/constraints.txt",
     "--torch", sys.argv[1], "--cpu", "--pip-check", "--freeze", "--pin", "medmnist==3.0.2", "--no-deps", "medmnist"],
    capture_output=True, text=True)
x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
print(json.dumps({
    "uid": os.geteuid(),
    "compilers": [c for c in ("gcc", "cc", "g++", "c++", "clang") if shutil.which(c)],
    "verify": [verify.returncode, verify.stdout + verify.stderr],
    "code_version": code_version(),
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "matmul": (x @ x.T).tolist(),
}))
"""


def test_cpu_image_builds_offline_on_the_local_base_and_verifies(cpu_image):
    image = cpu_image["cpu"]
    head = git_head()
    assert cpu_image["commit"] == head
    assert cpu_image["base.cpu"] == BASE
    assert cpu_image["base.cpu.id"].startswith("sha256:"), cpu_image  # an imported base: pinned by its id here
    info = json.loads(docker("image", "inspect", image).stdout)[0]
    config = info["Config"]
    assert config["User"] == "10001:0"
    assert config["Labels"]["org.opencontainers.image.revision"] == head
    assert f"KR_COMMIT={head}" in config["Env"]
    assert info["Size"] > 0
    print(f"{image}: {info['Size'] / 1e6:.0f} MB")

    help_ = docker("run", "--rm", "--network", "none", image, "kr", "--help", timeout=300)
    assert "Usage" in help_.stdout, help_.stdout

    torch_version = constraint_pin("torch")
    done = docker("run", "--rm", "--network", "none", image, "python", "-c", INSIDE, torch_version, timeout=300)
    inside = json.loads(done.stdout.strip().splitlines()[-1])
    assert inside["uid"] == 10001
    assert inside["compilers"] == []
    assert inside["verify"][0] == 0, inside["verify"][1]
    assert "verify_image: ok" in inside["verify"][1]
    dirty = ".dirty" if cpu_image["dirty"] == "1" else ""
    assert inside["code_version"].endswith(f"+{head[:12]}{dirty}"), inside["code_version"]
    assert inside["torch"] == f"{torch_version}+cpu" and inside["cuda"] is None
    assert inside["matmul"] == [[5.0, 14.0], [14.0, 50.0]]
