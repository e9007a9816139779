"""The three ONNX Runtime conversions (static INT8 QDQ, dynamic INT8, FP16); each returns its manifest settings."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from kdeploy import progress
from kdeploy.data import Dataset, Split
from kdeploy.errors import first_line
from kdeploy.export.ort import run_batch, try_session
from kdeploy.export.qdq_target import DEFAULT_TARGET, extra_options, finish, per_channel_for
from kdeploy.quantize.calibration import entropy_overrides, make_reader
from kdeploy.quantize.graph import INTEGER_OPS, gelu_nodes, gemm_to_matmul, module_nodes, op_counts

CALIB_METHODS = ("minmax", "entropy", "percentile")
FLOAT_GELU = False  # opt-in: faster and as accurate on fast_cnn models, but not always faster (benchmarks/README.md)
STATIC_INT8 = ("onnx-int8", "onnx-int8-qat")  # QAT: the fine-tuned float model, quantized the same way as PTQ


@dataclass(frozen=True)
class QuantOptions:
    """How a file is quantized: the static INT8 choices (dynamic INT8 reads ``per_channel`` only).

    ``reduce_range``: weights on 7 bits ([-64, 64]), which keeps ONNX Runtime's u8s8 integer kernels on x86 CPUs
    without VNNI (AVX2, AVX-512 without VNNI) from saturating their 16-bit pair sums. ``target="tensorrt"``: the
    form TensorRT's explicit quantization wants (:mod:`kdeploy.export.qdq_target`). ``float_gelu``: every exact GELU
    (five ops at opset 18) runs in float between the Q/DQ of its input and output (:func:`gelu_nodes`) instead of
    with its inner tensors quantized. ``float_modules``: module paths (``stem.0``, as in ``named_modules()``) whose
    nodes stay float (:func:`module_nodes`). ``per_channel``: None converts per tensor and leaves the per-channel
    retry to the quantize stage (:func:`kdeploy.quantize.quantize`)."""

    calib_method: str = "minmax"
    per_channel: bool | None = False
    target: str = DEFAULT_TARGET
    reduce_range: bool = False
    float_gelu: bool = FLOAT_GELU
    float_modules: tuple[str, ...] = ()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ORT's quantizer logs and prints advice; keep library output to ``progress``."""
    sink = io.StringIO()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def preprocess(src: Path, dst: Path) -> tuple[Path, str | None]:
    """ORT's ``quant_pre_process`` (shape inference, graph optimisation); without its symbolic shape inference when
    that gives up on a graph (it fails on some Reshape patterns). Returns the file to quantize and a note when the
    pre-processing was reduced or skipped."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        with _quiet():
            quant_pre_process(str(src), str(dst))
        return dst, None
    except Exception as exc:
        first = first_line(exc, 200)
    try:
        with _quiet():
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        return dst, f"symbolic shape inference skipped ({first})"
    except Exception as exc:  # quantize the export as is
        note = f"quant_pre_process failed ({first_line(exc, 200)})"
        progress.log(f"  {note}; quantizing without pre-processing")
        return src, note


def _float_nodes(pre: Path, options: QuantOptions) -> tuple[list[list[str]], list[str]]:
    """The GELU chains and the module paths' nodes that static INT8 keeps float; the graph is read only when one of
    the two options asks for it."""
    if not (options.float_gelu or options.float_modules):
        return [], []
    graph = onnx.load(str(pre), load_external_data=False)
    gelus = gelu_nodes(graph) if options.float_gelu else []
    return gelus, sorted({name for names in module_nodes(graph, options.float_modules).values() for name in names})


def convert_static(src: Path, dst: Path, tmp: Path, reader: Any, options: QuantOptions) -> dict[str, Any]:
    """Static QDQ INT8, calibrated on what ``reader`` yields (:class:`QuantOptions`)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    pre, note = preprocess(src, tmp / "preprocessed.onnx")
    method = CalibrationMethod.Percentile if options.calib_method == "percentile" else CalibrationMethod.MinMax
    extra = extra_options(options.target)
    if options.calib_method == "entropy":  # KL ranges from kdeploy's own calibrator run override min-max's
        with _quiet():
            extra["TensorQuantOverrides"] = entropy_overrides(pre, reader, tmp)
    per_channel = per_channel_for(options.target, options.per_channel)
    gelus, kept = _float_nodes(pre, options)
    with _quiet():
        quantize_static(
            str(pre),
            str(dst),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=options.reduce_range,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=method,
            nodes_to_exclude=[name for gelu in gelus for name in gelu] + kept,
            extra_options=extra,
        )
    checked = finish(dst, options.target)  # TensorRT form, then tensorrt_compatible read from the graph
    ops = op_counts(dst)
    return {
        "method": "static",
        "quant_format": "QDQ",
        "activation_type": "int8",
        "weight_type": "int8",
        "symmetric": True,
        "per_channel": per_channel,
        "reduce_range": options.reduce_range,
        "calib_method": options.calib_method,
        "float_gelu": options.float_gelu,
        "gelus_in_float": len(gelus),
        "float_modules": list(options.float_modules),
        "nodes_in_float": len(kept),
        "preprocessed": pre != src,
        "preprocess_note": note,
        "quantize_linear_nodes": ops["QuantizeLinear"],
        **checked,
    }


