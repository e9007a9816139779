"""The bench harness on a tiny real run: rows, sane latencies, independent accuracy checks, hand-counted MACs,
the files it writes, and the CLI's error paths."""

from __future__ import annotations

import csv
import gc
import json
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from kdeploy.artifacts import Artifact
from kdeploy.bench import BenchSettings, TimingSettings, bench, count_macs
from kdeploy.bench.gate import evaluate_gate
from kdeploy.bench.latency import Latency, time_host
from kdeploy.bench.measure import disk_bytes, memory_bytes
from kdeploy.bench.plot import pareto_front
from kdeploy.bench.records import BenchResult
from kdeploy.cli import app
from kdeploy.distill import distill
from kdeploy.export import export_onnx, read_manifest
from kdeploy.quantize import quantize
from kdeploy.recipe import validate
from kdeploy.rundata import load_run_data
from kdeploy.runs import Run

from .conftest import Capture, reporting_to, tiny_recipe

BATCHES = (1, 8)
FAST = TimingSettings(warmup=2, min_iters=5, min_seconds=0.0)


@pytest.fixture(scope="module")
def benched(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, BenchResult]:
    run = distill(validate(tiny_recipe(mnist_root)), out=tmp_path_factory.mktemp("bench") / "tiny")
    export_onnx(run, models=["teacher", "student"])  # the baseline stays PyTorch-only: rows follow the manifest
    quantize(run, int8=True, fp16=False, calib_samples=128, models=["student"], raise_on_fail=False)
    settings = BenchSettings(batch_sizes=BATCHES, threads=1, runtimes=("torch", "onnxruntime"), timing=FAST)
    return run, bench(run, settings)


def usable_onnx(run: Run) -> list[Artifact]:
    return [a for a in read_manifest(run).artifacts if a.usable]


def test_every_model_and_artifact_has_a_row_per_batch_size(benched: tuple[Run, BenchResult]) -> None:
    run, result = benched
    arts = usable_onnx(run)
    assert {(a.model, a.format) for a in arts} == {
        ("teacher", "onnx"),
        ("student", "onnx"),
        ("student", "onnx-int8"),
    }
    expected = {(role, "pytorch", b) for role in ("teacher", "baseline", "student") for b in BATCHES}
    expected |= {(a.model, a.format, b) for a in arts for b in BATCHES}
    got = [(r.model, r.format, r.batch_size) for r in result.rows]
    assert sorted(got) == sorted(expected)


def test_latency_statistics_are_sane(benched: tuple[Run, BenchResult]) -> None:
    for r in benched[1].rows:
        lat = r.latency_ms
        assert 0 < lat.min <= lat.p50 <= lat.p90 <= lat.p99, r
        assert lat.mean > 0 and r.iters >= FAST.min_iters
        assert r.throughput == pytest.approx(r.batch_size * 1000 / lat.p50)
        assert r.device == "cpu" and r.threads == 1
        if r.runtime == "onnxruntime":
            assert r.inter_op_threads == 1 and r.graph_optimization_level == "all"


