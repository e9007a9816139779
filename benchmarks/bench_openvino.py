"""OpenVINO against ONNX Runtime on the same ONNX files: MNIST MLP teacher fp32, student fp32, student QDQ INT8.

Builds (or with ``--reuse`` reuses) a `recipes/mnist_mlp.yaml` run through distill -> export ONNX -> quantize INT8
(static QDQ, kdeploy's PTQ defaults), then times every file through both runtimes with kdeploy's own bench
(``runtimes=("onnxruntime", "openvino")``, OpenVINO's CPU plugin with its default precision for this CPU) at batch
1 and 256 on ``--threads`` threads, all in this one process. The bench is repeated ``--rounds`` times; each cell is
the median p50 over rounds and each ratio the median of the per-round ratios (the two runtimes of one file are
timed back to back in every round, so load from other processes hits both alike). The training is shortened by
``TRAIN`` overrides (the latencies depend on the architecture, not on how long it trained); ``--set`` adds more.

Usage::

    KDEPLOY_DATA=/work/shared/data nice -n 10 .venv/bin/python benchmarks/bench_openvino.py [--reuse]
        [--threads 2] [--rounds 5] [--write-readme]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from _markdown import emit, md_table

from kdeploy import cpu
from kdeploy.bench import BenchRow, BenchSettings, TimingSettings, bench
from kdeploy.distill import distill
from kdeploy.export import export_onnx, read_manifest
from kdeploy.quantize import quantize
from kdeploy.recipe import load_recipe
from kdeploy.runs import Run

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "mnist_mlp.yaml"
README = Path(__file__).resolve().parent / "README.md"
RESULTS = Path(__file__).resolve().parent / "results" / "bench_openvino.json"
TRAIN = ["teacher.epochs=3", "student.epochs=3", "baseline=false", "train.precision=fp32", "train.threads=1"]
FILES = (("teacher", "onnx", "teacher fp32"), ("student", "onnx", "student fp32"),
         ("student", "onnx-int8", "student QDQ INT8"))  # fmt: skip
BATCHES = (1, 256)
CPU_FLAGS = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx512f", "avx_vnni", "avx2")


def ensure_run(path: Path, reuse: bool, overrides: list[str], data_root: str | None) -> Run:
    """The run folder with teacher/student fp32 ONNX and the student's static INT8 file; rebuilt unless ``reuse``."""
    have = _artifacts(path) if reuse and (path / "student.safetensors").is_file() else set()
    if not have:
        print(f"training {RECIPE.name} into {path} ...", file=sys.stderr)
        distill(load_recipe(RECIPE, overrides, data_root), out=path, force=True)
    run = Run.open(path)
    if not {"teacher:onnx", "student:onnx"} <= have:
        export_onnx(run, models=["teacher", "student"])
    if "student:onnx-int8" not in have:
        quantize(run, int8=True, method="static", models=["student"])
    return run


def _artifacts(path: Path) -> set[str]:
    try:
        return {a.id for a in read_manifest(Run.open(path)).artifacts if a.status == "ok"}
    except Exception:  # no run folder yet, or an unreadable one: rebuild
        return set()


def cpu_flags() -> dict[str, bool]:
    """The instruction-set extensions that decide OpenVINO's and ORT's kernels (Linux /proc/cpuinfo)."""
    flags = cpu.flags()
    return {f: f in flags for f in CPU_FLAGS} if flags else {}


def load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def layer_precisions(path: Path, threads: int) -> str:
    """The precisions OpenVINO's CPU plugin runs the compute layers (FullyConnected, Convolution, MatMul) of
    ``path`` at, read from the compiled model's runtime graph (its inference precision hint does not say whether
    a QDQ file's layers run in int8)."""
    import openvino as ov

    core = ov.Core()
    config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": threads}
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    found: dict[str, set[str]] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str)
        if kind in ("FullyConnected", "Convolution", "MatMul"):
            found.setdefault(kind, set()).add(info["runtimePrecision"].astype(str))
    return ", ".join(f"{kind} {'/'.join(sorted(p))}" for kind, p in found.items()) or "none"


def find_row(rows: list[BenchRow], model: str, fmt: str, runtime: str, batch: int) -> BenchRow:
    return next(r for r in rows if (r.model, r.format, r.runtime, r.batch_size) == (model, fmt, runtime, batch))


