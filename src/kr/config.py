"""One pydantic config object per step, one resolved `RunConfig` per run.

Resolution order: built-in defaults < profile (`profiles/<name>.yaml`) < `--config FILE` < `--set KEY=VALUE` (the
run request's own fields, e.g. `kr run --audit-uri`, come last: `kr.run.request.resolve_request`).
Unknown keys are errors, so a misspelled override can never be silently ignored; so are non-finite numbers, URIs
with credentials in them and registered model names that are not plain names.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

PROFILES = ("smoke", "laptop", "cpu", "gpu")
# the one default profile, for every entry point (kr run, kr submit, kr schedule, the pipeline's parameter)
DEFAULT_PROFILE = "laptop"


class ConfigError(ValueError):
    """A bad profile, config file or override; the message says which key and why (never a credential)."""


# what MLflow's registry, its search filters and the serving side take without quoting
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# a query (or fragment) parameter whose name holds one of these carries a credential (token, api_key,
# X-Amz-Signature, X-Amz-Credential, sig, password, passwd, pwd, auth, client_secret, ...)
CREDENTIAL_WORDS = ("token", "key", "secret", "pass", "pwd", "sig", "credential", "auth")
S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")  # as kr.governance.trail.stores.BUCKET
REDACTED = "***"


def _credential_param(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in CREDENTIAL_WORDS)


def _redact_params(text: str) -> str:
    pairs = parse_qsl(text, keep_blank_values=True)
    if not pairs:
        return text
    return "&".join(f"{k}={REDACTED}" if _credential_param(k) else f"{k}={v}" for k, v in pairs)


def redact_uri(uri: str) -> str:
    """`uri` with its user information and the values of credential-like query and fragment parameters replaced by
    ***, e.g. s3://***@bucket/prefix or http://host/?token=***. A URI that cannot be parsed comes back as ***."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
    return urlunsplit((parts.scheme, netloc, parts.path, _redact_params(parts.query), _redact_params(parts.fragment)))


