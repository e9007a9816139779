"""Quantization-aware distillation against static PTQ INT8, mean of several seeds.

For each seed: distill a small CNN student (``--recipe`` with ``--set`` overrides), export its ONNX, quantize it
with kdeploy's PTQ (static QDQ INT8, per-tensor min-max calibration: `kdeploy quantize --int8`), then run
`kdeploy qat` (per-channel weights, KD fine-tuning) and bench both INT8 files through ONNX Runtime. All accuracies
are full test-set accuracies through ONNX Runtime, read from ``export/manifest.json``; latencies from
``bench.json`` (``--batch-sizes``, ``--threads``).

Usage::

    KDEPLOY_DATA=../shared/data nice -n 10 .venv/bin/python benchmarks/bench_qat.py [--seeds 0,1,2] [--write-readme]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from _markdown import emit, md_table

from kdeploy.bench import BenchSettings, TimingSettings, bench
from kdeploy.distill import distill
from kdeploy.export import export_onnx, read_manifest
from kdeploy.qat import qat
from kdeploy.quantize import quantize
from kdeploy.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
README = Path(__file__).resolve().parent / "README.md"
RECIPE = REPO / "recipes" / "fashion_mnist_cnn.yaml"
# A deliberately small student (CNN width 2, ~4.6k parameters) on a short CPU schedule: small networks are where
# per-tensor PTQ loses the most. The teacher is small too, to keep the proof cheap on a shared 2-core machine.
OVERRIDES = [
    "data.limit=20000",
    "data.val_size=2000",
    "baseline=false",
    "teacher.kwargs.width=8",
    "teacher.epochs=3",
    "student.kwargs.width=2",
    "student.epochs=3",
    "qat.epochs=1",
    "qat.calib_samples=512",
]


def one_seed(seed: int, out: Path, overrides: list[str], settings: BenchSettings) -> dict[str, Any]:
    recipe = load_recipe(RECIPE, [*overrides, f"seed={seed}"])
    t0 = time.perf_counter()
    run = distill(recipe, out=out / f"seed{seed}", force=True)
    export_onnx(run, models=["student"])
    accuracy = {}
    for per_channel in (True, False):  # per-tensor last: its file is the one benched (the shipped PTQ default)
        quantize(run, int8=True, calib_samples=512, per_channel=per_channel, models=["student"], max_accuracy_drop=1.0,
                 raise_on_fail=False)  # fmt: skip
        accuracy[per_channel] = read_manifest(run).find("student:onnx-int8").accuracy
    qat(run, max_accuracy_drop=1.0, raise_on_fail=False)
    result = bench(run, settings)
    arts = {a.format: a for a in read_manifest(run).artifacts if a.model == "student"}
    p50 = {(r.format, r.batch_size): r.latency_ms.p50 for r in result.rows}
    return {
        "seed": seed,
        "float": arts["onnx"].accuracy,
        "ptq": arts["onnx-int8"].accuracy,
        "ptq_pc": accuracy[True],
        "qat": arts["onnx-int8-qat"].accuracy,
        "p50": p50,
        "seconds": time.perf_counter() - t0,
    }


def table(rows: list[dict[str, Any]], batches: tuple[int, ...]) -> str:
    headers = ["seed", "float student (ORT)", "PTQ INT8 per-tensor", "PTQ INT8 per-channel", "QAD INT8",
               "PTQ per-tensor loss pt", "QAD loss pt"]  # fmt: skip
    headers += [f"p50 ms b{b} PTQ / QAD" for b in batches]
    cells = []
    for r in [*rows, _mean(rows)]:
        cell = [str(r["seed"]), f"{r['float']:.4f}", f"{r['ptq']:.4f}", f"{r['ptq_pc']:.4f}", f"{r['qat']:.4f}",
                f"{(r['float'] - r['ptq']) * 100:+.2f}", f"{(r['float'] - r['qat']) * 100:+.2f}"]  # fmt: skip
        cell += [f"{r['p50'][('onnx-int8', b)]:.4g} / {r['p50'][('onnx-int8-qat', b)]:.4g}" for b in batches]
        cells.append(cell)
    return md_table(headers, cells)


def _mean(rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = rows[0]["p50"].keys()
    return {
        "seed": "**mean**",
        **{k: statistics.mean(r[k] for r in rows) for k in ("float", "ptq", "ptq_pc", "qat")},
        "p50": {k: statistics.mean(r["p50"][k] for r in rows) for k in keys},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench_qat")
    ap.add_argument("--set", dest="extra", action="append", default=[], help="more recipe overrides")
    ap.add_argument("--batch-sizes", default="1,256")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write-readme", action="store_true", help=f"replace the section in {README.name}")
    args = ap.parse_args()
    batches = tuple(int(b) for b in args.batch_sizes.split(","))
    settings = BenchSettings(batch_sizes=batches, threads=args.threads, runtimes=("onnxruntime",),
                             models=("student",), timing=TimingSettings(min_iters=100, min_seconds=1.0))  # fmt: skip
    overrides = OVERRIDES + args.extra
    rows = [one_seed(int(s), args.out, overrides, settings) for s in args.seeds.split(",")]
    mean = _mean(rows)
    text = "\n".join([
        f"Recipe `{RECIPE.relative_to(REPO)}` with `{' '.join('--set ' + o for o in overrides)}`; seeds "
        f"{args.seeds}; accuracies on the full test set through ONNX Runtime; latency p50 through ONNX Runtime, "
        f"{args.threads} threads. Command: `nice -n 10 python benchmarks/bench_qat.py --seeds {args.seeds} "
        f"--write-readme`.",
        "",
        table(rows, batches),
        "",
        f"Mean over seeds: PTQ INT8 loses {(mean['float'] - mean['ptq']) * 100:.2f} points, QAD INT8 "
        f"{(mean['float'] - mean['qat']) * 100:.2f} points against the float student; "
        f"{sum(r['seconds'] for r in rows) / 60:.1f} min in all.",
    ])  # fmt: skip
    emit(text, README, "bench_qat", args.write_readme)


if __name__ == "__main__":
    main()
