"""``recipes``, ``models``, ``methods``, ``datasets``: what kdeploy ships, listed without importing torch."""

from __future__ import annotations

import os

from rich.table import Table

from kdeploy.cli.main import command, out


@command("recipes")
def list_recipes() -> None:
    """List the shipped recipes with one-line descriptions."""
    from kdeploy.recipe import shipped_recipes

    table = Table(show_header=True)
    table.add_column("recipe")
    table.add_column("description")
    for path, description in shipped_recipes():
        table.add_row(os.path.relpath(path), description)
    out.print(table)


@command("models")
def list_models() -> None:
    """List the registered model names."""
    from kdeploy.models import list_models as names

    out.print("\n".join(names()))


@command("methods")
def list_methods() -> None:
    """List the distillation methods and their parameters."""
    from kdeploy.distill import METHODS

    for name in METHODS.names():
        params = METHODS.get(name).Params.model_fields
        desc = ", ".join(f"{k}={v.default!r}" if not v.is_required() else k for k, v in params.items())
        out.print(f"{name}: {desc}", highlight=False)


@command("datasets")
def list_datasets() -> None:
    """List the supported datasets."""
    from kdeploy.data import list_datasets as names

    out.print("\n".join(names()))
