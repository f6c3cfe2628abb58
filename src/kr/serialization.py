"""JSON files the run writes: values made JSON-safe, and atomic writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def finite(value: Any) -> Any:
    """A JSON-ready copy of `value`: NaN and inf become None (JSON has none; a missing value must read as missing),
    numpy scalars become Python numbers, paths become strings; dicts, lists and tuples are converted deeply."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    if isinstance(value, float | np.floating) and not np.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, payload: Any) -> Path:
    """Write `payload` (through `finite`) as indented JSON atomically: a reader never sees half a file, a crash
    never leaves one. Creates the parent folder; returns `path`. Raises TypeError for a value JSON cannot hold."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(finite(payload), indent=2, allow_nan=False))
    tmp.replace(path)
    return path