def test_onnx_accuracy_matches_an_independent_onnxruntime_evaluation(benched: tuple[Run, BenchResult]) -> None:
    run, result = benched
    data = load_run_data(run)
    images = data.test.images.numpy().astype(np.float32) / 255.0
    mean = np.asarray(data.mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(data.std, dtype=np.float32).reshape(1, -1, 1, 1)
    x = (images - mean) / std
    labels = data.test.labels.numpy()
    for a in usable_onnx(run):
        session = ort.InferenceSession(str(run.export_dir / a.files[0]), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        logits = np.concatenate([session.run(None, {name: x[i : i + 97]})[0] for i in range(0, len(x), 97)])
        expected = float((logits.argmax(1) == labels).mean())
        rows = [r for r in result.rows if r.artifact == a.id]
        assert rows and all(r.accuracy == pytest.approx(expected, abs=1.5 / len(labels)) for r in rows), a.id


def test_torch_accuracy_matches_the_trainers_evaluation(benched: tuple[Run, BenchResult]) -> None:
    run, result = benched
    metrics = run.model_metrics()
    for r in result.rows:
        if r.format == "pytorch":
            assert r.accuracy == pytest.approx(metrics[r.model].accuracy, abs=1e-6)  # float32 mean there


def test_counts_sizes_and_ratios(benched: tuple[Run, BenchResult]) -> None:
    run, result = benched
    rows = result.rows
    teacher = next(r for r in rows if r.model == "teacher" and r.format == "pytorch")
    assert teacher.params == 784 * 64 + 64 + 64 * 10 + 10
    assert teacher.macs == 784 * 64 + 64 * 10 and teacher.flops == 2 * teacher.macs
    assert teacher.size_mb == pytest.approx(run.weights_path("teacher").stat().st_size / 1e6)
    assert teacher.memory_mb == pytest.approx(teacher.params * 4 / 1e6)
    for r in rows:
        if r.runtime == "onnxruntime":
            files = [run.export_dir / f for f in r.files]
            assert r.size_mb == pytest.approx(sum(f.stat().st_size for f in files) / 1e6)
        ref = next(t for t in rows if (t.model, t.format, t.batch_size) == ("teacher", "pytorch",
                                                                                    r.batch_size))  # fmt: skip
        assert r.speedup == pytest.approx(ref.latency_ms.p50 / r.latency_ms.p50)
        assert r.size_reduction == pytest.approx(ref.size_mb / r.size_mb)
        assert r.accuracy_delta == pytest.approx(r.accuracy - ref.accuracy)
    int8 = next(r for r in rows if r.model == "student" and r.format == "onnx-int8")
    fp32 = next(r for r in rows if r.model == "student" and r.format == "onnx")
    assert int8.size_mb < fp32.size_mb / 2, "int8 weights take a quarter of the fp32 bytes (plus graph)"


def test_outputs_written(benched: tuple[Run, BenchResult]) -> None:
    run, result = benched
    saved = json.loads((run.root / "bench.json").read_text())
    assert {"machine", "settings", "rows"} <= set(saved) and saved["rows"] == [r.to_dict() for r in result.rows]
    assert saved["machine"]["threads"] == 1 and saved["machine"]["versions"]["onnxruntime"] == ort.__version__
    assert saved["settings"]["timing"] == FAST.to_dict() and saved["settings"]["batch_sizes"] == list(BATCHES)
    with open(run.root / "bench.csv") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(result.rows)
    assert float(table[0]["p50_ms"]) == pytest.approx(result.rows[0].latency_ms.p50)
    md = (run.root / "bench.md").read_text()
    rows_table, fastest = md.split("Fastest runtime per model", 1)  # PyTorch and ORT fp32 rows: a runtime comparison
    assert rows_table.count("\n| ") == len(result.rows) + 1 and "![accuracy vs latency](pareto.png)" in md
    assert "![p50 latency by runtime](runtimes.png)" in fastest and (run.root / "runtimes.png").is_file()
    busy = saved["machine"]["busy_cores_before"]
    assert busy is None or f"other processes used {busy:.1f} cores" in md
    png = run.root / "pareto.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(png).shape[0] > 300
    assert not list(run.root.rglob("*.tmp"))


def test_report_rerenders_without_measuring(benched: tuple[Run, BenchResult]) -> None:
    run, _ = benched
    before = (run.root / "bench.json").read_bytes()
    for name in ("bench.md", "bench.csv", "pareto.png"):
        (run.root / name).unlink()
    res = CliRunner().invoke(app, ["-q", "report", str(run.root)])
    assert res.exit_code == 0, res.output
    assert all((run.root / n).is_file() for n in ("bench.md", "bench.csv", "pareto.png", "report.md"))
    assert (run.root / "bench.json").read_bytes() == before
    report = (run.root / "report.md").read_text()
    assert "## Training" in report and "## Export parity" in report and "student:onnx-int8" in report
    row = next(line for line in report.splitlines() if line.startswith("| student:onnx-int8 |"))
    assert "static QDQ INT8 (onnxruntime)" in row and "ranges on 128 training images" in row, "how it was made"


def test_tensorrt_artifact_is_skipped_with_a_reason_without_gpu(
    benched: tuple[Run, BenchResult], tmp_path: Path
) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: TensorRT would run")
    run = Run(shutil.copytree(benched[0].root, tmp_path / "copy"))
    manifest = read_manifest(run)
    engine = run.export_dir / "student.fp16.engine"
    engine.write_bytes(b"not run: no GPU")
    manifest.artifacts.append(Artifact(id="student:tensorrt-fp16", model="student", format="tensorrt-fp16",
                                       files=[engine.name], status="ok", passed=True))  # fmt: skip
    run.manifest_path.write_text(json.dumps(manifest.to_dict()))
    result = bench(run, BenchSettings(batch_sizes=(1,), threads=1, runtimes=("tensorrt",), timing=FAST))
    assert result.rows == []
    assert [(s.format, s.runtime) for s in result.skipped] == [("tensorrt-fp16", "tensorrt")]
    assert "CUDA" in result.skipped[0].reason


# ---- counting ---------------------------------------------------------------------------------------
def test_macs_of_small_models_equal_hand_counts() -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    count = count_macs(mlp, (1, 28, 28))
    assert count.macs == count.torch_macs == 784 * 32 + 32 * 10 and count.flops == 2 * count.macs
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, stride=2))  # 16x16 -> 16x16 -> 7x7
    assert count_macs(conv, (3, 16, 16)).macs == 8 * 16 * 16 * 3 * 3 * 3 + 4 * 7 * 7 * 8 * 3 * 3
    grouped = nn.Conv2d(8, 8, 3, padding=1, groups=8)  # depthwise: 9 MACs per output element
    assert count_macs(grouped, (8, 10, 10)).macs == 8 * 10 * 10 * 9


