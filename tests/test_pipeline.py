"""The KFP pipeline: compiled IR re-read strictly, its DAG and Kubernetes settings, and a run with kfp.local."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from datagen import kr
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
from kr.pipelines.compile import compile_pipeline

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
        "resolve-config",
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
        "condition-branches-3",
    }
    deps = {name: set(task.dependent_tasks) for name, task in exit_dag.items()}
    assert deps["validate-data"] == {"resolve-config"}
    # teacher and generator both wait only for validation (and the resolved config): they run in parallel
    assert deps["train-teacher"] == deps["train-generator"] == {"resolve-config", "validate-data"}
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


def test_promotion_is_gated_on_the_verdict(compiled) -> None:
    spec, _, _ = compiled
    branches = spec.components["comp-condition-branches-3"].dag.tasks
    conditions = {name: task.trigger_policy.condition for name, task in branches.items()}
    assert set(conditions) == {"condition-4", "condition-5"}
    # promote only when evaluate-gates returned true; otherwise the rejection is recorded
    failed = [c for c in conditions.values() if c.startswith("!(")]
    passed = [c for c in conditions.values() if not c.startswith("!(") and c.endswith("== true")]
    assert len(passed) == 1 and len(failed) == 1
    assert "pipelinechannel--evaluate-gates-Output" in passed[0]
    assert "promote" in spec.components["comp-condition-4"].dag.tasks
    assert "record-rejection" in spec.components["comp-condition-5"].dag.tasks


def test_pipeline_parameters(compiled) -> None:
    spec, _, _ = compiled
    params = spec.root.input_definitions.parameters
    assert set(params) >= {
        "dataset",
        "profile",
        "overrides",
        "gates",
        "model_name",
        "tracking_uri",
        "audit_uri",
        "config_yaml",
    }
    assert params["gates"].parameter_type == pipeline_spec_pb2.ParameterType.STRUCT
    assert params["overrides"].parameter_type == pipeline_spec_pb2.ParameterType.LIST


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


def test_caching_retries_and_shared_run_volume(compiled) -> None:
    spec, platform, _ = compiled
    tasks = dict(spec.components["comp-exit-handler-1"].dag.tasks)
    tasks |= dict(spec.components["comp-condition-4"].dag.tasks) | dict(spec.components["comp-condition-5"].dag.tasks)
    for name in ("evaluate-gates", "audit-privacy", "promote", "record-rejection"):
        assert tasks[name].caching_options.enable_cache is False, name
    assert tasks["train-teacher"].caching_options.enable_cache is True
    assert tasks["train-teacher"].retry_policy.max_retry_count == 2
    k8s = json_format.MessageToDict(platform)["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    # every task mounts the run volume: records and generator checkpoints outlive a preempted pod
    for name, executor in k8s.items():
        mounts = {(m["constant"], m["mountPath"]) for m in executor["pvcMount"]}
        assert mounts == {("kr-runs", "/mnt/kr-runs")}, name


def test_compile_command_writes_the_image(tmp_path: Path) -> None:
    out = tmp_path / "pipeline.yaml"
    result = kr("compile", "--out", str(out), "--image", IMAGE)
    assert result.returncode == 0, result.stderr
    assert IMAGE in out.read_text()
