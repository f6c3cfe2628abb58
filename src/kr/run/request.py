"""The run request: what a user sets per run, defined once, and its resolution to one `RunConfig`.

`kr run`, `kr submit`, `kr schedule`, the pipeline's parameters and the components that need the request
(`resolve_config`, the exit handler) all derive from `RunRequest`. The exit handler may not depend on the first
task (a KFP rule), so it resolves the same request again: resolution is deterministic, so both get the same config.
"""

from __future__ import annotations

import inspect
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kr.config import (
    DEFAULT_PROFILE,
    ConfigError,
    RunConfig,
    deep_merge,
    merged_values,
    parse_config_text,
    validate_config,
    validation_problems,
)
from kr.run.policy import enforce as enforce_policy
from kr.run.policy import policy_path

CLUSTER_RUNS_ROOT = "/mnt/kr-runs"


class RunRequest(BaseModel):
    """One pipeline run's parameters, as users set them (CLI options, KFP run parameters).

    Precedence (`resolve_request`): built-in defaults < profile < config_yaml < overrides < the request's own
    fields where they are not empty (dataset, data_root, model_name, tracking_uri, audit_uri, gates): those are the
    run's explicit settings, like the CLI's flags. An empty field leaves the key to the config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str = Field(
        "",
        description="MedMNIST 2-D flag or a path to an .npz in MedMNIST layout; over data.dataset of config_yaml and "
        "overrides; empty: theirs, else breastmnist",
    )
    profile: str = Field(DEFAULT_PROFILE, description="config profile: smoke, laptop, cpu or gpu")
    overrides: list[str] = Field(default_factory=list, description="KEY=VALUE config overrides, over config_yaml")
    config_yaml: str = Field("", description="YAML text of config values, over the profile")
    gates: dict[str, Any] = Field(default_factory=dict, description="gate thresholds over the config's, nested")
    data_root: str = Field(
        "", description="folder with <flag>.npz, over data.data_root; empty: the config's, else kr.data's default"
    )
    model_name: str = Field(
        "",
        description="registered model name, over tracking.model_name; empty: the config's, else kr-<dataset>-student",
    )
    tracking_uri: str = Field("", description="MLflow tracking URI, over tracking.uri; empty: the config's, else none")
    audit_uri: str = Field(
        "", description="audit trail (folder, file:///path or s3://bucket/prefix), over audit.uri; empty: the config's"
    )
    run_dir: str = Field("", description="the run folder; empty: <runs_root>/<KFP run id>")
    runs_root: str = Field(CLUSTER_RUNS_ROOT, description="where run folders live (the shared volume on a cluster)")
    checkpoints_root: str = Field(
        "", description="where resumable generator training lives; empty: <runs_root>/checkpoints"
    )
    started_at: str = Field("", description="UTC ISO-8601 start; empty: the KFP run's creation time, else now")
    run_key: str = Field(
        "",
        description="the run's unique key (registry, trail and MLflow hang on it); empty: the KFP run id, a UUID the "
        "KFP API server assigns. `kr run` sets a fresh UUID: kfp.local's run id is a small random integer",
    )
    # set by the pipeline itself, never a run parameter
    image: str = Field("local", description="the component image")
    kfp_run_id: str = Field("", description="KFP's run id (a placeholder until the pipeline resolves it)")
    job_created_at: str = Field("", description="the cluster's run creation time; kfp.local leaves it unresolved")

    def pipeline_arguments(self) -> dict[str, Any]:
        """The values a pipeline run is started with (image, run id and creation time are the pipeline's own)."""
        return self.model_dump(include=set(PIPELINE_PARAMETERS))


# what the pipeline exposes as run parameters, in the request's order
PIPELINE_PARAMETERS = tuple(n for n in RunRequest.model_fields if n not in ("image", "kfp_run_id", "job_created_at"))
# KFP substitutes run-time values into a struct only as text, so list and dict parameters travel beside it
STRUCTURED = ("overrides", "gates")


def pipeline_signature(**defaults: Any) -> inspect.Signature:
    """The pipeline function's signature from RunRequest: one parameter per run parameter, typed and defaulted."""
    params = []
    for name in PIPELINE_PARAMETERS:
        field = RunRequest.model_fields[name]
        default = defaults.get(name, field.get_default(call_default_factory=True))
        annotation = {list[str]: list, dict[str, Any]: dict}.get(field.annotation, field.annotation)
        params.append(
            inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=annotation)
        )
    return inspect.Signature(params)


