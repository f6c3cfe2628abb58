"""The images, really built and run: the air-gapped build (scripts/build-base + scripts/build-images --wheelhouse,
`docker build --network none`) of the CPU component image, then checks inside it with no network.

Needs a Docker engine and disk: tests/docker_engine.py's session fixtures (registered in conftest.py) start one
when none runs, build the base and the images once for both container test files, and remove what they made.
The base image (scripts/build-base) is reused when present; the image build is cached by the engine. Slow the first
time (minutes: docs/deploy.md, "Building the images without network access"): marked e2e and docker.
"""

import json
import subprocess

import pytest
from docker_engine import BASE, ROOT, docker

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.timeout(3600)]


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