def check_no_credentials(key: str, uri: str) -> None:
    """Refuse a URI that carries a credential: user information (user:password@ or token@) or a query or fragment
    parameter whose name looks like one (`CREDENTIAL_WORDS`). Such a URI would be copied into MLflow params and
    tags, console lines, failure notes and the immutable audit trail. Raises ValueError, whose message names `key`
    and shows the URI redacted (`redact_uri`), never the credential."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        raise ValueError(f"{key}: not a valid URI ({redact_uri(uri)})") from None
    params = parse_qsl(parts.query, keep_blank_values=True) + parse_qsl(parts.fragment, keep_blank_values=True)
    if "@" in parts.netloc or any(_credential_param(name) for name, _ in params):
        raise ValueError(
            f"{key} {redact_uri(uri)}: credentials in a URI are refused (they would be written to logs, MLflow and "
            "the audit trail); set them in the environment instead: MLFLOW_TRACKING_USERNAME/"
            "MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN for MLflow, AWS_* for S3"
        )


def check_audit_uri(uri: str) -> None:
    """The audit trail's location as `kr.governance.trail.open_trail` takes it, checked without opening anything:
    a folder path, file:///path (local) or s3://bucket/prefix (a valid bucket name, no query or fragment). Raises
    ValueError naming audit.uri (credentials refused first, never echoed)."""
    text = uri.strip()
    if not text:
        raise ValueError("audit.uri is empty: give a folder, file:///path or s3://bucket/prefix (or null: no trail)")
    check_no_credentials("audit.uri", text)
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if not scheme:
        return
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"audit.uri {text!r}: a file:// URI must be local (file:///path)")
        return
    if scheme != "s3":
        raise ValueError(
            f"audit.uri {text!r}: unsupported scheme {scheme!r}; use a folder, file:///path or s3://bucket/prefix"
        )
    if not parts.netloc:
        raise ValueError(f"audit.uri {text!r} names no bucket: use s3://bucket/prefix")
    if not S3_BUCKET.match(parts.netloc):
        raise ValueError(f"audit.uri {text!r}: {parts.netloc!r} is not a valid S3 bucket name")
    if parts.query or parts.fragment:
        raise ValueError(f"audit.uri {redact_uri(text)!r}: an S3 location takes no query or fragment")


def check_model_name(name: str, key: str = "tracking.model_name") -> None:
    """Refuse a registered model name that is not 1-128 letters, digits, '.', '_' or '-' starting with a letter or
    digit (it is matched in MLflow search filters and used in URIs). Raises ValueError naming `key`."""
    if not MODEL_NAME.match(name):
        raise ValueError(
            f"{key} {name!r} is not a valid registered model name: 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


def _unique(key: str, values: list) -> list:
    twice = sorted({v for v in values if values.count(v) > 1})
    if twice:
        raise ValueError(f"{key} names {', '.join(twice)} twice")
    return values


class Strict(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated too, and a float must be
    finite (nan or inf would slip past every bound: nan compares false with all of them)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(Strict):
    """Which dataset a run learns, and where its file lies (`kr.data.load_dataset`)."""

    dataset: str = Field(
        "breastmnist",
        description="a 2-D MedMNIST flag (e.g. breastmnist; its file at data.size pixels), a path or s3://bucket/key "
        "URI of a .npz in MedMNIST's layout (S3 credentials from the environment only), or a local image folder "
        "(PNG/JPEG, one folder per class: kr.image_folder)",
    )
    data_root: str | None = Field(
        None,
        description="folder or s3://bucket/prefix holding <flag>.npz; None or empty: $KR_DATA_ROOT, else medmnist's "
        "~/.medmnist",
    )
    download: bool = Field(
        False, description="download a missing MedMNIST file (medmnist checks its MD5); custom .npz paths never are"
    )
    size: Literal[28, 64, 128, 224] = Field(
        28,
        description="image side in pixels of a MedMNIST flag: 28 reads <flag>.npz, 64/128/224 the MedMNIST+ file "
        "<flag>_<size>.npz; the generator and classifiers are sized for it. A custom file or folder must match it",
    )
    # An image folder (kr.image_folder): how a class-per-folder tree without split folders is split, and its bounds.
    folder_val_fraction: float = Field(
        0.1, gt=0, lt=1, description="image folder without split folders: share of each class drawn for val"
    )
    folder_test_fraction: float = Field(
        0.2, gt=0, lt=1, description="image folder without split folders: share of each class drawn for test"
    )
    folder_split_seed: int = Field(
        0, ge=0, description="image folder: seed of the split draw (the same seed and files give the same split)"
    )
    folder_max_files: int = Field(200_000, ge=1, description="image folder: most image files read")
    folder_max_side: int = Field(
        1024, ge=1, description="image folder: largest image side accepted, read from each header before decoding"
    )
    # Bounds checked from the zip directory and the .npy headers before anything is decompressed (kr.data.NpzLimits).
    # The defaults fit every 2-D MedMNIST file at 28x28: the largest, PathMNIST, is ~206 MB on disk, 212 MB for
    # train_images and 252 MB for all its arrays, stored at a compression ratio near 1.1.
    max_file_mb: float = Field(1024, gt=0, description="largest .npz file accepted, on disk (MB = 2**20 bytes)")
    max_array_mb: float = Field(
        1024, gt=0, description="largest single array accepted, as its .npy header declares it (shape x itemsize, MB)"
    )
    max_total_mb: float = Field(
        2048,
        gt=0,
        description="largest total of the file's arrays accepted, decompressed (MB): the memory a load needs",
    )
    max_compression_ratio: float = Field(
        100,
        ge=1,
        description="largest ratio of the arrays' decompressed bytes to the file's bytes (zip bombs), checked once the "
        "arrays exceed 64 MB",
    )

    @staticmethod
    def check_uri(key: str, uri: str, object_required: bool = False) -> None:
        """A dataset or data root given as a URI (it holds "://") must be s3://bucket/key: a valid bucket name, no
        credentials (refused first, `check_no_credentials`), no query or fragment, and with `object_required` (a
        dataset) an object key that is not a folder. Object storage is read with boto3, credentials from the
        environment only. Raises ValueError naming `key`, the URI redacted (`redact_uri`)."""
        text = uri.strip()
        check_no_credentials(key, text)
        parts = urlsplit(text)
        scheme, shown = parts.scheme.lower(), repr(redact_uri(text))
        if scheme != "s3":
            raise ValueError(
                f"{key} {shown}: unsupported scheme {scheme!r}; give a MedMNIST flag, a local path, or object storage "
                "as s3://bucket/key (credentials from the environment, e.g. AWS_ACCESS_KEY_ID)"
            )
        if not parts.netloc:
            raise ValueError(f"{key} {shown} names no bucket: use s3://bucket/key")
        if not S3_BUCKET.match(parts.netloc):
            raise ValueError(f"{key} {shown}: {parts.netloc!r} is not a valid S3 bucket name")
        if parts.query or parts.fragment:
            raise ValueError(f"{key} {shown}: an S3 location takes no query or fragment")
        if object_required and (not parts.path.strip("/") or parts.path.endswith("/")):
            raise ValueError(
                f"{key} {shown} names no object: use s3://bucket/key.npz (a folder goes in data.data_root)"
            )


class ClassifierConfig(Strict):
    """A compact ResNet-style CNN (its stem sized per image side: `classifier.stem_downsamples`), and its training."""

    width: int = Field(32, ge=4, description="channels of the first stage; stages use 1x, 2x, 4x")
    blocks_per_stage: int = Field(2, ge=1, description="residual blocks in each of the three stages")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout probability before the linear head (fraction)")
    epochs: int = Field(30, ge=1, description="training epochs (fewer when max_steps caps the optimiser steps)")
    max_steps: int | None = Field(None, ge=1, description="cap on optimiser steps: large sets train fewer epochs")
    batch_size: int = Field(
        128, ge=2, description="images per optimiser step; an epoch's ragged last batch is dropped (BatchNorm)"
    )
    lr: float = Field(3e-3, gt=0, description="peak AdamW learning rate of the one-cycle schedule (15% warm-up)")
    weight_decay: float = Field(5e-4, ge=0, description="AdamW decoupled weight decay")
    label_smoothing: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="label smoothing of the hard-label cross-entropy (fraction); soft targets ignore it",
    )
    augment: bool = Field(True, description="random shifts of up to 2 pixels (reflect padding) of training batches")
    hflip: bool = Field(True, description="random horizontal flips (p = 0.5) too; only when augment is on")
    bf16: bool | Literal["auto"] = Field(
        "auto", description="bf16 autocast in training and prediction; auto: where the hardware runs it fast"
    )


class GeneratorConfig(Strict):
    """Class-conditional DDPM on diffusers' UNet2DModel, with EMA and label dropout for guidance."""

    block_out_channels: list[int] = Field(
        default_factory=lambda: [32, 64, 64],
        description="UNet channels per resolution level, each a multiple of norm_num_groups",
    )
    attention_levels: list[bool] = Field(
        default_factory=lambda: [False, False, True],
        description="per level, whether its down and up blocks use self-attention (the last also the mid block's)",
    )
    layers_per_block: int = Field(1, ge=1, description="ResNet layers per UNet down block (diffusers' UNet2DModel)")
    norm_num_groups: int = Field(16, ge=1, description="GroupNorm groups in the UNet")
    train_steps: int = Field(6000, ge=1, description="optimiser steps in all; may grow when a run resumes")
    batch_size: int = Field(64, ge=1, description="images per step, drawn with replacement from the training split")
    lr: float = Field(1e-3, gt=0, description="peak AdamW learning rate (no weight decay); cosine decay after warm-up")
    warmup_steps: int = Field(200, ge=0, description="linear learning-rate warm-up, in optimiser steps")
    ema_decay: float = Field(
        0.999, gt=0, lt=1, description="ceiling of the EMA decay (diffusers' EMAModel, warm-up power 2/3)"
    )
    label_dropout: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="fraction of training labels replaced by the no-label token that classifier-free guidance "
        "(Ho & Salimans 2021) needs",
    )
    num_train_timesteps: int = Field(1000, ge=10, description="diffusion timesteps of the DDPM training schedule")
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
    checkpoint_every: int = Field(
        1000, ge=1, description="optimiser steps between checkpoints (the last step always writes one)"
    )
    keep_checkpoints: int = Field(
        3, ge=1, description="latest checkpoints whose EMA weights are kept for checkpoint selection"
    )
    hflip: bool = Field(True, description="random horizontal flips (p = 0.5) of training images")
    bf16: bool | Literal["auto"] = Field(
        "auto", description="bf16 autocast in training; auto: where the hardware runs it fast"
    )
    compile: bool | Literal["auto"] = Field(
        "auto", description="torch.compile the UNet for training; auto: on CUDA only (minutes to compile on a CPU)"
    )
    resume: Literal["auto", "never"] = Field(
        "auto",
        description="auto: resume from the output folder's newest intact checkpoint, and refuse a folder whose "
        "generator had other settings or data; never: delete the folder's checkpoints and train from step 0",
    )

    @model_validator(mode="after")
    def _levels_match(self) -> GeneratorConfig:
        if not self.block_out_channels or min(self.block_out_channels) < 1:
            raise ValueError("generator.block_out_channels needs at least one level, each with >= 1 channel")
        if len(self.attention_levels) != len(self.block_out_channels):
            raise ValueError("generator.attention_levels needs one entry per generator.block_out_channels entry")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError("generator.block_out_channels must all be multiples of generator.norm_num_groups")
        return self


