"""The Python API: one function per stage, still callable after the stage packages are imported."""

from __future__ import annotations

import importlib

import kdeploy


def test_stage_functions_survive_submodule_imports() -> None:
    for module in ("kdeploy.distill.trainer", "kdeploy.export.onnx", "kdeploy.quantize", "kdeploy.bench.harness"):
        importlib.import_module(module)
    for name in ("load_recipe", "distill", "export_onnx", "export_tensorrt", "quantize", "bench", "report", "run"):
        assert callable(getattr(kdeploy, name)), name
        assert not isinstance(getattr(kdeploy, name), type(kdeploy)), f"kdeploy.{name} is a module, not the function"
