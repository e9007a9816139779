"""Static INT8 with GELU in float against GELU's inner ops quantized: accuracy and latency of both files per model.

ONNX exports GELU at opset 18 as five ops (``x * 0.5 * (1 + erf(x / sqrt 2))``). ORT's static quantizer puts a
Q/DQ pair on each of their four inner tensors; ``QuantOptions(float_gelu=True)`` keeps them out (``nodes_to_exclude``),
so GELU runs in float between the Q/DQ of its input and of its output. For every model of each run folder that has
an exact GELU (the run is copied to a temporary folder first, so it is left as it was), both files are quantized
from the same export and the same calibration images as ``kdeploy quantize --int8`` takes them (512, min-max,
``reduce_range`` where this CPU has no VNNI), per tensor and per channel; then each file's test accuracy with ORT's
own kernels and its p50 latency at batch 1 and 256 on ``--threads`` threads, both files timed in alternating
rounds (median of the rounds' p50s).

Usage::

    KDEPLOY_DATA=../shared/data .venv/bin/python benchmarks/int8_gelu.py RUN [RUN ...] [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
from _alternating import BATCHES, latencies
from _machine import load_average
from _markdown import md_table
from _scratch import scratch_run

from kdeploy import cpu
from kdeploy.export.ort import onnx_accuracy
from kdeploy.quantize.calibration import calibration_split, make_reader
from kdeploy.quantize.convert import QuantOptions, convert_static
from kdeploy.quantize.graph import gelu_nodes
from kdeploy.quantize.stage import saturates
from kdeploy.rundata import load_run_data, run_recipe
from kdeploy.runs import Run

ROLES = ("teacher", "baseline", "student")


@dataclass
class Pair:
    """One model at one weight setting: the GELU-quantized file and the GELU-float file."""

    label: str
    fp32: float
    accuracy: dict[bool, float]  # float_gelu -> test accuracy
    points: dict[bool, int]  # float_gelu -> QuantizeLinear count
    p50: dict[tuple[bool, int], float]  # (float_gelu, batch) -> median p50 ms


def q_points(path: Path) -> int:
    return [n.op_type for n in onnx.load(str(path)).graph.node].count("QuantizeLinear")


def measure(run: Run, role: str, data: Any, calib: Any, tmp: Path, threads: int, rounds: int) -> list[Pair]:
    src = run.export_dir / f"{role}.onnx"
    if not gelu_nodes(onnx.load(str(src))):  # convert_static finds them again in the pre-processed graph
        return []
    fp32 = onnx_accuracy(src, data.test, data.mean, data.std, threads=threads)
    pairs = []
    for per_channel in (False, True):
        files: dict[bool, Path] = {}
        for float_gelu in (False, True):
            files[float_gelu] = tmp / f"{role}.{int(per_channel)}{int(float_gelu)}.int8.onnx"
            reader = make_reader(calib.split, data.mean, data.std, "input")
            options = QuantOptions("minmax", per_channel, reduce_range=saturates(), float_gelu=float_gelu)
            convert_static(src, files[float_gelu], tmp, reader, options)
        accuracy = {fg: onnx_accuracy(p, data.test, data.mean, data.std, threads=threads) for fg, p in files.items()}
        pairs.append(
            Pair(
                label=f"{role}, {'per-channel' if per_channel else 'per-tensor'}",
                fp32=fp32,
                accuracy=accuracy,
                points={fg: q_points(p) for fg, p in files.items()},
                p50=latencies(files, tuple(data.in_shape), threads, rounds),
            )
        )
    return pairs


def one_run(source: Path, threads: int, rounds: int) -> list[Pair]:
    roles = [r for r in ROLES if (source / f"{r}.safetensors").is_file()]
    with scratch_run(source, roles) as (run, tmp):
        data = load_run_data(run)
        calib = calibration_split(data.train, 512, run_recipe(run).seed)
        return [pair for role in roles for pair in measure(run, role, data, calib, tmp, threads, rounds)]


def row(source: Path, p: Pair) -> list[str]:
    def pct(x: float) -> str:
        return f"{100 * x:.2f}"

    change = f"{100 * (p.accuracy[True] - p.accuracy[False]):+.2f}"
    cells = [str(source), p.label, pct(p.fp32), pct(p.accuracy[False]), pct(p.accuracy[True]), change,
             f"{p.points[False]} / {p.points[True]}"]  # fmt: skip
    for batch in BATCHES:
        slow, fast = p.p50[(False, batch)], p.p50[(True, batch)]
        cells.append(f"{slow:.3f} / {fast:.3f} ({fast / slow:.2f}x)")
    return cells


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run folders holding teacher/baseline/student weights")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating latency rounds per pair (default 3)")
    args = ap.parse_args()
    cells = [row(source, p) for source in args.runs for p in one_run(source, args.threads, args.rounds)]
    native = ", ".join(f for f in cpu.NATIVE_BF16 if f in cpu.flags()) or "no native bf16"
    vnni = "no VNNI: 7-bit weights" if saturates() else "8-bit weights"
    print(f"{cpu.model_name()} ({native}; {vnni}), onnxruntime {onnxruntime.__version__}, {args.threads} thread(s), "
          f"load {load_average()}")  # fmt: skip
    headers = ["run", "model, weights", "fp32 %", "INT8, GELU quantized %", "INT8, GELU float %", "change",
               "Q points", *(f"p50 batch {b} ms (quantized / float)" for b in BATCHES)]  # fmt: skip
    print(md_table(headers, cells))


if __name__ == "__main__":
    main()
