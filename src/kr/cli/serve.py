"""`kr serve`: the current champion behind MLflow's scoring server, once its files match its audit record."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Annotated

import typer

from kr.cli.options import AuditOpt, TrackingOpt, default_audit_uri, default_tracking_uri, fail
from kr.progress import console


def serve(
    model_name: Annotated[str, typer.Option(help="registered model name, e.g. kr-breastmnist-student")],
    tracking_uri: TrackingOpt = None,
    audit_uri: AuditOpt = None,
    port: Annotated[int, typer.Option()] = 5001,
    host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
) -> None:
    """Serve the current champion (NAME@champion) with `mlflow models serve` in this environment.

    The version's files are downloaded and checked first (`kr.governance.serving.fetch_verified`: its audit record,
    the recorded artifact digest, the pickle-free format); the verified local copy is what is served. Exit 2 when the
    check fails or cannot be made; otherwise the server's exit status.
    """
    import subprocess
    import sys

    from mlflow.exceptions import MlflowException

    from kr.governance.serving import ServingError, fetch_verified

    uri = tracking_uri or default_tracking_uri()
    try:
        local, record = fetch_verified(uri, model_name, "champion", audit_uri or default_audit_uri())
    except ServingError as exc:
        raise fail(f"not serving {model_name}@champion: {exc}") from None
    except (MlflowException, OSError) as exc:  # the store or the trail cannot be reached: nothing was checked
        raise fail(f"cannot check {model_name}@champion against its audit record: {exc}") from None
    registry = record["outputs"]["registry"]
    console.print(
        f"verified {model_name} version {registry['version']} against audit record {record['record_id']} "
        f"(artifact digest {registry['artifact_sha256'][:12]}); serving {local}"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    # mlflow starts its scoring server as `uvicorn` by name: make it this environment's
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        str(local),
        "--env-manager",
        "local",
        "--host",
        host,
        "--port",
        str(port),
    ]
    try:
        code = subprocess.call(cmd, env=env)
    finally:
        shutil.rmtree(local.parent, ignore_errors=True)
    raise typer.Exit(code)
