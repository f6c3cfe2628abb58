"""One pydantic config object per step, one resolved `RunConfig` per run.

Resolution order: built-in defaults < profile (`profiles/<name>.yaml`) < `--config FILE` < `--set KEY=VALUE`.
Unknown keys are errors, so a misspelled override can never be silently ignored.
"""

from __future__ import annotations

import copy
import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PROFILES = ("smoke", "laptop", "cpu", "gpu")


class ConfigError(ValueError):
    """A bad profile, config file or override; the message says which key and why."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Strict):
    dataset: str = "breastmnist"
    data_root: str | None = None
    download: bool = False


class ClassifierConfig(Strict):
    """A compact ResNet-style CNN for 28x28 inputs, and how to train it."""

    width: int = Field(32, ge=4, description="channels of the first stage; stages use 1x, 2x, 4x")
    blocks_per_stage: int = Field(2, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    epochs: int = Field(30, ge=1)
    max_steps: int | None = Field(None, ge=1, description="cap on optimiser steps: large sets train fewer epochs")
    batch_size: int = Field(128, ge=2)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    augment: bool = True
    hflip: bool = True
    bf16: bool | Literal["auto"] = "auto"


class GeneratorConfig(Strict):
    """Class-conditional DDPM on diffusers' UNet2DModel, with EMA and label dropout for guidance."""

    block_out_channels: list[int] = Field(default_factory=lambda: [32, 64, 64])
    attention_levels: list[bool] = Field(default_factory=lambda: [False, False, True])
    layers_per_block: int = Field(1, ge=1)
    norm_num_groups: int = Field(16, ge=1)
    train_steps: int = Field(6000, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(200, ge=0)
    ema_decay: float = Field(0.999, gt=0, lt=1)
    label_dropout: float = Field(0.1, ge=0, lt=1)
    num_train_timesteps: int = Field(1000, ge=10)
    # The recipe below was chosen by measurement, one change at a time (benchmarks/generator_train.py, README):
    # with epsilon prediction on a linear schedule, 30-70% of samples broke at 500 steps; v prediction on the
    # cosine schedule with min-SNR weighting brought that to 0-5% and raised teacher agreement.
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = Field(
        "squaredcos_cap_v2", description="noise schedule; squaredcos_cap_v2 is the cosine schedule of Nichol & Dhariwal"
    )
    prediction_type: Literal["epsilon", "v_prediction"] = Field(
        "v_prediction",
        description="what the UNet predicts; v (Salimans & Ho 2022) keeps the clean-image estimate well conditioned "
        "at high noise, where epsilon's is amplified by sigma/alpha",
    )
    snr_gamma: float | None = Field(
        5.0, gt=0, description="min-SNR-gamma loss weighting (Hang et al. 2023; gamma 5 as in the paper); None: MSE"
    )
    checkpoint_every: int = Field(1000, ge=1)
    keep_checkpoints: int = Field(3, ge=1, description="EMA weights kept for checkpoint selection")
    hflip: bool = True
    bf16: bool | Literal["auto"] = "auto"
    compile: bool | Literal["auto"] = Field(
        "auto", description="torch.compile the UNet for training; auto: on CUDA only (minutes to compile on a CPU)"
    )

    @model_validator(mode="after")
    def _levels_match(self) -> GeneratorConfig:
        if len(self.attention_levels) != len(self.block_out_channels):
            raise ValueError("generator.attention_levels needs one entry per generator.block_out_channels entry")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError("generator.block_out_channels must all be multiples of generator.norm_num_groups")
        return self


class SamplerConfig(Strict):
    scheduler: Literal["dpmsolver++", "ddim"] = "dpmsolver++"
    steps: int = Field(15, ge=1, description="denoising steps per image (network evaluations, x2 with guidance)")
    solver_order: int = Field(2, ge=1, le=3, description="DPM-Solver++ order (multistep)")
    timestep_spacing: Literal["trailing", "linspace", "leading"] = Field(
        "trailing", description="where the sampling steps fall; trailing starts at the last training timestep"
    )
    clip_denoised: bool = Field(
        True, description="clip each step's clean-image estimate to the data range; off lets a sampler diverge"
    )
    batch_size: int = Field(128, ge=1, description="images per UNet call (x2 with guidance, one fused batch)")
    bf16: bool | Literal["auto"] = Field("auto", description="bf16 autocast; auto: where the hardware runs it fast")
    compile: bool | Literal["auto"] = Field(
        "auto", description="torch.compile the UNet (CUDA graphs on a GPU); auto: on CUDA only, where it pays"
    )


class SelectionConfig(Strict):
    """Checkpoint optimisation and guidance tuning by validation CAS."""

    checkpoints: int = Field(3, ge=1, description="how many of the latest kept checkpoints to score")
    guidance_scales: list[float] = Field(default_factory=lambda: [1.0, 2.0])
    images_per_class: int = Field(150, ge=1)
    min_teacher_agreement: float = Field(
        0.9,
        ge=0,
        le=1,
        description="cells whose samples the teacher assigns to their class less often than this are not chosen "
        "(unless none reaches it: then the most agreeing cell)",
    )
    classifier: ClassifierConfig = Field(
        default_factory=lambda: ClassifierConfig(width=16, blocks_per_stage=1, epochs=15, batch_size=64)
    )

    @model_validator(mode="after")
    def _scales_positive(self) -> SelectionConfig:
        if not self.guidance_scales or min(self.guidance_scales) < 1.0:
            raise ValueError("selection.guidance_scales needs at least one value, each >= 1 (1 = no guidance)")
        return self


class GKDConfig(Strict):
    """Generative Knowledge Distillation: regenerated images labelled with the teacher's soft outputs."""

    epochs: int = Field(20, ge=1)
    images_per_epoch: float = Field(1.0, gt=0, description="synthetic images per epoch, as a multiple of n_train")
    max_images_per_epoch: int | None = Field(None, ge=2, description="cap, so large sets fit a compute budget")
    pool_slices: int = Field(10, ge=1, description="disjoint fresh slices in the pool; epoch e uses slice e mod this")
    shards: int = Field(2, ge=1, description="regeneration shards (parallel tasks in the pipeline)")
    temperature: float = Field(2.0, gt=0)
    guidance_scale: float | None = Field(None, description="None: the scale chosen by selection")
    student: ClassifierConfig = Field(default_factory=ClassifierConfig)


class NaiveConfig(Strict):
    """The naive-CAS baseline: the student's architecture, one fixed synthetic set, hard generator labels."""

    enabled: bool = True
    epochs: int = Field(20, ge=1)


ATTACKS = ("loss", "shadow", "lira_offline", "lira_online", "rmia")


class PrivacyConfig(Strict):
    """Membership inference against teacher and student, and the generator's memorisation check."""

    enabled: bool = True
    attacks: list[Literal["loss", "shadow", "lira_offline", "lira_online", "rmia"]] = Field(
        default_factory=lambda: list(ATTACKS)
    )
    reference_models: int = Field(8, ge=2, description="K models of the teacher's recipe, each on a random half")
    max_candidates: int | None = Field(
        None, ge=10, description="members (and as many non-members) audited; None: as many as there are held-out"
    )
    reference: ClassifierConfig | None = Field(None, description="None: the teacher's architecture and recipe")
    nonmember_splits: list[Literal["val", "test"]] = Field(
        default_factory=lambda: ["val", "test"],
        description="where non-members come from; they must share the members' distribution. PneumoniaMNIST's test "
        "split comes from another source than its train split: use [val] there",
    )
    memorization_samples: int = Field(1000, ge=10)
    near_copy_quantile: float = Field(0.01, gt=0, lt=0.5)


class AccuracyGate(Strict):
    min_student_accuracy: float = Field(0.0, ge=0, le=1, description="student test accuracy floor")
    max_gap_pp: float = Field(5.0, ge=0, description="teacher minus student test accuracy, in points")
    min_above_majority_pp: float = Field(0.0, description="student accuracy above the majority-class rate")


class PrivacyGate(Strict):
    max_auc: float = Field(0.6, ge=0.5, le=1, description="strongest attack's ROC AUC on the student")
    max_tpr_at_1pct_fpr: float = Field(0.1, ge=0, le=1, description="top TPR at 1% FPR of any attack on the student")
    max_near_copy_fraction: float = Field(0.05, ge=0, le=1, description="generator near copies of train images")


class ChampionGate(Strict):
    tolerance_pp: float = Field(1.0, ge=0, description="how much worse than the current champion is allowed")


class GatesConfig(Strict):
    accuracy: AccuracyGate = Field(default_factory=AccuracyGate)
    privacy: PrivacyGate = Field(default_factory=PrivacyGate)
    champion: ChampionGate = Field(default_factory=ChampionGate)


class ValidationConfig(Strict):
    """Thresholds of the Great Expectations suites over the real splits and every synthetic shard."""

    min_images_per_class: int = Field(10, ge=1, description="training images every class needs")
    min_eval_images_per_class: int = Field(
        1, ge=1, description="images every class needs in val and in test (selection and evaluation score each class)"
    )
    max_shared_fraction: float = Field(
        0.01,
        ge=0,
        le=1,
        description="share of val+test images allowed to be byte-identical to a training image (reported as warnings)",
    )
    max_broken_fraction: float = Field(
        0.1,
        ge=0,
        le=1,
        description="share of synthetic samples allowed outside the envelope of real images' statistics "
        "(kr.method.fidelity); selection sets aside (checkpoint, scale) cells above it, and a shard above it fails",
    )
    max_class_imbalance: float = Field(
        0.0,
        ge=0,
        description="shards: how far (as a fraction of N/K) a class count may stray beyond exact balance",
    )


class TrackingConfig(Strict):
    """Where runs are tracked and students registered. The CLI fills `uri` (flag, $MLFLOW_TRACKING_URI, else an
    embedded SQLite store), so every pipeline task of a run agrees on one store."""

    uri: str | None = Field(None, description="MLflow tracking URI; None: no tracking (library use)")
    artifact_location: str | None = Field(None, description="experiment artifact root (embedded stores only)")
    experiment: str = "knowledge-recycling"
    model_name: str | None = Field(None, description="registered model; None: kr-<dataset>-student")

    @field_validator("uri", "artifact_location")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        # a URI's user:password would end up in params, tags and logs: credentials come from the environment only
        if value and "@" in urlsplit(value).netloc:
            raise ValueError(
                "credentials in a URI are refused; set MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD "
                "(or AWS_* for S3) in the environment instead"
            )
        return value


class AuditConfig(Strict):
    uri: str | None = Field(None, description="audit trail: a folder or s3://bucket/prefix; None: no trail")


class RunMeta(Strict):
    """Who runs this and where: recorded in tracking tags and the audit record, not part of the method."""

    run_key: str = Field("", description="unique per pipeline run; registry and audit idempotency hang on it")
    image: str = "local"
    kfp_run_id: str = ""


class RunConfig(Strict):
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: ClassifierConfig = Field(default_factory=ClassifierConfig)
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    gkd: GKDConfig = Field(default_factory=GKDConfig)
    naive: NaiveConfig = Field(default_factory=NaiveConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    gates: GatesConfig = Field(default_factory=GatesConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    run: RunMeta = Field(default_factory=RunMeta)

    def digest(self) -> str:
        """The method's configuration only: where a run is tracked or who ran it does not change the model."""
        method = self.model_dump(mode="json", exclude={"tracking", "audit", "run"})
        return hashlib.sha256(json.dumps(method, sort_keys=True).encode()).hexdigest()

    @property
    def model_name(self) -> str:
        return self.tracking.model_name or f"kr-{Path(self.data.dataset).stem.lower()}-student"


def profile_values(profile: str) -> dict[str, Any]:
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    text = resources.files("kr").joinpath("profiles", f"{profile}.yaml").read_text()
    return yaml.safe_load(text) or {}


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.c=VALUE` -> (['a','b','c'], VALUE parsed as YAML, so 3 is an int and [1,2] a list)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. gkd.epochs=3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: value is not valid YAML ({exc})") from exc
    return key.strip().split("."), value


def set_dotted(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for i, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {'.'.join(path[: i + 1])} is not a section")
        node = child
    node[path[-1]] = value


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config_file(path: Path) -> dict[str, Any]:
    try:
        values = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return values


def resolve_config(
    profile: str = "cpu",
    config_file: Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """Built-in defaults, then the profile, then the file, then `KEY=VALUE` overrides, validated strictly."""
    values = deep_merge(base or {}, profile_values(profile))
    if config_file is not None:
        values = deep_merge(values, load_config_file(config_file))
    for item in overrides or []:
        path, value = parse_override(item)
        set_dotted(values, path, value)
    try:
        return RunConfig.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration (profile {profile}): {problems}") from exc