def compare(rounds: list[list[BenchRow]], layers: dict[str, str]) -> list[dict[str, Any]]:
    """One record per file and batch: per-round p50 on both runtimes, medians, OpenVINO's precision, accuracies."""
    out = []
    for model, fmt, label in FILES:
        for b in BATCHES:
            ort = [find_row(rows, model, fmt, "onnxruntime", b) for rows in rounds]
            ov = [find_row(rows, model, fmt, "openvino", b) for rows in rounds]
            ratios = [o.latency_ms.p50 / v.latency_ms.p50 for o, v in zip(ort, ov, strict=True)]
            out.append({
                "model": label, "artifact": f"{model}:{fmt}", "batch_size": b,
                "ort_p50_ms": [r.latency_ms.p50 for r in ort], "openvino_p50_ms": [r.latency_ms.p50 for r in ov],
                "ort_over_openvino": ratios, "median_ratio": statistics.median(ratios),
                "openvino_precision": ov[-1].inference_precision, "openvino_layers": layers[f"{model}:{fmt}"],
                "ort_accuracy": ort[-1].accuracy,
                "openvino_accuracy": ov[-1].accuracy,
            })  # fmt: skip
    return out


def verdict(ratio: float, rounds: list[float]) -> str:
    """``ratio`` = median ORT p50 / OpenVINO p50; flagged when the rounds do not agree on the faster runtime."""
    text = f"OpenVINO {ratio:.2f}x faster" if ratio >= 1 else f"ORT {1 / ratio:.2f}x faster"
    return f"{text} (rounds disagree)" if min(rounds) < 1 < max(rounds) else text


def table(records: list[dict[str, Any]]) -> str:
    headers = ["model", "batch", "ORT p50 ms", "OpenVINO p50 ms", "OpenVINO precision hint; layers",
               "ratio (median of rounds)",
               "per-round ORT/OV", "accuracy ORT / OV"]  # fmt: skip
    cells = [
        [r["model"], str(r["batch_size"]), f"{statistics.median(r['ort_p50_ms']):.4g}",
         f"{statistics.median(r['openvino_p50_ms']):.4g}", f"{r['openvino_precision']}; {r['openvino_layers']}",
         verdict(r["median_ratio"], r["ort_over_openvino"]),
         " / ".join(f"{x:.2f}" for x in r["ort_over_openvino"]),
         f"{r['ort_accuracy']:.4f} / {r['openvino_accuracy']:.4f}"]
        for r in records
    ]  # fmt: skip
    return md_table(headers, cells)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, default=REPO / "runs" / "bench_openvino")
    ap.add_argument("--reuse", action="store_true", help="keep the run folder's weights and artifacts when present")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--set", dest="extra", action="append", default=[], help="more recipe overrides (training)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.0, help="minimum timed seconds per row")
    ap.add_argument("--write-readme", action="store_true", help=f"replace the section in {README.name}")
    args = ap.parse_args()
    overrides = TRAIN + args.extra
    run = ensure_run(args.run, args.reuse, overrides, args.data_root)
    settings = BenchSettings(batch_sizes=BATCHES, threads=args.threads, runtimes=("onnxruntime", "openvino"),
                             models=("teacher", "student"),
                             timing=TimingSettings(warmup=20, min_iters=50, min_seconds=args.seconds))  # fmt: skip
    load_before = load()
    results = [bench(run, settings) for _ in range(args.rounds)]
    load_after = load()
    files = {a.id: run.export_dir / a.files[0] for a in read_manifest(run).artifacts if a.files}
    layers = {f"{m}:{f}": layer_precisions(files[f"{m}:{f}"], args.threads) for m, f, _ in FILES}
    records = compare([r.rows for r in results], layers)
    machine = results[-1].machine
    flags = cpu_flags()
    import openvino

    command = "nice -n 10 python benchmarks/bench_openvino.py " + " ".join(sys.argv[1:])
    text = "\n".join([
        f"Command: `{command}` (recipe `{RECIPE.relative_to(REPO)}` with "
        f"`{' '.join('--set ' + o for o in overrides)}`; the same ONNX files through both runtimes, {args.threads} "
        f"threads, OpenVINO's LATENCY hint and its default precision on this CPU; {args.rounds} rounds, median p50).",
        "",
        f"CPU: {machine.cpu}, {machine.cores_available} cores; AMX: {'yes' if flags.get('amx_bf16') else 'no'}; "
        f"flags: {', '.join(f for f, on in flags.items() if on) or 'unknown'}. onnxruntime "
        f"{machine.version('onnxruntime')}, OpenVINO {openvino.get_version()}. Load average (1/5/15 min) "
        f"{load_before} before, {load_after} after (other processes shared the cores; ratios are side by side).",
        "",
        table(records),
        "",
        "ratio: ORT p50 / OpenVINO p50 (> 1: OpenVINO faster); per-round ratios show the spread.",
    ])  # fmt: skip
    emit(text, README, "bench_openvino", args.write_readme)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    payload = {"command": command, "overrides": overrides, "machine": machine, "cpu_flags": flags,
               "load_before": load_before, "load_after": load_after, "settings": settings.to_dict(),
               "rows": records}  # fmt: skip
    RESULTS.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
