"""Compile the DAG to KFP IR YAML (PipelineSpec + PlatformSpec) for a given component image: `kr compile`."""

from pathlib import Path

from kfp import compiler

from kr.pipelines.knowledge_recycling import build_pipeline
from kr.pipelines.settings import ClusterSettings


def compile_pipeline(out: Path, image: str, cluster: ClusterSettings | None = None) -> Path:
    """Write the pipeline for `image` (every component runs in it) to `out`; returns `out`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(image, cluster), package_path=str(out))
    return out
