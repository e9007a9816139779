"""A small grid over the distillation keys, chosen on the validation split.

``kdeploy distill R --grid distill.temperature=2,4,8 --grid distill.alpha=0.5,0.9`` trains one student per
combination. The teacher and the CE-only baseline do not depend on ``distill.*``, so the first cell trains (or
loads) them and every later cell reuses its teacher (``teacher.checkpoint``) and skips the baseline::

    runs/<name>/
      temperature-2_alpha-0.5/ ...   one run folder per cell (the first also holds the baseline)
      grid.json, grid.md             every cell's student (validation and test accuracy) and the chosen cell
    runs/latest -> <name>/<chosen cell>

The cell is chosen on validation accuracy alone (the test split is only reported), so ``data.val_size`` must be
positive.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kdeploy import atomic, progress
from kdeploy.errors import UserError
from kdeploy.recipe import Recipe, apply_overrides, validate
from kdeploy.runs import ModelMetrics, Run, default_run_dir, point_latest

GRID_PREFIX = "distill."
SUMMARY, MARKDOWN = "grid.json", "grid.md"


@dataclass(frozen=True)
class Cell:
    """One combination: ``{"distill.temperature": 2, ...}``, and its folder name."""

    values: dict[str, Any]

    @property
    def name(self) -> str:
        parts = (f"{key.removeprefix(GRID_PREFIX)}-{value}" for key, value in self.values.items())
        return re.sub(r"[^A-Za-z0-9_.=-]", "", "_".join(parts))

    def overrides(self) -> list[str]:
        return [f"{key}={value}" for key, value in self.values.items()]


@dataclass(frozen=True)
class CellResult:
    cell: Cell
    val_accuracy: float | None
    accuracy: float | None

    def to_json(self) -> dict[str, Any]:
        return {"cell": self.cell.name, "values": self.cell.values, "val_accuracy": self.val_accuracy,
                "accuracy": self.accuracy}  # fmt: skip


@dataclass(frozen=True)
class GridResult:
    """Every cell's student, the chosen cell and the first cell's CE baseline: grid.json and grid.md."""

    root: Path
    recipe: str
    cells: list[CellResult]  # grid order
    chosen: CellResult
    baseline: ModelMetrics | None  # trained by the first cell only

    CHOSEN_ON = "validation accuracy of the student"

    @property
    def markdown_path(self) -> Path:
        return self.root / MARKDOWN

    def to_json(self) -> dict[str, Any]:
        b = self.baseline
        return {
            "recipe": self.recipe,
            "chosen": self.chosen.cell.name,
            "chosen_on": self.CHOSEN_ON,
            "baseline": None if b is None else {"val_accuracy": b.val_accuracy, "accuracy": b.accuracy},
            "cells": [r.to_json() for r in self.cells],
        }

    def markdown(self) -> str:
        lines = [
            f"# {self.recipe}: distillation grid, chosen on validation accuracy: `{self.chosen.cell.name}`",
            "",
            "| cell | student val % | student test % |",
            "|---|---:|---:|",
        ]
        for r in self.cells:
            mark = " (chosen)" if r is self.chosen else ""
            lines.append(f"| `{r.cell.name}`{mark} | {_pct(r.val_accuracy)} | {_pct(r.accuracy)} |")
        if self.baseline is not None:
            b = self.baseline
            lines.append(f"| CE baseline (first cell) | {_pct(b.val_accuracy)} | {_pct(b.accuracy)} |")
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        atomic.write_json(self.root / SUMMARY, self.to_json())
        atomic.write_text(self.markdown_path, self.markdown())


def parse_grid(specs: list[str]) -> list[Cell]:
    """``["distill.temperature=2,4", "distill.alpha=0.5,0.9"]`` -> the four cells, in order."""
    axes: dict[str, list[Any]] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise UserError(f"--grid {spec!r}: expected KEY=V1,V2,..., e.g. --grid distill.temperature=2,4,8")
        if not key.startswith(GRID_PREFIX) or key == "distill.method":
            raise UserError(
                f"--grid {spec!r}: only distill.* parameters can be searched (teacher and baseline are shared "
                "by every cell); vary other keys with separate runs"
            )
        axes[key] = [yaml.safe_load(v.strip()) for v in values.split(",") if v.strip()]
    return [Cell(dict(zip(axes, combo, strict=True))) for combo in itertools.product(*axes.values())]


def cell_recipe(recipe: Recipe, cell: Cell, shared: list[str]) -> Recipe:
    """The recipe with the cell's values (and the shared teacher, for every cell after the first)."""
    raw = apply_overrides(recipe.model_dump(mode="json"), [*cell.overrides(), *shared])
    return validate(raw, f"--grid {cell.name}")


def distill_grid(
    recipe: Recipe, specs: list[str], out: str | os.PathLike[str] | None = None, force: bool = False
) -> GridResult:
    """Train every cell of the grid into ``<out>/<cell>``; write grid.json / grid.md; point ``latest`` at the
    cell with the best validation accuracy."""
    from kdeploy.distill import distill

    cells = parse_grid(specs)
    if not recipe.data.val_size:
        raise UserError("--grid chooses on the validation split: set data.val_size above 0, e.g. 5000")
    root = default_run_dir(recipe.name, out)
    cells_recipes = [cell_recipe(recipe, cell, []) for cell in cells]  # every cell validates before any training
    prepare_root(root, force)
    results: list[CellResult] = []
    shared: list[str] = []
    baseline: ModelMetrics | None = None
    for i, (cell, own) in enumerate(zip(cells, cells_recipes, strict=True)):
        progress.log(f"grid cell {cell.name} ({i + 1}/{len(cells)})")
        run = distill(own if not shared else cell_recipe(recipe, cell, shared), out=root / cell.name,
                      mark_latest=False)  # fmt: skip
        models = run.model_metrics()
        results.append(CellResult(cell, models["student"].val_accuracy, models["student"].accuracy))
        if not shared:  # the first cell trained the teacher and the baseline; later cells reuse the teacher
            baseline = models.get("baseline")
            shared = [f"teacher.checkpoint={run.weights_path('teacher')}", "baseline=false"]
    result = GridResult(root, recipe.name, results, choose(results), baseline)
    result.write()
    point_latest(root.parent, root / result.chosen.cell.name)
    return result


def prepare_root(root: Path, force: bool) -> None:
    """A grid goes into an empty folder; --force clears an existing one."""
    if root.exists() and not root.is_dir():
        raise UserError(f"{root} is a file; choose another --out for the grid")
    if root.is_dir() and any(root.iterdir()):
        if not force:
            raise UserError(f"{root} is not empty; pass --force to replace it, or --out DIR for the grid")
        Run(root).clear()


def choose(results: list[CellResult]) -> CellResult:
    """The best validation accuracy; the earlier cell on a tie."""
    return max(results, key=lambda r: -1.0 if r.val_accuracy is None else r.val_accuracy)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}"
