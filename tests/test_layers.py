"""The import directions README's "Layout" states, checked on the source (every import counts, also those
inside functions, since a lazy import is still a dependency):

- only the CLI uses typer or rich; the library reports progress through ``kdeploy.progress``;
- ``data``, ``models`` and ``recipe`` know nothing of distillation, export, quantization or benchmarks (the one
  exception: the recipe validates method parameters from ``kdeploy.distill.methods.params``, pydantic only);
- ``export``, ``quantize`` and ``bench`` never import the trainer; they rebuild models through the registry;
- a stage never imports one that runs after it: distill -> export -> quantize -> qat -> bench -> pipeline -> cli.
"""

from __future__ import annotations

import ast
from collections.abc import Collection
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kdeploy"
STAGES = ("distill", "export", "quantize", "qat", "bench", "pipeline", "cli")
SCHEMA_EXCEPTION = {"kdeploy.distill", "kdeploy.distill.methods", "kdeploy.distill.methods.params"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    base = PACKAGE.parent.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The modules one import statement names (``from kdeploy import progress`` names ``kdeploy.progress``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        package = module.split(".")[: len(module.split(".")) - node.level + is_package]
        base = ".".join([*package, node.module] if node.module else package)
    else:
        base = node.module or ""
    subs = [f"{base}.{alias.name}" for alias in node.names if _is_module(f"{base}.{alias.name}")]
    return subs or [base]


@cache
def imports() -> dict[str, set[str]]:
    """Every kdeploy module and the modules it imports anywhere in its source."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        is_package = path.name == "__init__.py"
        graph[module] = {name for node in ast.walk(tree) for name in _imported(node, module, is_package)}
    return graph


def _in(name: str, area: str) -> bool:
    return name == area or name.startswith(area + ".")


def _violations(sources: tuple[str, ...], forbidden: tuple[str, ...], allowed: Collection[str] = ()) -> list[str]:
    return sorted(
        f"{module} imports {name}"
        for module, names in imports().items()
        if any(_in(module, s) for s in sources)
        for name in names
        if name not in allowed and any(_in(name, f) for f in forbidden) and not any(_in(name, s) for s in sources)
    )


def test_the_graph_covers_the_package() -> None:
    graph = imports()
    assert len(graph) >= 80 and "kdeploy.distill.trainer" in graph
    assert "kdeploy.progress" in graph["kdeploy.data.imagefolder"], "from kdeploy import X resolves to kdeploy.X"


def test_only_the_cli_uses_typer_or_rich() -> None:
    users = sorted(
        m
        for m, names in imports().items()
        if not _in(m, "kdeploy.cli") and any(_in(n, "typer") or _in(n, "rich") for n in names)
    )
    assert not users, users


def test_data_models_and_recipe_know_nothing_of_the_stages() -> None:
    stages = tuple(f"kdeploy.{s}" for s in (*STAGES, "artifacts", "grid", "seeds", "rundata"))
    wrong = _violations(("kdeploy.data", "kdeploy.models"), stages) + _violations(
        ("kdeploy.recipe",), stages, SCHEMA_EXCEPTION
    )
    assert not wrong, wrong


def test_export_quantize_and_bench_never_import_the_trainer() -> None:
    wrong = _violations(("kdeploy.export", "kdeploy.quantize", "kdeploy.bench"), ("kdeploy.distill",))
    assert not wrong, wrong


@pytest.mark.parametrize("stage", STAGES[:-1])
def test_a_stage_never_imports_a_later_one(stage: str) -> None:
    later = tuple(f"kdeploy.{s}" for s in STAGES[STAGES.index(stage) + 1 :])
    wrong = _violations((f"kdeploy.{stage}",), later)
    assert not wrong, wrong
