"""kdeploy: distill a large PyTorch model into a small one, export, quantize and benchmark it.

The Python API mirrors the CLI, one function per pipeline stage::

    import kdeploy
    recipe = kdeploy.load_recipe("recipes/mnist_mlp.yaml", ["student.epochs=3"])
    run = kdeploy.distill(recipe)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "load_recipe": "kdeploy.recipe",
    "distill": "kdeploy.distill",
    "Run": "kdeploy.runs",
    "UserError": "kdeploy.errors",
    "export_onnx": "kdeploy.export",
    "export_tensorrt": "kdeploy.export",
    "quantize": "kdeploy.quantize",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:  # lazy, so `kdeploy --help` does not import torch
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'kdeploy' has no attribute {name!r}")