class SamplerConfig(Strict):
    """How images are drawn from a trained generator (selection and regeneration alike)."""

    scheduler: Literal["dpmsolver++", "ddim"] = Field(
        "dpmsolver++", description="sampler: multistep DPM-Solver++ (Lu et al. 2022) or DDIM (Song et al. 2021)"
    )
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
    guidance_scales: list[float] = Field(
        default_factory=lambda: [1.0, 2.0],
        min_length=1,
        description="classifier-free guidance scales tried with each checkpoint; each >= 1 (1 = no guidance)",
    )
    images_per_class: int = Field(150, ge=1, description="synthetic images per class drawn for each cell")
    min_teacher_agreement: float = Field(
        0.9,
        ge=0,
        le=1,
        description="cells whose samples the teacher assigns to their class less often than this are not chosen "
        "(unless none reaches it: then the most agreeing cell)",
    )
    classifier: ClassifierConfig = Field(
        default_factory=lambda: ClassifierConfig(width=16, blocks_per_stage=1, epochs=15, batch_size=64),
        description="the quick classifier trained on each cell's samples to score its val CAS",
    )

    @model_validator(mode="after")
    def _scales_positive(self) -> SelectionConfig:
        if not self.guidance_scales or min(self.guidance_scales) < 1.0:
            raise ValueError("selection.guidance_scales needs at least one value, each >= 1 (1 = no guidance)")
        return self


