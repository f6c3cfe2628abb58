import os

import pytest

# Tests must never reach the network or the user's ~/.medmnist by accident.
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _isolated_stores(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test writes into the developer's MLflow store, audit trail or ./runs: every default points to a temp dir."""
    monkeypatch.setenv("KR_HOME", str(tmp_path_factory.mktemp("kr-home")))
    for var in ("MLFLOW_TRACKING_URI", "KR_AUDIT_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL", "KR_GATE_POLICY"):
        monkeypatch.delenv(var, raising=False)


# The container tests' engine and images, built once per session (tests/docker_engine.py).
from docker_engine import base, cpu_image, engine, mlflow_image  # noqa: E402, F401


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the docker-marked tests last: they build 2 GB images, and whatever they leave behind on a machine that is
    short of disk must not fail the rest of the suite."""
    items.sort(key=lambda item: item.get_closest_marker("docker") is not None)
