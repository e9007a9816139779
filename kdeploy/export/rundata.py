"""Reload the dataset a run was trained on, from the run's own ``recipe.yaml`` (no trainer import)."""

from __future__ import annotations

from typing import Any

from kdeploy.data import Dataset, load_dataset
from kdeploy.errors import UserError
from kdeploy.recipe import Recipe, parse_yaml, validate
from kdeploy.runs import Run


def run_recipe(run: Run) -> Recipe:
    try:
        text = run.recipe_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{run.recipe_path}: cannot read ({exc}); re-run `kdeploy distill`") from None
    return validate(parse_yaml(text, str(run.recipe_path)), str(run.recipe_path))


def load_for_recipe(recipe: Recipe) -> Dataset:
    """The same call as ``kdeploy distill`` makes: same root, limit, seed and validation split."""
    d = recipe.data
    extra: dict[str, Any] = {}
    if getattr(d, "image_size", None) is not None:
        extra["image_size"] = d.image_size
    return load_dataset(
        d.name, root=d.root, download=d.download, val_size=d.val_size, seed=recipe.seed, limit=d.limit, **extra
    )


def load_run_data(run: Run) -> Dataset:
    return load_for_recipe(run_recipe(run))
