"""Process-wide knobs every step sets the same way: seeds, threads, device, mixed precision."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import random
import resource
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")


def seed_everything(seed: int) -> None:
    """Seed Python's `random`, NumPy's global generator (seed mod 2^32) and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def device() -> torch.device:
    """cuda when a GPU is visible, else cpu: the one device every model and batch is put on."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cgroup_cpu_limit(root: str | os.PathLike = CGROUP_ROOT) -> int | None:
    """The CPU quota of the cgroup mounted at `root`, in whole CPUs (rounded up, at least 1); None when it sets none.

    cgroup v2: `<root>/cpu.max` holds "<quota> <period>" ("max <period>": no quota). cgroup v1:
    `<root>/cpu/cpu.cfs_quota_us` and `cpu.cfs_period_us`, in microseconds (quota -1: no quota); some hosts mount
    the controller as `cpu,cpuacct`. Inside a container `root` is the container's own cgroup. Never raises: a
    missing, unreadable or malformed file counts as no quota.
    """
    root = Path(root)
    candidates = [(root / "cpu.max",)] + [
        (root / c / "cpu.cfs_quota_us", root / c / "cpu.cfs_period_us") for c in ("cpu", "cpu,cpuacct")
    ]
    for files in candidates:
        try:
            fields = " ".join(f.read_text() for f in files).split()
        except (OSError, UnicodeDecodeError):
            continue
        if len(fields) != 2:
            return None
        quota, period = fields
        if quota in ("max", "-1"):
            return None
        try:
            quota_us, period_us = int(quota), int(period)
        except ValueError:
            return None
        if quota_us <= 0 or period_us <= 0:
            return None
        return max(1, math.ceil(quota_us / period_us))
    return None


def _omp_num_threads(value: str | None) -> int | None:
    """The thread count OMP_NUM_THREADS asks for: its first (outermost) level, None when unset or not a count."""
    try:
        n = int((value or "").split(",")[0])
    except ValueError:
        return None
    return n if n > 0 else None


def thread_count(
    cgroup_root: str | os.PathLike = CGROUP_ROOT, environ: Mapping[str, str] | None = None
) -> tuple[int, str]:
    """How many intra-op threads to run, and why (for the log).

    OMP_NUM_THREADS in `environ` (default `os.environ`), when it holds a positive count, wins. Otherwise the CPUs
    this process may run on (its affinity, else the CPU count), capped at the cgroup's CPU quota
    (`cgroup_cpu_limit(cgroup_root)`): a container limited to 8 CPUs on a 96-core node still sees 96 CPUs in its
    affinity, and 96 threads would be throttled to 8 CPUs' worth of time. At least 1.
    """
    environ = os.environ if environ is None else environ
    raw = environ.get("OMP_NUM_THREADS")
    requested = _omp_num_threads(raw)
    if requested is not None:
        return requested, f"OMP_NUM_THREADS={raw}"
    if raw:
        log.warning("OMP_NUM_THREADS=%r is not a positive count: ignored", raw)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_limit(cgroup_root)
    if quota is not None and quota < cpus:
        return quota, f"cgroup CPU quota of {quota} (of {cpus} CPU(s) in the affinity mask)"
    return max(1, cpus), f"{cpus} CPU(s) in the affinity mask" + (f", cgroup CPU quota {quota}" if quota else "")


_logged_threads: tuple[int, str] | None = None


def configure_threads(cgroup_root: str | os.PathLike = CGROUP_ROOT) -> int:
    """Set torch's intra-op threads to `thread_count(cgroup_root)` and return that number.

    The choice is logged (INFO) once per process, and again only if it changes.
    """
    global _logged_threads
    n, why = thread_count(cgroup_root)
    torch.set_num_threads(n)
    if _logged_threads != (n, why):
        log.info("torch intra-op threads: %d (%s)", n, why)
        _logged_threads = (n, why)
    return n


@functools.cache
def bf16_is_fast(dev_type: str) -> bool:
    """Whether bf16 is fast on a device type ("cuda" or "cpu"; cached per type).

    bf16 pays only with hardware support: on an AVX2-only CPU it is about 10x slower than fp32. CUDA: when the GPU
    supports bf16; CPU: when /proc/cpuinfo lists avx512_bf16 or amx_bf16 (False when it cannot be read).
    """
    if dev_type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def autocast(bf16: bool | str, dev: torch.device | None = None) -> contextlib.AbstractContextManager:
    """bf16 autocast on `dev` (default `device()`) when asked for (True) or, with "auto", when the hardware runs it
    fast (`bf16_is_fast`); otherwise a no-op context manager."""
    dev = dev or device()
    enabled = bf16_is_fast(dev.type) if bf16 == "auto" else bool(bf16)
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)


def maybe_compile(module: torch.nn.Module, setting: bool | str, dev: torch.device | None = None) -> torch.nn.Module:
    """`module` compiled with torch.compile when asked for (True) or, with "auto", on CUDA, where the compile time
    pays back and "max-autotune" adds CUDA graphs; on a CPU it costs minutes per process for a small gain."""
    dev = dev or device()
    enabled = dev.type == "cuda" if setting == "auto" else bool(setting)
    if not enabled:
        return module
    return torch.compile(module, mode="max-autotune" if dev.type == "cuda" else None, dynamic=False)


def to_unit(x_uint8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 tensor in [-1, 1] of the same shape, the scale both the classifiers and the generator
    use (on the input's device; a NumPy input lands on the CPU)."""
    x = torch.as_tensor(x_uint8)
    return x.float().div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float tensor in [-1, 1] (clamped) -> uint8 NumPy array of the same shape on the CPU: `to_unit` inverted,
    rounded to the nearest level."""
    return ((x.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).cpu().numpy()


def derive_seed(seed: int, *names: object) -> int:
    """A seed per purpose (selection, shard 3, ...): streams never overlap, and each is reproducible.

    An int in [0, 1_000_000) from SHA-256 of (seed, names as strings).
    """
    digest = hashlib.sha256(json.dumps([seed, *map(str, names)]).encode()).digest()
    return int.from_bytes(digest[:4], "little") % 1_000_000


def peak_rss_mb() -> float:
    """This process's peak resident memory, MiB (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