class GKDConfig(Strict):
    """Generative Knowledge Distillation: regenerated images labelled with the teacher's soft outputs."""

    epochs: int = Field(
        20,
        ge=1,
        description="GKD epochs of the student, each on a fresh pool slice (gkd.student.epochs is not read)",
    )
    images_per_epoch: float = Field(1.0, gt=0, description="synthetic images per epoch, as a multiple of n_train")
    max_images_per_epoch: int | None = Field(None, ge=2, description="cap, so large sets fit a compute budget")
    pool_slices: int = Field(10, ge=1, description="disjoint fresh slices in the pool; epoch e uses slice e mod this")
    shards: int = Field(2, ge=1, description="regeneration shards (parallel tasks in the pipeline)")
    temperature: float = Field(
        2.0,
        gt=0,
        description="distillation temperature T: targets softmax(teacher logits / T), loss scaled by T^2 "
        "(Hinton et al. 2015)",
    )
    guidance_scale: float | None = Field(
        None,
        ge=1,
        description="classifier-free guidance scale of regeneration, >= 1 (1 = no guidance); None: the scale chosen "
        "by selection",
    )
    student: ClassifierConfig = Field(
        default_factory=ClassifierConfig,
        description="the student's architecture and optimiser (its epochs: gkd.epochs); the naive baseline uses them "
        "too, with naive.epochs",
    )


def _refuse_switch(data: Any, key: str, why: str) -> Any:
    if isinstance(data, dict) and "enabled" in data:
        raise ValueError(f"{key} is not a setting: {why}; remove the key")
    return data


class NaiveConfig(Strict):
    """The naive-CAS baseline: the student's architecture, one fixed synthetic set, hard generator labels. It always
    runs (the report compares the student with it), so there is no switch: `naive.enabled` is refused."""

    @model_validator(mode="before")
    @classmethod
    def _no_switch(cls, data: Any) -> Any:
        return _refuse_switch(data, "naive.enabled", "the naive baseline always runs (the report compares with it)")

    epochs: int = Field(20, ge=1, description="training epochs of the naive baseline (replaces gkd.student.epochs)")


ATTACKS = ("loss", "shadow", "lira_offline", "lira_online", "rmia")


