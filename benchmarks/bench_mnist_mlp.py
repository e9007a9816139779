"""The deployment targets of `recipes/mnist_mlp.yaml`, measured side by side in one process.

1. Student ONNX INT8 p50 <= 1/10 of the teacher's PyTorch eager p50 at batch 1, and <= 1/12 at batch 256.
2. At batch 256, ONNX Runtime fp32 reaches >= 70 % of this machine's fp32 matmul GFLOP/s, measured here on the
   same threads with n x n x n matmuls (n = 512, 1024, 2048) through torch.mm, numpy (OpenBLAS) and ONNX Runtime's
   own MatMul; the fastest single run of any of them is the ceiling (so the share is conservative).
3. Harness overhead: ``kdeploy bench``'s p50 for an ONNX artifact (its ``OrtRunner`` and timing loop) is within 15 %
   of a bare ``InferenceSession.run`` loop on the same file (no per-call timer: blocks of 5 calls, median block
   mean); the two alternate for a few rounds and the medians are compared, so drift of the machine hits both.

Usage (trains the recipe first when the run folder has no weights; the table goes to stdout)::

    .venv/bin/python benchmarks/bench_mnist_mlp.py --data-root /work/shared/data/mnist [--run runs/mnist_mlp]
        [--threads N] [--write-readme]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from _markdown import emit, md_table

from kdeploy.bench import BenchSettings, TimingSettings, bench
from kdeploy.bench.machine import load_average
from kdeploy.bench.records import BenchRow
from kdeploy.bench.runners import OrtRunner, ort_session
from kdeploy.bench.targets import timing_input
from kdeploy.export import artifact_path, read_manifest
from kdeploy.runs import Run, available_cores

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "mnist_mlp.yaml"
README = Path(__file__).resolve().parent / "README.md"
ROUNDS = 3  # harness/bare alternations per overhead cell


def ensure_run(path: Path, data_root: str | None, overrides: list[str]) -> Run:
    """The run folder with fp32 and INT8 ONNX artifacts; trains/exports what is missing."""
    from kdeploy.export import export_onnx
    from kdeploy.quantize import quantize

    if not (path / "student.safetensors").is_file():
        from kdeploy.distill import distill
        from kdeploy.recipe import load_recipe

        print(f"training {RECIPE.name} into {path} ...", file=sys.stderr)
        distill(load_recipe(RECIPE, overrides, data_root), out=path, force=True)
    run = Run.open(path)
    have = {a.id for a in read_manifest(run).artifacts if a.status == "ok"}
    if not {"teacher:onnx", "student:onnx"} <= have:
        export_onnx(run, models=["teacher", "student"])
    if "student:onnx-int8" not in have:
        quantize(run, int8=True, method="static", models=["student"])
    return run


def _best_gflops(fn: Callable[[], Any], n: int, seconds: float) -> float:
    for _ in range(3):
        fn()
    best = float("inf")
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


NUMPY_PROBE = """
import json, sys, time
import numpy as np
n, seconds = int(sys.argv[1]), float(sys.argv[2])
a, b = np.random.rand(n, n).astype(np.float32), np.random.rand(n, n).astype(np.float32)
for _ in range(3):
    a @ b
best, start = float("inf"), time.perf_counter()
while time.perf_counter() - start < seconds:
    t0 = time.perf_counter(); a @ b; best = min(best, time.perf_counter() - t0)
print(json.dumps(2 * n**3 / best / 1e9))
"""


def ort_matmul(n: int, threads: int) -> Callable[[], Any]:
    """An n x n x n fp32 MatMul through ONNX Runtime (MLAS) with the bench's session options."""
    from onnx import TensorProto, helper, numpy_helper

    b = numpy_helper.from_array(np.random.rand(n, n).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "mm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])], [b],
    )  # fmt: skip
    path = Path(tempfile.mkdtemp()) / f"matmul{n}.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(path))
    session = ort_session(path, threads)
    feed = {"a": np.random.rand(n, n).astype(np.float32)}
    return lambda: session.run(None, feed)


