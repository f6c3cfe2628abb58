"""The Knowledge Recycling DAG: one definition for the local runner and for Kubeflow Pipelines on Kubernetes.

resolve config -> validate -> teacher || generator -> selection -> ParallelFor(regeneration shards) -> student
(+ naive baseline) -> privacy audit -> gates -> If(passed) promote / Else record the rejection, all inside an
ExitHandler whose exit task writes the audit record (for failed runs), summary.json and the report.
"""

from dataclasses import dataclass, field

from kfp import dsl, kubernetes
from kr.components._all import build_components

PIPELINE_NAME = "knowledge-recycling"
GPU_STEPS = ("train-generator", "select-generator", "regenerate", "train-student", "train-naive", "audit-privacy")
NO_CACHE_STEPS = ("evaluate-gates", "audit-privacy", "promote", "record-rejection", "finalize-run", "resolve-config")


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
    regen_parallelism: int = 0  # regeneration shards at once; 0: all (one GPU each)
    service_account: str = "kr-pipeline-runner"  # least-privilege runner from infra/ (not KFP's default)
    pod_labels: dict[str, str] = field(default_factory=lambda: {"kr.io/pipeline": "knowledge-recycling"})
    runs_pvc: str = "kr-runs"  # a ReadWriteMany claim: every task of a run reads and writes <runs_mount>/<run id>
    runs_mount: str = "/mnt/kr-runs"
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
    for key, value in cluster.pod_labels.items():  # lets NetworkPolicies admit kr's pods, not every KFP pod
        kubernetes.add_pod_label(task, label_key=key, label_value=value)
    if name in GPU_STEPS and cluster.gpus > 0:  # gpus=0 compiles a CPU-only pipeline (small dev clusters)
        task.set_accelerator_type(cluster.gpu_type).set_accelerator_limit(cluster.gpus)
        for key, value in cluster.gpu_node_selector.items():
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        kubernetes.add_toleration(task, key=cluster.gpu_toleration_key, operator="Exists", effect="NoSchedule")
    for secret, mapping in cluster.secret_env.items():
        # optional: a cluster without that secret still runs, with no credentials in the pod
        kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env=mapping, optional=True)
    # the run folder is shared by every task (records, checkpoints a retried generator resumes from)
    kubernetes.mount_pvc(task, pvc_name=cluster.runs_pvc, mount_path=cluster.runs_mount)
    if name in NO_CACHE_STEPS:
        task.set_caching_options(False)
    elif name != "finalize-run" and cluster.retries:
        task.set_retry(num_retries=cluster.retries, backoff_duration="30s", backoff_factor=2.0)
    return task


def build_pipeline(image: str, cluster: ClusterSettings | None = None, runner: str = "kfp"):
    """The pipeline function, with every component running in `image`."""
    c = build_components(image)
    cluster = cluster or ClusterSettings()

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Knowledge Recycling: teacher, generator, GKD student, privacy audit, gates and a gated "
        "promotion in the MLflow registry, on a MedMNIST dataset",
    )
    def knowledge_recycling(
        dataset: str = "breastmnist",
        profile: str = "gpu",
        overrides: list = [],  # noqa: B006  KFP reads defaults from the signature; never mutated
        config_yaml: str = "",
        gates: dict = {},  # noqa: B006  e.g. {"privacy": {"max_auc": 0.55}}
        data_root: str = "",
        model_name: str = "",
        tracking_uri: str = "",
        audit_uri: str = "",
        run_dir: str = "",
        runs_root: str = cluster.runs_mount,
        started_at: str = "",
    ):
        request = {
            "dataset": dataset,
            "profile": profile,
            "overrides": overrides,
            "config_yaml": config_yaml,
            "gates": gates,
            "data_root": data_root,
            "model_name": model_name,
            "tracking_uri": tracking_uri,
            "audit_uri": audit_uri,
            "run_dir": run_dir,
            "runs_root": runs_root,
            "image": image,
            "kfp_run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            "started_at": started_at,
            # kfp.local cannot resolve this placeholder (it fails on it); `kr run` passes started_at instead
            "job_created_at": dsl.PIPELINE_JOB_CREATE_TIME_UTC_PLACEHOLDER if runner == "kfp" else "",
        }
        finalize = _configure(c.finalize_run(runner=runner, **request), "finalize-run", cluster)
        with dsl.ExitHandler(finalize, name="run-with-summary"):
            resolved = _configure(c.resolve_config(**request), "resolve-config", cluster)
            common = {"config_json": resolved.outputs["config_json"], "run_dir": resolved.outputs["run_dir"]}
            started = resolved.outputs["started_at"]
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
            plan = _configure(
                c.plan_shards(config_json=resolved.outputs["config_json"], data=data), "plan-shards", cluster
            )
            with dsl.ParallelFor(
                plan.output, name="regeneration-shards", parallelism=cluster.regen_parallelism
            ) as shard:
                regen = _configure(
                    c.regenerate(
                        run_config=resolved.outputs["run_config"],
                        shard=shard,
                        data=data,
                        generator=generator.outputs["generator"],
                        teacher=teacher.outputs["teacher"],
                        selection=selection.outputs["selection"],
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
            gate = _configure(
                c.evaluate_gates(profile=profile, runner=runner, started_at=started, **common),
                "evaluate-gates",
                cluster,
            )
            gate.after(audit, naive)  # the gates read their records, not artifacts: order them explicitly
            with dsl.If(gate.outputs["Output"] == True, name="gates-passed"):  # noqa: E712  a KFP condition
                _configure(c.promote(data=data, started_at=started, **common), "promote", cluster)
            with dsl.Else(name="gates-failed"):
                _configure(c.record_rejection(data=data, started_at=started, **common), "record-rejection", cluster)

    return knowledge_recycling
