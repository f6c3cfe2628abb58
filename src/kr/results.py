"""Typed step results: what each pipeline step returns and hands to the steps after it.

Every step returns one of these models. A KFP component writes it as its `result` output artifact (one JSON file)
and the next steps receive it as a declared input, so the DAG's edges are the data's edges and KFP's caching and
lineage see every dependency. The run summary (`summary.json`) is built from them (`kr.run.summary`).

Nested metric blocks keep the library's dict layout (`kr.method.metrics.classification_metrics`) so that the summary's
keys stay what they were; the values gates and reports judge are typed fields.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from kr.serialization import write_json

R = TypeVar("R", bound="StepResult")


class Evaluation(BaseModel):
    """One classifier on one real split: accuracy (fraction in [0, 1]) and one-vs-rest ROC AUC (None when a split
    holds one class only), plus per-class recall and the confusion matrix (rows: true class)."""

    model_config = ConfigDict(extra="allow")

    accuracy: float
    auc: float | None = None


class StepResult(BaseModel):
    """What every step result carries about its own execution (set by the step runner, `kr.steps`)."""

    model_config = ConfigDict(extra="forbid")

    step: str = Field("", description="step name, e.g. train_teacher or regenerate-000")
    seconds: float = Field(0.0, description="wall time of the step, seconds")
    peak_rss_mb: float = Field(0.0, description="peak resident memory of the process that ran it, MiB")
    finished_at: str = Field("", description="UTC ISO-8601 time the step finished")
    mlflow_run_id: str | None = Field(None, description="the step's MLflow run; None without tracking")

    def save(self, path: Path) -> Path:
        """Write the result as JSON (NaN becomes null) to `path` atomically; returns `path`."""
        return write_json(path, self.model_dump(mode="json"))

    @classmethod
    def load(cls: type[R], path: Path) -> R:
        """Read a result written by `save`. Raises FileNotFoundError, pydantic.ValidationError on a wrong layout."""
        return cls.model_validate_json(Path(path).read_text())

    def stamped(self: R, step: str, seconds: float, peak_rss_mb: float) -> R:
        """A copy with the execution fields set (now as `finished_at`)."""
        now = datetime.now(UTC).isoformat(timespec="seconds")
        return self.model_copy(
            update={"step": step, "seconds": round(seconds, 2), "peak_rss_mb": peak_rss_mb, "finished_at": now}
        )


class DataResult(StepResult):
    """validate_data: the file that passed, and the Great Expectations report."""

    info: dict[str, Any] = Field(description="kr.data.DatasetInfo as a dict: name, md5, n_classes, channels, ...")
    majority_rate_test: float = Field(description="share of the test split in its largest class, fraction")
    expectations: dict[str, Any] = Field(description="the expectation suites' report (kr.validation)")


class ClassifierResult(StepResult):
    """A trained classifier (teacher or GKD student) scored on the real val and test splits."""

    path: str = Field(description="weights file as written by the step (inside the model artifact)")
    best_epoch: int = Field(description="epoch whose weights were kept (best val accuracy)")
    history: list[dict[str, Any]] = Field(default_factory=list, description="per-epoch metrics")
    train_s: float = Field(description="training time, seconds")
    val: Evaluation
    test: Evaluation


class TeacherResult(ClassifierResult):
    """train_teacher: the classifier trained on the real training split."""

    params: int = Field(description="trainable parameters")


class StudentResult(ClassifierResult):
    """train_student: the GKD student, trained only on regenerated images with the teacher's soft labels."""

    pool_images: int = Field(description="images in the regenerated pool")
    images_per_epoch: int = Field(description="fresh images per epoch (one pool slice)")


class NaiveResult(StepResult):
    """train_naive: the naive CAS baseline (one fixed synthetic set, the generator's hard labels)."""

    images: int = Field(description="synthetic training images")
    best_epoch: int
    train_s: float = Field(description="training time, seconds")
    val: Evaluation
    test: Evaluation


class GeneratorResult(StepResult):
    """train_generator: the class-conditional diffusion model's training."""

    steps: int = Field(description="optimiser steps done in total")
    resumed_from: int = Field(description="step training resumed from (0: from scratch)")
    complete: bool
    params: int = Field(description="UNet parameters")
    final_loss: float | None = Field(description="mean loss of the last 100 steps")
    loss_curve: list[list[float]] = Field(default_factory=list, description="[step, mean loss] per 50-step window")
    train_s: float = Field(description="training time of this execution, seconds")
    checkpoints: list[str] = Field(default_factory=list, description="kept EMA checkpoints, oldest first")
    skipped_checkpoints: list[str] = Field(
        default_factory=list, description="damaged checkpoints resume passed over (and deleted), newest first"
    )
    workspace: str = Field("", description="the resumable work folder the checkpoints were trained in")


