"""ONNX Runtime INT8 (static QDQ, dynamic) and FP16 on a small trained MNIST CNN (teacher) and MLP (student)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from kdeploy import cpu
from kdeploy.artifacts import Artifact, how_made
from kdeploy.artifacts.manifest import find
from kdeploy.cli import app
from kdeploy.data import Split
from kdeploy.distill import distill
from kdeploy.errors import UserError
from kdeploy.export import export_onnx, onnx_accuracy, read_manifest
from kdeploy.export.onnx import export_graph
from kdeploy.models import create_model
from kdeploy.quantize import (
    Calibration,
    QuantOptions,
    calibration_split,
    convert_dynamic,
    convert_static,
    dynamic_problem,
    entropy_overrides,
    gelu_nodes,
    gemm_to_matmul,
    module_nodes,
    quantize,
    quantize_one,
)
from kdeploy.recipe import validate
from kdeploy.rundata import load_run_data
from kdeploy.runs import Run, read_meta

from .conftest import tiny_recipe


@pytest.fixture(scope="module")
def run(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A CNN teacher (width 2, 17.9k params) and an MLP student (784-128-10), both trained past 90 % (4000 images)."""
    raw = tiny_recipe(
        mnist_root,
        data__limit=4000,
        data__val_size=300,
        teacher__model="cnn",
        teacher__kwargs={"width": 2, "dropout": 0.0},
        teacher__epochs=2,
        teacher__lr=0.01,
        student__kwargs={"hidden": [128]},
        student__epochs=10,
        baseline=False,
    )
    out = tmp_path_factory.mktemp("quantize") / "small"
    r = distill(validate(raw), out=out)
    export_onnx(r)
    return r


@pytest.fixture(scope="module")
def static_int8(run: Run) -> list[Artifact]:
    return quantize(run, int8=True, calib_samples=256)


def by_model(artifacts: list[Artifact]) -> dict[str, Artifact]:
    return {a.model: a for a in artifacts}


# ---- static INT8 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("role", ["student", "teacher"])  # MLP and CNN
def test_static_int8_within_one_point(run: Run, static_int8: list[Artifact], role: str) -> None:
    e = by_model(static_int8)[role]
    assert e.status == "ok" and e.passed, e.reason
    assert e.fp32_accuracy > 0.9, "the model must be trained for the comparison to mean anything"
    assert e.accuracy_drop <= 0.01
    assert e.files == [f"{role}.int8.onnx"] and e.source == f"{role}.onnx"
    path = run.export_dir / e.files[0]
    data = load_run_data(run)
    assert onnx_accuracy(path, data.test, data.mean, data.std) == e.accuracy, "recorded accuracy is reproducible"
    assert e.bytes < find(run, f"{role}:onnx").bytes
    assert e.vs_fp32.samples == len(data.test) and e.vs_fp32.top1_agreement > 0.97


