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
