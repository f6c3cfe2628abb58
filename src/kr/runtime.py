"""Process-wide knobs every step sets the same way: seeds, threads, device, mixed precision."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import random
import resource
from pathlib import Path

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's `random`, NumPy's global generator (seed mod 2^32) and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def device() -> torch.device:
    """cuda when a GPU is visible, else cpu: the one device every model and batch is put on."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def configure_threads() -> None:
    """Set torch's intra-op threads to the CPUs this process may run on (its affinity, else the CPU count)."""
    # A KFP container or a laptop: use the cores we were given, not the host's count.
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, n))


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