def matmul_ceiling(threads: int, sizes: tuple[int, ...] = (512, 1024, 2048), seconds: float = 1.0) -> dict[str, float]:
    """fp32 GFLOP/s of square matmuls (2 n^3 FLOPs), fastest run per size, on ``threads`` threads: torch.mm,
    numpy (OpenBLAS, in a subprocess whose thread count is set) and ONNX Runtime's own MatMul (MLAS)."""
    torch.set_num_threads(threads)
    out: dict[str, float] = {}
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        out[f"torch.mm {n}"] = _best_gflops(lambda a=a, b=b: torch.mm(a, b), n, seconds)
        probe = subprocess.run([sys.executable, "-c", NUMPY_PROBE, str(n), str(seconds)], env=env, check=True,
                               capture_output=True, text=True)  # fmt: skip
        out[f"numpy {n}"] = float(json.loads(probe.stdout))
        out[f"onnxruntime MatMul {n}"] = _best_gflops(ort_matmul(n, threads), n, seconds)
    return out


def bare_loop(path: Path, x: np.ndarray, threads: int, seconds: float = 3.0, block: int = 5) -> float:
    """Median over blocks of ``block`` back-to-back ``session.run`` calls of the mean call time (ms): no timer
    around each call, and the median keeps preempted blocks out like the harness's p50 does."""
    session = ort_session(path, threads)
    feed = {session.get_inputs()[0].name: x}
    for _ in range(20):
        session.run(None, feed)
    means = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(means) < 50:
        t0 = time.perf_counter_ns()
        for _ in range(block):
            session.run(None, feed)
        means.append((time.perf_counter_ns() - t0) / block / 1e6)
    return statistics.median(means)


