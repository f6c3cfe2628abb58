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

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kr.config import DEFAULT_PROFILE, ConfigError, RunConfig, deep_merge, resolve_config
from kr.run.policy import enforce as enforce_policy
from kr.run.policy import policy_path

CLUSTER_RUNS_ROOT = "/mnt/kr-runs"


class RunRequest(BaseModel):
    """One pipeline run's parameters, as users set them (CLI options, KFP run parameters)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str = Field("breastmnist", description="MedMNIST 2-D flag or a path to an .npz in MedMNIST layout")
    profile: str = Field(DEFAULT_PROFILE, description="config profile: smoke, laptop, cpu or gpu")
    overrides: list[str] = Field(default_factory=list, description="KEY=VALUE config overrides, applied last")
    config_yaml: str = Field("", description="YAML text of config values, over the profile")
    gates: dict[str, Any] = Field(default_factory=dict, description="gate thresholds over the config's, nested")
    data_root: str = Field("", description="folder with <flag>.npz; empty: kr.data.resolve_data_root's default")
    model_name: str = Field("", description="registered model name; empty: kr-<dataset>-student")
    tracking_uri: str = Field("", description="MLflow tracking URI; empty: no tracking")
    audit_uri: str = Field("", description="audit trail location (folder or s3://bucket/prefix); empty: none")
    run_dir: str = Field("", description="the run folder; empty: <runs_root>/<KFP run id>")
    runs_root: str = Field(CLUSTER_RUNS_ROOT, description="where run folders live (the shared volume on a cluster)")
    checkpoints_root: str = Field(
        "", description="where resumable generator training lives; empty: <runs_root>/checkpoints"
    )
    started_at: str = Field("", description="UTC ISO-8601 start; empty: the KFP run's creation time, else now")
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
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors())


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
    """defaults < profile < config_yaml < overrides, then the run's own settings (gates, registry, trail, meta),
    held to the gate policy (KR_GATE_POLICY, `kr.run.policy`). Raises ConfigError naming the key and the
    reason; ValueError when the run has no folder."""
    base: dict[str, Any] = {"data": {"dataset": req.dataset}}
    if req.data_root:
        base["data"]["data_root"] = req.data_root
    try:
        extra = yaml.safe_load(req.config_yaml) if req.config_yaml else {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config_yaml is not valid YAML: {exc}") from exc
    cfg = resolve_config(req.profile, None, list(req.overrides), base=deep_merge(base, extra or {}))
    values = cfg.model_dump(mode="json")
    values["gates"] = deep_merge(values["gates"], req.gates or {})
    tracking = {"model_name": req.model_name} if req.model_name else {}
    if req.tracking_uri:
        tracking["uri"] = req.tracking_uri
    values["tracking"] = deep_merge(values["tracking"], tracking)
    if req.audit_uri:
        values["audit"]["uri"] = req.audit_uri
    run_key = req.kfp_run_id if not _unresolved(req.kfp_run_id) else run_dir(req).name
    values["run"] = {
        "run_key": run_key,
        "image": req.image,
        "kfp_run_id": "" if _unresolved(req.kfp_run_id) else req.kfp_run_id,
    }
    try:
        cfg = RunConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(f"invalid run parameters: {_problems(exc)}") from exc
    enforce_policy(cfg.gates, policy_path())  # after every source of gate values: none may loosen the policy
    return cfg