def test_static_int8_graph_is_symmetric_qdq(run: Run, static_int8: list[Artifact]) -> None:
    """QDQ with signed INT8 and zero point 0 everywhere: the form TensorRT's explicit quantization accepts."""
    proto = onnx.load(str(run.export_dir / "teacher.int8.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") >= 5 and ops.count("DequantizeLinear") >= 5
    inits = {t.name: t for t in proto.graph.initializer}
    zero_points = [n.input[2] for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    for name in zero_points:
        assert inits[name].data_type == TensorProto.INT8
        assert not numpy_helper.to_array(inits[name]).any()
    e = by_model(static_int8)["teacher"]
    assert e.settings["calib_samples"] == 256 and e.settings["calib_split"] == "train"
    assert e.settings["calib_method"] == "minmax" and e.settings["preprocessed"]


def _fast_cnn_onnx(path: Path) -> np.ndarray:
    """A small ``fast_cnn`` (seven GELUs) exported at opset 18; returns a batch of inputs for it."""
    torch.manual_seed(0)
    model = create_model("fast_cnn", num_classes=10, in_shape=(1, 16, 16), widths=[8, 16, 16]).eval()
    export_graph(model, [1, 16, 16], path, 18)
    return torch.randn(32, 1, 16, 16).numpy()


def test_float_gelu_keeps_every_gelu_out_of_quantization(tmp_path: Path) -> None:
    """``float_gelu``: no Q/DQ inside any of fast_cnn's seven GELUs (Div, Erf, Add, Mul, Mul), GELU's output still
    quantized where a Conv reads it; without it ORT's quantizer puts a pair on each inner tensor. TensorRT's form
    passes its checker. A ReLU CNN has no GELU to find."""
    x = _fast_cnn_onnx(tmp_path / "float.onnx")
    gelus = gelu_nodes(onnx.load(str(tmp_path / "float.onnx")))
    assert len(gelus) == 7 and all(len(g) == 5 for g in gelus), gelus
    quantized, settings = {}, {}
    for float_gelu in (False, True):
        path = tmp_path / f"int8_{float_gelu}.onnx"
        options = QuantOptions("minmax", per_channel=True, reduce_range=True, float_gelu=float_gelu)
        settings[float_gelu] = convert_static(tmp_path / "float.onnx", path, tmp_path, _Inputs([x]), options)
        graph = onnx.load(str(path)).graph
        quantized[float_gelu] = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
        names = {n.name: n for n in graph.node}
        inner = {names[name].output[0] for gelu in gelus for name in gelu[:-1]}
        read_by_conv = {names[gelu[-1]].output[0] for gelu in gelus[:-1]}  # the last feeds the global max-pooling
        assert bool(quantized[float_gelu] & inner) is not float_gelu
        assert read_by_conv <= quantized[float_gelu]
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert np.isfinite(session.run(None, {"input": x})[0]).all()
    assert (settings[True]["gelus_in_float"], settings[False]["gelus_in_float"]) == (7, 0)
    trt = QuantOptions("minmax", per_channel=True, target="tensorrt", float_gelu=True)
    checked = convert_static(tmp_path / "float.onnx", tmp_path / "trt.onnx", tmp_path, _Inputs([x]), trt)
    assert checked["tensorrt_compatible"], "float ops between a DequantizeLinear and a QuantizeLinear suit TensorRT"
    # per GELU the Erf, Add and inner Mul outputs (ORT does not quantize Erf, so not its input), and the last GELU's
    # output, which then no quantized node reads
    assert len(quantized[True]) == len(quantized[False]) - 3 * 7 - 1
    cnn = create_model("cnn", num_classes=10, in_shape=(1, 16, 16)).eval()
    export_graph(cnn, [1, 16, 16], tmp_path / "cnn.onnx", 18)
    assert gelu_nodes(onnx.load(str(tmp_path / "cnn.onnx"))) == []


def test_float_module_keeps_a_module_path_in_float(tmp_path: Path) -> None:
    """``float_modules``: the nodes exported from a module path (dynamo name scopes, or the TorchScript exporter's
    ``/stem/stem.0/Conv`` names) stay float; here fast_cnn's whitening stem, whose input and weights then carry no
    Q/DQ, and nothing else changes."""
    x = _fast_cnn_onnx(tmp_path / "float.onnx")
    proto = onnx.load(str(tmp_path / "float.onnx"))
    found = module_nodes(proto, ["stem.0", "block1.0", "head", "block9"])
    assert [len(found[p]) for p in ("stem.0", "block1.0", "head", "block9")] == [1, 1, 1, 0], found
    assert set(found["block1.0"]) < set(module_nodes(proto, ["block1"])["block1"]), "a module and its submodules"
    torchscript = helper.make_model(
        helper.make_graph([helper.make_node("Conv", ["a", "w"], ["b"], name="/stem/stem.0/Conv")], "g", [], [])
    )
    assert module_nodes(torchscript, ["stem", "stem.0", "stem.1"]) == {
        "stem": ["/stem/stem.0/Conv"], "stem.0": ["/stem/stem.0/Conv"], "stem.1": []}  # fmt: skip
    quantized = {}
    for modules in ((), ("stem.0",)):
        path = tmp_path / f"int8_{len(modules)}.onnx"
        settings = convert_static(
            tmp_path / "float.onnx", path, tmp_path, _Inputs([x]), QuantOptions(float_modules=modules)
        )
        assert (settings["float_modules"], settings["nodes_in_float"]) == (list(modules), len(modules))
        graph = onnx.load(str(path)).graph
        made = {o: n for n in graph.node for o in n.output}
        conv = next(n for n in graph.node if n.name == found["stem.0"][0])
        assert {made[i].op_type for i in conv.input if i in made} == ({"DequantizeLinear"} if not modules else set())
        quantized[modules] = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert np.isfinite(session.run(None, {"input": x})[0]).all()
    assert quantized[("stem.0",)] == quantized[()] - {"input"}, "only the image's Q/DQ (the weights are constants)"


class _Inputs:
    """A ``CalibrationDataReader`` over fixed batches for a graph whose input is named ``input``."""

    def __init__(self, batches: list[np.ndarray]) -> None:
        self.batches = list(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return {"input": self.batches.pop()} if self.batches else None


def test_calibration_uses_a_seeded_training_subset(run: Run) -> None:
    data = load_run_data(run)
    a, b = calibration_split(data.train, 100, seed=0).split, calibration_split(data.train, 100, seed=0).split
    assert len(a) == 100 and bool((a.images == b.images).all())
    train_rows = {bytes(img.numpy().tobytes()) for img in data.train.images}
    assert all(img.numpy().tobytes() in train_rows for img in a.images)
    everything = calibration_split(data.train, 10**6, seed=3)
    assert len(everything.split) == len(data.train)
    assert everything.settings() == {"calib_samples": len(data.train), "calib_split": "train", "calib_seed": 3}


def test_reduce_range_writes_7_bit_weights_through_the_cli(run: Run, tmp_path: Path) -> None:
    """``--reduce-range``: every int8 weight on [-64, 64] (the full range is used), recorded in the settings."""
    work = Run(shutil.copytree(run.root, tmp_path / "run"))
    result = CliRunner().invoke(app, ["--quiet", "quantize", str(work.root), "--int8", "--reduce-range",
                                      "--calib-samples", "128", "--models", "teacher", "--float-gelu"])  # fmt: skip
    assert result.exit_code == 0, result.output
    e = find(work, "teacher:onnx-int8")
    assert e.settings["reduce_range"] is True and e.accuracy_drop <= 0.01
    assert (e.settings["float_gelu"], e.settings["gelus_in_float"]) == (True, 0), "asked for; a ReLU CNN has none"
    proto = onnx.load(str(work.export_dir / "teacher.int8.onnx"))
    weights = [numpy_helper.to_array(t) for t in proto.graph.initializer if t.data_type == TensorProto.INT8]
    weights = [w for w in weights if w.size > 1]  # not the zero points
    assert len(weights) >= 5 and max(int(np.abs(w).max()) for w in weights) == 64
    bad = CliRunner().invoke(app, ["--quiet", "quantize", str(work.root), "--int8", "--float-module", "stage9"])
    assert bad.exit_code == 2 and "--float-module stage9: no layer of" in bad.output, bad.output
    assert len(bad.output.strip().splitlines()) == 1
    one = CliRunner().invoke(app, ["--quiet", "quantize", str(work.root), "--int8", "--calib-samples", "128",
                                   "--models", "teacher", "--float-module", "stage1"])  # fmt: skip
    assert one.exit_code == 0, one.output
    e = find(work, "teacher:onnx-int8")
    # the export fuses each Conv with its BatchNorm into one node named for the BatchNorm (stage1.1), so a module
    # path that keeps the first Conv float is stage1 or stage1.1: Conv, ReLU, MaxPool
    assert e.settings["float_modules"] == ["stage1"] and e.settings["nodes_in_float"] == 3


class _Batches:
    """A ``CalibrationDataReader`` over fixed batches of the input ``x``."""

    def __init__(self, batches: list[np.ndarray]) -> None:
        self.batches, self.pos = batches, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        self.pos += 1
        return {"x": self.batches[self.pos - 1]} if self.pos <= len(self.batches) else None

    def rewind(self) -> None:
        self.pos = 0


def _input_scale(path: Path) -> float:
    proto = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    q = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
    return float(inits[q.input[1]])


def test_entropy_calibration_clips_an_outlier_that_minmax_keeps(tmp_path: Path) -> None:
    """ORT's ``quantize_static`` runs its KL search with one candidate window (the whole range), which makes its
    "entropy" min-max; kdeploy's entropy ranges come from a real search and clip a rare outlier."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "toy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 16])],
        [weight],
    )
    src = tmp_path / "toy.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(src))
    batches = [rng.standard_normal((64, 16)).astype(np.float32) for _ in range(8)]
    batches[3][5, 7] = 60.0  # one value in 8192

    scales = {}
    for method in ("minmax", "entropy"):
        work = tmp_path / method
        work.mkdir()
        convert_static(src, work / "toy.int8.onnx", work, _Batches(batches), QuantOptions(calib_method=method))
        scales[method] = _input_scale(work / "toy.int8.onnx")
    assert scales["minmax"] == pytest.approx(60.0 / 127, rel=1e-3)
    # The narrowest window the search can choose is 255 of 2048 bins (+-7.5 here); it clips the outlier.
    assert 7.0 / 127 < scales["entropy"] < 15.0 / 127, scales

    reader = _Batches(batches)
    overrides = entropy_overrides(tmp_path / "minmax" / "preprocessed.onnx", reader, tmp_path)
    assert overrides["x"][0]["rmax"] < 15.0 and reader.get_next() is not None  # the reader was rewound


# ---- dynamic INT8 and FP16 ------------------------------------------------------------------------------
def test_dynamic_int8_covers_linear_layers_on_mlp(run: Run) -> None:
    e = quantize(run, method="dynamic", models="student")[0]
    assert e.status == "ok", e.reason
    assert e.settings["gemm_rewritten_as_matmul"] == 2
    assert e.settings["integer_ops"] == {"MatMulInteger": 2}
    assert e.accuracy_drop <= 0.01


def test_dynamic_int8_on_cnn_is_loaded_and_run_or_skipped(run: Run) -> None:
    """ConvInteger support depends on the ORT build: either the artifact runs, or no file is written."""
    e = quantize(run, method="dynamic", models="teacher", raise_on_fail=False)[0]
    assert e.id == "teacher:onnx-int8-dynamic"
    path = run.export_dir / "teacher.int8-dynamic.onnx"
    if e.status == "skipped":
        assert e.files == [] and not path.exists() and e.reason
    else:
        assert "ConvInteger" in e.settings["integer_ops"]
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert session.run(None, {"input": np.zeros((2, 1, 28, 28), np.float32)})[0].shape == (2, 10)
        assert e.accuracy is not None and e.status in ("ok", "failed")


def test_dynamic_int8_problems_are_detected(tmp_path: Path) -> None:
    # nothing to quantize: a graph without MatMul/Conv/Gemm
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])
    plain = helper.make_model(
        helper.make_graph([helper.make_node("Relu", ["input"], ["logits"])], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 18)],
        ir_version=10,
    )
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    settings = convert_dynamic(tmp_path / "plain.onnx", tmp_path / "plain.q.onnx", tmp_path, per_channel=False)
    sample = np.zeros((2, 4), np.float32)
    assert "nothing was quantized" in dynamic_problem(tmp_path / "plain.q.onnx", settings, sample)
    # a graph ONNX Runtime cannot load (an operator it has no kernel for)
    node = helper.make_node("NoSuchKernel", ["input"], ["logits"], domain="com.example")
    odd = helper.make_model(
        helper.make_graph([node], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)],
        ir_version=10,
    )
    onnx.save(odd, str(tmp_path / "odd.onnx"))
    problem = dynamic_problem(tmp_path / "odd.onnx", {"integer_ops": {"ConvInteger": 1}}, sample)
    assert problem is not None and problem.startswith("ONNX Runtime CPU cannot load")


def test_gemm_rewrite_is_exact() -> None:
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(5, 8)).astype(np.float32), rng.normal(size=5).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])
    gemm = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, name="fc")
    graph = helper.make_graph([gemm], "g", [x], [y], [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    before = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert gemm_to_matmul(model) == 1
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["MatMul", "Add"]
    after = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    inp = rng.normal(size=(3, 8)).astype(np.float32)
    np.testing.assert_allclose(after.run(None, {"x": inp})[0], before.run(None, {"x": inp})[0], rtol=1e-6, atol=1e-6)


def test_fp16(run: Run) -> None:
    entries = quantize(run, int8=False, fp16=True)
    for e in entries:
        assert e.status == "ok" and abs(e.accuracy_drop) <= 0.005
        proto = onnx.load(str(run.export_dir / e.files[0]))
        assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT, "float32 I/O kept"
        assert any(t.data_type == TensorProto.FLOAT16 for t in proto.graph.initializer)


# ---- gates and errors ------------------------------------------------------------------------------------
def test_accuracy_gate_failure_keeps_no_valid_file(run: Run, tmp_path: Path) -> None:
    """The gate compares with the fp32 source's accuracy; with a claimed fp32 accuracy of 1.0 and a zero budget,
    the real INT8 model misses it: the file is renamed ``.failed`` and the entry marked failed."""
    work = Run(shutil.copytree(run.root, tmp_path / "run"))
    data = load_run_data(work)
    source = dataclasses.replace(find(work, "student:onnx"), accuracy=1.0)
    fp32 = np.zeros((len(data.test), 10), np.float32)
    calib = Calibration(Split(data.train.images[:64], data.train.labels[:64]), seed=0)
    e = quantize_one(work, "student", "onnx-int8", source, data, fp32, QuantOptions(), calib, max_accuracy_drop=0.0)
    assert e.status == "failed" and not e.passed and "accuracy gate" in e.reason
    assert e.reason.endswith("per-channel weights often recover it: add --per-channel"), "per-tensor: what to try"
    assert e.files == ["student.int8.failed.onnx"]
    per_channel = QuantOptions(per_channel=True)
    e = quantize_one(work, "student", "onnx-int8", source, data, fp32, per_channel, calib, max_accuracy_drop=0.0)
    assert e.status == "failed" and "--per-channel" not in e.reason, "already per channel: no advice"
    trt = QuantOptions(target="tensorrt")  # per_channel not asked for, but TensorRT's form has per-channel weights
    e = quantize_one(work, "student", "onnx-int8", source, data, fp32, trt, calib, max_accuracy_drop=0.0)
    assert e.status == "failed" and e.settings["per_channel"] and "--per-channel" not in e.reason
    assert not (work.export_dir / "student.int8.onnx").exists()
    assert find(work, "student:onnx-int8").status == "failed"


@pytest.fixture(scope="module")
def wide_channel_run(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A trained ``dwcnn`` student with one depthwise channel 300 times wider than before, the model's function
    unchanged: the stem's channel 0 is scaled down (BatchNorm weight and bias; ReLU commutes with a positive
    scale) and the ``block1.dw`` filter that reads it scaled up. Folded into one tensor, that filter sets the
    per-tensor weight scale, and the other 15 filters round coarsely or to zero: a long-trained MobileNet's case
    (benchmarks/README.md: one seed of ``fashion_mnist_dwcnn_qat`` had a channel 624 times the narrowest)."""
    raw = tiny_recipe(
        mnist_root,
        data__limit=6000,
        teacher__epochs=1,
        student__model="dwcnn",
        student__kwargs={"width": 4, "dropout": 0.0},
        student__epochs=3,
        student__lr=0.01,
        baseline=False,
    )
    run = distill(validate(raw), out=tmp_path_factory.mktemp("quantize") / "wide")
    model, _ = run.load_model("student")
    with torch.no_grad():
        model.stem.bn.weight[0] /= 300
        model.stem.bn.bias[0] /= 300
        model.block1.dw.weight[0] *= 300
    run.save_weights("student", model, read_meta(run.weights_path("student")))
    export_onnx(run, models=["student"])
    return run


def test_static_int8_falls_back_to_per_channel_weights_where_per_tensor_misses_the_gate(
    wide_channel_run: Run, tmp_path: Path
) -> None:
    """By default a static INT8 file is per tensor, made again per channel when it misses its accuracy gate (the
    per-tensor accuracy kept in ``settings``); ``--per-tensor`` keeps the failed file and names the fix."""
    work = Run(shutil.copytree(wide_channel_run.root, tmp_path / "run"))
    [auto] = quantize(work, int8=True, calib_samples=256, models="student", raise_on_fail=False)
    fp32 = find(work, "student:onnx").accuracy
    assert auto.status == "ok" and auto.settings["per_channel"] is True and auto.files == ["student.int8.onnx"]
    assert auto.accuracy >= fp32 - 0.01 > auto.settings["per_tensor_accuracy"] + 0.01, auto.settings
    assert "-bit per-channel weights (per tensor gave" in how_made(auto), "report.md says what happened"
    result = CliRunner().invoke(
        app, ["quantize", str(work.root), "--int8", "--per-tensor", "--calib-samples", "256", "--models", "student"]
    )
    assert result.exit_code == 1, result.output
    forced = find(work, "student:onnx-int8")
    assert forced.status == "failed" and forced.settings["per_channel"] is False
    assert forced.accuracy == pytest.approx(auto.settings["per_tensor_accuracy"]), "the same per-tensor file"
    assert forced.reason.endswith("add --per-channel") and "per_tensor_accuracy" not in forced.settings
    assert "-bit per-tensor weights," in how_made(forced)
    assert forced.files == ["student.int8.failed.onnx"] and not (work.export_dir / "student.int8.onnx").exists()


def test_cli_gate_exit_1_and_table(run: Run, tmp_path: Path) -> None:
    work = shutil.copytree(run.root, tmp_path / "run")
    ok = CliRunner().invoke(app, ["--quiet", "quantize", str(work), "--fp16", "--models", "student"])
    assert ok.exit_code == 0, ok.output
    assert "student:onnx-fp16" in ok.output and "student.fp16.onnx" in ok.output
    # --max-accuracy-drop is validated before any work
    bad = CliRunner().invoke(app, ["quantize", str(work), "--int8", "--max-accuracy-drop", "-1"])
    assert bad.exit_code == 2 and "--max-accuracy-drop" in bad.output


def test_quantize_needs_an_onnx_export(run: Run, tmp_path: Path) -> None:
    work = Run(shutil.copytree(run.root, tmp_path / "run"))
    shutil.rmtree(work.export_dir)
    with pytest.raises(UserError, match="run `kdeploy export .* --onnx` first"):
        quantize(work, int8=True)
    result = CliRunner().invoke(app, ["quantize", str(work.root), "--int8"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    with pytest.raises(UserError, match="--calib-method"):
        quantize(work, calib_method="kl")
    with pytest.raises(UserError, match="nothing to do"):
        quantize(work, int8=False, fp16=False)


def test_reexport_drops_stale_derived_artifacts(run: Run, tmp_path: Path) -> None:
    """An INT8 model built from an older student.onnx is removed when student.onnx changes."""
    work = Run(shutil.copytree(run.root, tmp_path / "run"))
    assert find(work, "student:onnx-int8") is not None
    manifest = read_manifest(work)
    manifest.find("student:onnx").sha256 = "0" * 64  # as if student.onnx had been produced by an older export
    for a in manifest.artifacts:
        if a.source == "student.onnx":
            a.source_sha256 = "0" * 64
    work.manifest_path.write_text(json.dumps(manifest.to_dict()))
    export_onnx(work, models="student")
    assert find(work, "student:onnx-int8") is None and not (work.export_dir / "student.int8.onnx").exists()
    assert find(work, "teacher:onnx-int8") is not None


def test_static_int8_uses_7_bit_weights_only_on_a_saturating_cpu(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """reduce_range unset: 7-bit weights on x86 CPUs without VNNI (ORT's kernels saturate on 8), 8 elsewhere; an
    explicit choice wins; the manifest records what was used."""
    work = Run(shutil.copytree(run.root, tmp_path / "run"))
    for saturating, requested, used in ((True, None, True), (False, None, False), (True, False, False)):
        monkeypatch.setattr(cpu, "x86_without_vnni", lambda saturating=saturating: saturating)
        (art,) = quantize(work, int8=True, calib_samples=64, models=["teacher"], reduce_range=requested,
                          raise_on_fail=False)  # fmt: skip
        assert art.settings["reduce_range"] is used, (saturating, requested)
    assert [a.id for a in read_manifest(work).artifacts].count("teacher:onnx-int8") == 1


def test_preprocess_skips_only_the_symbolic_shape_step_where_it_fails(tmp_path: Path) -> None:
    """ORT's symbolic shape inference gives up on fast_cnn's graph; the rest of quant_pre_process still runs."""
    import torch

    from kdeploy.export.onnx import INPUT_NAME, export_graph
    from kdeploy.models import create_model
    from kdeploy.quantize.convert import preprocess

    model = create_model("fast_cnn", num_classes=10, in_shape=(1, 28, 28), widths=[4, 8, 8]).eval()
    src = tmp_path / "fast_cnn.onnx"
    export_graph(model, [1, 28, 28], src, opset=18)
    pre, note = preprocess(src, tmp_path / "pre.onnx")
    assert pre == tmp_path / "pre.onnx" and note is not None and note.startswith("symbolic shape inference skipped")
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        want = model(x).numpy()
    got = ort.InferenceSession(str(pre), providers=["CPUExecutionProvider"]).run(None, {INPUT_NAME: x.numpy()})[0]
    np.testing.assert_allclose(got, want, atol=1e-4)