def row(rows: list[BenchRow], model: str, fmt: str, batch: int) -> BenchRow:
    return next(r for r in rows if (r.model, r.format, r.batch_size) == (model, fmt, batch))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=REPO / "runs" / "mnist_mlp")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override (training)")
    ap.add_argument("--threads", type=int, default=None, help="default: every core this process may use")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--write-readme", action="store_true", help=f"replace the section in {README.name}")
    args = ap.parse_args()
    threads = args.threads or available_cores()
    run = ensure_run(args.run, args.data_root, args.overrides)

    load_before = load_average()
    settings = BenchSettings(
        batch_sizes=(1, 256), threads=threads, runtimes=("torch", "onnxruntime"), models=("teacher", "student"),
        timing=TimingSettings(warmup=50, min_iters=args.iters, min_seconds=args.seconds),
    )  # fmt: skip
    result = bench(run, settings)
    rows = result.rows
    ceiling = matmul_ceiling(threads)
    best_ceiling = max(ceiling.values())
    best_name = max(ceiling, key=ceiling.__getitem__)

    # harness overhead on the student's INT8 and fp32 files, both batch sizes: the harness's own runner and timing
    # loop (what `kdeploy bench` calls) alternated with the bare loop, so machine drift hits both alike
    from kdeploy.rundata import load_run_data

    data = load_run_data(run)
    overhead = []
    artifacts = read_manifest(run)
    for fmt in ("onnx-int8", "onnx"):
        entry = artifacts.find(f"student:{fmt}")
        if entry is None:
            raise SystemExit(f"{run.root}: no student {fmt} artifact; run `kdeploy quantize {run.root} --int8`")
        path = artifact_path(run, entry)
        for b in (1, 256):
            x = timing_input(data.test, b, data.mean, data.std)
            harness, bare = [], []
            for _ in range(ROUNDS):
                runner = OrtRunner(path, "cpu", threads)
                harness.append(runner.time(x, settings.timing).p50)
                runner.close()
                bare.append(bare_loop(path, x, threads, seconds=args.seconds))
            h, m = statistics.median(harness), statistics.median(bare)
            overhead.append((fmt, b, h, m, h / m - 1))
    load_after = load_average()

    teacher = {b: row(rows, "teacher", "pytorch", b) for b in (1, 256)}
    int8 = {b: row(rows, "student", "onnx-int8", b) for b in (1, 256)}
    targets = [
        [f"student ONNX INT8 vs teacher PyTorch eager, batch {b}", f"<= 1/{k} of teacher p50",
         f"{int8[b].latency_ms.p50:.4f} ms vs {teacher[b].latency_ms.p50:.4f} ms = "
         f"1/{teacher[b].latency_ms.p50 / int8[b].latency_ms.p50:.1f}",
         "met" if teacher[b].latency_ms.p50 / int8[b].latency_ms.p50 >= k else "MISSED"]
        for b, k in ((1, 10), (256, 12))
    ]  # fmt: skip
    for model in ("teacher", "student"):
        r = row(rows, model, "onnx", 256)
        gflops = (r.flops or 0) * 256 / (r.latency_ms.p50 / 1000) / 1e9
        share = gflops / best_ceiling
        targets.append([
            f"{model} ONNX fp32 (ORT) GFLOP/s at batch 256", ">= 70% of matmul ceiling",
            f"{gflops:.1f} GFLOP/s = {share:.0%} of {best_ceiling:.1f} ({best_name})",
            "met" if share >= 0.7 else "MISSED",
        ])  # fmt: skip
    for fmt, b, harness, bare, rel in overhead:
        targets.append([
            f"harness p50 vs bare InferenceSession.run loop, student {fmt}, batch {b} (median of {ROUNDS} "
            "alternating rounds)", "within 15%",
            f"{harness:.4f} ms vs {bare:.4f} ms ({rel:+.1%})", "met" if abs(rel) <= 0.15 else "MISSED",
        ])  # fmt: skip

    latency_cells = [
        [r.model, r.format, r.runtime, str(r.batch_size), f"{r.accuracy:.4f}", f"{r.size_mb:.2f}",
         f"{r.latency_ms.p50:.4f}", f"{r.latency_ms.p99:.4f}", f"{r.throughput:,.0f}", f"{r.speedup or 0:.1f}x"]
        for r in sorted(rows, key=lambda r: r.batch_size)
    ]  # fmt: skip
    metrics = run.model_metrics()
    published = {"teacher": "97.69% (2x1200)", "student": "97.68% (1x800, distilled)"}
    accuracy_cells = [
        [role, f"{metrics[role].params:,}", f"{metrics[role].accuracy:.2%}", published.get(role, "-")]
        for role in ("teacher", "baseline", "student") if role in metrics
    ]  # fmt: skip
    m = result.machine
    command = "python benchmarks/bench_mnist_mlp.py " + " ".join(sys.argv[1:])
    text = "\n\n".join([
        "### MNIST MLP: accuracy and deployment targets (`benchmarks/bench_mnist_mlp.py`)",
        f"Command: `{command}` (run folder `{run.root.name}`, recipe `recipes/mnist_mlp.yaml`)",
        f"Machine: {m.cpu}, {m.cores_available} cores, {threads} threads for torch and ORT; torch "
        f"{m.version('torch')}, onnxruntime {m.version('onnxruntime')}; 1-min load average "
        f"{load_before} before, {load_after} after (this benchmark's own threads count); "
        "fp32 matmul GFLOP/s on the same threads (n x n x n, fastest run in 1 s): "
        + ", ".join(f"{k} {v:.0f}" for k, v in ceiling.items()),
        md_table(["model", "params", "test accuracy (PyTorch)", "published"], accuracy_cells),
        md_table(["target", "goal", "measured", "verdict"], targets),
        md_table(["model", "format", "runtime", "batch", "accuracy", "MB", "p50 ms", "p99 ms", "samples/s",
                  "speed-up vs teacher eager"], latency_cells),
    ])  # fmt: skip
    emit(text, README, "bench_mnist_mlp", args.write_readme)


if __name__ == "__main__":
    main()
