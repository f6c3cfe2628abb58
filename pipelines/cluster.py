"""Kubeflow Pipelines on a cluster: submit one run or schedule recurring retraining with `kfp.Client`.

The pipeline is compiled for the given image on the fly (the same DAG `kr run` executes locally), so what runs
on the cluster is exactly what this checkout defines. Authentication is kfp.Client's own (kube context,
in-cluster service account, or a token in the environment); nothing is stored here.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from kr.pipelines.compile import compile_pipeline
from kr.pipelines.settings import ClusterSettings
from kr.steps import RunRequest

CRON_FIELD = re.compile(r"^[0-9A-Za-z*/,\-?LW#]+$")


class ClusterError(RuntimeError):
    """A bad cron expression, or a Kubeflow Pipelines API that cannot be reached or refuses the run."""


def check_cron(expr: str) -> str:
    """KFP's cron has six fields, seconds first ('0 0 3 * * 0'); a 5-field Unix cron is a common slip."""
    fields = expr.split()
    if len(fields) == 5:
        raise ClusterError(f"cron {expr!r} has 5 fields; KFP's cron has 6, seconds first: did you mean '0 {expr}'?")
    if len(fields) != 6:
        raise ClusterError(f"cron {expr!r} has {len(fields)} fields; KFP's cron has 6: sec min hour day month weekday")
    bad = [f for f in fields if not CRON_FIELD.match(f)]
    if bad:
        raise ClusterError(f"cron {expr!r}: field(s) {', '.join(bad)} are not valid cron syntax")
    return expr


def cluster_arguments(req: RunRequest, cluster: ClusterSettings) -> dict:
    """The run's parameters for a cluster: the run folder comes from the run id, data from the shared volume."""
    req = req.model_copy(
        update={
            "run_dir": "",
            "runs_root": cluster.runs_mount,
            "data_root": req.data_root or f"{cluster.runs_mount}/data",
        }
    )
    return req.pipeline_arguments()


def _client(host: str):
    import kfp

    try:
        return kfp.Client(host=host)
    except Exception as exc:  # kfp raises bare exceptions for unreachable or unauthenticated hosts
        raise ClusterError(f"cannot reach Kubeflow Pipelines at {host}: {exc}") from exc


def submit_run(
    host: str, image: str, req: RunRequest, experiment: str, cluster: ClusterSettings | None = None
) -> tuple[str, str]:
    """Start one run: (run id, UI link)."""
    cluster = cluster or ClusterSettings()
    client = _client(host)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(Path(tmp) / "pipeline.yaml", image, cluster)
        try:
            result = client.create_run_from_pipeline_package(
                str(package),
                arguments=cluster_arguments(req, cluster),
                run_name=f"kr-{Path(req.dataset).stem}-{req.profile}",
                experiment_name=experiment,
                service_account=cluster.service_account,
            )
        except Exception as exc:
            raise ClusterError(f"submitting to {host} failed: {exc}") from exc
    return result.run_id, f"{host.rstrip('/')}/#/runs/details/{result.run_id}"


def schedule_runs(
    host: str,
    image: str,
    req: RunRequest,
    experiment: str,
    name: str,
    cron: str,
    cluster: ClusterSettings | None = None,
) -> str:
    """A recurring run: at most one at a time (a slow retrain never overlaps the next), no catch-up backlog."""
    check_cron(cron)
    cluster = cluster or ClusterSettings()
    client = _client(host)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(Path(tmp) / "pipeline.yaml", image, cluster)
        try:
            exp = client.create_experiment(experiment)
            job = client.create_recurring_run(
                experiment_id=exp.experiment_id,
                job_name=name,
                cron_expression=cron,
                max_concurrency=1,
                no_catchup=True,
                params=cluster_arguments(req, cluster),
                pipeline_package_path=str(package),
                service_account=cluster.service_account,
            )
        except Exception as exc:
            raise ClusterError(f"scheduling on {host} failed: {exc}") from exc
    return job.recurring_run_id
