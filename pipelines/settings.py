"""Kubernetes settings of the compiled pipeline: resources, GPUs, the runs volume, secrets, retries.

Applied at compile time from the step table (`kr.steps.STEPS`: which steps get a GPU, the runs volume, retries,
caching); the local runner ignores the Kubernetes parts.
"""

from dataclasses import dataclass, field

from kr.steps import CLUSTER_RUNS_ROOT


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
    # ReadWriteMany: the run folders, and the generator checkpoints a retried task resumes from
    runs_pvc: str = "kr-runs"
    runs_mount: str = CLUSTER_RUNS_ROOT
    # the platform's gate policy (infra/base/pipeline/gate-policy.yaml): required, so a cluster without it fails at
    # resolve-config instead of running without floors
    gate_policy_config_map: str = "kr-gate-policy"
    gate_policy_mount: str = "/etc/kr/gate-policy"
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
