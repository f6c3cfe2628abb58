"""Process-wide knobs every step sets the same way: seeds, threads, device, mixed precision."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def configure_threads() -> None:
    # A KFP container or a laptop: use the cores we were given, not the host's count.
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, n))


@functools.cache
def bf16_is_fast(dev_type: str) -> bool:
    """bf16 pays only with hardware support: on an AVX2-only CPU it is about 10x slower than fp32."""
    if dev_type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def autocast(bf16: bool | str, dev: torch.device | None = None) -> contextlib.AbstractContextManager:
    """bf16 autocast when asked for (True) or, with "auto", when the hardware runs it fast."""
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
    """uint8 images -> float tensor in [-1, 1], the scale both the classifiers and the generator use."""
    x = torch.as_tensor(x_uint8)
    return x.float().div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).cpu().numpy()


def derive_seed(seed: int, *names: object) -> int:
    """A seed per purpose (selection, shard 3, ...): streams never overlap, and each is reproducible."""
    digest = hashlib.sha256(json.dumps([seed, *map(str, names)]).encode()).digest()
    return int.from_bytes(digest[:4], "little") % 1_000_000
