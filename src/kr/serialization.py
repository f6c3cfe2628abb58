"""Step records: each finished step leaves `<run>/records/<step>.json`, the run's one shared memory.

The summary is assembled from these files, so it can be written by whoever finishes the run (the in-process runner
or the pipeline's exit handler) and even when a step failed part-way: what ran is recorded, what did not is absent.
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from kr.progress import console


def finite(value: Any) -> Any:
    """NaN (an undefined AUC) becomes null: JSON has no NaN, and a missing value must read as missing."""
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
    """Atomic JSON write: a reader never sees half a file, a crash never leaves one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(finite(payload), indent=2, allow_nan=False))
    tmp.replace(path)
    return path


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def record_step(run_dir: Path, step: str, result: dict, seconds: float) -> Path:
    return write_json(
        Path(run_dir) / "records" / f"{step}.json",
        {
            "step": step,
            "seconds": round(seconds, 2),
            "peak_rss_mb": peak_rss_mb(),
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "result": result,
        },
    )


def read_records(run_dir: Path) -> dict[str, dict]:
    folder = Path(run_dir) / "records"
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}


def timed_step(run_dir: Path, step: str, fn: Callable[[], dict]) -> dict:
    """Run one step, print its timing, record its result."""
    console.rule(f"[bold]{step}")
    t0 = time.perf_counter()
    try:
        result = fn()
    except Exception as exc:
        # the summary names the step that failed and why, even when it is written by another process
        write_json(Path(run_dir) / "failure.json", {"step": step, "error": f"{type(exc).__name__}: {exc}"})
        raise
    seconds = time.perf_counter() - t0
    record_step(run_dir, step, result, seconds)
    console.print(f"{step} done in {seconds:.1f} s")
    return result