class SelectionResult(StepResult):
    """select_generator: the (checkpoint, guidance scale) cell chosen by validation CAS and fidelity."""

    checkpoint: str = Field(description="chosen checkpoint's folder name")
    checkpoint_path: str
    guidance_scale: float = Field(description="classifier-free guidance scale, >= 1")
    val_cas: float = Field(description="val accuracy of a quick classifier trained on the cell's samples, fraction")
    fidelity: dict[str, Any] = Field(description="teacher agreement, broken share, FD, precision/recall, per class")
    envelope: dict[str, Any] = Field(description="the real images' statistics envelope (kr.method.fidelity)")
    envelope_false_positive_rate: float | None = None
    selection: list[dict[str, Any]] = Field(description="the whole grid, one row per cell")


class ShardResult(StepResult):
    """regenerate: one shard of freshly regenerated images with the teacher's logits, checked."""

    path: str = Field(description="the shard file as written (npz: images, gen_labels, teacher_logits)")
    shard: int
    checkpoint: str
    guidance_scale: float
    n: int = Field(description="images in the shard")
    class_counts: list[int]
    teacher_agreement: float = Field(description="share of images the teacher assigns to their class, fraction")
    fidelity: dict[str, Any] | None = None
    expectations: dict[str, Any] = Field(default_factory=dict, description="the shard suite's report")


class PrivacyResult(StepResult):
    """audit_privacy: membership inference against teacher and student, and the generator's near copies."""

    model_config = ConfigDict(extra="allow")  # one block per audited model, named after it

    threat_model: str
    n_members: int
    n_nonmembers: int
    min_measurable_fpr: float = Field(description="1 / non-members: no TPR is claimed at a lower FPR")
    population: int = Field(description="held-out images in RMIA's population (no model trained on them)")
    reference_models: int
    nonmember_splits: list[str] = Field(description="the splits non-members came from (shifted ones left out)")
    domain_shift: dict[str, float] = Field(
        description="domain classifier ROC AUC, training split vs each non-member split"
    )
    warnings: list[str] = Field(default_factory=list, description="what weakens the audit, e.g. a domain shift")
    teacher: dict[str, Any]
    student: dict[str, Any]
    canaries: dict[str, Any] | None = Field(
        description="canary detection per model (AUC, TPR at the smallest FPR, one-run epsilon) and in the pool"
    )
    memorization: dict[str, Any]
    roc_plot: str


class GatesResult(StepResult):
    """evaluate_gates: each gate's verdict with its checks and reasons, and the overall verdict."""

    data: dict[str, Any]
    accuracy: dict[str, Any]
    privacy: dict[str, Any]
    passed: bool

    def verdicts(self) -> dict[str, Any]:
        """The gates as the summary, registry tags and reports show them: {gate: verdict, ..., "passed": bool}."""
        return {"data": self.data, "accuracy": self.accuracy, "privacy": self.privacy, "passed": self.passed}


class Conclusion(StepResult):
    """promote / record_rejection: what happened in the registry and the trail record that says so."""

    outcome: str = Field(description="promoted, rejected or failed")
    registry: dict[str, Any] | None = None
    gates: dict[str, Any]
    audit: dict[str, Any] | None = Field(None, description="reference to the run's trail record (kept as `audit`)")


class RunResults(BaseModel):
    """Every step result of one run; a step that did not run (or was skipped by a condition) is None."""

    data: DataResult | None = None
    teacher: TeacherResult | None = None
    generator: GeneratorResult | None = None
    selection: SelectionResult | None = None
    shards: list[ShardResult] = Field(default_factory=list)
    student: StudentResult | None = None
    naive: NaiveResult | None = None
    privacy: PrivacyResult | None = None
    gates: GatesResult | None = None
    conclusion: Conclusion | None = None

    def executed(self) -> list[StepResult]:
        """The results present, in pipeline order."""
        singles = (self.data, self.teacher, self.generator, self.selection)
        later = (self.student, self.naive, self.privacy, self.gates, self.conclusion)
        return [r for r in (*singles, *sorted(self.shards, key=lambda s: s.shard), *later) if r is not None]
