"""Machine facts the benchmark scripts print next to their numbers: the matmul ceiling and the load average."""

from __future__ import annotations

import os
import time

import torch


def matmul_gflops(n: int = 4096, dtype: torch.dtype = torch.float32, seconds: float = 3.0) -> float:
    """GFLOP/s of an ``n`` x ``n`` ``torch.mm`` in ``dtype``, repeated for ``seconds``: the ceiling a step is
    compared with."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    iters, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        iters += 1
    return 2 * n**3 * iters / (time.perf_counter() - t0) / 1e9


def load_average() -> str:
    """The 1/5/15-minute load averages, "1.5/1.6/1.5": other processes' load skews every timed row."""
    return "/".join(f"{x:.1f}" for x in os.getloadavg())
