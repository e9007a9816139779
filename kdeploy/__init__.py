"""kdeploy: distill a large PyTorch model into a small one, export, quantize and benchmark it.

The Python API mirrors the CLI, one function per pipeline stage; each reads and writes the run folder::

    import kdeploy
    recipe = kdeploy.load_recipe("recipes/mnist_mlp.yaml", ["student.epochs=3"])
    run = kdeploy.distill(recipe)                 # -> kdeploy.Run (runs/<name>/)
    kdeploy.export_onnx(run)                      # parity-gated ONNX artifacts
    kdeploy.quantize(run, int8=True, fp16=True)   # ONNX Runtime INT8 (static QDQ) and FP16
    result = kdeploy.bench(run)                   # bench.json rows
    kdeploy.report(run)                           # bench.md, bench.csv, pareto.png, report.md
    kdeploy.run(recipe)                           # all of the above, with an optional gate

The stage functions share their names with the stage packages (``kdeploy.distill`` and friends), so they are
imported here eagerly: once bound, the package attribute is the function and stays so.
"""

from __future__ import annotations

__version__ = "0.1.0"

from kdeploy.bench import bench
from kdeploy.bench.report import write_report as report
from kdeploy.distill import distill
from kdeploy.errors import GateFailed, UserError
from kdeploy.export import export_onnx, export_tensorrt
from kdeploy.pipeline import run_pipeline as run
from kdeploy.quantize import quantize
from kdeploy.recipe import load_recipe
from kdeploy.runs import Run

__all__ = [
    "GateFailed",
    "Run",
    "UserError",
    "bench",
    "distill",
    "export_onnx",
    "export_tensorrt",
    "load_recipe",
    "quantize",
    "report",
    "run",
]
