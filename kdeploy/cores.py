"""Whether other processes compete for this process's cores (Linux ``/proc/stat``; elsewhere nothing is known).

Bench timings and CPU training both suffer: latencies turn noisy, and intra-op threads that outnumber the free
cores wait on each other (three trainings on 2 cores ran at 250-810 samples/s each with 2 threads per process, at
2,400-3,000 with one).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

PROC_STAT = Path("/proc/stat")


def _cpu_jiffies(cpus: frozenset[int]) -> tuple[int, int] | None:
    """(busy, total) clock ticks of ``cpus`` since boot, from /proc/stat (Linux); None elsewhere."""
    try:
        lines = PROC_STAT.read_text().splitlines()
    except OSError:
        return None
    busy = total = 0
    for line in lines:
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks = [int(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
            total += sum(ticks)
            busy += sum(ticks) - ticks[3] - ticks[4]
    return (busy, total) if total else None


@dataclass(frozen=True)
class CoreSample:
    """A busy-core measurement begun now and read later (``busy``), so that its window can overlap this process's
    own work: the CPU time this process spends in between is subtracted."""

    cpus: frozenset[int]
    jiffies: tuple[int, int] | None
    own: float
    start: float

    @classmethod
    def begin(cls) -> CoreSample | None:
        """None where the cores this process may use are unknown (not Linux)."""
        try:
            cpus = frozenset(os.sched_getaffinity(0))
        except AttributeError:
            return None
        return cls(cpus, _cpu_jiffies(cpus), time.process_time(), time.perf_counter())

    def busy(self, min_window: float = 0.0) -> float | None:
        """How many of the cores other processes kept busy since ``begin`` (waiting until ``min_window`` seconds
        have passed); None where /proc is missing."""
        time.sleep(max(0.0, min_window - (time.perf_counter() - self.start)))
        after = _cpu_jiffies(self.cpus)
        own, elapsed = time.process_time() - self.own, time.perf_counter() - self.start
        if self.jiffies is None or after is None or after[1] <= self.jiffies[1]:
            return None
        used = (after[0] - self.jiffies[0]) / (after[1] - self.jiffies[1]) * len(self.cpus)
        return round(max(0.0, used - own / elapsed), 2)


def busy_cores(window: float = 0.5) -> float | None:
    """How many of this process's cores other processes kept busy over the next ``window`` seconds.

    Sampled from /proc/stat on the cores this process may use, minus this process's own CPU time; unlike the load
    average it does not remember work that just finished in this process. None where /proc is missing."""
    sample = CoreSample.begin()
    return sample.busy(min_window=window) if sample is not None else None


def oversubscription_warning(busy: float | None, threads: int, cores: int) -> str | None:
    """The one-line warning for training on ``threads`` intra-op threads while other processes keep ``busy`` of
    the ``cores`` busy, when fewer threads would fit beside them; None when they fit or ``busy`` is unknown."""
    fits = max(1, round(cores - busy)) if busy is not None else threads
    if threads <= fits:
        return None
    return (
        f"warning: other processes keep {busy:.1f} of {cores} cores busy, and training on {threads} threads beside "
        f"them can run several times slower; --set train.threads={fits} leaves them their share"
    )