class PrivacyConfig(Strict):
    """Membership inference against teacher and student, and the generator's memorisation check. The audit always
    runs (the privacy gates need it), so there is no switch: `privacy.enabled` is refused."""

    @model_validator(mode="before")
    @classmethod
    def _no_switch(cls, data: Any) -> Any:
        return _refuse_switch(
            data, "privacy.enabled", "the privacy audit cannot be disabled (the privacy gates need it)"
        )

    attacks: list[Literal["loss", "shadow", "lira_offline", "lira_online", "rmia"]] = Field(
        default_factory=lambda: list(ATTACKS),
        min_length=1,
        description="membership inference attacks run on every audited model (kr.privacy.mia)",
    )
    reference_models: int = Field(8, ge=2, description="K models of the teacher's recipe, each on a random half")
    max_candidates: int | None = Field(
        None,
        ge=10,
        description="members (and as many non-members) audited; None: as many as the held-out images left after "
        "the RMIA population",
    )
    population: int = Field(
        64,
        ge=8,
        description="held-out images kept out of the candidates and out of every reference model: RMIA's "
        "population z (Zarifzadeh et al. 2024); at most a third of the held-out images",
    )
    max_domain_shift_auc: float = Field(
        0.6,
        gt=0.5,
        le=1,
        description="a non-member split that a domain classifier tells from the training split above this ROC "
        "AUC is left out, with a warning: members and non-members would differ by source, not by membership "
        "(measured: PneumoniaMNIST test 0.64, val 0.57; BreastMNIST 0.43-0.50)",
    )
    reference: ClassifierConfig | None = Field(None, description="None: the teacher's architecture and recipe")
    nonmember_splits: list[Literal["val", "test"]] = Field(
        default_factory=lambda: ["val", "test"],
        min_length=1,
        description="where non-members come from; they must share the members' distribution, so a split with a "
        "domain shift (PneumoniaMNIST's test split) is left out (max_domain_shift_auc)",
    )
    memorization_samples: int = Field(
        1000, ge=10, description="synthetic pool images checked for near copies (at most the pool's size)"
    )
    near_copy_quantile: float = Field(
        0.01,
        gt=0,
        lt=0.5,
        description="fraction: a near copy is closer to a training image than this quantile of real held-out "
        "images' distances to training images",
    )

    @field_validator("attacks")
    @classmethod
    def _attacks_once(cls, value: list[str]) -> list[str]:
        return _unique("privacy.attacks", value)

    @field_validator("nonmember_splits")
    @classmethod
    def _splits_once(cls, value: list[str]) -> list[str]:
        return _unique("privacy.nonmember_splits", value)


class CanaryConfig(Strict):
    """Canaries that give the privacy audit measured power (kr.privacy.canaries; Steinke, Nasr and Jagielski 2023):
    no patient's image, each with a random label; a seeded random half goes into the teacher's training set (and the
    generator's with generator_copies > 0)."""

    enabled: bool = Field(
        True,
        description="insert canaries; off, the audit cannot measure its power and the privacy verdict is "
        "inconclusive (fail closed)",
    )
    count: int = Field(64, ge=4, description="canaries m; a seeded random half (m // 2) is inserted, the rest held out")
    kind: Literal["noise", "texture"] = Field(
        "noise",
        description="noise: uniform random pixels, like no image of any kind, memorised fastest; texture: smooth "
        "random blobs (7x7 noise upsampled). With generator_copies > 0 the generator learns to draw them (measured "
        "on BreastMNIST, laptop, one copy each: noise left 18% of a shard broken; texture filled 5 of 8 malignant "
        "samples)",
    )
    copies: int | None = Field(
        None, ge=1, description="copies of each inserted canary in the teacher's training set; None: from `exposures`"
    )
    exposures: int = Field(
        240,
        ge=1,
        description="with copies None: the fewest copies with which the teacher sees each inserted canary at least "
        "this many times over its epochs (measured: 240 gives teacher canary AUC >= 0.9 on BreastMNIST and "
        "PneumoniaMNIST at the laptop/cpu teacher)",
    )
    generator_copies: int = Field(
        0,
        ge=0,
        description="copies of each inserted canary in the generator's training set; 0: the teacher's set only, so "
        "the student's canaries measure what distillation carries over (the generator's own copying is checked on "
        "real images: privacy.memorization_samples). Measured on BreastMNIST, laptop, one texture copy each: 5 "
        "of 8 malignant samples in the grid were canaries, and the student's canary AUC rose to 0.68",
    )
    confidence: float = Field(
        0.95, gt=0.5, lt=1, description="confidence level of the one-run epsilon lower bound (fraction)"
    )


