"""Compile the DAG to KFP IR YAML (PipelineSpec + PlatformSpec) for a given component image."""

from pathlib import Path

from kfp import compiler
from kr.pipelines.knowledge_recycling import ClusterSettings, build_pipeline


def compile_pipeline(out: Path, image: str, cluster: ClusterSettings | None = None) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(image, cluster), package_path=str(out))
    return out
