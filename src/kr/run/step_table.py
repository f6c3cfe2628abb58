"""The one table of the pipeline's steps: name, GPU or not, cached or not, retried or not, and the config it reads.

The DAG (`kr.pipelines.knowledge_recycling`) sets resources, caching and retries from it; the summary and the report
order their step timings by it; each component gets exactly the config sections listed here, so a step's KFP cache
key is its real inputs (a change to `gkd.*` leaves the teacher's key as it was).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from kr.config import RunConfig

# read by every step: the seed, and where its MLflow run goes (stable across runs, so cache keys stay stable)
ALWAYS = ("seed", "tracking")


@dataclass(frozen=True)
class StepSpec:
    """One pipeline step.

    name: snake_case, as results, MLflow runs (`kr.step` tag) and `summary.json`'s `timings_s` name it.
    gpu: requests an accelerator on a cluster. cache: KFP may reuse an earlier execution with the same inputs.
    retries: a failed pod is retried (preemption). sections: the RunConfig sections the step reads, None: all.
    run_volume: mounts the shared runs volume on a cluster: the run folder (summary, report, the MLflow parent's
    id, failure notes) or the generator's resumable checkpoints. reads_data: re-reads the validated data file (the
    data artifact is a reference, never the images), so on a cluster it mounts the volume the data lies on.
    resolves_request: resolves the run request, so it reads the gate policy (a ConfigMap on a cluster).
    """

    name: str
    gpu: bool = False
    cache: bool = True
    retries: bool = True
    sections: tuple[str, ...] | None = ()
    run_volume: bool = False
    reads_data: bool = False
    resolves_request: bool = False

    @property
    def task(self) -> str:
        """The KFP task and component name (kebab-case), e.g. train-teacher."""
        return self.name.replace("_", "-")


STEPS: tuple[StepSpec, ...] = (
    StepSpec("resolve_config", cache=False, sections=None, run_volume=True, resolves_request=True),
    StepSpec("validate_data", reads_data=True, sections=("data", "validation")),
    StepSpec("train_teacher", reads_data=True, sections=("teacher", "canaries")),
    StepSpec("train_generator", reads_data=True, gpu=True, sections=("generator", "canaries"), run_volume=True),
    StepSpec("select_generator", reads_data=True, gpu=True, sections=("selection", "sampler", "validation")),
    StepSpec("plan_shards", sections=("gkd", "sampler", "validation")),
    StepSpec("regenerate", reads_data=True, gpu=True, sections=("gkd", "sampler", "validation")),
    StepSpec("train_student", reads_data=True, gpu=True, sections=("gkd",)),
    StepSpec("train_naive", reads_data=True, gpu=True, sections=("gkd", "naive")),
    # evidence and decisions are always computed afresh: a gate never passes on an earlier run's verdict
    StepSpec("audit_privacy", reads_data=True, gpu=True, cache=False, sections=("privacy", "teacher", "canaries")),
    StepSpec("evaluate_gates", cache=False, sections=None, run_volume=True),
    StepSpec("promote", cache=False, sections=None, run_volume=True),
    StepSpec("record_rejection", cache=False, sections=None, run_volume=True),
    StepSpec("summarize", cache=False, sections=None, run_volume=True),
    StepSpec("finalize_run", cache=False, retries=False, sections=None, run_volume=True, resolves_request=True),
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