class AccuracyGate(Strict):
    """Floors and ceilings on the student's test accuracy; the gate fails on a missing value."""

    # a threshold of inf or nan switches its gate off: refused
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    min_student_accuracy: float = Field(
        0.0, ge=0, le=1, description="student test accuracy floor, a fraction in [0, 1]"
    )
    max_gap_pp: float = Field(
        5.0, ge=0, description="ceiling on teacher minus student test accuracy, in percentage points"
    )
    min_above_majority_pp: float = Field(
        1.0,
        description="the student's test accuracy must exceed the test majority-class rate by more than this, in "
        "percentage points (strictly: a constant predictor, exactly at the majority rate, fails)",
    )
    min_class_recall: float = Field(
        0.1,
        description="every class's test recall must exceed this fraction (strictly): a class the student never "
        "predicts (recall 0) fails the gate, and so does a near-constant predictor",
    )
    teacher_min_above_majority_pp: float = Field(
        1.0,
        description="the teacher's test accuracy must exceed the majority-class rate by more than this, in "
        "percentage points: a teacher that did not learn cannot teach, so its student is not promoted",
    )


class PrivacyGate(Strict):
    """Ceilings on what the membership inference attacks and the memorisation check found."""

    # a threshold of inf or nan switches its gate off: refused
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    max_auc: float = Field(
        0.6,
        ge=0.5,
        le=1,
        description="ceiling on every attack's ROC AUC on the student, folded at chance: the gate "
        "checks |AUC - 0.5| <= max_auc - 0.5, so an inverted attack (AUC 0.1) counts as 0.9",
    )
    max_tpr_at_1pct_fpr: float = Field(
        0.1, ge=0, le=1, description="ceiling on the top TPR at 1% FPR of any attack on the student (fraction)"
    )
    max_near_copy_fraction: float = Field(
        0.05, ge=0, le=1, description="ceiling on the fraction of audited synthetic images that copy a train image"
    )
    max_student_canary_epsilon: float = Field(
        0.5,
        ge=0,
        description="ceiling on the one-run epsilon lower bound (95% confidence) from the student's canaries: above "
        "it the student shows significant memorisation of canaries it never saw. A bound, not the canary AUC: 32 "
        "against 32 canaries put a clean student's AUC within 0.5 +- 0.14, too wide for a point threshold",
    )
    min_teacher_canary_auc: float = Field(
        0.9,
        ge=0,
        le=1,
        description="the audit's power floor: below this canary ROC AUC on the teacher (trained on the real data "
        "and the canaries), the audit could not see memorisation and the verdict is inconclusive (not promoted)",
    )


class ChampionGate(Strict):
    """How the student compares with the registered champion before it may replace it."""

    # a threshold of inf or nan switches its gate off: refused
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    tolerance_pp: float = Field(
        1.0,
        ge=0,
        description="how far the student's test accuracy may fall below the champion's, in percentage points",
    )


class GatesConfig(Strict):
    """Thresholds a student must meet to be promoted (kr.governance)."""

    accuracy: AccuracyGate = Field(default_factory=AccuracyGate, description="student test accuracy thresholds")
    privacy: PrivacyGate = Field(default_factory=PrivacyGate, description="membership inference and memorisation")
    champion: ChampionGate = Field(default_factory=ChampionGate, description="comparison with the current champion")


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
    experiment: str = Field("knowledge-recycling", description="MLflow experiment the runs are logged under")
    model_name: str | None = Field(
        None, description="registered model; None: kr-<dataset>-student, with -dev for runs not for production"
    )
    log_teacher_weights: bool = Field(
        False,
        description="log the teacher's weights to MLflow; off by default: they were trained on real patient images "
        "and membership inference can recover who was in that training set",
    )
    real_samples_in_report: bool = Field(
        False,
        description="draw real training images beside the synthetic ones in the run folder's samples.png; off by "
        "default: real patient images stay out of every file a run shares (never logged either way)",
    )
    production: bool = Field(
        True,
        description="false for runs that are not for production (the smoke profile, experiments): their students "
        "register under kr-<dataset>-student-dev, never under the name deployments serve",
    )

    @field_validator("uri", "artifact_location")
    @classmethod
    def _no_credentials(cls, value: str | None, info: ValidationInfo) -> str | None:
        # a URI's credentials would end up in params, tags, logs and the trail: they come from the environment only
        if value:
            check_no_credentials(f"tracking.{info.field_name}", value)
        return value

    @field_validator("model_name")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        if value is not None:
            check_model_name(value)
        return value


