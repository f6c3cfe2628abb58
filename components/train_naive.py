"""train-naive: the naive CAS baseline (one fixed synthetic set, the generator's hard labels)."""

from typing import List  # noqa: UP035  KFP reads the annotation and wants typing.List

from kfp.dsl import Artifact, Dataset, Input, Metrics, Output


def train_naive(
    config: str,
    data: Input[Dataset],
    shards: Input[List[Dataset]],  # noqa: UP006
    result: Output[Artifact],
    metrics: Output[Metrics],
) -> None:
    """Inputs: `config` (gkd and naive sections), `data`, every shard. Outputs: `result` (kr.results.NaiveResult)
    and `metrics` (test accuracy)."""
    from pathlib import Path

    from kr import steps

    r = steps.train_naive(config, Path(data.path), [Path(s.path) for s in shards])
    r.save(Path(result.path))
    metrics.log_metric("test_accuracy", r.test.accuracy)
    steps.keep_metrics(metrics)
