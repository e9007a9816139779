"""Reload the dataset a run was trained on, from the run's own ``recipe.yaml`` (no trainer import)."""

from __future__ import annotations

from kdeploy.data import Dataset
from kdeploy.errors import UserError
from kdeploy.recipe import Recipe, load_data, parse_yaml, validate
from kdeploy.runs import Run


def run_recipe(run: Run) -> Recipe:
    try:
        text = run.recipe_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{run.recipe_path}: cannot read ({exc}); re-run `kdeploy distill`") from None
    return validate(parse_yaml(text, str(run.recipe_path)), str(run.recipe_path))


def load_run_data(run: Run) -> Dataset:
    return load_data(run_recipe(run))