class AuditConfig(Strict):
    """Where each run's audit record (outcome, inputs, verdicts) is appended."""

    uri: str | None = Field(
        None,
        description="audit trail: a folder, file:///path or s3://bucket/prefix (no credentials); None: no trail",
    )

    @field_validator("uri")
    @classmethod
    def _trail_location(cls, value: str | None) -> str | None:
        if value is not None:
            check_audit_uri(value)
        return value


class RunMeta(Strict):
    """Who runs this and where: recorded in tracking tags and the audit record, not part of the method."""

    run_key: str = Field("", description="unique per pipeline run; registry and audit idempotency hang on it")
    image: str = Field("local", description="container image the steps ran in; local outside a pipeline")
    kfp_run_id: str = Field("", description="Kubeflow Pipelines run id; empty outside KFP")


class RunConfig(Strict):
    """Everything one run needs, resolved once (`resolve_config`) and handed to every step."""

    seed: int = Field(0, description="the run's seed; steps derive their own streams from it (kr.runtime.derive_seed)")
    data: DataConfig = Field(default_factory=DataConfig, description="the dataset and where its file lies")
    teacher: ClassifierConfig = Field(
        default_factory=ClassifierConfig, description="the teacher, trained on the real training split"
    )
    generator: GeneratorConfig = Field(
        default_factory=GeneratorConfig, description="the class-conditional diffusion generator and its training"
    )
    sampler: SamplerConfig = Field(default_factory=SamplerConfig, description="how images are drawn from it")
    selection: SelectionConfig = Field(
        default_factory=SelectionConfig, description="checkpoint and guidance-scale choice by validation CAS"
    )
    gkd: GKDConfig = Field(default_factory=GKDConfig, description="regeneration and the distilled student")
    naive: NaiveConfig = Field(default_factory=NaiveConfig, description="the naive-CAS baseline")
    canaries: CanaryConfig = Field(
        default_factory=CanaryConfig, description="canaries in teacher and generator training: the audit's power"
    )
    privacy: PrivacyConfig = Field(
        default_factory=PrivacyConfig, description="membership inference audit and memorisation check"
    )
    validation: ValidationConfig = Field(
        default_factory=ValidationConfig, description="data and synthetic-shard expectations"
    )
    gates: GatesConfig = Field(default_factory=GatesConfig, description="promotion thresholds")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow tracking and registry")
    audit: AuditConfig = Field(default_factory=AuditConfig, description="the audit trail")
    run: RunMeta = Field(default_factory=RunMeta, description="who runs this and where (not part of the method)")

    def digest(self) -> str:
        """SHA-256 hex digest of the method's configuration only (all but tracking, audit and run): where a run is
        tracked or who ran it does not change the model."""
        method = self.model_dump(mode="json", exclude={"tracking", "audit", "run"})
        return hashlib.sha256(json.dumps(method, sort_keys=True).encode()).hexdigest()

    @property
    def model_name(self) -> str:
        """The registered model's name: tracking.model_name, else kr-<dataset file stem, lower case>-student, with
        -dev appended when tracking.production is false."""
        suffix = "" if self.tracking.production else "-dev"
        return self.tracking.model_name or f"kr-{Path(self.data.dataset).stem.lower()}-student{suffix}"


