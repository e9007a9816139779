"""`kdeploy distill R --grid distill.KEY=V1,V2`: one student per cell, one teacher and baseline, chosen on val."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kdeploy.cli import app
from kdeploy.errors import UserError
from kdeploy.grid import Cell, CellResult, choose, parse_grid

from .conftest import tiny_recipe, write_recipe


def test_parse_grid_is_the_product_in_order() -> None:
    cells = parse_grid(["distill.temperature=2,4", "distill.alpha=0.5, 0.9"])
    assert [c.values for c in cells] == [
        {"distill.temperature": 2, "distill.alpha": 0.5},
        {"distill.temperature": 2, "distill.alpha": 0.9},
        {"distill.temperature": 4, "distill.alpha": 0.5},
        {"distill.temperature": 4, "distill.alpha": 0.9},
    ]
    assert cells[1].name == "temperature-2_alpha-0.9"
    assert cells[1].overrides() == ["distill.temperature=2", "distill.alpha=0.9"]


@pytest.mark.parametrize("spec", ["student.epochs=1,2", "distill.method=kd,dkd", "distill.temperature", "=1,2"])
def test_parse_grid_refuses_what_it_cannot_share(spec: str) -> None:
    with pytest.raises(UserError, match="--grid"):
        parse_grid([spec])


def test_choose_is_best_validation_then_first() -> None:
    a, b, c = (Cell({"distill.temperature": t}) for t in (1, 2, 3))
    results = [CellResult(a, 0.90, 0.80), CellResult(b, 0.95, 0.70), CellResult(c, 0.95, 0.99)]
    assert choose(results).cell is b  # the test accuracy never decides
    assert choose([CellResult(a, None, 0.9), CellResult(b, 0.1, 0.1)]).cell is b


def test_grid_trains_one_teacher_and_baseline(mnist_root: Path, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(mnist_root, teacher__epochs=1, student__epochs=1))
    out = tmp_path / "grid"
    result = CliRunner().invoke(app, ["distill", str(recipe), "--out", str(out), "--grid", "distill.temperature=2,8"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "grid.json").read_text())
    names = [c["cell"] for c in summary["cells"]]
    assert names == ["temperature-2", "temperature-8"]
    best = max(summary["cells"], key=lambda c: c["val_accuracy"])
    assert summary["chosen"] == best["cell"] and summary["baseline"]["accuracy"] > 0
    first = json.loads((out / names[0] / "metrics.json").read_text())["models"]
    second = json.loads((out / names[1] / "metrics.json").read_text())["models"]
    assert "baseline" in first and "baseline" not in second
    assert first["teacher"]["accuracy"] == second["teacher"]["accuracy"]  # the first cell's teacher, loaded
    assert "checkpoint" in second["teacher"] and (out / names[1] / "recipe.yaml").read_text().count("temperature: 8")
    assert (tmp_path / "latest").resolve() == (out / summary["chosen"]).resolve()
    assert "(chosen)" in (out / "grid.md").read_text()


def test_grid_refusals_write_nothing(mnist_root: Path, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(mnist_root, data__val_size=0))
    out = tmp_path / "grid"
    for args in (["--grid", "distill.temperature=2,4"], ["--grid", "student.lr=1,2"],
                 ["--grid", "distill.alpha=0.1,0.2", "--seeds", "0,1"]):  # fmt: skip
        result = CliRunner().invoke(app, ["distill", str(recipe), "--out", str(out), *args])
        assert result.exit_code == 2 and "--grid" in result.output, result.output
        assert not out.exists()
