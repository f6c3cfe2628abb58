"""Kubernetes settings of the compiled pipeline: resources, GPUs, the runs volume, secrets, identity, retries.

Applied at compile time from the step table (`kr.steps.STEPS`: which steps get a GPU, the runs volume, retries,
caching, which Secrets); the local runner ignores the Kubernetes parts.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field

from kr.steps import CLUSTER_RUNS_ROOT

MLFLOW_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
S3_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
SIGNING_ENV = ("KR_AUDIT_HMAC_KEY",)


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
    # on the pods of the steps that hold the S3 keys: NetworkPolicy kr-pipeline-egress-s3 lets only those reach S3
    s3_egress_label: tuple[str, str] = ("kr.io/needs-s3", "true")
    # on the pods of the steps that hold the data bucket's keys (every step that reads the data file): a policy of
    # your own selects them to reach the data bucket's endpoint (docs/deploy.md, "Data from object storage")
    data_egress_label: tuple[str, str] = ("kr.io/needs-data-s3", "true")
    # every step's container: the images' own user (USER 10001:0 in docker/*.Dockerfile), stated so the pod spec
    # says it (Pod Security "restricted"); KFP >= 2.17 adds no privilege escalation, no capabilities, RuntimeDefault.
    # None: no securityContext in the compiled pipeline (KFP backends before 2.17 reject the field)
    run_as_user: int | None = 10001
    run_as_group: int = 0  # group 0 owns the runs volume's files (infra/base/pipeline/runs-volume.yaml)
    # ReadWriteMany: the run folders, and the generator checkpoints a retried task resumes from
    runs_pvc: str = "kr-runs"
    runs_mount: str = CLUSTER_RUNS_ROOT
    # the platform's gate policy (infra/base/pipeline/gates.yaml): required, so a cluster without it fails at
    # resolve-config instead of running without floors
    gate_policy_config_map: str = "kr-gate-policy"
    gate_policy_mount: str = "/etc/kr/gate-policy"
    mlflow_secret: str = "kr-mlflow"  # keys: MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD
    s3_secret: str = "kr-s3"  # keys: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (the audit trail's bucket prefix)
    # keys: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, read-only on the data bucket (data.dataset or data.data_root =
    # s3://...); optional like the others: data on the runs volume needs none
    data_s3_secret: str = "kr-data-s3"
    # key: KR_AUDIT_HMAC_KEY; optional like the others: without it records are appended unsigned
    signing_secret: str = "kr-audit-signing"

    @property
    def secret_env(self) -> dict[str, dict[str, str]]:
        """Each Secret the pipeline may use: {secret name: {key: environment variable}}."""
        return {
            self.mlflow_secret: {k: k for k in MLFLOW_ENV},
            self.s3_secret: {k: k for k in S3_ENV},
            self.signing_secret: {k: k for k in SIGNING_ENV},
            self.data_s3_secret: {k: k for k in S3_ENV},
        }

    def step_labels(self, needs: Iterable[str]) -> dict[str, str]:
        """The pod labels of a step with these needs: kr's label, and the S3 egress label where it holds the S3 keys,
        the data egress label where it holds the data bucket's."""
        needs = set(needs)
        return (
            dict(self.pod_labels)
            | (dict([self.s3_egress_label]) if "s3" in needs else {})
            | (dict([self.data_egress_label]) if "data" in needs else {})
        )

    def step_secrets(self, needs: Iterable[str]) -> dict[str, dict[str, str]]:
        """The Secrets (as in `secret_env`) for a step's declared needs (StepSpec.secrets, of kr's step table's
        SECRETS: "mlflow", "s3", "signing", "data"); KeyError for another need."""
        names = {
            "mlflow": self.mlflow_secret,
            "s3": self.s3_secret,
            "signing": self.signing_secret,
            "data": self.data_s3_secret,
        }
        env = self.secret_env
        return {names[need]: env[names[need]] for need in sorted(needs)}
