"""train-generator: the class-conditional diffusion generator (diffusers UNet2DModel, EMA)."""

from kfp.dsl import Artifact, Dataset, Input, Model, Output


def train_generator(
    config: str, checkpoints_root: str, data: Input[Dataset], generator: Output[Model], result: Output[Artifact]
) -> None:
    """Inputs: `config` (generator section), `checkpoints_root` (a volume a retried task resumes from), `data`.
    Outputs: `generator` (the kept EMA checkpoints and spec.json) and `result` (kr.results.GeneratorResult)."""
    from pathlib import Path

    from kr import steps

    r = steps.train_generator(config, Path(data.path), Path(generator.path), Path(checkpoints_root))
    r.save(Path(result.path))
    generator.metadata.update({"role": "generator", "framework": "diffusers", "steps": r.steps, "params": r.params})
