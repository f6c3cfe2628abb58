"""regenerate: one shard of the GKD pool, freshly generated and labelled with the teacher's logits."""

from kfp.dsl import Artifact, Dataset, Input, Model, Output


def regenerate(
    plan: Input[Artifact],
    shard: int,
    data: Input[Dataset],
    generator: Input[Model],
    teacher: Input[Model],
    selection_result: Input[Artifact],
    shard_data: Output[Dataset],
    result: Output[Artifact],
) -> None:
    """Inputs: `plan` (from plan-shards: sizes and config), the `shard` index, `data`, `generator`, `teacher`, the
    selection's `selection_result`. Outputs: `shard_data` (shard.npz: uint8 images, int64 labels, float32 teacher
    logits; and its Data Docs) and `result` (kr.results.ShardResult). A shard that fails its checks fails the task."""
    from pathlib import Path

    from kr import steps

    chosen = steps.SelectionResult.load(Path(selection_result.path))
    r = steps.regenerate(
        Path(plan.path), shard, Path(data.path), Path(generator.path), Path(teacher.path), chosen, Path(shard_data.path)
    )
    r.save(Path(result.path))
    shard_data.metadata.update({"shard": shard, "n": r.n} | (r.fidelity or {}))
