"""resolve-config: the run request -> the resolved config, the run folder, and each step's config section."""

from typing import NamedTuple

from kfp.dsl import Artifact, Output


def resolve_config(
    request: dict,
    overrides: list,
    gates: dict,
    run_config: Output[Artifact],
) -> NamedTuple(
    "Resolved",
    config=str,
    run_dir=str,
    started_at=str,
    checkpoints_root=str,
    validate_data=str,
    train_teacher=str,
    train_generator=str,
    select_generator=str,
    plan_shards=str,
    train_student=str,
    train_naive=str,
    audit_privacy=str,
):
    """Inputs: the run request's scalar parameters (`request`), its `overrides` (KEY=VALUE list) and `gates` (nested
    thresholds). Outputs: `run_config` (the full resolved config, JSON) and, as parameters, the config JSON, the run
    folder, the start time (UTC ISO-8601), the generator checkpoints root and one config section per step (the text
    KFP's cache keys hash). Opens the MLflow parent run. Fails on an invalid request, before any work."""
    from pathlib import Path

    from kr import steps

    resolved = steps.resolve_config(request, overrides, gates, Path(run_config.path))
    run_config.metadata.update({"run_dir": resolved["run_dir"], "dataset": request.get("dataset", "")})
    outputs = resolve_config.__annotations__["return"]  # the NamedTuple above: its fields are the outputs
    return outputs(*(resolved[name] for name in outputs._fields))
