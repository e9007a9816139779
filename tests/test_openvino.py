"""OpenVINO bench runtime: the run's ONNX files through OpenVINO (accuracy, hint, the precision it used), the
runtime comparison in bench.md, and the one-line error without the extra."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from kdeploy.bench import BenchRow, BenchSettings, TimingSettings, bench
from kdeploy.bench.latency import LatencyMs
from kdeploy.bench.winners import compare_runtimes, runtime_label, winners_markdown
from kdeploy.distill import distill
from kdeploy.errors import UserError
from kdeploy.export import export_onnx
from kdeploy.quantize import quantize
from kdeploy.recipe import validate
from kdeploy.runs import Run

from .cli_helpers import cli_command, cli_env
from .conftest import tiny_recipe

FAST = TimingSettings(warmup=2, min_iters=5, min_seconds=0.0)


def _row(runtime: str, p50: float, batch: int = 1, precision: str = "fp32", **extra: Any) -> BenchRow:
    latency = LatencyMs(p50=p50, p90=p50, p99=p50, mean=p50, min=p50, std=0.0)
    return BenchRow(model="student", format="onnx", precision=precision, runtime=runtime, device="cpu",
                    batch_size=batch, accuracy=0.9, latency_ms=latency, iters=10, throughput=batch / p50,
                    **extra)  # fmt: skip


def test_compare_runtimes_names_the_winner_per_batch() -> None:
    rows = [
        _row("torch", 0.05),
        _row("onnxruntime", 0.02),
        _row("openvino", 0.08, inference_precision="bf16"),
        _row("onnxruntime", 2.0, batch=256),
        _row("openvino", 1.0, batch=256, inference_precision="f32"),
        _row("onnxruntime", 0.01, precision="int8"),  # alone at its precision: no comparison
    ]
    small, large = compare_runtimes(rows)
    assert (small.batch_size, small.winner, small.margin) == (1, "onnxruntime", pytest.approx(2.5))
    assert [name for name, _ in small.p50_ms] == ["onnxruntime", "torch", "openvino bf16"]
    assert (large.batch_size, large.winner, large.margin) == (256, "openvino", pytest.approx(2.0))
    text = winners_markdown(rows, "runtimes.png")
    assert "| student | fp32 | 256 | openvino 1, onnxruntime 2 | **openvino** (2.00x) |" in text
    assert winners_markdown(rows[:1]) == ""
    assert runtime_label(_row("openvino", 1, precision="int8", inference_precision="bf16")) == "openvino"


@pytest.fixture(scope="module")
def ov_run(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    pytest.importorskip("openvino")
    raw = tiny_recipe(mnist_root, baseline=False)
    run = distill(validate(raw), out=tmp_path_factory.mktemp("ov") / "tiny")
    export_onnx(run, models=["student"])
    quantize(run, int8=True, fp16=False, calib_samples=128, models=["student"], raise_on_fail=False)
    return run


@pytest.mark.parametrize("precision", ["auto", "f32"])
def test_openvino_rows_record_accuracy_hint_and_precision(ov_run: Run, precision: str) -> None:
    settings = BenchSettings(
        batch_sizes=(1, 16), threads=1, runtimes=("onnxruntime", "openvino"), timing=FAST, openvino_precision=precision
    )
    result = bench(ov_run, settings)
    ov_rows = [r for r in result.rows if r.runtime == "openvino"]
    assert {(r.format, r.batch_size) for r in ov_rows} == {(f, b) for f in ("onnx", "onnx-int8") for b in (1, 16)}
    for r in ov_rows:
        assert r.latency_hint == "LATENCY" and r.threads == 1 and r.inference_precision in ("f32", "bf16")
        assert r.inference_precision_note and r.inference_precision in r.inference_precision_note
        assert r.to_dict()["inference_precision"] == r.inference_precision, "kept in bench.json"
        ort_row = next(o for o in result.rows if o.runtime == "onnxruntime" and o.artifact == r.artifact)
        # the same file through two runtimes: at most 1 % of test images may flip (bf16 or int8 kernels differ)
        assert r.accuracy == pytest.approx(ort_row.accuracy, abs=0.01)
    fp32 = [r for r in ov_rows if r.format == "onnx"]
    if precision == "f32":
        assert all(r.inference_precision == "f32" for r in fp32)
        _check_f32_logits_match_ort(ov_run)
    md = (ov_run.root / "bench.md").read_text()
    assert "Fastest runtime per model" in md and (ov_run.root / "runtimes.png").is_file()


def _check_f32_logits_match_ort(run: Run) -> None:
    from kdeploy.bench.openvino_runner import OpenVINORunner

    path = run.export_dir / "student.onnx"
    x = np.random.default_rng(0).standard_normal((8, 1, 28, 28), dtype=np.float32)
    ov = OpenVINORunner(path, threads=1, precision="f32")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(ov.predict(x), expected, atol=1e-4)
    ov.close()


def test_bad_openvino_precision_is_one_line() -> None:
    with pytest.raises(UserError, match=r"--openvino-precision 'int4': choose from auto, f32, bf16, f16"):
        BenchSettings(openvino_precision="int4").check()


def test_missing_openvino_names_the_extra(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "openvino.py").write_text("raise ImportError('No module named openvino')\n")
    env = cli_env(tmp_path)
    env["PYTHONPATH"] = f"{shadow}:{env['PYTHONPATH']}"
    args = [*cli_command(), "bench", str(tmp_path / "nowhere"), "--runtimes", "torch,openvino"]
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        "error: --runtimes openvino needs OpenVINO; install it with: pip install 'kdeploy[openvino]'"
    )
