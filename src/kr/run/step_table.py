"""The one table of the pipeline's steps: name, GPU or not, cached or not, retried or not, the config it reads and
the credentials it needs.

The DAG (`kr.pipelines.knowledge_recycling`) sets resources, caching, retries and each pod's Secrets from it; the
summary and the report order their step timings by it; each component gets exactly the config sections listed here,
so a step's KFP cache key is its real inputs (a change to `gkd.*` leaves the teacher's key as it was).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from kr.config import RunConfig

# read by every step: the seed, and where its MLflow run goes (stable across runs, so cache keys stay stable)
ALWAYS = ("seed", "tracking")

# The credentials a step may need, by what it uses them for (a cluster maps each to a Secret: ClusterSettings):
# mlflow: the MLflow user, for a step that records its MLflow run (kr.steps.running.run_step), opens or closes the
#   run's parent run, or registers the student. Artifacts travel through the MLflow server (`mlflow-artifacts:`;
#   the server holds the bucket's keys), so MLflow needs no S3 keys in a step.
# s3: S3 keys for the audit trail (`audit.uri=s3://...`), for a step that reads or appends the trail.
# signing: the trail's HMAC key (KR_AUDIT_HMAC_KEY), for a step that appends records; a reader needs none.
# data: S3 keys for the data bucket (`data.dataset`/`data.data_root` = s3://...), for every step that reads the data
#   file (reads_data), and for no other. It sets the same variables as `s3` (AWS_ACCESS_KEY_ID, ...), so no step
#   may need both: a step that read the trail and the data would hold one set of keys for two buckets.
MLFLOW, S3, SIGNING, DATA = "mlflow", "s3", "signing", "data"
SECRETS = (MLFLOW, S3, SIGNING, DATA)


@dataclass(frozen=True)
class StepSpec:
    """One pipeline step.

    name: snake_case, as results, MLflow runs (`kr.step` tag) and `summary.json`'s `timings_s` name it.
    gpu: requests an accelerator on a cluster. cache: KFP may reuse an earlier execution with the same inputs.
    retries: a failed pod is retried (preemption). sections: the RunConfig sections the step reads, None: all.
    run_volume: mounts the shared runs volume on a cluster: the run folder (summary, report, the MLflow parent's
    id, failure notes) or the generator's resumable checkpoints. reads_data: re-reads the validated data file (the
    data artifact is a reference, never the images), so on a cluster it mounts the volume the data may lie on and
    needs DATA (the data bucket's keys, for data in object storage). resolves_request: resolves the run request, so
    it reads the gate policy (a ConfigMap on a cluster). secrets: the credentials it needs (of SECRETS); a cluster
    gives its pod those and no others. Raises ValueError for an unknown secret, DATA without reads_data or the
    reverse, and DATA with S3 (both set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY).
    """

    name: str
    gpu: bool = False
    cache: bool = True
    retries: bool = True
    sections: tuple[str, ...] | None = ()
    run_volume: bool = False
    reads_data: bool = False
    resolves_request: bool = False
    secrets: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = set(self.secrets) - set(SECRETS)
        if unknown:
            raise ValueError(f"step {self.name}: unknown secret(s) {sorted(unknown)}; known: {', '.join(SECRETS)}")
        if self.reads_data != (DATA in self.secrets):
            raise ValueError(f"step {self.name}: a step needs the {DATA!r} secret exactly when it reads_data")
        if {S3, DATA} <= self.secrets:
            raise ValueError(
                f"step {self.name}: needs both {S3!r} and {DATA!r}, which set the same variables (AWS_ACCESS_KEY_ID, "
                "AWS_SECRET_ACCESS_KEY); split the step"
            )

    @property
    def task(self) -> str:
        """The KFP task and component name (kebab-case), e.g. train-teacher."""
        return self.name.replace("_", "-")


TRACKED = frozenset({MLFLOW})  # records its MLflow run (run_step), or opens or closes the parent run
TRAIL = frozenset({MLFLOW, S3})  # tracked, and reads the audit trail (s3://)
APPENDS = TRAIL | {SIGNING}  # tracked, and appends signed records to the audit trail
READS = TRACKED | {DATA}  # tracked, and re-reads the data file (from the runs volume or the data bucket)

STEPS: tuple[StepSpec, ...] = (
    # refuses a run key the trail (or the registry) already holds, then opens the MLflow parent run
    StepSpec("resolve_config", cache=False, sections=None, run_volume=True, resolves_request=True, secrets=TRAIL),
    StepSpec("validate_data", reads_data=True, sections=("data", "validation"), secrets=READS),
    StepSpec("train_teacher", reads_data=True, sections=("teacher", "canaries"), secrets=READS),
    StepSpec(
        "train_generator",
        reads_data=True,
        gpu=True,
        sections=("generator", "canaries"),
        run_volume=True,
        secrets=READS,
    ),
    StepSpec(
        "select_generator", reads_data=True, gpu=True, sections=("selection", "sampler", "validation"), secrets=READS
    ),
    # arithmetic on the data file's info.json: no MLflow run, no trail, no credentials
    StepSpec("plan_shards", sections=("gkd", "sampler", "validation")),
    StepSpec("regenerate", reads_data=True, gpu=True, sections=("gkd", "sampler", "validation"), secrets=READS),
    StepSpec("train_student", reads_data=True, gpu=True, sections=("gkd",), secrets=READS),
    StepSpec("train_naive", reads_data=True, gpu=True, sections=("gkd", "naive"), secrets=READS),
    # evidence and decisions are always computed afresh: a gate never passes on an earlier run's verdict
    StepSpec(
        "audit_privacy",
        reads_data=True,
        gpu=True,
        cache=False,
        sections=("privacy", "teacher", "canaries"),
        secrets=READS,
    ),
    StepSpec("evaluate_gates", cache=False, sections=None, run_volume=True, secrets=TRACKED),
    # register the student and append the trail record
    StepSpec("promote", cache=False, sections=None, run_volume=True, secrets=APPENDS),
    StepSpec("record_rejection", cache=False, sections=None, run_volume=True, secrets=APPENDS),
    # the trail reference arrives in the conclusion: summarize never opens the trail; it re-reads the data file for
    # the MLflow dataset input and the sample grid
    StepSpec("summarize", cache=False, sections=None, run_volume=True, reads_data=True, secrets=READS),
    # a failed run's trail record (read back first: a run that concluded keeps its record) and its closed parent run
    StepSpec(
        "finalize_run",
        cache=False,
        retries=False,
        sections=None,
        run_volume=True,
        resolves_request=True,
        secrets=APPENDS,
    ),
)
STEP = {s.name: s for s in STEPS}
ORDER = tuple(s.name for s in STEPS)


def step_config(cfg: RunConfig, step: str) -> str:
    """The JSON config a step's component receives: the seed, tracking and the step's own sections (all for a step
    whose sections are None), run metadata excluded unless the step reads everything. Keys sorted: the text is part
    of KFP's cache key, so equal configs must give equal text."""
    spec = STEP[step]
    values = cfg.model_dump(mode="json")
    keep = values.keys() if spec.sections is None else (*ALWAYS, *spec.sections)
    return json.dumps({k: values[k] for k in keep}, sort_keys=True)


def load_step_config(text: str) -> RunConfig:
    """A step's config back as a RunConfig; sections the step was not given hold their defaults and must not be read.
    Raises pydantic.ValidationError on invalid values."""
    return RunConfig.model_validate_json(text)
