"""Training curves: history.csv rows -> per-model curves -> curves.png embedded in report.md."""

from __future__ import annotations

import math
from pathlib import Path

from kdeploy.bench.curves import FILENAME, curves_markdown, read_curves, write_curves
from kdeploy.bench.report import write_report
from kdeploy.distill import distill
from kdeploy.recipe import validate

from .conftest import tiny_recipe

ROWS = [
    {"model": "teacher", "epoch": "1", "loss": "0.9", "loss_ce": "0.9", "train_acc": "0.7", "val_acc": "0.8"},
    {"model": "teacher", "epoch": "2", "loss": "0.5", "loss_ce": "0.5", "train_acc": "0.85", "val_acc": "0.86"},
    {
        "model": "student",
        "epoch": "1",
        "loss": "1.2",
        "loss_ce": "0.4",
        "loss_kd": "0.8",
        "train_acc": "0.6",
        "val_acc": "",
    },
    {
        "model": "student",
        "epoch": "2",
        "loss": "1.5",
        "loss_ce": "0.5",
        "loss_kd": "1.0",
        "train_acc": "0.5",
        "val_acc": "0.5",
    },
    {
        "model": "student",
        "epoch": "2",
        "loss": "0.7",
        "loss_ce": "0.3",
        "loss_kd": "0.4",
        "train_acc": "0.8",
        "val_acc": "0.82",
    },  # a resumed run wrote epoch 2 again: the last row wins
]


def test_read_curves_groups_by_model_and_keeps_the_last_row_of_an_epoch() -> None:
    teacher, student = read_curves(ROWS)
    assert (teacher.model, teacher.epochs, teacher.val_acc) == ("teacher", [1, 2], [0.8, 0.86])
    assert set(teacher.losses) == {"loss", "loss_ce"}
    assert student.epochs == [1, 2]
    assert student.losses["loss_kd"] == [0.8, 0.4] and student.train_acc == [0.6, 0.8]
    assert math.isnan(student.val_acc[0]) and student.val_acc[1] == 0.82


def test_write_curves_png_and_report_section(tmp_path: Path) -> None:
    path = write_curves(tmp_path / "c.png", ROWS)
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["c.png"], "no temporary file left behind"
    section = curves_markdown(tmp_path, ROWS)
    assert f"![training curves]({FILENAME})" in section and (tmp_path / FILENAME).is_file()


def test_no_history_no_section(tmp_path: Path) -> None:
    assert write_curves(tmp_path / "c.png", []) is None
    assert curves_markdown(tmp_path, []) == ""
    assert not list(tmp_path.iterdir())


def test_report_embeds_the_curves_of_a_real_run(mnist_root: Path, tmp_path: Path) -> None:
    raw = tiny_recipe(mnist_root, teacher__epochs=1, student__epochs=2)
    run = distill(validate(raw), out=tmp_path / "run")
    report = write_report(run).read_text()
    assert "## Training curves" in report and (run.root / FILENAME).is_file()
    assert [c.model for c in read_curves(run.read_history())] == ["teacher", "baseline", "student"]
