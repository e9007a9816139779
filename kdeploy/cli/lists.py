"""``recipes``, ``models``, ``methods``, ``datasets``: what kdeploy ships, listed without importing torch."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.table import Table

from kdeploy.cli.main import command, out


def _print_table(headers: tuple[str, str], rows: list[tuple[str, str]]) -> None:
    table = Table(show_header=True)
    for header in headers:
        table.add_column(header)
    for row in rows:
        table.add_row(*row)
    out.print(table)


@command("recipes")
def list_recipes() -> None:
    """List the shipped recipes with one-line descriptions."""
    from kdeploy.catalog import shipped_recipes

    _print_table(("recipe", "description"), [(os.path.relpath(p), d) for p, d in shipped_recipes()])


@command("models")
def list_models(
    name: Annotated[str | None, typer.Argument(help="a model family (timm, torchvision): list its archs")] = None,
    pattern: Annotated[str, typer.Argument(help="shell pattern for the archs, e.g. 'resnet*'")] = "*",
) -> None:
    """List the registered model names (use them as teacher.model / student.model), or NAME's archs."""
    if name:
        from kdeploy.models import list_archs

        out.print("\n".join(list_archs(name, pattern)), highlight=False)
        return
    from kdeploy.catalog import MODELS

    _print_table(("model", "description"), sorted(MODELS.items()))


@command("methods")
def list_methods() -> None:
    """List the distillation methods and their parameters (with defaults)."""
    from kdeploy.distill.methods.params import METHOD_PARAMS, describe

    for name in METHOD_PARAMS.names():
        out.print(describe(name), highlight=False, soft_wrap=True)


@command("datasets")
def list_datasets() -> None:
    """List the supported datasets (use them as data.name)."""
    from kdeploy.catalog import DATASETS

    _print_table(("dataset", "description"), sorted(DATASETS.items()))
