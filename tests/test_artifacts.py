"""The typed records (Artifact, BenchRow, ModelMetrics): old JSON loads, round trips keep every key, one gate,
one ``finish_stage``, and TensorRT rows of a CPU bench get ratios against the CPU teacher."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdeploy.artifacts import Artifact, accuracy_gate, failures, finish_stage
from kdeploy.bench.harness import add_ratios
from kdeploy.bench.latency import LatencyMs
from kdeploy.bench.records import BenchMachine, BenchResult, BenchRow
from kdeploy.errors import GateFailed, first_line
from kdeploy.recipe import validate
from kdeploy.runs import ModelMetrics, Run, point_latest

from .conftest import tiny_recipe

# a manifest entry as kdeploy wrote it before the typed records, plus a key no version knows
OLD_INT8 = {
    "id": "student:onnx-int8", "model": "student", "format": "onnx-int8", "files": ["student.int8.onnx"],
    "bytes": 1234, "sha256": "ab" * 32, "opset": 18, "exporter": "dynamo", "source": "student.onnx",
    "source_sha256": "cd" * 32,
    "input": {"name": "input", "shape": ["batch", 1, 28, 28], "dtype": "float32", "layout": "NCHW",
              "preprocess": "x", "mean": [0.1307], "std": [0.3081]},
    "output": {"name": "logits", "shape": ["batch", 10], "dtype": "float32", "kind": "logits", "classes": ["0"]},
    "parity": None, "vs_fp32": {"reference": "student.onnx", "max_abs_diff": 0.5, "top1_agreement": 0.99,
                                "samples": 1000},
    "accuracy": 0.95, "fp32_accuracy": 0.96, "accuracy_drop": 0.01, "accuracy_samples": 1000, "passed": True,
    "status": "ok", "reason": None, "created": "2025-01-01T00:00:00+00:00", "convert_seconds": 1.5,
    "settings": {"method": "static"}, "versions": {"onnx": "1.17"}, "from_the_future": {"kept": True},
}  # fmt: skip


def test_old_manifest_entry_loads_and_round_trips() -> None:
    art = Artifact.from_dict(OLD_INT8)
    assert art.usable and art.runtime == "onnxruntime" and art.seconds == 1.5
    assert art.input.mean == [0.1307] and art.vs_fp32 is not None and art.vs_fp32.reference == "student.onnx"
    assert art.to_dict() == OLD_INT8
    sparse = Artifact.from_dict({"id": "student:tensorrt-fp16", "model": "student", "format": "tensorrt-fp16"})
    assert not sparse.usable and sparse.runtime == "tensorrt" and sparse.input.mean == []


def test_one_gate_and_finish_stage() -> None:
    assert accuracy_gate(0.95, 0.96, 0.01) is None
    assert accuracy_gate(0.90, 0.96, 0.01) == "accuracy gate: 0.9000 vs fp32 0.9600, drop 6.00 pt > 1.00 pt"
    assert accuracy_gate(float("nan"), 0.96, 0.01) is not None, "a broken model never passes"
    ok = Artifact.from_dict(OLD_INT8)
    bad = Artifact.from_dict({**OLD_INT8, "id": "teacher:onnx-int8", "status": "failed", "passed": False,
                              "reason": "accuracy gate: x"})  # fmt: skip
    assert finish_stage([ok]) == [ok] and finish_stage([ok, bad], raise_on_fail=False) == [ok, bad]
    with pytest.raises(GateFailed) as err:
        finish_stage([bad, ok, bad])
    assert str(err.value) == failures([bad, bad]) and str(err.value).count("teacher:onnx-int8: failed") == 2


def row(model: str, fmt: str, runtime: str, device: str, p50: float, acc: float = 0.9) -> BenchRow:
    lat = LatencyMs(p50=p50, p90=p50, p99=p50, mean=p50, min=p50, std=0.0)
    return BenchRow(model, fmt, "fp32", runtime, device, 1, acc, lat, 10, 1000 / p50, size_mb=2.0)


def test_tensorrt_rows_get_ratios_against_the_cpu_teacher() -> None:
    rows = [row("teacher", "pytorch", "torch", "cpu", 4.0), row("student", "onnx", "onnxruntime", "cpu", 1.0),
            row("student", "tensorrt-fp16", "tensorrt", "cuda", 0.5, acc=0.8)]  # fmt: skip
    add_ratios(rows)
    assert [r.speedup for r in rows] == [1.0, 4.0, 8.0]
    assert rows[2].reference_device == "cpu" and rows[2].accuracy_delta == pytest.approx(-0.1)
    rows.append(row("teacher", "pytorch", "torch", "cuda", 1.0))
    add_ratios(rows)
    assert rows[2].speedup == 2.0 and rows[2].reference_device == "cuda", "the same device wins when benched there"


def test_bench_result_round_trip_keeps_runtime_details() -> None:
    data = {"run": "r", "machine": {**BenchMachine(cpu="x").to_dict(), "gpu_clock": 1}, "settings": {}, "skipped": [
        {"model": "student", "format": "tensorrt-fp16", "runtime": "tensorrt", "reason": "no GPU"}],
        "rows": [{**row("student", "onnx", "onnxruntime", "cpu", 1.0).to_dict(), "threads": 2,
                  "graph_optimization_level": "all", "new_key": 1}]}  # fmt: skip
    result = BenchResult.from_dict(data)
    assert result.rows[0].threads == 2 and result.rows[0].extra == {"new_key": 1}
    assert result.machine.cpu == "x" and result.machine.extra == {"gpu_clock": 1}
    assert result.to_dict() == data and "tensorrt" not in result.rows[0].to_dict()


def test_model_metrics_typed_and_lossless() -> None:
    entry = {"accuracy": 0.98, "last_accuracy": 0.97, "val_accuracy": None, "best_epoch": 3, "params": 100,
             "train_seconds": 1.0, "samples_per_second": 10.0, "method": "kd", "teacher_outputs": "cached",
             "feature_layers": ["a"]}  # fmt: skip
    metrics = ModelMetrics.from_dict(entry)
    assert metrics.accuracy == 0.98 and metrics.best_epoch == 3 and metrics.extra == {"feature_layers": ["a"]}
    assert metrics.to_dict() == entry


def test_latest_link_and_first_line(tmp_path: Path) -> None:
    seed0 = tmp_path / "runs" / "name" / "seed0"
    seed0.mkdir(parents=True)
    point_latest(tmp_path / "runs", seed0)
    assert (tmp_path / "runs" / "latest").readlink() == Path("name/seed0")
    Run(tmp_path / "runs" / "name").mark_latest()
    assert (tmp_path / "runs" / "latest").readlink() == Path("name")
    assert first_line(ValueError("one\ntwo")) == "one" and first_line(KeyError()) == "KeyError"


def test_gate_tables_plot_and_report_on_typed_rows(tmp_path: Path) -> None:
    from kdeploy.artifacts import Manifest
    from kdeploy.bench.gate import evaluate_gate
    from kdeploy.bench.plot import write_pareto
    from kdeploy.bench.report import report_markdown
    from kdeploy.bench.tables import bench_csv, bench_markdown

    rows = [row("teacher", "pytorch", "torch", "cpu", 4.0, acc=0.95), row("student", "onnx", "onnxruntime", "cpu", 1.0),
            row("student", "onnx-int8", "onnxruntime", "cpu", 0.5, acc=0.7)]  # fmt: skip
    add_ratios(rows)
    verdict = evaluate_gate(rows, max_accuracy_drop=0.1, min_speedup=2.0)
    assert verdict.passed and verdict.artifact == "student:onnx" and verdict.speedup == 4.0
    assert "student:onnx on onnxruntime/cpu at batch 1" in verdict.message
    missed = evaluate_gate(rows, max_accuracy_drop=0.01, min_speedup=2.0)
    assert not missed.passed and missed.to_dict()["message"].endswith("no student row meets both")
    free = evaluate_gate(rows)
    assert not free.gated and free.message.startswith("no thresholds set; fastest student:onnx-int8 on onnxruntime")
    result = BenchResult("r", BenchMachine(cpu="x"), {"threads": 1}, rows, [])
    assert bench_markdown(result).count("\n| ") == len(rows) + 1 and len(bench_csv(rows).splitlines()) == 4
    assert write_pareto(tmp_path / "pareto.png", rows) == tmp_path / "pareto.png"
    manifest = Manifest([Artifact.from_dict(OLD_INT8)])
    recipe = validate(tiny_recipe(tmp_path, student__augment={"translate": 2}, teacher__checkpoint="t.safetensors"))
    text = report_markdown(recipe, {"student": ModelMetrics(accuracy=0.9)}, result, manifest, verdict)
    assert "**PASSED**" in text and "| student:onnx-int8 | ok |" in text and "| student | 0.9000 |" in text
    assert "# kdeploy report: tiny" in text and "- distillation: kd (temperature=4, alpha=0.7" in text
    assert "- teacher: mlp(hidden=[64]), weights t.safetensors\n" in text, "a loaded teacher has no optimizer"
    assert "- student: mlp(hidden=[16]), 2 epochs, adam lr 0.003, augmentation translate 2" in text
    broken = report_markdown("recipe.yaml: corrupt", {}, None, Manifest([]), None)
    assert broken.startswith("# kdeploy report: ?") and "- recipe.yaml: corrupt" in broken
