"""INT8 for TensorRT: the Q/DQ checker, `quantize --target tensorrt`, the export refusal, engine profiles."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from kdeploy.cli import app
from kdeploy.distill import distill
from kdeploy.errors import UserError
from kdeploy.export import export_onnx
from kdeploy.export import tensorrt as trt_export
from kdeploy.export.qdq_check import TensorRTQdqError, check_tensorrt_qdq
from kdeploy.export.qdq_target import strip_output_qdq
from kdeploy.quantize import quantize
from kdeploy.recipe import validate
from kdeploy.runs import Run

from .conftest import tiny_recipe


@pytest.fixture(scope="module")
def run(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A trained CNN teacher (Conv + Gemm with biases) and MLP student, exported to ONNX."""
    raw = tiny_recipe(
        mnist_root,
        data__limit=3000,
        data__val_size=300,
        teacher__model="cnn",
        teacher__kwargs={"width": 2, "dropout": 0.0},
        teacher__epochs=2,
        teacher__lr=0.01,
        student__kwargs={"hidden": [64]},
        student__epochs=4,
        baseline=False,
    )
    r = distill(validate(raw), out=tmp_path_factory.mktemp("qdq") / "run")
    export_onnx(r)
    return r


def by_model(entries: list[Any]) -> dict[str, Any]:
    return {e.model: e for e in entries}


@pytest.fixture(scope="module")
def both(run: Run, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, dict[str, Any]]]:
    """ORT's default INT8 output (kept aside) and the TensorRT-targeted one (left in the run)."""
    ort_entries = by_model(quantize(run, int8=True, calib_samples=256))
    keep = tmp_path_factory.mktemp("ort")
    for role in ort_entries:
        (keep / f"{role}.int8.onnx").write_bytes((run.export_dir / f"{role}.int8.onnx").read_bytes())
    trt_entries = by_model(quantize(run, int8=True, calib_samples=256, target="tensorrt"))
    return {"onnxruntime": ort_entries, "tensorrt": trt_entries, "ort_dir": {"path": keep}}  # type: ignore[dict-item]


def test_checker_rejects_onnxruntime_default(both: dict[str, Any]) -> None:
    for role in ("teacher", "student"):
        report = check_tensorrt_qdq(both["ort_dir"]["path"] / f"{role}.int8.onnx")
        assert not report.ok
        assert {"int8-dequantize", "output-qdq"} <= set(report.rules()), report.summary()
        int32 = [v for v in report.violations if v.rule == "int8-dequantize"]
        assert int32 and all("INT32" in v.detail and "QuantizeBias=False" in v.detail for v in int32)
        assert both["onnxruntime"][role].settings["tensorrt_compatible"] is False
        assert both["onnxruntime"][role].settings["tensorrt_violations"]


def test_tensorrt_target_is_accepted_and_as_accurate(run: Run, both: dict[str, Any]) -> None:
    for role in ("teacher", "student"):
        e = both["tensorrt"][role]
        assert e.status == "ok", e.reason
        s = e.settings
        assert s["target"] == "tensorrt" and s["tensorrt_compatible"] is True and s["tensorrt_violations"] == []
        assert s["per_channel"] and s["per_channel_weights"] >= 2 and s["output_qdq_removed"] == 1
        report = check_tensorrt_qdq(run.export_dir / f"{role}.int8.onnx")
        assert report.ok, report.summary()
        assert e.fp32_accuracy > 0.85, "the model must be trained for the comparison to mean anything"
        two_images = 0.002 + 1e-9  # of the 1,000 test images; 1e-9 absorbs float rounding (0.947 - 0.945 > 0.002)
        # against the float model, not ORT's default INT8 file: that one may land a few images above fp32 by chance
        # (0.3 points on one CPU's AVX512-VNNI kernels), which says nothing about this file
        assert abs(e.accuracy - e.fp32_accuracy) <= two_images, (e.accuracy, e.fp32_accuracy)
        proto = onnx.load(str(run.export_dir / f"{role}.int8.onnx"))
        producers = {o: n.op_type for n in proto.graph.node for o in n.output}
        assert producers[proto.graph.output[0].name] in ("Gemm", "MatMul", "Add")


def test_export_tensorrt_int8_refuses_a_rejected_graph(run: Run, both: dict[str, Any], tmp_path: Path) -> None:
    """ORT's default file is refused in one line (exit 2) before TensorRT or a GPU is needed."""
    quantize(run, int8=True, calib_samples=256)  # the default target, recorded in the manifest as made
    try:
        res = CliRunner().invoke(app, ["export", str(run.root), "--tensorrt", "--int8"])
        lines = res.output.strip().splitlines()
        assert res.exit_code == 2 and len(lines) == 1, res.output
        assert "TensorRT Q/DQ violation" in lines[0] and "--target tensorrt" in lines[0]
        with pytest.raises(TensorRTQdqError) as info:
            trt_export.check_int8_sources(run)
        assert not info.value.report.ok
    finally:
        quantize(run, int8=True, calib_samples=256, target="tensorrt")
    if trt_export.missing_requirements():  # accepted graph: the next thing missing is TensorRT itself
        res = CliRunner().invoke(app, ["export", str(run.root), "--tensorrt", "--int8"])
        assert res.exit_code == 2 and "--tensorrt needs" in res.output


