"""The KFP pipeline: compiled IR re-read strictly, its DAG and Kubernetes settings, and a run with kfp.local."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from datagen import REAL_ROOT, kr, needs_real
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from kr.pipeline.compile import compile_pipeline

IMAGE = "registry.example.org/kr:0.1.0-test"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[pipeline_spec_pb2.PipelineSpec, pipeline_spec_pb2.PlatformSpec, str]:
    path = compile_pipeline(tmp_path_factory.mktemp("ir") / "kr.yaml", IMAGE)
    docs = list(yaml.safe_load_all(path.read_text()))
    assert len(docs) == 2, "expected a PipelineSpec and a PlatformSpec"
    # strict: an unknown or misspelled field is an error, not ignored
    spec = json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())
    platform = json_format.ParseDict(docs[1], pipeline_spec_pb2.PlatformSpec())
    return spec, platform, path.read_text()


def _executors(spec) -> dict:
    return json_format.MessageToDict(spec.deployment_spec)["executors"]


def test_every_component_uses_the_compile_time_image(compiled) -> None:
    spec, _, _ = compiled
    images = {e["container"]["image"] for e in _executors(spec).values()}
    assert images == {IMAGE}


def test_dag_shape(compiled) -> None:
    spec, _, _ = compiled
    exit_dag = spec.components["comp-exit-handler-1"].dag.tasks
    assert set(exit_dag) >= {
        "validate-data",
        "train-teacher",
        "train-generator",
        "select-generator",
        "plan-shards",
        "for-loop-2",
        "train-student",
        "train-naive",
        "audit-privacy",
        "evaluate-gates",
    }
    deps = {name: set(task.dependent_tasks) for name, task in exit_dag.items()}
    # teacher and generator both wait only for validation: they run in parallel
    assert deps["train-teacher"] == {"validate-data"} and deps["train-generator"] == {"validate-data"}
    assert {"train-teacher", "train-generator"} <= deps["select-generator"]
    assert "for-loop-2" in deps["train-student"]
    assert {"audit-privacy", "train-naive"} <= deps["evaluate-gates"]
    # the fan-out iterates over plan-shards' output
    loop = exit_dag["for-loop-2"]
    assert loop.parameter_iterator.items.input_parameter
    assert "regenerate" in spec.components["comp-for-loop-2"].dag.tasks
    # the exit task runs whatever happened inside
    root = spec.root.dag.tasks
    assert (
        root["finalize-run"].trigger_policy.strategy
        == pipeline_spec_pb2.PipelineTaskSpec.TriggerPolicy.ALL_UPSTREAM_TASKS_COMPLETED
    )


def test_gpu_settings_on_heavy_steps_only(compiled) -> None:
    spec, platform, _ = compiled
    executors = _executors(spec)
    gpu = {name for name, e in executors.items() if e["container"].get("resources", {}).get("accelerator")}
    assert gpu == {
        f"exec-{s}"
        for s in ("train-generator", "select-generator", "regenerate", "train-student", "train-naive", "audit-privacy")
    }
    for name in gpu:
        acc = executors[name]["container"]["resources"]["accelerator"]
        assert acc["resourceType"] == "nvidia.com/gpu" and acc["resourceCount"] == "1"
    teacher = executors["exec-train-teacher"]["container"]["resources"]
    assert teacher["resourceCpuLimit"] == "8" and teacher["resourceMemoryRequest"] == "8G"
    k8s = json_format.MessageToDict(platform)["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    regen = k8s["exec-regenerate"]
    assert regen["nodeSelector"]["labels"] == {"kr.io/accelerator": "nvidia-gpu"}
    assert regen["tolerations"][0]["key"] == "nvidia.com/gpu" and regen["tolerations"][0]["effect"] == "NoSchedule"
    assert "tolerations" not in k8s["exec-train-teacher"]
    secrets = {s["secretName"] for s in k8s["exec-train-student"]["secretAsEnv"]}
    assert secrets == {"kr-mlflow", "kr-s3"}


def test_caching_and_retries(compiled) -> None:
    spec, _, _ = compiled
    tasks = dict(spec.components["comp-exit-handler-1"].dag.tasks)
    assert tasks["evaluate-gates"].caching_options.enable_cache is False
    assert tasks["audit-privacy"].caching_options.enable_cache is False
    assert tasks["train-teacher"].retry_policy.max_retry_count == 2


def test_compile_command_writes_the_image(tmp_path: Path) -> None:
    out = tmp_path / "pipeline.yaml"
    result = kr("compile", "--out", str(out), "--image", IMAGE)
    assert result.returncode == 0, result.stderr
    assert IMAGE in out.read_text()


@pytest.mark.e2e
@needs_real
def test_smoke_pipeline_on_kfp_local(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = kr("run", "--runner", "kfp.local", "--profile", "smoke", "--data-root", str(REAL_ROOT), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runner"] == "kfp.local" and summary["status"] == "succeeded"
    assert summary["student"]["test"]["accuracy"] is not None
    assert len(summary["regeneration"]["shards"]) == summary["config"]["gkd"]["shards"]
    assert (out / "kfp").is_dir() and any((out / "kfp").rglob("*.pt"))  # task outputs stay in the run folder


@pytest.mark.e2e
def test_kfp_local_bad_data_stops_at_validation(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = kr(
        "run",
        "--runner",
        "kfp.local",
        "--profile",
        "smoke",
        "--data-root",
        str(tmp_path / "empty"),
        "--out",
        str(out),
        timeout=600,
    )
    assert result.returncode != 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert "validate_data" in summary["error"] and "not found" in summary["error"]
    assert set(summary["timings_s"]) == set()  # nothing after validation ran
