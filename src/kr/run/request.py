"""From the pipeline's parameters to one resolved `RunConfig` and the run's folder.

The pipeline takes what users set per run (dataset, profile, overrides, gate thresholds, model name, tracking
and audit URIs) and resolves them in its first task. The exit handler may not depend on that task (a KFP rule),
so it resolves the same parameters again: resolution is deterministic, so both get the same config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kr.config import ConfigError, DataConfig, RunConfig, deep_merge, resolve_config


@dataclass(frozen=True)
class RunRequest:
    """One pipeline run's parameters, as `kr run`, `kr submit` and the components see them."""

    dataset: str = "breastmnist"
    profile: str = "laptop"
    overrides: list[str] = field(default_factory=list)
    config_yaml: str = ""
    gates: dict[str, Any] = field(default_factory=dict)
    data_root: str = ""
    model_name: str = ""
    tracking_uri: str = ""
    audit_uri: str = ""
    run_dir: str = ""
    runs_root: str = "/mnt/kr-runs"
    image: str = "local"
    kfp_run_id: str = ""
    started_at: str = ""
    job_created_at: str = ""  # the cluster's run creation time; kfp.local leaves it unresolved

    def pipeline_arguments(self) -> dict[str, Any]:
        """The values a pipeline run is started with (image, run id and start time are set by the pipeline)."""
        skip = {"image", "kfp_run_id", "job_created_at"}
        return {k: v for k, v in self.__dict__.items() if k not in skip}


def _unresolved(value: str) -> bool:
    # a KFP placeholder the local runner left as it was, e.g. {{$.pipeline_job_create_time_utc}}
    return not value or value.startswith("{{")


def run_dir(req: RunRequest) -> Path:
    if req.run_dir:
        return Path(req.run_dir)
    if _unresolved(req.kfp_run_id):
        raise ValueError("neither run_dir nor a KFP run id is set: the run has no folder")
    return Path(req.runs_root) / req.kfp_run_id


def started_at(req: RunRequest) -> str:
    for value in (req.started_at, req.job_created_at):
        if not _unresolved(value):
            return datetime.fromisoformat(value.replace("Z", "+00:00")).isoformat(timespec="seconds")
    return datetime.now(UTC).isoformat(timespec="seconds")


def resolve_request(req: RunRequest) -> RunConfig:
    """defaults < profile < config_yaml < overrides, then the run's own settings (gates, registry, audit, meta)."""
    import yaml

    base: dict[str, Any] = {"data": {"dataset": req.dataset}}
    if req.data_root:
        base["data"]["data_root"] = req.data_root
    extra = yaml.safe_load(req.config_yaml) if req.config_yaml else {}
    cfg = resolve_config(req.profile, None, list(req.overrides), base=deep_merge(base, extra or {}))
    values = cfg.model_dump(mode="json")
    values["gates"] = deep_merge(values["gates"], req.gates or {})
    tracking = {"model_name": req.model_name or None} if req.model_name else {}
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
        return RunConfig.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid run parameters: {problems}") from exc


def config_json(req: RunRequest) -> str:
    return json.dumps(resolve_request(req).model_dump(mode="json"))


def finalize(req: RunRequest, runner: str, failed: bool, error: str | None) -> dict:
    """The exit handler: whatever happened, the run folder gets its summary and the trail its record."""
    from kr.steps import finalize as finalize_steps

    try:
        cfg = resolve_request(req)
    except (ConfigError, ValueError) as exc:
        # the run could not even start; still leave a summary that says why (no tracking: no valid settings)
        cfg, failed, error = RunConfig(data=DataConfig(dataset=req.dataset)), True, str(exc)
    started = started_at(req)
    wall_s = (datetime.now(UTC) - datetime.fromisoformat(started)).total_seconds()
    if failed and not error:
        error = "a pipeline task failed"
    return finalize_steps(cfg, run_dir(req), req.profile, runner, started, wall_s, error if failed else None)