def test_bad_target_is_a_user_error(run: Run) -> None:
    with pytest.raises(UserError, match="--target 'trt': choose one of onnxruntime, tensorrt"):
        quantize(run, int8=True, target="trt")


# ---- hand-made graphs: each rule fires on its own ---------------------------------------------------------------
def _conv_graph(axis: int, zero: int, zp_type: int = TensorProto.INT8) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.int8), "w_q")
    w_scale = numpy_helper.from_array(np.full(4 if axis == 0 else 3, 0.1, np.float32), "w_s")
    w_zp = helper.make_tensor("w_zp", TensorProto.INT8, [4 if axis == 0 else 3], [0] * (4 if axis == 0 else 3))
    a_scale = numpy_helper.from_array(np.array(0.05, np.float32), "a_s")
    a_zp = helper.make_tensor("a_zp", zp_type, [], [zero])
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "a_s", "a_zp"], ["xq"], name="q_x"),
        helper.make_node("DequantizeLinear", ["xq", "a_s", "a_zp"], ["xd"], name="dq_x"),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["wd"], name="dq_w", axis=axis),
        helper.make_node("Conv", ["xd", "wd"], ["y"], name="conv"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])],
        [w, w_scale, w_zp, a_scale, a_zp],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_rules_fire_one_by_one() -> None:
    assert check_tensorrt_qdq(_conv_graph(axis=0, zero=0)).ok
    wrong_axis = check_tensorrt_qdq(_conv_graph(axis=1, zero=0))
    assert wrong_axis.rules() == ["weight-axis"] and "output channels on axis 0" in str(wrong_axis.violations[0])
    assert check_tensorrt_qdq(_conv_graph(axis=0, zero=3)).rules() == ["zero-point"]
    uint8 = check_tensorrt_qdq(_conv_graph(axis=0, zero=0, zp_type=TensorProto.UINT8))
    assert set(uint8.rules()) == {"zero-point", "int8-dequantize"}  # the DQ then reads UINT8 data too
    plain = helper.make_model(
        helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])],
            "p",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        )
    )
    assert check_tensorrt_qdq(plain).rules() == ["no-qdq"]
    with pytest.raises(TensorRTQdqError, match="1 TensorRT Q/DQ violation"):
        check_tensorrt_qdq(plain).raise_if_invalid()


def test_strip_output_qdq_keeps_the_function() -> None:
    model = _conv_graph(axis=0, zero=0)
    g = model.graph
    g.node[-1].output[0] = "y_pre"
    g.node.extend(
        [
            helper.make_node("QuantizeLinear", ["y_pre", "a_s", "a_zp"], ["yq"], name="q_y"),
            helper.make_node("DequantizeLinear", ["yq", "a_s", "a_zp"], ["y"], name="dq_y"),
        ]
    )
    assert check_tensorrt_qdq(model).rules() == ["output-qdq"]
    assert strip_output_qdq(model) == 1
    assert check_tensorrt_qdq(model).ok and model.graph.node[-1].op_type == "Conv"
    onnx.checker.check_model(model, full_check=True)


# ---- engine building: the GPU-free parts ---------------------------------------------------------------------------
def test_one_profile_per_bench_batch_size() -> None:
    plist = trt_export.profiles(opt_batch=64, max_batch=256)
    assert [(p.lo, p.hi) for p in plist] == [(1, 1), (2, 32), (33, 64), (65, 256)]
    assert [trt_export.profile_for(b, plist) for b in (1, 2, 32, 33, 256)] == [0, 1, 1, 2, 3]
    assert plist[1].shapes([3, 32, 32]) == {"min": (2, 3, 32, 32), "opt": (32, 3, 32, 32), "max": (32, 3, 32, 32)}
    assert [(p.lo, p.hi) for p in trt_export.profiles(opt_batch=8, max_batch=16)] == [(1, 1), (2, 8), (9, 16)]
    with pytest.raises(ValueError, match="outside every optimization profile"):
        trt_export.profile_for(257, plist)


def test_typing_choice_follows_the_tensorrt_version() -> None:
    def fake(version: str, fp16: bool = True, strong: bool = True) -> Any:
        flags = types.SimpleNamespace(FP16=1) if fp16 else types.SimpleNamespace()
        net = types.SimpleNamespace(STRONGLY_TYPED=0) if strong else types.SimpleNamespace()
        return types.SimpleNamespace(__version__=version, BuilderFlag=flags, NetworkDefinitionCreationFlag=net)

    assert trt_export.strongly_typed(fake("10.3.0"), "int8")  # explicit quantization: always strongly typed
    assert not trt_export.strongly_typed(fake("10.3.0"), "fp16")  # FP16 flag not yet deprecated
    assert trt_export.strongly_typed(fake("10.12.0"), "fp16")  # deprecated from 10.12
    assert trt_export.strongly_typed(fake("11.0.0", fp16=False), "fp16")  # removed in 11
    assert not trt_export.strongly_typed(fake("8.6.1", strong=False), "int8")
