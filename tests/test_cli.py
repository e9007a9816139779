"""The command line itself: listing commands answer without torch, global options anywhere, tables that fit."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from rich.console import Console
from typer.testing import CliRunner

from kdeploy.cli import app
from kdeploy.cli.tables import BENCH_PRIORITY, fit_columns, fitted_table

PROBE = """
import runpy, sys
sys.argv = ["kdeploy", *sys.argv[1:]]
try:
    runpy.run_module("kdeploy", run_name="__main__", alter_sys=True)
except SystemExit as exit:
    code = exit.code or 0
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "onnx", "onnxruntime"))
heavy += sorted(m for m in sys.modules if m.startswith(("kdeploy.distill.", "kdeploy.models", "kdeploy.data")))
print("HEAVY:" + ",".join(heavy), file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.parametrize(
    "args", [["--help"], ["recipes"], ["models"], ["methods"], ["datasets"], ["distill", "--help"]]
)
def test_help_and_listings_do_not_import_torch(args: list[str]) -> None:
    """`python -m kdeploy --help` and the listings answer at once: no torch, no model or data code loaded."""
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    heavy = proc.stderr.rpartition("HEAVY:")[2].strip()
    allowed = {"kdeploy.distill.methods", "kdeploy.distill.methods.params"} if args == ["methods"] else set()
    assert set(filter(None, heavy.split(","))) <= allowed, heavy
    assert proc.stdout.strip()


def test_listings_name_exactly_what_the_registries_hold() -> None:
    from kdeploy.catalog import DATASETS, MODELS
    from kdeploy.data import list_datasets
    from kdeploy.models import list_models

    assert sorted(MODELS) == list_models(), "add the new model's line to kdeploy/catalog.py"
    assert sorted(DATASETS) == list_datasets(), "add the new dataset's line to kdeploy/catalog.py"
    result = CliRunner().invoke(app, ["methods"])
    assert result.exit_code == 0
    assert "kd: temperature=4.0, alpha=0.9" in result.output and "at: student_layers, teacher_layers" in result.output


@pytest.mark.parametrize("flags", [["--quiet"], ["-q"], ["--debug"], ["--quiet", "--debug"]])
def test_global_options_work_after_the_command(flags: list[str], tmp_path) -> None:
    missing = str(tmp_path / "nothere.yaml")
    after = CliRunner().invoke(app, ["distill", missing, *flags])
    before = CliRunner().invoke(app, [*flags, "distill", missing])
    for result in (after, before):
        assert result.exit_code == 2, result.output
        assert "No such option" not in result.output
        assert f"error: recipe {missing!r} not found" in result.output
    assert ("Traceback" in after.output) == ("--debug" in flags)  # --debug after the command is honoured


def test_the_bench_table_fits_an_80_column_terminal() -> None:
    headers = ["model", "format", "runtime", "batch", "accuracy", "Δacc", "MMACs", "size MB", "p50 ms", "p99 ms",
               "samples/s", "speed-up", "size ×"]  # fmt: skip
    row = ["baseline", "onnx-int8-dynamic", "onnxruntime", "256", "0.9812", "-0.0004", "1.234", "0.612", "12.3",
           "15.8", "20,816", "12.34x", "3.98x"]  # fmt: skip
    cells = [row, ["teacher", "pytorch", "torch", "1", "0.9901", "-", "2.345", "9.581", "0.0231", "0.0562",
                   "43,290", "1.00x", "1.00x"]]  # fmt: skip
    keep = fit_columns(headers, cells, 80)
    shown = [headers[i] for i in keep]
    assert shown[:5] == ["model", "format", "runtime", "batch", "accuracy"] and "p50 ms" in shown
    assert len(shown) < len(headers)
    table, hidden = fitted_table("bench", headers, cells, 80)
    buffer = io.StringIO()
    Console(file=buffer, width=80, force_terminal=False).print(table)
    lines = buffer.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    assert len(lines) == 1 + 3 + len(cells) + 1, "title, header box, one line per row, bottom: nothing wrapped"
    assert hidden == [h for h in headers if h not in shown]
    assert fit_columns(headers, cells, 200) == list(range(len(headers))), "a wide terminal shows every column"
    assert set(BENCH_PRIORITY) == set(headers)
