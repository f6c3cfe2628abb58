"""plan-shards: how many images each regeneration shard draws."""

from typing import List  # noqa: UP035  KFP reads the annotation and wants typing.List

from kfp.dsl import Artifact, Dataset, Input, Output


def plan_shards(config: str, data: Input[Dataset], plan: Output[Artifact]) -> List[int]:  # noqa: UP006
    """Inputs: `config` (gkd, sampler and validation sections), `data`. Outputs: `plan` (sizes per shard and the
    shards' config, JSON) and the shard indices the ParallelFor iterates over."""
    from pathlib import Path

    from kr import steps

    return steps.plan_shards(config, Path(data.path), Path(plan.path))
