"""`kdeploy run` end to end on a tiny MNIST recipe: files, report, gate exit codes, `kdeploy report`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner, Result

from kdeploy.cli import app

from .conftest import tiny_recipe, write_recipe

FAST = ["--batch-sizes", "1,4", "--threads", "1", "--warmup", "1", "--iters", "3", "--seconds", "0"]


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, ["-q", *args])


@pytest.fixture(scope="module")
def recipe(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_recipe(tmp_path_factory.mktemp("recipes") / "tiny.yaml", tiny_recipe(mnist_root))


@pytest.fixture(scope="module")
def passed(recipe: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result]:
    out = tmp_path_factory.mktemp("pipeline") / "tiny"
    int8 = ["--per-channel", "--calib-method", "percentile"]
    gate = ["--max-accuracy-drop", "1", "--min-speedup", "1e-6"]
    res = invoke("run", str(recipe), "--out", str(out), *FAST, *int8, *gate)
    return out, res


def test_run_writes_everything_and_passes_a_met_gate(passed: tuple[Path, Result]) -> None:
    out, res = passed
    assert res.exit_code == 0, res.output
    names = {p.name for p in out.iterdir()}
    assert {"student.safetensors", "bench.json", "bench.csv", "bench.md", "pareto.png", "gate.json",
            "report.md"} <= names  # fmt: skip
    artifacts = json.loads((out / "export" / "manifest.json").read_text())["artifacts"]
    formats = {(a["model"], a["format"]) for a in artifacts}
    assert {("student", "onnx"), ("student", "onnx-int8"), ("student", "onnx-fp16")} <= formats
    int8 = next(a["settings"] for a in artifacts if a["format"] == "onnx-int8")
    assert int8["per_channel"] is True and int8["calib_method"] == "percentile"  # run's INT8 options reach quantize
    bench = json.loads((out / "bench.json").read_text())
    benched = {(r["model"], r["format"]) for r in bench["rows"]}
    assert ("teacher", "pytorch") in benched and ("student", "onnx") in benched
    gate = json.loads((out / "gate.json").read_text())
    assert gate["passed"] and gate["artifact"].startswith("student:") and gate["batch_size"] == 1
    best = max((r for r in bench["rows"] if r["model"] == "student" and r["batch_size"] == 1),
               key=lambda r: r["speedup"])  # fmt: skip
    assert gate["artifact"] == f"student:{best['format']}" and gate["speedup"] == pytest.approx(best["speedup"])
    report = (out / "report.md").read_text()
    for part in ("## Recipe", "**PASSED**", "## Training", "## Time", "## Benchmark",
                 "![accuracy vs latency](pareto.png)", "## Export parity", "student:onnx-int8"):  # fmt: skip
        assert part in report
    assert "gate passed" in res.output
    stages = json.loads((out / "stages.json").read_text())
    assert list(stages["seconds"]) == ["distill", "export", "quantize", "bench"]
    assert all(s > 0 for s in stages["seconds"].values()), stages
    assert stages["total_seconds"] == pytest.approx(sum(stages["seconds"].values()), abs=0.1)
    assert f"time: distill {stages['seconds']['distill']:.1f} s" in res.output


def test_impossible_speedup_exits_1_and_report_keeps_the_verdict(
    passed: tuple[Path, Result], recipe: Path, tmp_path: Path
) -> None:
    out = Path(shutil.copytree(passed[0], tmp_path / "again"))
    res = invoke("run", str(recipe), "--out", str(out), "--resume", "--no-int8", "--no-fp16", *FAST,
                 "--min-speedup", "1e6")  # fmt: skip
    assert res.exit_code == 1, res.output
    assert "gate failed" in res.output and "min 1e+06x" in res.output
    gate = json.loads((out / "gate.json").read_text())
    assert not gate["passed"] and gate["min_speedup"] == 1e6
    assert "**FAILED**" in (out / "report.md").read_text()
    (out / "report.md").unlink()
    assert invoke("report", str(out)).exit_code == 0
    assert "**FAILED**" in (out / "report.md").read_text(), "report re-evaluates the saved thresholds"
    (out / "gate.json").write_text(json.dumps({"passed": True}))
    res = invoke("report", str(out))
    assert res.exit_code == 2 and "not a kdeploy gate file" in res.output and "re-run `kdeploy run`" in res.output
    (out / "gate.json").unlink()
    for broken in ("{", json.dumps({"seconds": {"bench": "slow"}}), json.dumps([1])):
        (out / "stages.json").write_text(broken)
        res = invoke("report", str(out))
        assert res.exit_code == 2 and "not a kdeploy stage-times file" in res.output, res.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--max-accuracy-drop", "2"], "--max-accuracy-drop"),
        (["--min-speedup", "0"], "--min-speedup"),
        (["--batch-sizes", "4", "--min-speedup", "2"], "batch 1"),
        (["--runtimes", "onnxruntime", "--min-speedup", "2"], "torch"),
        (["--calib-method", "kl"], "--calib-method 'kl'"),
        (["--int8-method", "fancy"], "--int8-method 'fancy'"),
        (["--device", "cuda"] if not torch.cuda.is_available() else ["--batch-sizes", "0"], "--"),
        (["--tensorrt"] if not torch.cuda.is_available() else ["--threads", "0"], "--"),
    ],
)
def test_bad_gate_options_are_user_errors_before_any_work(
    recipe: Path, tmp_path: Path, args: list[str], needle: str
) -> None:
    out = tmp_path / "never"
    res = invoke("run", str(recipe), "--out", str(out), *args)
    assert res.exit_code == 2 and needle in res.output, res.output
    assert not out.exists()


def test_report_without_a_run_is_a_user_error(tmp_path: Path) -> None:
    res = invoke("report", str(tmp_path / "missing"))
    assert res.exit_code == 2 and "no such run folder" in res.output
