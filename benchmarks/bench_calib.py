"""Static INT8 calibration choices side by side: per-tensor / per-channel weights x minmax / entropy / percentile
activation ranges, on the exported models of finished runs.

Each configuration quantizes a copy of the run (``kdeploy quantize RUN --int8 [--per-channel] --calib-method M
--models ROLE``, gate off) and records the accuracy through ONNX Runtime against the fp32 ONNX file and the
wall time of the conversion (calibration included).

    KDEPLOY_DATA=../shared/data python benchmarks/bench_calib.py runs/kd/cifar10_fast_tiny/deploy \
        runs/kd/cifar10_fast/deploy --write-readme
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from _markdown import emit, md_table

from kdeploy import cpu
from kdeploy.quantize import quantize
from kdeploy.quantize.convert import CALIB_METHODS
from kdeploy.recipe import load_recipe

HERE = Path(__file__).resolve().parent
WEIGHTS = {"per-tensor": False, "per-channel": True}


def measure(run: Path, role: str, work: Path, weights: str, method: str) -> dict[str, object]:
    copy = work / f"{run.parent.name}-{run.name}-{weights}-{method}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("*.int8*.onnx", "*.fp16.onnx", "state"))
    start = time.perf_counter()
    (art,) = quantize(
        copy, int8=True, calib_method=method, per_channel=WEIGHTS[weights], models=[role], max_accuracy_drop=1.0
    )
    seconds = time.perf_counter() - start
    shutil.rmtree(copy)
    return {
        "run": str(run),
        "recipe": load_recipe(run / "recipe.yaml").name,
        "role": role,
        "weights": weights,
        "calib_method": method,
        "fp32_accuracy": art.fp32_accuracy,
        "int8_accuracy": art.accuracy,
        "drop_points": round(100 * art.accuracy_drop, 2),
        "seconds": round(seconds, 1),
    }


def table(rows: list[dict[str, object]], command: str) -> str:
    cells = [
        [
            f"`{r['recipe']}` {r['role']}",
            f"{100 * float(r['fp32_accuracy']):.2f}",
            str(r["weights"]),
            str(r["calib_method"]),
            f"{100 * float(r['int8_accuracy']):.2f}",
            f"{float(r['drop_points']):+.2f}",
            f"{r['seconds']}",
        ]
        for r in rows
    ]
    head = ["model", "fp32 ONNX %", "weights", "activation ranges", "static INT8 %", "loss, points", "quantize s"]
    accel = ", ".join(cpu.accelerations()) or "none"
    return (
        f"Command: `{command}`. CPU: {cpu.model_name()} ({accel}). Full test set through ONNX Runtime; "
        f"512 calibration images of the training split; symmetric int8; "
        f"'quantize s' includes calibration and the test-set evaluation.\n\n" + md_table(head, cells)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", type=Path, help="run folders with an ONNX export")
    ap.add_argument("--role", default="student")
    ap.add_argument("--work", type=Path, default=Path("runs/exp/bench_calib"))
    ap.add_argument("--json", type=Path, default=HERE / "results" / "bench_calib.json")
    ap.add_argument("--write-readme", action="store_true")
    ap.add_argument("--report-only", action="store_true", help="only write the table from --json")
    args = ap.parse_args()
    if not (args.runs or args.report_only):
        ap.error("name at least one run folder (or --report-only)")
    if args.report_only:
        rows = json.loads(args.json.read_text(encoding="utf-8"))
    else:
        rows = [
            measure(run, args.role, args.work, weights, method)
            for run in args.runs
            for weights in WEIGHTS
            for method in CALIB_METHODS
        ]
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    role = "" if rows[0]["role"] == "student" else f" --role {rows[0]['role']}"
    runs = " ".join(dict.fromkeys(str(r["run"]) for r in rows))  # the runs measured, in order
    command = f"KDEPLOY_DATA=../shared/data python benchmarks/bench_calib.py {runs}{role}"
    emit(table(rows, command + " --write-readme"), HERE / "README.md", "bench_calib", args.write_readme)


if __name__ == "__main__":
    main()
