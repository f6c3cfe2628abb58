"""`kr serve`: the current champion behind MLflow's scoring server."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from kr.cli.options import TrackingOpt, default_tracking_uri


def serve(
    model_name: Annotated[str, typer.Option(help="registered model name, e.g. kr-breastmnist-student")],
    tracking_uri: TrackingOpt = None,
    port: Annotated[int, typer.Option()] = 5001,
    host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
) -> None:
    """Serve the current champion (models:/NAME@champion) with `mlflow models serve` in this environment."""
    import subprocess
    import sys

    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri or default_tracking_uri()}
    # mlflow starts its scoring server as `uvicorn` by name: make it this environment's
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        f"models:/{model_name}@champion",
        "--env-manager",
        "local",
        "--host",
        host,
        "--port",
        str(port),
    ]
    raise typer.Exit(subprocess.call(cmd, env=env))
