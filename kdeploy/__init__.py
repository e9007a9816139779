"""kdeploy: distill a large PyTorch model into a small one, export, quantize and benchmark it.

The Python API mirrors the CLI, one function per pipeline stage; each reads and writes the run folder::

    import kdeploy
    recipe = kdeploy.load_recipe("recipes/mnist_mlp.yaml", ["student.epochs=3"])
    run = kdeploy.distill_recipe(recipe)          # -> kdeploy.Run (runs/<name>/)
    kdeploy.export_onnx(run)                      # parity-gated ONNX artifacts
    kdeploy.quantize_run(run, int8=True, fp16=True)  # ONNX Runtime INT8 (static QDQ) and FP16
    result = kdeploy.bench_run(run)               # bench.json rows
    kdeploy.report(run)                           # bench.md, bench.csv, pareto.png, report.md
    kdeploy.run(recipe)                           # all of the above, with an optional gate

The function names differ from the stage modules' (``kdeploy.distill``, ``kdeploy.quantize``, ``kdeploy.bench``),
so neither hides the other. They load on first use: ``import kdeploy`` itself imports neither torch nor a stage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdeploy.errors import GateFailed, UserError
from kdeploy.lazy import exports

if TYPE_CHECKING:
    from kdeploy.bench import bench as bench_run
    from kdeploy.bench.report import write_report as report
    from kdeploy.distill.run import distill as distill_recipe
    from kdeploy.export import export_onnx, export_tensorrt
    from kdeploy.pipeline import run_pipeline as run
    from kdeploy.quantize import quantize as quantize_run
    from kdeploy.recipe import load_recipe
    from kdeploy.runs import Run

__version__ = "0.1.0"

__all__ = [
    "GateFailed",
    "Run",
    "UserError",
    "bench_run",
    "distill_recipe",
    "export_onnx",
    "export_tensorrt",
    "load_recipe",
    "quantize_run",
    "report",
    "run",
]
__getattr__, __dir__ = exports(
    __name__,
    {
        "Run": "kdeploy.runs:Run",
        "bench_run": "kdeploy.bench:bench",
        "distill_recipe": "kdeploy.distill.run:distill",
        "export_onnx": "kdeploy.export:export_onnx",
        "export_tensorrt": "kdeploy.export:export_tensorrt",
        "load_recipe": "kdeploy.recipe:load_recipe",
        "quantize_run": "kdeploy.quantize:quantize",
        "report": "kdeploy.bench.report:write_report",
        "run": "kdeploy.pipeline:run_pipeline",
    },
)
