"""The machine a bench runs on: versions, cores, and whether other processes compete for the cores."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from kdeploy import progress
from kdeploy.bench.records import BenchMachine
from kdeploy.bench.settings import BenchSettings
from kdeploy.runs import available_cores, environment, package_versions


def machine_info(opts: BenchSettings) -> BenchMachine:
    """The run environment plus the cores and threads this bench times on and the load before it starts."""
    import onnxruntime as ort

    env = environment()
    env["versions"].update(package_versions("fvcore", "tensorrt"))
    return dataclasses.replace(
        BenchMachine.from_dict(env),
        cores_available=available_cores(),
        threads=opts.resolved_threads(),
        onnxruntime_providers=list(ort.get_available_providers()),
        load_average_before=load_average(),
    )


def load_average() -> float | None:
    """1-minute load average (other processes competing for the cores make latencies noisy)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _cpu_jiffies(cpus: set[int]) -> tuple[int, int] | None:
    """(busy, total) clock ticks of ``cpus`` since boot, from /proc/stat (Linux); None elsewhere."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
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


def busy_cores(window: float = 0.5) -> float | None:
    """How many of this process's cores other processes kept busy over the next ``window`` seconds.

    Sampled from /proc/stat on the cores this process may use, minus this process's own CPU time; unlike the load
    average it does not remember the training that just finished in this process. None where /proc is missing."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:
        return None
    before, own, start = _cpu_jiffies(cpus), time.process_time(), time.perf_counter()
    time.sleep(window)
    after = _cpu_jiffies(cpus)
    own, elapsed = time.process_time() - own, time.perf_counter() - start
    if before is None or after is None or after[1] <= before[1]:
        return None
    used = (after[0] - before[0]) / (after[1] - before[1]) * len(cpus)
    return round(max(0.0, used - own / elapsed), 2)


def warn_if_busy(threads: int) -> float | None:
    """Warn when other processes compete for the cores the timing will use; returns the busy-core estimate."""
    busy = busy_cores()
    spare = max(0.5, available_cores() - threads + 0.5)
    if busy is not None:
        if busy > spare:
            progress.log(
                f"warning: other processes kept {busy:.1f} of {available_cores()} cores busy just before timing; "
                "latencies will be noisy (bench on a quiet machine)"
            )
        return busy
    load = load_average()
    if load is not None and load > spare:
        progress.log(
            f"warning: load average {load:.1f} on {available_cores()} cores before timing; other "
            "processes compete for the cores, so latencies will be noisy (bench on a quiet machine)"
        )
    return None
