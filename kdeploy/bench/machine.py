"""The machine a bench runs on: versions, cores, and whether other processes compete for the cores."""

from __future__ import annotations

import dataclasses
import os

from kdeploy import progress
from kdeploy.bench.records import BenchMachine
from kdeploy.bench.settings import BenchSettings
from kdeploy.cores import busy_cores
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
