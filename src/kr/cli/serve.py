"""`kr serve`: the current champion behind MLflow's scoring server, once its files match its audit record."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from kr.cli.options import AuditOpt, TrackingOpt, default_audit_uri, default_tracking_uri, fail, note, shared
from kr.progress import console


@shared()
def serve(
    model_name: Annotated[str, typer.Option(help="registered model name, e.g. kr-breastmnist-student")],
    tracking_uri: TrackingOpt = None,
    audit_uri: AuditOpt = None,
    port: Annotated[int, typer.Option()] = 5001,
    host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
) -> None:
    """Serve the current champion (NAME@champion) with `mlflow models serve` in this environment.

    The version's files are downloaded and checked first (`kr.governance.serving.fetch_verified`: its audit record,
    the recorded artifact digest, the pickle-free format); the verified local copy is what is served.

    Predictions (POST /invocations, e.g. {"inputs": <images (N, C, H, W), pixel values 0..255>}) come back as
    {"predictions": [{"class": <most likely class name>, "probabilities": {<class name>: <probability>, ...}}, ...]};
    with {"params": {"output": "probabilities"}} as the bare (N, K) probability rows
    (`kr.governance.serving_model`).

    Exit 1 when the model has no champion yet (every version is listed with why it was not promoted); 2 for a model
    name the registry does not have, or when the check fails or cannot be made; otherwise the server's exit status.
    """
    import subprocess
    import sys

    from mlflow.exceptions import MlflowException

    from kr.governance.registry import why_not_promoted
    from kr.governance.serving import NoChampion, NoSuchModel, ServingError, fetch_verified

    uri = tracking_uri or default_tracking_uri()
    try:
        local, record = fetch_verified(uri, model_name, "champion", audit_uri or default_audit_uri())
    except NoSuchModel as exc:
        raise fail(escape(str(exc))) from None
    except NoChampion as exc:  # the normal state until a run passes every gate: say why, no traceback
        exit_ = fail(escape(str(exc)), code=1)
        for version, tags in exc.versions:
            console.print(f"  version {version}: {escape(why_not_promoted(tags))}")
        raise exit_ from None
    except ServingError as exc:
        raise fail(f"not serving {model_name}@champion: {exc}") from None
    except (MlflowException, OSError) as exc:  # the store or the trail cannot be reached: nothing was checked
        raise fail(f"cannot check {model_name}@champion against its audit record: {exc}") from None
    registry = record["outputs"]["registry"]
    note(
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
