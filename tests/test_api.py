"""The Python API: one function per stage, named apart from the stage modules, loaded on first use."""

from __future__ import annotations

import importlib
import subprocess
import sys
import types

import kdeploy

API = ("load_recipe", "distill_recipe", "export_onnx", "export_tensorrt", "quantize_run", "bench_run", "report", "run")


def test_stage_functions_and_stage_modules_do_not_shadow_each_other() -> None:
    for module in ("kdeploy.distill.trainer", "kdeploy.export.onnx", "kdeploy.quantize", "kdeploy.bench.harness"):
        importlib.import_module(module)
    for name in API:
        assert callable(getattr(kdeploy, name)), name
        assert not isinstance(getattr(kdeploy, name), types.ModuleType), f"kdeploy.{name} is a module"
    for module in ("distill", "quantize", "bench", "export"):
        assert isinstance(getattr(kdeploy, module), types.ModuleType), f"kdeploy.{module} is not the module"
    assert set(API) <= set(dir(kdeploy)) and set(API) <= set(kdeploy.__all__)


def _imported_after(code: str) -> set[str]:
    """The kdeploy modules and torch a fresh interpreter has loaded after running ``code``."""
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in sys.modules if m.startswith(('kdeploy', 'torch'))))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_import_kdeploy_loads_no_stage_and_no_torch() -> None:
    loaded = _imported_after("import kdeploy")
    assert "torch" not in loaded and "kdeploy.distill" not in loaded, loaded


def test_recipe_export_and_bench_never_load_the_trainer() -> None:
    """DESIGN.md: export/quantize/bench rebuild models from weights metadata; they never import the trainer."""
    code = (
        "import kdeploy.recipe, kdeploy.export, kdeploy.export.onnx, kdeploy.bench, kdeploy.bench.harness,"
        " kdeploy.quantize\n"
        "from kdeploy.recipe import validate\n"
        "validate({'name': 'r', 'data': {'name': 'mnist'}, 'teacher': {'model': 'mlp'},"
        " 'student': {'model': 'mlp'}, 'distill': {'method': 'dkd'}})"
    )
    loaded = _imported_after(code)
    assert "kdeploy.distill.methods.params" in loaded, "the recipe validates against the method schemas"
    trainer_side = {"kdeploy.distill.trainer", "kdeploy.distill.run", "kdeploy.distill.methods.base"}
    assert not trainer_side & loaded, sorted(trainer_side & loaded)
