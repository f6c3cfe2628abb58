"""select-generator: checkpoint and guidance-scale selection by validation CAS and fidelity."""

from kfp.dsl import Artifact, Dataset, Input, Model, Output


def select_generator(
    config: str,
    data: Input[Dataset],
    generator: Input[Model],
    teacher: Input[Model],
    selection: Output[Artifact],
    result: Output[Artifact],
) -> None:
    """Inputs: `config` (selection, sampler and validation sections), `data`, `generator`, `teacher`. Outputs:
    `selection` (selection.json and the chosen cell's samples) and `result` (kr.results.SelectionResult)."""
    from pathlib import Path

    from kr import steps

    r = steps.select_generator(config, Path(data.path), Path(generator.path), Path(teacher.path), Path(selection.path))
    r.save(Path(result.path))
    headline = {k: v for k, v in r.fidelity.items() if k != "per_class"}
    result.metadata.update({"checkpoint": r.checkpoint, "guidance_scale": r.guidance_scale, "val_cas": r.val_cas})
    result.metadata.update(headline)
