"""The KFP pipeline: compiled IR re-read strictly, its DAG and Kubernetes settings, and a run with kfp.local."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from datagen import kr
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from kr.pipelines.compile import compile_pipeline
from kr.run.step_table import STEPS

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
        "summarize",
    }
    deps = {name: set(task.dependent_tasks) for name, task in exit_dag.items()}
    assert deps["validate-data"] == {"resolve-config"}
    # teacher and generator both wait only for validation (and the resolved config): they run in parallel
    assert deps["train-teacher"] == deps["train-generator"] == {"resolve-config", "validate-data"}
    assert {"train-teacher", "train-generator"} <= deps["select-generator"]
    assert "for-loop-2" in deps["train-student"]
    # the gates' inputs are the results they judge: the dependencies are the data's edges
    assert deps["evaluate-gates"] == {
        "resolve-config",
        "validate-data",
        "train-teacher",
        "train-student",
        "audit-privacy",
    }
    assert {"train-naive", "condition-branches-3", "for-loop-2", "evaluate-gates"} <= deps["summarize"]
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


def test_caching_retries_and_the_runs_volume_follow_the_step_table(compiled) -> None:
    spec, platform, _ = compiled
    tasks = dict(spec.components["comp-exit-handler-1"].dag.tasks)
    tasks |= dict(spec.components["comp-condition-4"].dag.tasks) | dict(spec.components["comp-condition-5"].dag.tasks)
    tasks |= dict(spec.components["comp-for-loop-2"].dag.tasks) | dict(spec.root.dag.tasks)
    for step in STEPS:
        assert tasks[step.task].caching_options.enable_cache is step.cache, step.name
        assert tasks[step.task].retry_policy.max_retry_count == (2 if step.retries else 0), step.name
    # evidence and decisions are never reused from an earlier run
    for name in ("evaluate-gates", "audit-privacy", "promote", "record-rejection", "summarize", "finalize-run"):
        assert tasks[name].caching_options.enable_cache is False, name
    k8s = json_format.MessageToDict(platform)["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    mounted = {name.removeprefix("exec-") for name, e in k8s.items() if e.get("pvcMount")}
    # the shared volume only where it is the right tool: run folders, the generator's resumable checkpoints, and
    # the data file the steps that read it re-read (the data artifact is a reference, never the images)
    assert mounted == {s.task for s in STEPS if s.run_volume or s.reads_data} and "train-generator" in mounted
    assert {"train-teacher", "regenerate", "audit-privacy"} <= mounted and "plan-shards" not in mounted


def test_a_gkd_change_leaves_the_upstream_cache_keys_alone() -> None:
    """A task's cache key is its inputs; its config input is its own section, so gkd.* touches only what reads it."""
    from kr.config import resolve_config
    from kr.run.step_table import step_config

    base = resolve_config("smoke")
    changed = resolve_config("smoke", overrides=["gkd.temperature=5", "gkd.epochs=3"])
    other_run = base.model_copy(update={"run": base.run.model_copy(update={"run_key": "another-run"})})
    for step in ("validate_data", "train_teacher", "train_generator", "select_generator"):
        assert step_config(changed, step) == step_config(base, step) == step_config(other_run, step), step
    for step in ("plan_shards", "train_student", "train_naive"):
        assert step_config(changed, step) != step_config(base, step), step


def test_no_task_is_ordered_by_anything_but_data() -> None:
    for path in (Path(__file__).parents[1] / "pipelines").glob("*.py"):
        assert "after(" not in path.read_text(), path


def test_compile_command_writes_the_image(tmp_path: Path) -> None:
    out = tmp_path / "pipeline.yaml"
    result = kr("compile", "--out", str(out), "--image", IMAGE)
    assert result.returncode == 0, result.stderr
    assert IMAGE in out.read_text()


def test_the_tasks_that_resolve_the_request_read_the_clusters_gate_policy(compiled) -> None:
    spec, platform, _ = compiled
    k8s = json_format.MessageToDict(platform)["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    mounted = {name.removeprefix("exec-") for name, e in k8s.items() if e.get("configMapAsVolume")}
    assert mounted == {"resolve-config", "finalize-run"}
    volume = k8s["exec-resolve-config"]["configMapAsVolume"][0]
    assert volume["configMapName"] == "kr-gate-policy" and not volume.get("optional")
    env = {e["name"]: e["value"] for e in _executors(spec)["exec-resolve-config"]["container"]["env"]}
    assert env["KR_GATE_POLICY"] == f"{volume['mountPath']}/gates.yaml"