def test_resnet18_reference_macs() -> None:
    import torchvision

    count = count_macs(torchvision.models.resnet18(), (3, 224, 224))
    assert 1.81e9 <= count.macs <= 1.83e9  # the published ~1.8 GMACs (fvcore also counts BN and pooling)
    assert count.disagreement < 0.03


def test_counter_disagreement_is_warned() -> None:
    with reporting_to(Capture()) as capture:
        bn_heavy = nn.Sequential(nn.Conv2d(16, 1, 1), nn.BatchNorm2d(1), nn.AdaptiveAvgPool2d(1))
        count = count_macs(bn_heavy, (16, 8, 8), "bn_heavy")
    assert count.torch_macs == 16 * 64 and count.macs > count.torch_macs * 1.03
    assert any("bn_heavy" in line and "torch.utils.flop_counter" in line for line in capture.lines)


def test_disk_bytes_include_onnx_external_data(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((64, 64), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [weight],
    )  # fmt: skip
    path = tmp_path / "m.onnx"
    onnx.save_model(helper.make_model(graph), str(path), save_as_external_data=True, location="m.data",
                    size_threshold=0)  # fmt: skip
    assert (tmp_path / "m.data").stat().st_size >= 64 * 64 * 4
    assert disk_bytes([path]) == path.stat().st_size + (tmp_path / "m.data").stat().st_size
    assert memory_bytes(nn.Linear(64, 64)) == (64 * 64 + 64) * 4


# ---- timing -----------------------------------------------------------------------------------------
def test_timing_loop_meets_minimum_count_and_time() -> None:
    lat = time_host(lambda: time.sleep(0.002), TimingSettings(warmup=1, min_iters=5, min_seconds=0.05))
    assert lat.iters >= 5 and lat.total_s >= 0.05 * 0.9
    assert 2.0 <= lat.p50 < 20.0 and lat.p50 <= lat.p90 <= lat.p99
    capped = time_host(lambda: time.sleep(0.01), TimingSettings(warmup=0, min_iters=10_000, max_seconds=0.1))
    assert capped.iters < 100, "max_seconds stops a slow loop before min_iters"


def test_timing_loop_keeps_the_garbage_collector_off_only_while_timing() -> None:
    collecting: list[bool] = []
    time_host(lambda: collecting.append(gc.isenabled()), TimingSettings(warmup=2, min_iters=3, min_seconds=0))
    assert collecting == [True, True, False, False, False]
    assert gc.isenabled()


def test_latency_percentiles() -> None:
    lat = Latency.from_samples([float(v) for v in range(1, 101)])
    assert (lat.p50, lat.p90, lat.p99, lat.mean, lat.min) == pytest.approx((50.5, 90.1, 99.01, 50.5, 1.0))
    assert lat.throughput(32) == pytest.approx(32 * 1000 / 50.5)


def test_pareto_front() -> None:
    points = [(1.0, 0.90), (2.0, 0.95), (3.0, 0.93), (0.5, 0.80), (4.0, 0.99), (0.5, 0.70)]
    assert pareto_front(points) == [3, 0, 1, 4]


# ---- the gate on bench rows -------------------------------------------------------------------------
def test_gate_on_real_rows(benched: tuple[Run, BenchResult]) -> None:
    rows = benched[1].rows
    open_gate = evaluate_gate(rows, max_accuracy_drop=1.0, min_speedup=1e-6)
    students = [r for r in rows if r.model == "student" and r.batch_size == 1]
    assert open_gate.passed and open_gate.speedup == max(r.speedup for r in students)
    assert open_gate.artifact.startswith("student:") and open_gate.batch_size == 1
    closed = evaluate_gate(rows, max_accuracy_drop=1.0, min_speedup=1e9)
    assert not closed.passed and "min 1e+09x" in closed.message


# ---- CLI errors ---------------------------------------------------------------------------------------
def test_cli_cuda_without_gpu_is_a_user_error(benched: tuple[Run, BenchResult]) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    res = CliRunner().invoke(app, ["-q", "bench", str(benched[0].root), "--device", "cuda"])
    assert res.exit_code == 2 and "no CUDA GPU" in res.output


def test_cli_rejects_unknown_runtime_and_bad_batch_sizes(benched: tuple[Run, BenchResult]) -> None:
    root = str(benched[0].root)
    res = CliRunner().invoke(app, ["-q", "bench", root, "--runtimes", "torch,tflite"])
    assert res.exit_code == 2 and "unknown tflite" in res.output and "openvino" in res.output  # the optional one
    res = CliRunner().invoke(app, ["-q", "bench", root, "--batch-sizes", "1,x"])
    assert res.exit_code == 2 and "--batch-sizes" in res.output
    before = (benched[0].root / "bench.json").read_bytes()
    res = CliRunner().invoke(app, ["-q", "bench", root, "--runtimes", "tensorrt"])  # the run has no engines
    assert res.exit_code == 2 and "nothing to bench" in res.output and "kdeploy export --tensorrt" in res.output
    assert (benched[0].root / "bench.json").read_bytes() == before  # the earlier results are kept


def test_cli_bench_prints_the_table(benched: tuple[Run, BenchResult], tmp_path: Path) -> None:
    run = Run(shutil.copytree(benched[0].root, tmp_path / "copy"))
    args = ["-q", "bench", str(run.root), "--batch-sizes", "2", "--threads", "1", "--runtimes", "torch",
            "--models", "teacher,student", "--warmup", "1", "--iters", "3", "--seconds", "0"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    rows = json.loads((run.root / "bench.json").read_text())["rows"]
    assert [(r["model"], r["batch_size"]) for r in rows] == [("teacher", 2), ("student", 2)]
    assert "student" in res.output and "speed-up" in res.output
