"""Static INT8 with one module path kept in float (``kdeploy quantize --float-module``) against every layer quantized.

For each ``RUN:ROLE`` (the run is copied to a temporary folder first, so it is left as it was), both files are
quantized from the same export and the same calibration images as ``kdeploy quantize --int8`` takes them (512,
min-max) in the four weight settings (8- and 7-bit, per tensor and per channel), and each file's test accuracy is
measured with ONNX Runtime's own kernels; with ``--latency-rounds N`` also each pair's p50 at batch 1 and 256 on one
thread, the two files alternating (median of the N rounds' p50s). Written for ``fast_cnn``'s whitening stem
(``--module stem.0``), whose frozen filters differ 10x in gain (benchmarks/README.md, "fast_cnn in static INT8: the
whitening stem in float").

Usage::

    KDEPLOY_DATA=../shared/data .venv/bin/python benchmarks/int8_float_module.py RUN:student [...] [--module stem.0]
        [--latency-rounds 3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import onnxruntime
from _alternating import BATCHES, latencies
from _machine import load_average
from _markdown import md_table
from _scratch import scratch_run

from kdeploy import cpu
from kdeploy.export.ort import onnx_accuracy
from kdeploy.quantize.calibration import calibration_split, make_reader
from kdeploy.quantize.convert import QuantOptions, convert_static
from kdeploy.rundata import load_run_data, run_recipe

SETTINGS = ((False, False), (False, True), (True, False), (True, True))  # (per_channel, reduce_range)


def label(per_channel: bool, reduce_range: bool) -> str:
    return f"{7 if reduce_range else 8}-bit {'per-channel' if per_channel else 'per-tensor'}"


def measure(source: Path, role: str, module: str, rounds: int) -> tuple[list[str], list[str]]:
    """fp32 accuracy, then per weight setting 'all quantized -> module in float' (test accuracy, %); and with
    ``rounds`` the same pairs' p50 (ms) at each batch size."""
    with scratch_run(source, [role]) as (run, tmp):
        src = run.export_dir / f"{role}.onnx"
        data = load_run_data(run)
        calib = calibration_split(data.train, 512, run_recipe(run).seed)

        def accuracy(path: Path) -> float:
            return 100 * onnx_accuracy(path, data.test, data.mean, data.std, threads=1)

        cells, timed = [f"{source}:{role}", f"{accuracy(src):.2f}"], [f"{source}:{role}"]
        for per_channel, reduce_range in SETTINGS:
            files = {}
            for modules in ((), (module,)):
                files[modules] = tmp / f"int8_{len(modules)}.onnx"
                reader = make_reader(calib.split, data.mean, data.std, "input")
                options = QuantOptions("minmax", per_channel, reduce_range=reduce_range, float_modules=modules)
                convert_static(src, files[modules], tmp, reader, options)
            pair = [accuracy(path) for path in files.values()]
            cells.append(f"{pair[0]:.2f} -> {pair[1]:.2f} ({pair[1] - pair[0]:+.2f})")
            if rounds:
                p50 = latencies(files, tuple(data.in_shape), 1, rounds)
                for batch in BATCHES:
                    slow, fast = p50[((), batch)], p50[((module,), batch)]
                    timed.append(f"{slow:.3f} -> {fast:.3f} ({fast / slow:.2f}x)")
        return cells, timed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="RUN:ROLE, e.g. runs/x/seed0:student")
    ap.add_argument("--module", default="stem.0", help="the module path kept in float (default stem.0)")
    ap.add_argument("--latency-rounds", type=int, default=0, help="alternating latency rounds per pair (default 0)")
    args = ap.parse_args()
    rows, timed = [], []
    for spec in args.models:
        source, _, role = spec.rpartition(":")
        cells, times = measure(Path(source), role, args.module, args.latency_rounds)
        rows.append(cells)
        timed.append(times)
    print(f"{cpu.model_name()}, onnxruntime {onnxruntime.__version__}, 1 thread, load {load_average()}; "
          f"every layer quantized -> {args.module} in float, test accuracy %")  # fmt: skip
    print(md_table(["model", "fp32 %", *(label(pc, rr) for pc, rr in SETTINGS)], rows))
    if args.latency_rounds:
        print(
            f"\np50 ms, every layer quantized -> {args.module} in float (ratio), median of {args.latency_rounds} rounds"
        )
        heads = [f"{label(pc, rr)}, batch {b}" for pc, rr in SETTINGS for b in BATCHES]
        print(md_table(["model", *heads], timed))


if __name__ == "__main__":
    main()
