"""Real ONNX exports of tiny trained MNIST models: parity gate, manifest, failure handling, TensorRT checks."""

from __future__ import annotations

import json
import shutil
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from typer.testing import CliRunner

from kdeploy.artifacts import Artifact, source_artifact
from kdeploy.artifacts.manifest import sha256
from kdeploy.cli import app
from kdeploy.data import iterate_batches
from kdeploy.distill import distill
from kdeploy.errors import GateFailed, UserError
from kdeploy.evaluate import accuracy as torch_accuracy
from kdeploy.export import artifact_path, export_onnx, read_manifest
from kdeploy.export import onnx as onnx_export
from kdeploy.export import tensorrt as trt_export
from kdeploy.recipe import validate
from kdeploy.rundata import load_run_data
from kdeploy.runs import Run

from .conftest import tiny_recipe


@pytest.fixture(scope="module")
def run(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    out = tmp_path_factory.mktemp("export") / "tiny"
    raw = tiny_recipe(mnist_root, data__limit=1200, data__val_size=200)
    return distill(validate(raw), out=out)


@pytest.fixture(scope="module")
def exported(run: Run) -> list[Artifact]:
    return export_onnx(run)


def copy_run(run: Run, dest: Path) -> Run:
    shutil.copytree(run.root, dest)
    return Run(dest)


def perturbing(delta: float) -> Any:
    """Wrap the real exporter: after export, add ``delta`` to the classifier's bias in the saved ONNX file."""
    real = onnx_export.export_graph

    def export_graph(model: torch.nn.Module, in_shape: list[int], path: Path, opset: int) -> tuple[str, str | None]:
        result = real(model, in_shape, path, opset)
        proto = onnx.load(str(path))
        bias = next(t for t in proto.graph.initializer if t.name.endswith("head.bias"))
        bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + np.float32(delta), bias.name))
        onnx.save(proto, str(path))
        return result

    return export_graph


# ---- the exported artifacts ------------------------------------------------------------------------------
def test_every_model_exported_and_gated(run: Run, exported: list[Artifact]) -> None:
    assert [e.id for e in exported] == ["student:onnx", "baseline:onnx", "teacher:onnx"]
    for e in exported:
        assert e.status == "ok" and e.passed and e.reason is None
        p = e.parity
        assert p.batch_sizes == [1, 256]
        assert p.samples == {"1": 32, "256": 1024}
        assert 0 <= p.max_abs_diff <= 1e-4 and p.violations == 0
        assert p.top1_agreement == 1.0
        assert (run.export_dir / e.files[0]).is_file()


def test_parity_claim_holds_independently(run: Run, exported: list[Artifact]) -> None:
    """Recheck with a fresh ORT session at a batch size the gate did not use (dynamic batch really works)."""
    data = load_run_data(run)
    model, _ = run.load_model("student")
    session = ort.InferenceSession(str(run.export_dir / "student.onnx"), providers=["CPUExecutionProvider"])
    x, _, _ = next(iterate_batches(data.test, 7, shuffle=False, mean=data.mean, std=data.std))
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.inference_mode():
        ref = model(x).numpy()
    assert got.shape == (7, 10)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_onnx_accuracy_matches_pytorch(run: Run, exported: list[Artifact]) -> None:
    data = load_run_data(run)
    for e in exported:
        model, _ = run.load_model(e.model)
        expected = torch_accuracy(model, data.test, data.mean, data.std)
        assert e.accuracy == pytest.approx(expected, abs=1.5 / len(data.test))
        assert e.accuracy_samples == len(data.test) == 1200


def test_manifest_contents(run: Run, exported: list[Artifact]) -> None:
    manifest = read_manifest(run)
    assert manifest.to_dict() == json.loads(run.manifest_path.read_text())
    by_id = {a.id: a for a in manifest.artifacts}
    student = by_id["student:onnx"]
    path = artifact_path(run, student)
    assert path.name == "student.onnx" and student.files == ["student.onnx"]
    assert student.bytes == path.stat().st_size and student.sha256 == sha256(path)
    assert student.format == "onnx" and student.opset == 18 and student.exporter == "dynamo"
    assert student.source == "student.safetensors"
    assert student.input.name == "input" and student.input.shape == ["batch", 1, 28, 28]
    assert student.input.dtype == "float32"
    data = load_run_data(run)
    assert student.input.mean == list(data.mean) and student.input.std == list(data.std)
    assert student.output.shape == ["batch", 10] and len(student.output.classes) == 10
    assert student.settings["atol"] == 1e-4 and student.settings["min_agreement"] == 1.0
    assert student.fp32_accuracy == pytest.approx(run.model_metrics()["student"].accuracy)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param, "batch dimension is dynamic"
    assert proto.opset_import[0].version == 18
    assert not list(run.export_dir.glob(".*")), "no staging folders or temp files left behind"


def test_reexport_replaces_entry(run: Run, exported: list[Artifact]) -> None:
    before = {a.id for a in read_manifest(run).artifacts}
    export_onnx(run, models="student", parity_batch=100, parity_samples=300)
    arts = read_manifest(run).artifacts
    assert {a.id for a in arts} == before and len(arts) == len(before)
    student = next(a for a in arts if a.id == "student:onnx")
    assert student.parity.samples == {"1": 32, "100": 300}


