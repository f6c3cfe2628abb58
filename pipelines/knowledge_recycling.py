"""The Knowledge Recycling DAG: one definition for the local runner and for Kubeflow Pipelines on Kubernetes.

resolve config -> validate -> teacher || generator -> selection -> ParallelFor(regeneration shards) -> student
(+ naive baseline) -> privacy audit -> gates -> If(passed) promote / Else record the rejection -> summarize, all
inside an ExitHandler whose exit task records a failed run (trail record, summary, report).

Every edge is data: each task receives the artifacts and typed results it reads as declared inputs, so no task is
ordered by hand and KFP's cache keys and lineage see every dependency. Each task gets only its own config section, so
a change to `gkd.*` leaves the keys of validation, teacher, generator and selection as they were.
"""

from typing import Any

from kfp import dsl, kubernetes

from kr.components import build_components
from kr.pipelines.settings import ClusterSettings
from kr.steps import DEFAULT_PROFILE, PIPELINE_PARAMETERS, POLICY_ENV, STEP, STRUCTURED, pipeline_signature

PIPELINE_NAME = "knowledge-recycling"
DESCRIPTION = (
    "Knowledge Recycling: teacher, generator, GKD student, privacy audit, gates and a gated promotion in the MLflow "
    "registry, on a MedMNIST dataset"
)


def configure(task: dsl.PipelineTask, step: str, cluster: ClusterSettings) -> dsl.PipelineTask:
    """Resources, labels, identity and, from the step table, secrets, GPU, runs volume, caching and retries of one
    task."""
    spec = STEP[step]
    task.set_cpu_request(cluster.cpu_request).set_cpu_limit(cluster.cpu_limit)
    task.set_memory_request(cluster.memory_request).set_memory_limit(cluster.memory_limit)
    # lets NetworkPolicies admit and limit kr's pods, not every KFP pod (only the S3 keys' holders reach S3)
    for key, value in cluster.step_labels(spec.secrets).items():
        kubernetes.add_pod_label(task, label_key=key, label_value=value)
    if cluster.run_as_user is not None:  # the images' own non-root user; KFP (>= 2.17) adds the rest of "restricted"
        kubernetes.set_security_context(
            task, run_as_user=cluster.run_as_user, run_as_group=cluster.run_as_group, run_as_non_root=True
        )
    if spec.gpu and cluster.gpus > 0:  # gpus=0 compiles a CPU-only pipeline (small dev clusters)
        task.set_accelerator_type(cluster.gpu_type).set_accelerator_limit(cluster.gpus)
        for key, value in cluster.gpu_node_selector.items():
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        kubernetes.add_toleration(task, key=cluster.gpu_toleration_key, operator="Exists", effect="NoSchedule")
    for secret, mapping in cluster.step_secrets(spec.secrets).items():  # only the credentials this step uses
        # optional: a cluster without that secret still runs, with no credentials in the pod
        kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env=mapping, optional=True)
    if spec.resolves_request and cluster.gate_policy_config_map:
        kubernetes.use_config_map_as_volume(
            task, config_map_name=cluster.gate_policy_config_map, mount_path=cluster.gate_policy_mount
        )
        task.set_env_variable(POLICY_ENV, f"{cluster.gate_policy_mount}/gates.yaml")
    if spec.run_volume or spec.reads_data:  # the data file lies on the runs volume (<runs>/data)
        kubernetes.mount_pvc(task, pvc_name=cluster.runs_pvc, mount_path=cluster.runs_mount)
    task.set_caching_options(spec.cache)
    if spec.retries and cluster.retries:
        task.set_retry(num_retries=cluster.retries, backoff_duration="30s", backoff_factor=2.0)
    return task


