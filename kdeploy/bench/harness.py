"""`kdeploy bench`: every model role and every exported artifact of a run, on every runtime asked for.

Per target (:mod:`kdeploy.bench.targets`): test-set accuracy through that runtime, params, MACs/FLOPs, size on disk
(and in memory for PyTorch), then latency per batch size. Ratios are taken against the teacher's PyTorch fp32 row at
the same batch size, on the same device when there is one (else on the device it was measured on; the row's
``reference_device`` says which). Writes ``bench.json`` (plus CSV, Markdown and the Pareto plot) in the run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from kdeploy import atomic, progress
from kdeploy.bench.gate import REFERENCE
from kdeploy.bench.machine import load_average, machine_info, warn_if_busy
from kdeploy.bench.measure import MB
from kdeploy.bench.records import BenchResult, BenchRow, Skipped
from kdeploy.bench.runners import Runner, Unavailable
from kdeploy.bench.settings import PRECISION, BenchSettings
from kdeploy.bench.targets import Target, collect_targets, load_test_split, timing_input
from kdeploy.data import Split
from kdeploy.evaluate import split_accuracy
from kdeploy.runs import Run


def runner_accuracy(runner: Runner, split: Split, mean: Sequence[float], std: Sequence[float], batch: int) -> float:
    """Top-1 accuracy of ``runner`` on the whole split (batches capped at the runner's maximum)."""
    limit = runner.max_batch()
    batch = min(batch, limit) if limit else batch
    return split_accuracy(lambda x: runner.predict(np.ascontiguousarray(x.numpy())), split, mean, std, batch)


def measure_target(target: Target, split: Split, opts: BenchSettings, tick: Callable[[], None]) -> list[BenchRow]:
    runner = target.make()
    try:
        acc = runner_accuracy(runner, split, target.mean, target.std, opts.eval_batch_size)
        info = {k: v for k, v in runner.info().items() if k in BenchRow.__dataclass_fields__}
        rows = []
        limit = runner.max_batch()
        for b in opts.batch_sizes:
            if limit and b > limit:
                progress.log(f"{target.model} {target.format}: batch {b} > engine maximum {limit}, skipped")
                tick()
                continue
            lat = runner.time(timing_input(split, b, target.mean, target.std), opts.timing)
            rows.append(
                BenchRow(
                    model=target.model,
                    format=target.format,
                    precision=PRECISION.get(target.format, "?"),
                    runtime=target.runtime,
                    device=runner.device,
                    batch_size=b,
                    accuracy=acc,
                    latency_ms=lat.ms(),
                    iters=lat.iters,
                    throughput=lat.throughput(b),
                    params=target.params,
                    macs=target.macs,
                    flops=2 * target.macs if target.macs is not None else None,
                    size_mb=target.size_bytes / MB,
                    memory_mb=target.memory_bytes / MB if target.memory_bytes is not None else None,
                    artifact=target.artifact,
                    files=target.files,
                    **info,
                )
            )
            tick()
        return rows
    finally:
        runner.close()


def add_ratios(rows: list[BenchRow]) -> None:
    """Speed-up (reference p50 / row p50), size reduction and accuracy delta against the teacher's PyTorch row at
    the same batch size: on the row's device when the bench has one there, else on the device it was measured on
    (TensorRT rows of a CPU bench compare with the CPU teacher; ``reference_device`` records which)."""
    refs = {(r.batch_size, r.device): r for r in rows if r.key == REFERENCE}
    for row in rows:
        ref = refs.get((row.batch_size, row.device))
        ref = ref or next((r for (batch, _), r in refs.items() if batch == row.batch_size), None)
        if ref is None:
            row.speedup = row.size_reduction = row.accuracy_delta = row.reference_device = None
            continue
        row.speedup = ref.latency_ms.p50 / row.latency_ms.p50
        row.size_reduction = ref.size_mb / row.size_mb if row.size_mb else None
        row.accuracy_delta = row.accuracy - ref.accuracy
        row.reference_device = ref.device


def bench(run: Run, settings: BenchSettings | None = None) -> BenchResult:
    """Measure everything in ``run``; write bench.json/.csv/.md and pareto.png; return the results."""
    from kdeploy.bench.report import write_bench_outputs

    opts = settings or BenchSettings()
    opts.check()
    busy = warn_if_busy(opts.resolved_threads())
    machine = machine_info(opts)
    machine.busy_cores_before = busy
    threads_before = torch.get_num_threads()
    torch.set_num_threads(opts.resolved_threads())
    try:
        split = load_test_split(run, opts.data_root)
        targets, skipped = collect_targets(run, opts)
        rows: list[BenchRow] = []
        progress.log(
            f"bench: {len(targets)} targets x {len(opts.batch_sizes)} batch sizes on {opts.device}, "
            f"{opts.resolved_threads()} threads, accuracy on {len(split)} test samples"
        )
        with progress.task("bench", total=len(targets) * len(opts.batch_sizes)) as bar:
            for target in targets:
                try:
                    rows += measure_target(target, split, opts, lambda: bar.update(1))
                except Unavailable as exc:
                    skipped.append(Skipped(target.model, target.format, target.runtime, str(exc)))
                    progress.log(f"{target.model} {target.format} on {target.runtime}: skipped ({exc})")
                    bar.update(len(opts.batch_sizes))
    finally:
        torch.set_num_threads(threads_before)
    add_ratios(rows)
    machine.load_average_after = load_average()
    result = BenchResult(run=str(run.root), machine=machine, settings=opts.to_dict(), rows=rows, skipped=skipped)
    atomic.write_json(run.bench_path, result.to_dict())
    write_bench_outputs(run, result)
    return result