def from_parts(scalars: dict[str, Any], overrides: list, gates: dict) -> RunRequest:
    """The request back from what a component received: the scalar struct and the two structured parameters.
    Raises ConfigError when a value has the wrong type."""
    try:
        return RunRequest.model_validate({**scalars, "overrides": list(overrides or []), "gates": dict(gates or {})})
    except ValidationError as exc:
        raise ConfigError(f"invalid run parameters: {_problems(exc)}") from exc


def _problems(exc: ValidationError) -> str:
    return validation_problems(exc)  # pydantic's messages only, never an input value (it may hold a credential)


def _unresolved(value: str) -> bool:
    # a KFP placeholder the local runner left as it was, e.g. {{$.pipeline_job_create_time_utc}}
    return not value or value.startswith("{{")


def run_dir(req: RunRequest) -> Path:
    """The run folder. Raises ValueError when neither run_dir nor a resolved KFP run id is set."""
    if req.run_dir:
        return Path(req.run_dir)
    if _unresolved(req.kfp_run_id):
        raise ValueError("neither run_dir nor a KFP run id is set: the run has no folder")
    return Path(req.runs_root) / req.kfp_run_id


def checkpoints_root(req: RunRequest) -> Path:
    """Where the generator's resumable training lives (one sub-folder per generator config and data file)."""
    return Path(req.checkpoints_root) if req.checkpoints_root else Path(req.runs_root) / "checkpoints"


def started_at(req: RunRequest) -> str:
    """The run's start, UTC ISO-8601 to the second: started_at, else the KFP run's creation time, else now."""
    for value in (req.started_at, req.job_created_at):
        if not _unresolved(value):
            return datetime.fromisoformat(value.replace("Z", "+00:00")).isoformat(timespec="seconds")
    return datetime.now(UTC).isoformat(timespec="seconds")


def resolve_request(req: RunRequest) -> RunConfig:
    """defaults < profile < config_yaml < overrides < the run's own settings where set (dataset, data root,
    registry, trail, gates), then the run's meta, held to the gate policy (KR_GATE_POLICY, `kr.run.policy`).
    Raises ConfigError naming the key and the reason (never a credential); ValueError when the run has no key."""
    file_values = parse_config_text(req.config_yaml, "config_yaml") if req.config_yaml else {}
    values = merged_values(req.profile, file_values, list(req.overrides))
    own = {
        "data": {"dataset": req.dataset, "data_root": req.data_root},
        "tracking": {"model_name": req.model_name, "uri": req.tracking_uri},
        "audit": {"uri": req.audit_uri},
    }
    values = deep_merge(values, {section: {k: v for k, v in keys.items() if v} for section, keys in own.items()})
    values = deep_merge(values, {"gates": req.gates or {}})
    run_key = req.run_key or (req.kfp_run_id if not _unresolved(req.kfp_run_id) else "")
    if not run_key:
        raise ValueError("the run has no key: set run_key (kr run does) or run it on Kubeflow Pipelines")
    values["run"] = {
        "run_key": run_key,
        "image": req.image,
        "kfp_run_id": "" if _unresolved(req.kfp_run_id) else req.kfp_run_id,
    }
    cfg = validate_config(values, f"invalid configuration (profile {req.profile})")
    enforce_policy(cfg.gates, policy_path())  # after every source of gate values: none may loosen the policy
    return cfg
