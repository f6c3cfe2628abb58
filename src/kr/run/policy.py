"""The gate policy: the loosest gate thresholds a platform allows. A run's `--set`, `--config` and `gates`
parameter may tighten a threshold the policy sets, never loosen it.

The policy is a YAML file in the layout of the config's `gates` section (e.g. `privacy: {max_auc: 0.6}`), found
through KR_GATE_POLICY: `kr run --gate-policy FILE` sets it; on a cluster the compiled pipeline mounts the ConfigMap
`kr-gate-policy` and points KR_GATE_POLICY at it for the tasks that resolve the run's config. It is read where the
config is resolved (`kr.run.request.resolve_request`), so every entry point is held to it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import yaml

from kr.config import ConfigError, GatesConfig

POLICY_ENV = "KR_GATE_POLICY"
# a ceiling: the run's value may be lower (stricter), not higher
CEILINGS = frozenset(
    {
        "accuracy.max_gap_pp",
        "privacy.max_auc",
        "privacy.max_tpr_at_1pct_fpr",
        "privacy.max_near_copy_fraction",
        "privacy.max_student_canary_epsilon",
        "champion.tolerance_pp",
    }
)
# a floor: the run's value may be higher (stricter), not lower
FLOORS = frozenset(
    {
        "accuracy.min_student_accuracy",
        "accuracy.min_above_majority_pp",
        "accuracy.min_class_recall",
        "accuracy.teacher_min_above_majority_pp",
        "privacy.min_teacher_canary_auc",
    }
)


def policy_path() -> Path | None:
    """The policy file named by KR_GATE_POLICY, None when it is unset or empty."""
    value = os.environ.get(POLICY_ENV, "")
    return Path(value) if value else None


def load_policy(path: Path) -> dict[str, float]:
    """The policy's thresholds as {"privacy.max_auc": 0.6, ...}. Raises ConfigError when the file is missing or is
    not YAML, names a key that is no gate threshold, or holds a non-finite or non-numeric value."""
    try:
        tree = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"gate policy {path} not found ({POLICY_ENV})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"gate policy {path} is not valid YAML: {exc}") from exc
    if not isinstance(tree, dict):
        raise ConfigError(f"gate policy {path} must hold a mapping of gates")
    flat: dict[str, float] = {}
    for gate, values in tree.items():
        for key, value in (values or {}).items() if isinstance(values, dict) else [(None, values)]:
            name = f"{gate}.{key}"
            if name not in CEILINGS | FLOORS:
                raise ConfigError(f"gate policy {path}: {name} is not a gate threshold")
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ConfigError(f"gate policy {path}: {name} = {value!r} is not a finite number")
            flat[name] = float(value)
    return flat


def enforce(gates: GatesConfig, path: Path | None) -> None:
    """Raise ConfigError naming every threshold of `gates` looser than the policy at `path` allows (nothing without
    a policy)."""
    if path is None:
        return
    values: dict[str, Any] = {
        f"{gate}.{key}": value for gate, section in gates.model_dump().items() for key, value in section.items()
    }
    loose = []
    for name, limit in sorted(load_policy(path).items()):
        value = values[name]
        if (name in CEILINGS and value > limit) or (name in FLOORS and value < limit):
            bound = "at most" if name in CEILINGS else "at least"
            loose.append(f"gates.{name} = {value:g} is looser than the policy allows ({bound} {limit:g})")
    if loose:
        raise ConfigError(f"the gate policy {path} refuses: " + "; ".join(loose))
