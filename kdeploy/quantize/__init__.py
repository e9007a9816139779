"""ONNX Runtime quantization of exported models: static INT8 (QDQ), dynamic INT8, FP16.

Input is the fp32 ``<role>.onnx`` that passed the parity gate (``kdeploy export --onnx``); a run without one is
a :class:`UserError` telling the user to export first (nothing is exported implicitly, so the parity gate is
always an explicit, visible step). Outputs, next to it in ``<run>/export/``:

- ``<role>.int8.onnx``: static INT8 in QDQ format. ``quant_pre_process`` (shape inference + graph optimisation;
  without its symbolic shape inference where that gives up, as on ``fast_cnn`` graphs), then ``quantize_static``
  calibrated on ``calib_samples`` images of the recipe's *training* split (a seeded random subset), MinMax / Entropy /
  Percentile calibration (Entropy through kdeploy's own run of ORT's KL calibrator, whose ``quantize_static``
  default searches one window and equals MinMax: :func:`entropy_overrides`), optional per-channel weights.
  Activations and weights are signed INT8 with zero point 0 (symmetric); on x86 CPUs without VNNI the weights use
  7 bits (``reduce_range``, :func:`auto_reduce_range`), because ONNX Runtime's AVX2 integer kernels saturate on
  8-bit ones. ``float_gelu`` (opt-in) keeps each exact GELU's five ops out of quantization (:func:`gelu_nodes`).
  ``target="tensorrt"`` writes TensorRT's explicit-quantization form instead (float biases, per-channel weights,
  no Q/DQ on the output: ``kdeploy/export/qdq_target.py``); the manifest's ``tensorrt_compatible`` is read from
  the written graph (``kdeploy/export/qdq_check.py``).
- ``<role>.int8-dynamic.onnx``: ``quantize_dynamic`` (weights INT8, activations quantized at run time). ORT's
  dynamic quantizer ignores ``Gemm`` (what ``nn.Linear`` exports as), so plain ``Gemm`` nodes are first rewritten
  as the equivalent ``MatMul`` + ``Add``. Convolutions become ``ConvInteger``, which the CPU provider may not
  implement for INT8 weights: the result is loaded and run, and if that fails, or nothing was quantized, no file
  is written and a ``skipped`` manifest entry records the reason.
- ``<role>.fp16.onnx``: ``onnxruntime.transformers.float16.convert_float_to_float16`` with float32 inputs/outputs.

Quantized artifacts are judged by accuracy, not by atol: the full test set is run with ONNX Runtime and the drop
from the fp32 ONNX accuracy must be at most ``max_accuracy_drop`` (default 0.01 = one point). A failed artifact
is kept as ``<role>.<kind>.failed.onnx`` with ``status: "failed"`` and :class:`GateFailed` is raised at the end.
A converter that raises on a graph gives a ``failed`` entry without files (the reason names the exception).
"""

from kdeploy.quantize.calibration import Calibration, calibration_split, entropy_overrides, make_reader
from kdeploy.quantize.convert import (
    FLOAT_GELU,
    QuantOptions,
    convert,
    convert_dynamic,
    convert_fp16,
    convert_static,
    dynamic_problem,
)
from kdeploy.quantize.graph import gelu_nodes, gemm_to_matmul, module_nodes, op_counts
from kdeploy.quantize.stage import (
    auto_reduce_range,
    check_args,
    check_int8_options,
    fp32_test_logits,
    quantize,
    quantize_one,
    saturates,
)

__all__ = [
    "FLOAT_GELU",
    "Calibration",
    "QuantOptions",
    "auto_reduce_range",
    "calibration_split",
    "check_args",
    "check_int8_options",
    "convert",
    "convert_dynamic",
    "convert_fp16",
    "convert_static",
    "dynamic_problem",
    "entropy_overrides",
    "fp32_test_logits",
    "gelu_nodes",
    "gemm_to_matmul",
    "make_reader",
    "module_nodes",
    "op_counts",
    "quantize",
    "quantize_one",
    "saturates",
]