def build_pipeline(image: str, cluster: ClusterSettings | None = None, runner: str = "kfp"):
    """The pipeline function, with every component running in `image`; its run parameters are RunRequest's."""
    c = build_components(image)
    cluster = cluster or ClusterSettings()

    def task(step: str, **inputs: Any) -> dsl.PipelineTask:
        return configure(getattr(c, step)(**inputs), step, cluster)

    def knowledge_recycling(*values: Any) -> None:
        params = dict(zip(PIPELINE_PARAMETERS, values, strict=True))
        request = {k: v for k, v in params.items() if k not in STRUCTURED} | {
            "image": image,
            "kfp_run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            # kfp.local cannot resolve this placeholder (it fails on it); `kr run` passes started_at instead
            "job_created_at": dsl.PIPELINE_JOB_CREATE_TIME_UTC_PLACEHOLDER if runner == "kfp" else "",
        }
        structured = {k: params[k] for k in STRUCTURED}
        exit_task = task("finalize_run", request=request, runner=runner, **structured)
        with dsl.ExitHandler(exit_task, name="run-with-summary"):
            _steps(task, request, structured, params["profile"], runner, cluster)

    knowledge_recycling.__signature__ = pipeline_signature(profile=DEFAULT_PROFILE, runs_root=cluster.runs_mount)
    return dsl.pipeline(name=PIPELINE_NAME, description=DESCRIPTION)(knowledge_recycling)


def _steps(task, request: dict, structured: dict, profile: Any, runner: str, cluster: ClusterSettings) -> None:
    resolved = task("resolve_config", request=request, **structured).outputs
    run = {"config": resolved["config"], "run_dir": resolved["run_dir"]}
    validated = task("validate_data", config=resolved["validate_data"])
    data = validated.outputs["data"]
    teacher = task("train_teacher", config=resolved["train_teacher"], data=data)
    generator = task(
        "train_generator", config=resolved["train_generator"], checkpoints_root=resolved["checkpoints_root"], data=data
    )
    models = {"generator": generator.outputs["generator"], "teacher": teacher.outputs["teacher"]}
    selection = task("select_generator", config=resolved["select_generator"], data=data, **models)
    plan = task("plan_shards", config=resolved["plan_shards"], data=data)
    with dsl.ParallelFor(
        plan.outputs["Output"], name="regeneration-shards", parallelism=cluster.regen_parallelism
    ) as i:
        # config and sizes come in the plan artifact: inside a ParallelFor, kfp.local hands a task-output
        # parameter the loop item instead of its value
        regen = task(
            "regenerate",
            plan=plan.outputs["plan"],
            shard=i,
            data=data,
            selection_result=selection.outputs["result"],
            **models,
        )

    def collected(output: str) -> dsl.Collected:
        # one Collected per consumer: kfp 2.17's compiler fails when two tasks share one
        return dsl.Collected(regen.outputs[output])

    student = task("train_student", config=resolved["train_student"], data=data, shards=collected("shard_data"))
    naive = task("train_naive", config=resolved["train_naive"], data=data, shards=collected("shard_data"))
    results = {
        "data_result": validated.outputs["result"],
        "teacher_result": teacher.outputs["result"],
        "student_result": student.outputs["result"],
    }
    audit = task(
        "audit_privacy",
        config=resolved["audit_privacy"],
        data=data,
        teacher=teacher.outputs["teacher"],
        student=student.outputs["student"],
        shards=collected("shard_data"),
        teacher_result=teacher.outputs["result"],
        student_result=student.outputs["result"],
    )
    gate = task("evaluate_gates", **run, privacy_result=audit.outputs["result"], **results)
    decided = {
        **run,
        **results,
        "started_at": resolved["started_at"],
        "data": data,
        "student": student.outputs["student"],
        "gates_result": gate.outputs["result"],
    }
    with dsl.If(gate.outputs["Output"] == True, name="gates-passed"):  # noqa: E712  a KFP condition
        promoted = task("promote", **decided)
    with dsl.Else(name="gates-failed"):
        rejected = task("record_rejection", **decided)
    task(
        "summarize",
        **run,
        **results,
        profile=profile,
        runner=runner,
        started_at=resolved["started_at"],
        conclusion=dsl.OneOf(promoted.outputs["Output"], rejected.outputs["Output"]),
        data=data,
        data_docs_site=validated.outputs["data_docs_site"],
        shards=collected("shard_data"),
        privacy=audit.outputs["privacy"],
        generator_result=generator.outputs["result"],
        selection_result=selection.outputs["result"],
        shard_results=collected("result"),
        naive_result=naive.outputs["result"],
        privacy_result=audit.outputs["result"],
        gates_result=gate.outputs["result"],
    )