def convert_dynamic(src: Path, dst: Path, tmp: Path, *, per_channel: bool) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src))
    rewritten = gemm_to_matmul(model)
    prepared = tmp / "matmul.onnx"
    onnx.save(model, str(prepared))
    with _quiet():
        quantize_dynamic(str(prepared), str(dst), per_channel=per_channel, weight_type=QuantType.QInt8)
    ops = op_counts(dst)
    return {
        "method": "dynamic",
        "weight_type": "int8",
        "per_channel": per_channel,
        "gemm_rewritten_as_matmul": rewritten,
        "integer_ops": {k: ops[k] for k in INTEGER_OPS if ops[k]},
    }


def convert_fp16(src: Path, dst: Path) -> dict[str, Any]:
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    with _quiet():
        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
        wrapped = OnnxModel(model)
        wrapped.topological_sort()  # the converter appends the input Casts last; the checker requires order
    onnx.save(wrapped.model, str(dst))
    return {"keep_io_types": True, "converter": "onnxruntime.transformers.float16"}


def convert(
    fmt: str,
    src: Path,
    dst: Path,
    tmp: Path,
    data: Dataset,
    calib: Split | None,
    options: QuantOptions,
) -> dict[str, Any]:
    """Write the ``fmt`` version of ``src`` to ``dst``; returns the settings recorded in the manifest."""
    if fmt in STATIC_INT8:
        if calib is None:
            raise ValueError("static INT8 needs calibration images")
        reader = make_reader(
            calib, data.mean, data.std, onnx.load(str(src), load_external_data=False).graph.input[0].name
        )
        return convert_static(src, dst, tmp, reader, options)
    if fmt == "onnx-int8-dynamic":
        return convert_dynamic(src, dst, tmp, per_channel=bool(options.per_channel))
    if fmt == "onnx-fp16":
        return convert_fp16(src, dst)
    raise ValueError(f"unknown quantized format {fmt!r}")


def dynamic_problem(path: Path, settings: dict[str, Any], sample: np.ndarray) -> str | None:
    """Why a dynamic-INT8 graph must not be published (nothing quantized, or ORT cannot run it), or None."""
    if not settings["integer_ops"]:
        return (
            "nothing was quantized: ORT dynamic quantization covers MatMul/Conv and found none to convert; "
            "use --method static"
        )
    session, error = try_session(path)
    if session is None:
        ops = ", ".join(settings["integer_ops"])
        return f"ONNX Runtime CPU cannot load the dynamic INT8 graph ({ops}): {error}; use --method static"
    try:
        run_batch(session, sample)
    except Exception as exc:  # runtime kernel errors
        return f"ONNX Runtime CPU cannot run the dynamic INT8 graph: {first_line(exc)}"
    return None
