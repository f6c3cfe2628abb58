"""The Docker engine and the images that the container tests share (tests/test_images.py,
tests/test_containers_e2e.py), as session fixtures registered in conftest.py: the engine is started, the base and the
images are built, once per session, and what the tests made is removed at the end.

The engine: one that already answers `docker info` is used as it is. Else, as root, `dockerd` (Debian's docker.io) is
started here with no bridge and no iptables, on the engine's own choice of storage driver (overlay2 on ext4 here:
layers and containers share files; `vfs` copied every layer and every container in full, about 2 GB each, and filled
the disk), and stopped at the end, after removing the images, build cache and containers that the tests made.

Disk: building both images needs about `NEEDED_GB` free where the engine keeps its data and in this checkout (the
wheelhouse); with less, the tests skip and say how much there is, instead of filling the disk under the rest of the
suite. conftest.py runs the docker-marked tests last for the same reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BASE = os.environ.get("KR_TEST_BASE_IMAGE", "kr-base:bookworm-python3.11")
REGISTRY = "kr.test"
DOCKER = shutil.which("docker") or "docker"
DOCKER_ROOT = Path("/var/lib/docker")  # dockerd's default --data-root, where a started engine keeps its layers
NEEDED_GB = 12.0  # measured peak on overlay2: see docs/deploy.md, "Building the images without network access"


def docker(*args: str, timeout: float = 600, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    if check:
        assert done.returncode == 0, f"docker {' '.join(args)}: {done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done


def engine_answers() -> bool:
    if not shutil.which(DOCKER):
        return False
    return subprocess.run([DOCKER, "info"], capture_output=True, timeout=60, check=False).returncode == 0


def free_gb(path: Path) -> float:
    """Free space (GB, 1e9 bytes) on the file system holding `path`, or its nearest existing parent."""
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free / 1e9


def short_of_disk(paths: list[Path], needed_gb: float = NEEDED_GB) -> str | None:
    """Why the image builds cannot run here for lack of disk (a sentence), or None when every path has room."""
    for path in paths:
        if (free := free_gb(path)) < needed_gb:
            return f"{free:.1f} GB free at {path}; building the images needs about {needed_gb:.0f} GB"
    return None


def remove_made(before: set[str]) -> None:
    """Remove the containers, images and build cache the tests made: every image id not in `before`."""
    docker("container", "prune", "-f", check=False)
    after = set(docker("image", "ls", "-aq", "--no-trunc", check=False).stdout.split())
    for image in sorted(after - before):
        docker("image", "rm", "-f", image, check=False)
    docker("image", "prune", "-f", check=False)
    docker("builder", "prune", "-af", check=False)


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int | None]:
    """A running Docker engine: the one already running (left as it is), else a dockerd started here, cleaned of
    what the tests made and stopped afterwards. Its pid, or None for an engine found running. Skips, saying why,
    without root, without the packages, or without the disk the builds need."""
    if engine_answers():
        root = Path(docker("info", "-f", "{{.DockerRootDir}}").stdout.strip())
        if why := short_of_disk([root, ROOT]):
            pytest.skip(why)
        yield None
        return
    if os.geteuid() != 0:
        pytest.skip("no Docker engine answers `docker info`, and starting dockerd needs root")
    dockerd = shutil.which("dockerd")
    if not dockerd or not shutil.which(DOCKER) or not shutil.which("debootstrap"):
        pytest.skip("no Docker engine installed: apt-get install -y docker.io debootstrap")
    if why := short_of_disk([DOCKER_ROOT, ROOT]):
        pytest.skip(why)
    log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    with open(log, "w") as out:
        process = subprocess.Popen([dockerd, "--iptables=false", "--bridge=none"], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while not engine_answers():
            assert process.poll() is None, f"dockerd exited: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"dockerd does not answer: {log.read_text()[-3000:]}"
            time.sleep(1)
        before = set(docker("image", "ls", "-aq", "--no-trunc").stdout.split())
        driver = docker("info", "-f", "{{.Driver}}").stdout.strip()
        print(f"dockerd {process.pid}: storage driver {driver}, {free_gb(DOCKER_ROOT):.1f} GB free")
        yield process.pid
        remove_made(before)
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def script(*args: str, timeout: float = 3000) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": str(ROOT / ".venv" / "bin" / "python"), "KR": str(ROOT / ".venv" / "bin" / "kr")}
    started = time.monotonic()
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    print(f"{args[0]}: {time.monotonic() - started:.0f} s")
    return done


@pytest.fixture(scope="session")
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


def build(images: str, base_flags: list[str], out: Path) -> dict[str, str]:
    """scripts/build-images, air-gapped from the wheelhouse, of `images`; the entries of the lock it writes."""
    lock = out / "images.lock"
    script(
        "scripts/build-images", "--registry", REGISTRY, "--no-push", "--allow-dirty", "--wheelhouse",
        "--images", images, *base_flags, "--out", str(out / "pipeline.yaml"), "--lock", str(lock),
    )  # fmt: skip
    return dict(line.split("=", 1) for line in lock.read_text().splitlines() if line and not line.startswith("#"))


@pytest.fixture(scope="session")
def cpu_image(base: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The CPU component image built from this checkout (air-gapped); $KR_TEST_CPU_IMAGE names a prebuilt one."""
    if given := prebuilt("KR_TEST_CPU_IMAGE"):
        return {"cpu": given["image"], "commit": given["commit"]}
    return build("cpu", ["--cpu", "--cpu-base", base], tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def mlflow_image(base: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The MLflow server image (docker/mlflow.Dockerfile), built air-gapped on the local base like the CPU image;
    $KR_TEST_MLFLOW_IMAGE names a prebuilt one."""
    if given := prebuilt("KR_TEST_MLFLOW_IMAGE"):
        return given["image"]
    return build("mlflow", ["--mlflow-base", base], tmp_path_factory.mktemp("mlflow-image"))["mlflow"]
