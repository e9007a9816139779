"""The deployment targets of `recipes/mnist_mlp.yaml`, measured side by side in one process.

1. Student ONNX INT8 p50 <= 1/10 of the teacher's PyTorch eager p50 at batch 1, and <= 1/12 at batch 256.
2. At batch 256, ONNX Runtime fp32 reaches >= 70 % of this machine's fp32 matmul GFLOP/s (measured here with
   a large ``torch.mm`` and ``numpy.matmul`` on the same threads; the better of the two is the ceiling).
3. Harness overhead: ``kdeploy bench``'s p50 for an ONNX artifact is within 15 % of a bare
   ``InferenceSession.run`` loop on the same file (timed here in blocks; the median block mean is compared).

Usage (trains the recipe first when the run folder has no weights; the table goes to stdout)::

    .venv/bin/python benchmarks/bench_mnist_mlp.py --data-root /work/shared/data/mnist [--run runs/mnist_mlp]
        [--threads N] [--write-readme]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdeploy.bench import BenchSettings, TimingSettings, bench
from kdeploy.bench.harness import available_cores, load_average, timing_input
from kdeploy.bench.runners import ort_session
from kdeploy.export import read_manifest
from kdeploy.runs import Run

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "mnist_mlp.yaml"
README = Path(__file__).resolve().parent / "README.md"
BEGIN, END = "<!-- bench_mnist_mlp:begin -->", "<!-- bench_mnist_mlp:end -->"


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
    have = {a["id"] for a in read_manifest(run)["artifacts"] if a.get("status") == "ok"}
    if not {"teacher:onnx", "student:onnx"} <= have:
        export_onnx(run, models=["teacher", "student"])
    if "student:onnx-int8" not in have:
        quantize(run, int8=True, method="static", models=["student"])
    return run


def matmul_ceiling(
    threads: int, sizes: tuple[int, ...] = (256, 512, 1024, 2048), seconds: float = 1.0
) -> dict[str, float]:
    """Best fp32 GFLOP/s of square matmuls (2 n^3 FLOPs) with torch and numpy, over several sizes: the fastest
    single run is the ceiling (small sizes fit between scheduler preemptions on a shared machine)."""
    torch.set_num_threads(threads)
    out: dict[str, float] = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        na, nb = a.numpy(), b.numpy()
        calls = (("torch.mm", lambda a=a, b=b: torch.mm(a, b)), ("numpy.matmul", lambda a=na, b=nb: np.matmul(a, b)))
        for name, fn in calls:
            for _ in range(3):
                fn()
            best = float("inf")
            start = time.perf_counter()
            while time.perf_counter() - start < seconds:
                t0 = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t0)
            key = f"{name} {n}"
            out[key] = 2 * n**3 / best / 1e9
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


def row(rows: list[dict[str, Any]], model: str, fmt: str, batch: int) -> dict[str, Any]:
    return next(r for r in rows if (r["model"], r["format"], r["batch_size"]) == (model, fmt, batch))


def md_table(headers: list[str], cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] * len(headers)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])


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
    rows = result["rows"]
    ceiling = matmul_ceiling(threads)
    best_ceiling = max(ceiling.values())
    best_name = max(ceiling, key=ceiling.__getitem__)

    # harness overhead on the student's INT8 and fp32 files, both batch sizes
    from kdeploy.export.rundata import load_run_data

    data = load_run_data(run)
    overhead = []
    for fmt in ("onnx-int8", "onnx"):
        entry = next(a for a in read_manifest(run)["artifacts"] if a["id"] == f"student:{fmt}")
        path = run.export_dir / entry["files"][0]
        for b in (1, 256):
            bare = bare_loop(path, timing_input(data.test, b, data.mean, data.std), threads)
            harness = row(rows, "student", fmt, b)["latency_ms"]["p50"]
            overhead.append((fmt, b, harness, bare, harness / bare - 1))
    load_after = load_average()

    teacher = {b: row(rows, "teacher", "pytorch", b) for b in (1, 256)}
    int8 = {b: row(rows, "student", "onnx-int8", b) for b in (1, 256)}
    targets = [
        [f"student ONNX INT8 vs teacher PyTorch eager, batch {b}", f"<= 1/{k} of teacher p50",
         f"{int8[b]['latency_ms']['p50']:.4f} ms vs {teacher[b]['latency_ms']['p50']:.4f} ms = "
         f"1/{teacher[b]['latency_ms']['p50'] / int8[b]['latency_ms']['p50']:.1f}",
         "met" if teacher[b]["latency_ms"]["p50"] / int8[b]["latency_ms"]["p50"] >= k else "MISSED"]
        for b, k in ((1, 10), (256, 12))
    ]  # fmt: skip
    for model in ("teacher", "student"):
        r = row(rows, model, "onnx", 256)
        gflops = r["flops"] * 256 / (r["latency_ms"]["p50"] / 1000) / 1e9
        share = gflops / best_ceiling
        targets.append([
            f"{model} ONNX fp32 (ORT) GFLOP/s at batch 256", ">= 70% of matmul ceiling",
            f"{gflops:.1f} GFLOP/s = {share:.0%} of {best_ceiling:.1f} ({best_name})",
            "met" if share >= 0.7 else "MISSED",
        ])  # fmt: skip
    for fmt, b, harness, bare, rel in overhead:
        targets.append([
            f"harness p50 vs bare InferenceSession.run loop, student {fmt}, batch {b}", "within 15%",
            f"{harness:.4f} ms vs {bare:.4f} ms ({rel:+.1%})", "met" if abs(rel) <= 0.15 else "MISSED",
        ])  # fmt: skip

    latency_cells = [
        [r["model"], r["format"], r["runtime"], str(r["batch_size"]), f"{r['accuracy']:.4f}", f"{r['size_mb']:.2f}",
         f"{r['latency_ms']['p50']:.4f}", f"{r['latency_ms']['p99']:.4f}", f"{r['throughput']:,.0f}",
         f"{r['speedup']:.1f}x"]
        for r in sorted(rows, key=lambda r: r["batch_size"])
    ]  # fmt: skip
    m = result["machine"]
    command = "python benchmarks/bench_mnist_mlp.py " + " ".join(sys.argv[1:])
    text = "\n\n".join([
        f"Command: `{command}` (run folder `{run.root.name}`, recipe `recipes/mnist_mlp.yaml`)",
        f"Machine: {m['cpu']}, {m['cores_available']} cores, {threads} threads for torch and ORT; torch "
        f"{m['versions']['torch']}, onnxruntime {m['versions']['onnxruntime']}; 1-min load average "
        f"{load_before} before, {load_after} after; fp32 matmul GFLOP/s (n x n x n, fastest run in 1 s): "
        + ", ".join(f"{k} {v:.0f}" for k, v in ceiling.items()),
        md_table(["target", "goal", "measured", "verdict"], targets),
        md_table(["model", "format", "runtime", "batch", "accuracy", "MB", "p50 ms", "p99 ms", "samples/s",
                  "speed-up vs teacher eager"], latency_cells),
    ])  # fmt: skip
    print(text)
    if args.write_readme:
        old = README.read_text(encoding="utf-8") if README.is_file() else f"{BEGIN}\n{END}\n"
        head, _, rest = old.partition(BEGIN)
        _, _, tail = rest.partition(END)
        README.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}", encoding="utf-8")
        print(f"\nwrote {README}", file=sys.stderr)


if __name__ == "__main__":
    main()
