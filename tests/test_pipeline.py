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
    # it logs to MLflow and reads the data file; only the trail's steps get the trail's S3 keys
    assert secrets == {"kr-mlflow", "kr-data-s3"}


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


# --- least privilege: secrets, identity and labels of each task's pod ----------------------------------------------

# What each task touches, worked out from the code (docs/deploy.md explains each line): every step that records an
# MLflow run (kr.steps.running.run_step), opens or closes the parent run, or registers the student needs the MLflow
# user; artifacts go through the MLflow server (`mlflow-artifacts:`, the server proxies the bucket), so no step needs
# S3 keys for MLflow. Only the steps that read or append the audit trail (s3://) need the trail's S3 keys; only the
# steps that re-read the data file need the data bucket's (data.dataset or data.data_root = s3://...).
SECRETS_BY_TASK = {
    "resolve-config": {"kr-mlflow", "kr-s3"},  # refuses a run key the trail or registry holds; opens the parent run
    "validate-data": {"kr-mlflow", "kr-data-s3"},
    "train-teacher": {"kr-mlflow", "kr-data-s3"},
    "train-generator": {"kr-mlflow", "kr-data-s3"},
    "select-generator": {"kr-mlflow", "kr-data-s3"},
    "plan-shards": set(),  # arithmetic on info.json: no MLflow run, no trail, no data file
    "regenerate": {"kr-mlflow", "kr-data-s3"},
    "train-student": {"kr-mlflow", "kr-data-s3"},
    "train-naive": {"kr-mlflow", "kr-data-s3"},
    "audit-privacy": {"kr-mlflow", "kr-data-s3"},
    "evaluate-gates": {"kr-mlflow"},
    # register the student, append the trail record, signed with the trail's HMAC key
    "promote": {"kr-mlflow", "kr-s3", "kr-audit-signing"},
    "record-rejection": {"kr-mlflow", "kr-s3", "kr-audit-signing"},
    # closes the parent run (the trail reference comes in the conclusion); the data file for the dataset input and
    # the sample grid
    "summarize": {"kr-mlflow", "kr-data-s3"},
    "finalize-run": {"kr-mlflow", "kr-s3", "kr-audit-signing"},  # a failed run's trail record, its closed parent
}
SECRET_KEYS = {
    "kr-mlflow": {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"},
    "kr-s3": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
    "kr-audit-signing": {"KR_AUDIT_HMAC_KEY"},
    "kr-data-s3": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
}


def _kubernetes(platform) -> dict:
    return json_format.MessageToDict(platform)["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_each_task_gets_exactly_the_secrets_it_needs(compiled) -> None:
    spec, platform, _ = compiled
    k8s = _kubernetes(platform)
    tasks = {name.removeprefix("exec-") for name in _executors(spec)}
    assert tasks == set(SECRETS_BY_TASK) == {s.task for s in STEPS}
    got = {}
    for task in tasks:
        refs = k8s.get(f"exec-{task}", {}).get("secretAsEnv", [])
        got[task] = {r["secretName"] for r in refs}
        for ref in refs:
            mapping = {m["secretKey"]: m["envVar"] for m in ref["keyToEnv"]}
            assert set(mapping) == SECRET_KEYS[ref["secretName"]] and mapping == {k: k for k in mapping}, task
            assert ref.get("optional") is True, task  # a cluster without the Secret runs untracked, not broken
    assert got == SECRETS_BY_TASK
    # the step that trains on the real images never holds the audit bucket's keys
    assert "kr-s3" not in got["train-teacher"] and not got["plan-shards"]


def test_the_step_table_declares_each_steps_secrets() -> None:
    from kr.pipelines.settings import ClusterSettings

    cluster = ClusterSettings()
    for step in STEPS:
        assert set(cluster.step_secrets(step.secrets)) == SECRETS_BY_TASK[step.task], step.name
    with pytest.raises(ValueError, match="unknown secret"):
        type(STEPS[0])("x", secrets=frozenset({"vault"}))


def test_no_task_holds_both_the_trail_keys_and_the_data_keys(compiled) -> None:
    """kr-s3 and kr-data-s3 set the same variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY): a pod given both
    would hold whichever the kubelet set last, for two buckets. The data keys go to exactly the data readers."""
    from kr.run.step_table import DATA, S3, StepSpec

    spec, platform, _ = compiled
    k8s = _kubernetes(platform)
    for name in _executors(spec):
        secrets = {r["secretName"] for r in k8s.get(name, {}).get("secretAsEnv", [])}
        assert not {"kr-s3", "kr-data-s3"} <= secrets, name
    assert {s.task for s in STEPS if "kr-data-s3" in SECRETS_BY_TASK[s.task]} == {s.task for s in STEPS if s.reads_data}
    with pytest.raises(ValueError, match="set the same variables"):
        StepSpec("x", reads_data=True, secrets=frozenset({S3, DATA}))
    with pytest.raises(ValueError, match="exactly when it reads_data"):
        StepSpec("x", reads_data=True)
    with pytest.raises(ValueError, match="exactly when it reads_data"):
        StepSpec("x", secrets=frozenset({DATA}))


def test_only_the_tasks_with_the_data_keys_carry_the_data_egress_label(compiled) -> None:
    from kr.pipelines.settings import ClusterSettings

    spec, platform, _ = compiled
    k8s = _kubernetes(platform)
    key, value = ClusterSettings().data_egress_label
    for name in _executors(spec):
        labels = k8s[name]["podMetadata"]["labels"]
        assert (labels.get(key) == value) is ("kr-data-s3" in SECRETS_BY_TASK[name.removeprefix("exec-")]), name


def test_every_task_runs_as_the_images_non_root_user(compiled) -> None:
    spec, platform, _ = compiled
    k8s = _kubernetes(platform)
    for name in _executors(spec):
        # uid 10001, group 0: the images' USER 10001:0 (docker/*.Dockerfile), the owner of the runs volume's files
        assert k8s[name]["securityContext"] == {"runAsUser": "10001", "runAsGroup": "0", "runAsNonRoot": True}, name


def test_only_the_tasks_with_the_audit_keys_carry_the_s3_egress_label(compiled) -> None:
    from kr.pipelines.settings import ClusterSettings

    spec, platform, _ = compiled
    k8s = _kubernetes(platform)
    cluster = ClusterSettings()
    key, value = cluster.s3_egress_label
    for name in _executors(spec):
        labels = k8s[name]["podMetadata"]["labels"]
        assert labels[next(iter(cluster.pod_labels))] == "knowledge-recycling", name
        needs_s3 = "kr-s3" in SECRETS_BY_TASK[name.removeprefix("exec-")]
        assert (labels.get(key) == value) is needs_s3, name


def test_docs_list_each_steps_secrets_as_the_pipeline_gives_them() -> None:
    """docs/deploy.md's table of step -> Secrets is the compiled pipeline's, row for row."""
    text = (Path(__file__).parents[1] / "docs" / "deploy.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`") and cells[0].strip("`") in SECRETS_BY_TASK:
            secrets = set() if cells[1] in ("none", "—", "-") else {s.strip(" `") for s in cells[1].split(",")}
            rows[cells[0].strip("`")] = secrets
    assert rows == SECRETS_BY_TASK


@pytest.mark.parametrize("image", [IMAGE + "@sha256:" + "0" * 64, "registry.example.org/kr@sha256:" + "1" * 64])
def test_the_pipeline_can_name_its_image_by_digest(tmp_path: Path, image: str) -> None:
    path = compile_pipeline(tmp_path / "kr.yaml", image)
    spec = json_format.ParseDict(next(yaml.safe_load_all(path.read_text())), pipeline_spec_pb2.PipelineSpec())
    assert {e["container"]["image"] for e in _executors(spec).values()} == {image}
