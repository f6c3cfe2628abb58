"""What the speed benchmarks share: the machine's measured matmul peak and FLOP counts of a callable."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def matmul_peak_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Best-of-`repeats` GFLOP/s of an n x n x n matmul in `dtype` on the current device: the roof to compare with."""
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    a @ b  # warm-up: first call allocates and picks kernels
    best = float("inf")
    for _ in range(repeats):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if dev.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def count_gflop(fn: Callable[[], object]) -> float:
    """GFLOP of one call of `fn`, as counted by torch's FlopCounterMode (matmuls and convolutions)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def peaks() -> dict[str, float]:
    """Measured bf16 and fp32 matmul peaks in GFLOP/s, in one run beside the benchmark they scale."""
    return {"bf16": matmul_peak_gflops(torch.bfloat16), "fp32": matmul_peak_gflops(torch.float32)}