# ---- the gate failing -------------------------------------------------------------------------------------
def test_perturbed_onnx_fails_the_gate(run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = copy_run(run, tmp_path / "run")
    assert (work.export_dir / "student.onnx").is_file()
    monkeypatch.setattr(onnx_export, "export_graph", perturbing(1e-3))
    with pytest.raises(GateFailed, match="student:onnx: failed.*parity gate"):
        export_onnx(work, models="student")
    entry = next(a for a in read_manifest(work).artifacts if a.id == "student:onnx")
    assert entry.status == "failed" and entry.passed is False
    assert entry.parity.max_abs_diff == pytest.approx(1e-3, rel=0.05)
    assert entry.parity.violations > 0
    assert entry.files == ["student.failed.onnx"]
    assert (work.export_dir / "student.failed.onnx").is_file()
    assert not (work.export_dir / "student.onnx").exists(), "a failed artifact never keeps the valid name"

    # the same artifact passes when the user loosens --atol: the thresholds are real parameters
    entries = export_onnx(work, models="student", atol=1e-2)
    assert entries[0].status == "ok" and entries[0].files == ["student.onnx"]
    assert not (work.export_dir / "student.failed.onnx").exists()


def test_cli_exits_1_on_failed_gate(run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = copy_run(run, tmp_path / "run")
    monkeypatch.setattr(onnx_export, "export_graph", perturbing(0.5))
    result = CliRunner().invoke(app, ["--quiet", "export", str(work.root), "--onnx", "--models", "student"])
    assert result.exit_code == 1, result.output
    assert "gate failed: student:onnx: failed" in result.output
    assert "student.failed.onnx" in result.output
    arts = read_manifest(work).artifacts
    assert next((a.id, a.status) for a in arts if a.model == "student") == ("student:onnx", "failed")


def test_torchscript_fallback_is_recorded(run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = copy_run(run, tmp_path / "run")
    real = torch.onnx.export

    def dynamo_breaks(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("dynamo"):
            raise RuntimeError("simulated dynamo failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_breaks)
    entry = export_onnx(work, models="student")[0]
    assert entry.exporter == "torchscript"
    assert "simulated dynamo failure" in entry.exporter_note
    assert entry.status == "ok" and entry.parity.max_abs_diff <= 1e-4


# ---- user errors ------------------------------------------------------------------------------------------
def test_argument_errors(run: Run) -> None:
    with pytest.raises(UserError, match="--models nosuch"):
        export_onnx(run, models="nosuch")
    with pytest.raises(UserError, match="--opset 9"):
        export_onnx(run, opset=9)
    with pytest.raises(UserError, match="--min-agreement"):
        export_onnx(run, min_agreement=1.5)


def test_cli_fp16_without_tensorrt_is_a_user_error(run: Run) -> None:
    result = CliRunner().invoke(app, ["export", str(run.root), "--onnx", "--fp16"])
    assert result.exit_code == 2 and "kdeploy quantize --fp16" in result.output


# ---- TensorRT: what can be checked without a GPU -------------------------------------------------------------
@pytest.mark.skipif(not trt_export.missing_requirements(), reason="TensorRT and a CUDA GPU are present")
def test_cli_tensorrt_missing_is_one_line_exit_2(run: Run) -> None:
    result = CliRunner().invoke(app, ["export", str(run.root), "--tensorrt", "--fp16"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --tensorrt needs ")
    for phrase in trt_export.missing_requirements():
        assert phrase in lines[0]
    with pytest.raises(UserError, match="--tensorrt needs"):
        trt_export.export_tensorrt(run, "fp16")


def test_tensorrt_profile_names_and_arguments() -> None:
    shapes = trt_export.profile_shapes([3, 32, 32], opt_batch=64, max_batch=512)
    assert shapes == {"min": (1, 3, 32, 32), "opt": (64, 3, 32, 32), "max": (512, 3, 32, 32)}
    assert trt_export.engine_name("student", "fp16") == "student.fp16.engine"
    assert trt_export.engine_name("student", "int8", failed=True) == "student.int8.failed.engine"
    trt_export.check_args("int8", 1, 1, 1, 0.0)
    for bad, match in [
        (("fp8", 64, 256, 1024, 0.01), "choose --fp16 or --int8"),
        (("fp16", 512, 256, 1024, 0.01), "--opt-batch 512 is larger than --max-batch 256"),
        (("fp16", 0, 256, 1024, 0.01), "must be >= 1"),
        (("fp16", 64, 256, 0, 0.01), "--workspace-mb 0"),
    ]:
        with pytest.raises(UserError, match=match):
            trt_export.check_args(*bad)


def test_tensorrt_engine_spec_records_its_settings() -> None:
    spec = trt_export.EngineSpec("int8", True, tuple(trt_export.profiles(64, 256)), 1024, 0.01)
    assert spec.format == "tensorrt-int8"
    settings = spec.settings([3, 32, 32], "10.13.0", "NVIDIA H100")
    assert settings["typing"] == "strong" and settings["tensorrt"] == "10.13.0"
    assert [p["opt"][0] for p in settings["profiles"]] == [1, 32, 64, 256]
    assert settings["profiles"][1] == {"min": [2, 3, 32, 32], "opt": [32, 3, 32, 32], "max": [32, 3, 32, 32]}
    assert json.loads(json.dumps(settings)) == settings  # recorded in the manifest as JSON


def test_tensorrt_source_selection(run: Run, exported: list[Artifact]) -> None:
    trt10 = types.SimpleNamespace(BuilderFlag=types.SimpleNamespace(FP16=1, INT8=2))
    trt11 = types.SimpleNamespace(BuilderFlag=types.SimpleNamespace())
    assert not trt_export.strongly_typed(trt10) and trt_export.strongly_typed(trt11)
    assert trt_export.source_format("fp16", strong=False) == "onnx"
    assert trt_export.source_format("fp16", strong=True) == "onnx-fp16"
    assert trt_export.source_format("int8", strong=False) == "onnx-int8"
    assert source_artifact(run, "student", "onnx", "an engine").files == ["student.onnx"]
    with pytest.raises(UserError, match="kdeploy quantize .* --int8"):
        source_artifact(run, "student", "onnx-int8", "an engine")
