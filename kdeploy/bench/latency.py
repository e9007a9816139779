"""The timing loop: warm-up, then iterations until both a minimum count and a minimum time are reached.

Each iteration is timed on its own (``perf_counter_ns`` on the host, or a pair of CUDA events with a
synchronize after each iteration on a GPU), so the percentiles describe single-request latency.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from kdeploy.errors import UserError


@dataclass(frozen=True)
class TimingSettings:
    warmup: int = 10  # untimed iterations first (allocations, lazy init, caches)
    min_iters: int = 50  # timed iterations at least ...
    min_seconds: float = 1.0  # ... and at least this long in total
    max_seconds: float = 60.0  # stop after this long even below min_iters (the row records the count)

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.min_iters < 1 or self.min_seconds < 0 or self.max_seconds <= 0:
            raise UserError(
                f"timing settings out of range (warmup={self.warmup}, iters={self.min_iters}, "
                f"seconds={self.min_seconds}, max={self.max_seconds}); use warmup >= 0, iters >= 1, seconds >= 0"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LatencyMs:
    """Latency statistics in milliseconds, as a bench row records them."""

    p50: float
    p90: float
    p99: float
    mean: float
    min: float
    std: float


@dataclass(frozen=True)
class Latency(LatencyMs):
    """Per-iteration latency statistics in milliseconds, with how many iterations were timed."""

    iters: int
    total_s: float

    @classmethod
    def from_samples(cls, samples_ms: list[float]) -> Latency:
        if not samples_ms:
            raise ValueError("no timed iterations")
        a = np.asarray(samples_ms, dtype=np.float64)
        p50, p90, p99 = np.percentile(a, [50, 90, 99])
        return cls(
            float(p50),
            float(p90),
            float(p99),
            float(a.mean()),
            float(a.min()),
            float(a.std()),
            len(a),
            float(a.sum() / 1000.0),
        )

    def ms(self) -> LatencyMs:
        return LatencyMs(self.p50, self.p90, self.p99, self.mean, self.min, self.std)

    def throughput(self, batch_size: int) -> float:
        """Samples per second at the median latency."""
        return batch_size * 1000.0 / self.p50 if self.p50 > 0 else float("inf")


@contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off while timing, so that no collection lands inside a timed iteration. Only
    the young generations are collected first: a full collection walks every object the process holds (0.2 s once
    torch, ONNX and onnxscript are loaded, paid per row) and no longer matters once collection is off."""
    enabled = gc.isenabled()
    gc.collect(1)
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _enough(n: int, elapsed: float, s: TimingSettings) -> bool:
    return (n >= s.min_iters and elapsed >= s.min_seconds) or elapsed >= s.max_seconds


def time_host(step: Callable[[], Any], settings: TimingSettings) -> Latency:
    """Wall-clock time of ``step()`` per call; ``step`` must return only when its work is done."""
    for _ in range(settings.warmup):
        step()
    samples: list[float] = []
    clock = time.perf_counter_ns
    with gc_paused():
        start = clock()
        while not _enough(len(samples), (clock() - start) / 1e9, settings):
            t0 = clock()
            step()
            samples.append((clock() - t0) / 1e6)
    return Latency.from_samples(samples)


def time_cuda(step: Callable[[], Any], settings: TimingSettings, stream: Any = None) -> Latency:
    """GPU time of ``step()`` between two CUDA events on ``stream``, synchronising after every iteration."""
    import torch

    stream = stream or torch.cuda.current_stream()
    with torch.cuda.stream(stream):
        for _ in range(settings.warmup):
            step()
        torch.cuda.synchronize()
        samples: list[float] = []
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with gc_paused():
            start = time.perf_counter()
            while not _enough(len(samples), time.perf_counter() - start, settings):
                begin.record(stream)
                step()
                end.record(stream)
                end.synchronize()
                samples.append(begin.elapsed_time(end))
    return Latency.from_samples(samples)
