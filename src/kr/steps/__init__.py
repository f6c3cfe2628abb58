"""The pipeline's steps: the library's public step API, what every KFP component (`kr.components`) and the DAG
(`kr.pipelines`) call. Nothing else of the library is imported by them.

A step takes its config section (JSON text, `kr.run.step_table.step_config`), the folders of its input artifacts
and the typed results of the steps before it; it writes its output artifacts and returns its own typed result
(`kr.results`). No step reads another step's files from the run folder: what a step needs is an input.

The run folder is where people read a run (summary, report, plots, Data Docs) and where a failed step leaves its
failure note for the exit handler. Steps that KFP may cache are not given it as an input (it is different for every
run, so it would make every cache key unique): a runner that has one tells them through `KR_RUN_DIR` (`kr run`
does); on a cluster they run without it and their by-products stay in their artifacts.
"""

from kr.config import ConfigError, RunConfig
from kr.progress import EVENTS_ENV, parse_event
from kr.results import (
    Conclusion,
    DataResult,
    GatesResult,
    GeneratorResult,
    NaiveResult,
    PrivacyResult,
    RunResults,
    SelectionResult,
    ShardResult,
    StudentResult,
    TeacherResult,
)
from kr.run.policy import POLICY_ENV
from kr.run.report import decision_markdown, gates_markdown
from kr.run.request import (
    CLUSTER_RUNS_ROOT,
    DEFAULT_PROFILE,
    PIPELINE_PARAMETERS,
    STRUCTURED,
    RunRequest,
    pipeline_signature,
    resolve_request,
)
from kr.run.step_table import STEP, STEPS, StepSpec
from kr.run.tracking import code_version
from kr.run.view import LOGS_DIR, PIPELINE_LOG, State, StepListener, log_path
from kr.steps.deciding import RESULT_TYPES, audit_privacy, conclude, conclude_task, evaluate_gates, load_results
from kr.steps.reporting import finalize_run, summarize
from kr.steps.running import (
    FAILURE_NOTE,
    RUN_DIR_ENV,
    SHARD_FILE,
    STUDENT_FILE,
    TEACHER_FILE,
    context_run_dir,
    keep_metrics,
    log_kfp_metrics,
    publish,
    shard_files,
)
from kr.steps.training import (
    generator_workspace,
    plan_shards,
    regenerate,
    resolve_config,
    select_generator,
    train_generator,
    train_naive,
    train_student,
    train_teacher,
    validate_data,
)

__all__ = [
    "parse_event",
    "log_path",
    "StepListener",
    "State",
    "PIPELINE_LOG",
    "LOGS_DIR",
    "EVENTS_ENV",
    "CLUSTER_RUNS_ROOT",
    "Conclusion",
    "ConfigError",
    "DEFAULT_PROFILE",
    "DataResult",
    "FAILURE_NOTE",
    "GatesResult",
    "GeneratorResult",
    "NaiveResult",
    "PIPELINE_PARAMETERS",
    "POLICY_ENV",
    "PrivacyResult",
    "RESULT_TYPES",
    "RUN_DIR_ENV",
    "RunConfig",
    "RunRequest",
    "RunResults",
    "SHARD_FILE",
    "STEP",
    "STEPS",
    "STRUCTURED",
    "STUDENT_FILE",
    "SelectionResult",
    "ShardResult",
    "StepSpec",
    "StudentResult",
    "TEACHER_FILE",
    "TeacherResult",
    "audit_privacy",
    "conclude",
    "code_version",
    "conclude_task",
    "context_run_dir",
    "decision_markdown",
    "evaluate_gates",
    "finalize_run",
    "gates_markdown",
    "generator_workspace",
    "keep_metrics",
    "load_results",
    "log_kfp_metrics",
    "pipeline_signature",
    "plan_shards",
    "publish",
    "regenerate",
    "resolve_config",
    "resolve_request",
    "select_generator",
    "shard_files",
    "summarize",
    "train_generator",
    "train_naive",
    "train_student",
    "train_teacher",
    "validate_data",
]
