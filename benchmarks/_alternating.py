"""Side-by-side latency of two (or more) ONNX files: p50 per batch size, the files alternating within each round."""

from __future__ import annotations

import statistics
from collections.abc import Hashable
from pathlib import Path

import numpy as np

from kdeploy.bench.latency import TimingSettings, time_host
from kdeploy.export.ort import make_session, run_batch

BATCHES = (1, 256)
TIMING = TimingSettings(warmup=10, min_iters=30, min_seconds=1.0)


def latencies(
    files: dict[Hashable, Path], shape: tuple[int, ...], threads: int, rounds: int
) -> dict[tuple[Hashable, int], float]:
    """(file key, batch) -> median over ``rounds`` of the file's p50 (ms); within a round the files alternate, in
    reverse order every other round."""
    sessions = {key: make_session(path, threads=threads) for key, path in files.items()}
    rng = np.random.default_rng(0)
    samples: dict[tuple[Hashable, int], list[float]] = {}
    keys = list(sessions)
    for r in range(rounds):
        for batch in BATCHES:
            x = rng.standard_normal((batch, *shape)).astype(np.float32)
            for key in reversed(keys) if r % 2 else keys:
                lat = time_host(lambda s=sessions[key], x=x: run_batch(s, x), TIMING)
                samples.setdefault((key, batch), []).append(lat.p50)
    return {key: statistics.median(values) for key, values in samples.items()}