def profile_values(profile: str) -> dict[str, Any]:
    """The values of the built-in profile `profiles/<profile>.yaml` ({} when empty), its `sizes` section included
    (see `merged_values`).

    Raises ConfigError when `profile` is not one of PROFILES.
    """
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    text = resources.files("kr").joinpath("profiles", f"{profile}.yaml").read_text()
    return yaml.safe_load(text) or {}


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.c=VALUE` -> (['a','b','c'], VALUE parsed as YAML, so 3 is an int and [1,2] a list; an empty VALUE is None).

    Raises ConfigError when there is no `=` or no key, or when VALUE is not valid YAML.
    """
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. gkd.epochs=3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        # neither the value nor YAML's excerpt of it: it may hold a credential
        raise ConfigError(f"--set {key.strip()}=...: the value is not valid YAML ({_yaml_problem(exc)})") from None
    return key.strip().split("."), value


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What YAML found wrong and where, without its excerpt of the text (which may hold a credential)."""
    problem = getattr(exc, "problem", None) or "cannot be parsed"
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def set_dotted(tree: dict[str, Any], path: list[str], value: Any) -> None:
    """Set tree[path[0]]...[path[-1]] = value in place, creating missing sections as dicts.

    Raises ConfigError when a section on the way holds a value that is not a dict.
    """
    node = tree
    for i, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {'.'.join(path[: i + 1])} is not a section")
        node = child
    node[path[-1]] = value


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """A new dict: `base` with `extra` merged in recursively (dicts merge, anything else in `extra` replaces);
    neither argument is changed."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_config_text(path: Path) -> str:
    """The text of a config file, read as UTF-8.

    Raises ConfigError when the file is missing, cannot be read (a folder, no permission) or is not UTF-8 text.
    """
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (a binary file?): bad byte at {exc.start}") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from exc


def parse_config_text(text: str, source: str) -> dict[str, Any]:
    """The top-level mapping of YAML config text ({} when empty); `source` names it in messages.

    Raises ConfigError when the text is not valid YAML or holds something else than a mapping.
    """
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {_yaml_problem(exc)}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{source} must hold a mapping (KEY: VALUE) at the top level, not {type(values).__name__}")
    return values


def load_config_file(path: Path) -> dict[str, Any]:
    """The top-level mapping of a YAML config file ({} when the file is empty).

    Raises ConfigError when the file is missing, unreadable, not UTF-8 text, not valid YAML, or holds something
    else than a mapping.
    """
    return parse_config_text(read_config_text(path), f"config file {path}")


def merged_values(
    profile: str,
    file_values: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The unvalidated values of `base` < the profile < the profile's values for the run's image side < `file_values`
    < `KEY=VALUE` overrides.

    A profile's `sizes` section maps an image side (`data.size`, as the other sources resolve it) to values that
    apply at that side only: the budgets a profile needs for larger images (e.g. more generator steps at 64 pixels,
    measured in the profile's comment). The file and the overrides still win over them.

    Raises ConfigError for an unknown profile or a bad override.
    """
    own = profile_values(profile)
    by_size = own.pop("sizes", None) or {}

    def merge(at_size: dict[str, Any]) -> dict[str, Any]:
        values = deep_merge(deep_merge(base or {}, own), at_size)
        values = deep_merge(values, file_values or {})
        for item in overrides or []:
            path, value = parse_override(item)
            set_dotted(values, path, value)
        return values

    values = merge({})
    data = values.get("data")
    size = data.get("size", DataConfig.model_fields["size"].default) if isinstance(data, dict) else None
    return merge(by_size[size]) if isinstance(size, int) and size in by_size else values


def validation_problems(exc: ValidationError) -> str:
    """Every failing key and why, from pydantic's messages only: never the input value (it may be a credential)."""
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"].removeprefix("Value error, ")  # our validators' messages start with the key themselves
        problems.append(msg if msg.startswith(f"{key} ") else f"{key}: {msg}")
    return "; ".join(problems)


def validate_config(values: dict[str, Any], what: str) -> RunConfig:
    """`values` validated strictly as a RunConfig, with the checks that need the whole config: the registered model
    name derived from the dataset must be a valid name (`check_model_name`), and a dataset or data root given as a
    URI is s3://bucket/key without credentials (`DataConfig.check_uri`). `what` starts the message (e.g. "invalid
    configuration (profile smoke)").

    Raises ConfigError listing every failing key.
    """
    try:
        cfg = RunConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(f"{what}: {validation_problems(exc)}") from None
    problems = []
    for key, value in (("data.dataset", cfg.data.dataset), ("data.data_root", cfg.data.data_root)):
        if value and "://" in value:
            try:
                DataConfig.check_uri(key, value, object_required=key == "data.dataset")
            except ValueError as exc:
                problems.append(str(exc))
    if cfg.tracking.model_name is None:
        try:
            check_model_name(cfg.model_name, "tracking.model_name, derived from data.dataset,")
        except ValueError as exc:
            problems.append(f"{exc}; set tracking.model_name (--model-name)")
    if problems:
        raise ConfigError(f"{what}: {'; '.join(problems)}")
    return cfg


def resolve_config(
    profile: str = DEFAULT_PROFILE,
    config_file: Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """Built-in defaults < `base` < the profile < the file < `KEY=VALUE` overrides, validated strictly
    (`validate_config`).

    Raises ConfigError for an unknown profile, a bad file or override, or values that fail validation (the message
    lists every failing key, never a credential).
    """
    file_values = load_config_file(config_file) if config_file is not None else None
    values = merged_values(profile, file_values, overrides, base)
    return validate_config(values, f"invalid configuration (profile {profile})")
