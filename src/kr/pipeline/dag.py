"""The Knowledge Recycling DAG: one definition for the local runner and for Kubeflow Pipelines on Kubernetes.

validate -> teacher || generator -> selection -> ParallelFor(regeneration shards) -> student (+ naive baseline)
-> privacy audit -> gates, all inside an ExitHandler whose exit task writes summary.json and the report even when
a step fails.
"""

from dataclasses import dataclass, field

from kfp import dsl, kubernetes

from kr.pipeline.components import build_components

PIPELINE_NAME = "knowledge-recycling"
GPU_STEPS = ("train-generator", "select-generator", "regenerate", "train-student", "train-naive", "audit-privacy")
NO_CACHE_STEPS = ("evaluate-gates", "audit-privacy", "finalize-run")


@dataclass(frozen=True)
class ClusterSettings:
    """Kubernetes settings applied at compile time (ignored by the local runner)."""

    gpu_type: str = "nvidia.com/gpu"
    gpus: int = 1
    gpu_node_selector: dict[str, str] = field(default_factory=lambda: {"kr.io/accelerator": "nvidia-gpu"})
    gpu_toleration_key: str = "nvidia.com/gpu"
    cpu_request: str = "2"
    cpu_limit: str = "8"
    memory_request: str = "8G"
    memory_limit: str = "32G"
    retries: int = 2
    mlflow_secret: str = "kr-mlflow"  # keys: MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD
    s3_secret: str = "kr-s3"  # keys: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
    secret_env: dict[str, dict[str, str]] = field(
        default_factory=lambda: {
            "kr-mlflow": {
                "MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
                "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD",
            },
            "kr-s3": {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"},
        }
    )


def _configure(task: dsl.PipelineTask, name: str, cluster: ClusterSettings) -> dsl.PipelineTask:
    task.set_cpu_request(cluster.cpu_request).set_cpu_limit(cluster.cpu_limit)
    task.set_memory_request(cluster.memory_request).set_memory_limit(cluster.memory_limit)
    if name in GPU_STEPS:
        task.set_accelerator_type(cluster.gpu_type).set_accelerator_limit(cluster.gpus)
        for key, value in cluster.gpu_node_selector.items():
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        kubernetes.add_toleration(task, key=cluster.gpu_toleration_key, operator="Exists", effect="NoSchedule")
    for secret, mapping in cluster.secret_env.items():
        # optional: a cluster without that secret still runs, with no credentials in the pod
        kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env=mapping, optional=True)
    if name in NO_CACHE_STEPS:
        task.set_caching_options(False)
    elif name != "finalize-run":
        task.set_retry(num_retries=cluster.retries, backoff_duration="30s", backoff_factor=2.0)
    return task


def build_pipeline(image: str, cluster: ClusterSettings | None = None):
    """The pipeline function, with every component running in `image`."""
    c = build_components(image)
    cluster = cluster or ClusterSettings()

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Knowledge Recycling: teacher, generator, GKD student, privacy "
        "audit and gates on a MedMNIST dataset",
    )
    def knowledge_recycling(
        config_json: str, run_dir: str, profile: str = "cpu", runner: str = "kfp", started_at: str = ""
    ):
        common = {"config_json": config_json, "run_dir": run_dir}
        finalize = _configure(
            c.finalize_run(profile=profile, runner=runner, started_at=started_at, **common), "finalize-run", cluster
        )
        with dsl.ExitHandler(finalize):
            data = _configure(c.validate_data(**common), "validate-data", cluster).outputs["data"]
            teacher = _configure(c.train_teacher(data=data, **common), "train-teacher", cluster)
            generator = _configure(c.train_generator(data=data, **common), "train-generator", cluster)
            selection = _configure(
                c.select_generator(
                    data=data, generator=generator.outputs["generator"], teacher=teacher.outputs["teacher"], **common
                ),
                "select-generator",
                cluster,
            )
            plan = _configure(c.plan_shards(config_json=config_json, data=data), "plan-shards", cluster)
            with dsl.ParallelFor(plan.output) as shard:
                regen = _configure(
                    c.regenerate(
                        shard=shard,
                        data=data,
                        generator=generator.outputs["generator"],
                        teacher=teacher.outputs["teacher"],
                        selection=selection.outputs["selection"],
                        **common,
                    ),
                    "regenerate",
                    cluster,
                )

            def shards() -> dsl.Collected:
                # one Collected per consumer: kfp 2.17's compiler fails when two tasks share one
                return dsl.Collected(regen.outputs["shard_data"])

            student = _configure(c.train_student(data=data, shards=shards(), **common), "train-student", cluster)
            naive = _configure(c.train_naive(data=data, shards=shards(), **common), "train-naive", cluster)
            audit = _configure(
                c.audit_privacy(
                    data=data,
                    teacher=teacher.outputs["teacher"],
                    student=student.outputs["student"],
                    shards=shards(),
                    **common,
                ),
                "audit-privacy",
                cluster,
            )
            gates = _configure(
                c.evaluate_gates(profile=profile, runner=runner, started_at=started_at, **common),
                "evaluate-gates",
                cluster,
            )
            gates.after(audit, naive)  # the gates read their records, not artifacts: order them explicitly

    return knowledge_recycling
