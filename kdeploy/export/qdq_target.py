"""Which runtime a static INT8 QDQ graph is written for: ``onnxruntime`` (the default) or ``tensorrt``.

- ``onnxruntime``: ONNX Runtime's own QDQ form: symmetric INT8 activations and weights, biases quantized to INT32
  behind a ``DequantizeLinear`` (what ORT's QLinearConv/QGemm fusions were designed around), per-channel weights
  only with ``--per-channel``, and a Q/DQ pair on the logits.
- ``tensorrt``: TensorRT's explicit-quantization form (see :mod:`kdeploy.export.qdq_check`): the same INT8
  activations and weights, but biases left in float (``QuantizeBias=False``), per-channel weight scales on the
  output-channel axis always, and the Q/DQ pair on each network output removed (the logits stay float). ONNX
  Runtime runs this file too.

Either way the written graph is checked with :func:`~kdeploy.export.qdq_check.check_tensorrt_qdq` and the
manifest's ``settings.tensorrt_compatible`` records the result (with the violations when it is false).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from kdeploy.errors import UserError
from kdeploy.export.qdq_check import check_tensorrt_qdq, consumers, producers

TARGETS = ("onnxruntime", "tensorrt")
DEFAULT_TARGET = "onnxruntime"


def check_target(target: str) -> None:
    if target not in TARGETS:
        raise UserError(f"--target {target!r}: choose one of {', '.join(TARGETS)}")


def per_channel_for(target: str, per_channel: bool | None) -> bool:
    """TensorRT's target always uses per-channel weight scales; ORT's follows ``--per-channel`` (None: per tensor)."""
    return bool(per_channel) or target == "tensorrt"


def extra_options(target: str) -> dict[str, Any]:
    """``quantize_static(extra_options=...)`` for ``target``: symmetric always; float biases for TensorRT."""
    options: dict[str, Any] = {"ActivationSymmetric": True, "WeightSymmetric": True}
    if target == "tensorrt":
        options["QuantizeBias"] = False
    return options


def strip_output_qdq(model: onnx.ModelProto) -> int:
    """Remove ``x -> QuantizeLinear -> DequantizeLinear -> <graph output>`` pairs, in place: the layer producing
    ``x`` writes the graph output itself. Returns how many pairs were removed."""
    g = model.graph
    producer, readers = producers(g), consumers(g)
    removed: list[onnx.NodeProto] = []
    for out in g.output:
        dq = producer.get(out.name)
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or len(readers.get(q.output[0], [])) != 1:
            continue
        x = q.input[0]
        layer = producer.get(x)
        if layer is None or len(readers.get(x, [])) != 1 or any(o.name == x for o in g.output):
            continue  # a graph input, or a tensor something else also reads: leave the pair
        layer.output[list(layer.output).index(x)] = out.name
        removed += [q, dq]
    for node in removed:
        g.node.remove(node)
    if removed:
        used = {i for n in g.node for i in n.input}
        for t in [t for t in g.initializer if t.name not in used]:
            g.initializer.remove(t)
    return len(removed) // 2


def finish(path: Path, target: str) -> dict[str, Any]:
    """Post-process the quantized file at ``path`` for ``target`` and check it; returns manifest settings."""
    stripped = 0
    if target == "tensorrt":
        model = onnx.load(str(path))
        stripped = strip_output_qdq(model)
        if stripped:
            onnx.save(model, str(path))
    report = check_tensorrt_qdq(path)
    return {
        "target": target,
        "quantize_bias": target != "tensorrt",
        "output_qdq_removed": stripped,
        "per_channel_weights": report.per_channel_weights,
        "tensorrt_compatible": report.ok,
        "tensorrt_violations": [str(v) for v in report.violations[:20]],
    }
