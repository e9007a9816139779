"""Does a QDQ ONNX graph follow TensorRT's explicit-quantization rules? Read the graph, list every violation.

TensorRT builds an INT8 engine from an ONNX graph whose ``QuantizeLinear``/``DequantizeLinear`` (Q/DQ) nodes carry
the scales ("explicit quantization"). Its ONNX parser and builder accept only part of what ONNX allows; the
rules checked here, each with the name used in a :class:`Violation`:

- ``int8-dequantize``: every ``DequantizeLinear`` reads INT8 data. ONNX Runtime's default static quantization
  stores biases as INT32 initializers behind a ``DequantizeLinear``; TensorRT's parser rejects those nodes ("only
  activation types allowed as input to this layer", NVIDIA/TensorRT#4542, onnx/onnx-tensorrt#850). Quantize with
  ``QuantizeBias=False`` so biases stay float (what NVIDIA Model Optimizer passes to ONNX Runtime).
- ``zero-point``: INT8 zero points, all 0 (TensorRT quantization is symmetric); a missing zero point means UINT8.
- ``scale``: scales are constant (initializer or ``Constant``), float, finite and > 0.
- ``per-tensor-activation``: activations (anything not a constant) have one scale.
- ``weight-axis``: per-channel weight scales lie on the output-channel axis of the consuming layer
  (Conv: 0, ConvTranspose: 1, Gemm: 0 with ``transB=1`` else 1, MatMul: the last axis); needs opset >= 13.
- ``output-qdq``: no graph output is produced by a Q or DQ node (the network returns float logits).
- ``no-qdq``: the graph has Q/DQ nodes at all (else it is not an INT8 QDQ graph).

Like optimum's ``validate_model_outputs``, :func:`check_tensorrt_qdq` collects every violation and returns one
typed :class:`QdqReport`; :meth:`QdqReport.raise_if_invalid` turns it into one :class:`UserError` line.
Per-tensor weights are allowed (TensorRT accepts them); ``--target tensorrt`` makes them per-channel anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from kdeploy.errors import UserError

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
REQUANTIZE_HINT = "re-quantize with `kdeploy quantize --int8 --target tensorrt`"


@dataclass(frozen=True)
class Violation:
    rule: str
    node: str
    detail: str

    def __str__(self) -> str:
        return f"{self.node}: {self.detail} [{self.rule}]"


@dataclass(frozen=True)
class QdqReport:
    """Every violation found in one graph, plus what was looked at."""

    source: str
    quantize_nodes: int
    dequantize_nodes: int
    per_channel_weights: int
    violations: tuple[Violation, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.violations

    def rules(self) -> list[str]:
        return sorted({v.rule for v in self.violations})

    def summary(self, limit: int = 3) -> str:
        """One line: how many violations, of which rules, and the first ``limit`` of them."""
        if self.ok:
            return f"{self.source}: follows TensorRT's explicit-quantization rules"
        shown = "; ".join(str(v) for v in self.violations[:limit])
        more = f" (+{len(self.violations) - limit} more)" if len(self.violations) > limit else ""
        return (
            f"{self.source}: {len(self.violations)} TensorRT Q/DQ violation(s) ({', '.join(self.rules())}): "
            f"{shown}{more}"
        )

    def raise_if_invalid(self) -> None:
        if not self.ok:
            raise TensorRTQdqError(self)


class TensorRTQdqError(UserError):
    """A QDQ graph TensorRT's explicit quantization would reject; ``report`` holds every violation."""

    def __init__(self, report: QdqReport) -> None:
        self.report = report
        super().__init__(f"{report.summary()}; {REQUANTIZE_HINT}")


# ---- graph facts ----------------------------------------------------------------------------------------------
def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """Each tensor's name -> the node that writes it."""
    return {o: n for n in graph.node for o in n.output}


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Each tensor's name -> the nodes that read it, once per input slot."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    return readers


class _Graph:
    """Constants, producers, consumers and known element types of one graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        self.const_types: dict[str, int] = {t.name: t.data_type for t in g.initializer}
        for n in g.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                t = n.attribute[0].t
                self.consts[n.output[0]] = numpy_helper.to_array(t)
                self.const_types[n.output[0]] = t.data_type
        self.producer = producers(g)
        self.consumers = consumers(g)
        self.outputs = [o.name for o in g.output]
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)

    def elem_type(self, name: str) -> int | None:
        """The element type of a tensor when the graph states it (constants, Q outputs), else None."""
        if name in self.const_types:
            return self.const_types[name]
        node = self.producer.get(name)
        if node is not None and node.op_type == "QuantizeLinear":
            return self.const_types.get(node.input[2], TensorProto.UINT8) if len(node.input) > 2 else TensorProto.UINT8
        return None


def _name(node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type}({node.output[0]})"


def _int_attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def output_channel_axis(consumer: onnx.NodeProto, rank: int) -> int | None:
    """The weight axis that indexes output channels for ``consumer``, or None for layers without weights."""
    if consumer.op_type == "Conv":
        return 0
    if consumer.op_type == "ConvTranspose":
        return 1
    if consumer.op_type == "Gemm":
        return 0 if _int_attr(consumer, "transB", 0) else 1
    if consumer.op_type == "MatMul":
        return rank - 1
    return None


# ---- the rules --------------------------------------------------------------------------------------------------
def _check_zero_point(g: _Graph, node: onnx.NodeProto) -> list[Violation]:
    if len(node.input) < 3 or not node.input[2]:
        return [Violation("zero-point", _name(node), "no zero point (ONNX then means UINT8); give an INT8 zero 0")]
    zp = node.input[2]
    if zp not in g.consts:
        return [Violation("zero-point", _name(node), f"zero point {zp!r} is not a constant")]
    out = []
    if g.const_types[zp] != TensorProto.INT8:
        kind = TensorProto.DataType.Name(g.const_types[zp])
        out.append(Violation("zero-point", _name(node), f"zero point is {kind}, TensorRT needs INT8"))
    if np.any(g.consts[zp] != 0):
        out.append(Violation("zero-point", _name(node), "non-zero zero point (TensorRT is symmetric)"))
    return out


def _check_scale(g: _Graph, node: onnx.NodeProto) -> tuple[list[Violation], np.ndarray | None]:
    scale = node.input[1]
    if scale not in g.consts:
        return [Violation("scale", _name(node), f"scale {scale!r} is not a constant")], None
    values = g.consts[scale]
    if g.const_types[scale] not in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16):
        return [Violation("scale", _name(node), "scale is not a float tensor")], values
    flat = values.astype(np.float64).ravel()
    if not all(math.isfinite(v) and v > 0 for v in flat):
        return [Violation("scale", _name(node), "scale has values that are not finite and > 0")], values
    return [], values


def _check_weight_axis(g: _Graph, node: onnx.NodeProto, scale: np.ndarray) -> list[Violation]:
    """Per-channel DQ of a constant weight: the axis must index the consumer's output channels."""
    data = node.input[0]
    rank = g.consts[data].ndim
    axis = _int_attr(node, "axis", 1)
    axis = axis + rank if axis < 0 else axis
    out = []
    if g.opset < 13:
        out.append(Violation("weight-axis", _name(node), f"per-channel scales need opset >= 13, graph has {g.opset}"))
    for consumer in g.consumers.get(node.output[0], []):
        want = output_channel_axis(consumer, rank)
        if want is not None and axis != want:
            out.append(
                Violation(
                    "weight-axis",
                    _name(node),
                    f"per-channel axis {axis} but {consumer.op_type} {_name(consumer)} has output channels on "
                    f"axis {want}",
                )
            )
    if scale.size != g.consts[data].shape[axis]:
        out.append(Violation("weight-axis", _name(node), f"{scale.size} scales for {g.consts[data].shape[axis]} rows"))
    return out


def _check_node(g: _Graph, node: onnx.NodeProto) -> list[Violation]:
    out = _check_zero_point(g, node)
    scale_problems, scale = _check_scale(g, node)
    out += scale_problems
    data = node.input[0]
    is_weight = data in g.consts
    if node.op_type == "DequantizeLinear":
        kind = g.elem_type(data)
        if kind is not None and kind != TensorProto.INT8:
            name = TensorProto.DataType.Name(kind)
            why = " (a quantized bias: quantize with QuantizeBias=False)" if kind == TensorProto.INT32 else ""
            out.append(Violation("int8-dequantize", _name(node), f"dequantizes {name} data{why}"))
    if scale is not None and scale.size > 1:
        if not is_weight:
            out.append(Violation("per-tensor-activation", _name(node), f"activation with {scale.size} scales"))
        elif node.op_type == "DequantizeLinear" and g.elem_type(data) == TensorProto.INT8:
            out += _check_weight_axis(g, node, scale)
    if any(o in g.outputs for o in node.output):
        out.append(Violation("output-qdq", _name(node), f"{node.op_type} produces graph output {node.output[0]!r}"))
    return out


def check_tensorrt_qdq(model: onnx.ModelProto | str | Path) -> QdqReport:
    """Every TensorRT explicit-quantization violation in ``model`` (a path or a loaded ``ModelProto``)."""
    source = Path(model).name if isinstance(model, (str, Path)) else (model.graph.name or "model")
    proto = onnx.load(str(model)) if isinstance(model, (str, Path)) else model
    g = _Graph(proto)
    qdq = [n for n in proto.graph.node if n.op_type in QDQ_OPS]
    violations: list[Violation] = []
    if not qdq:
        violations.append(Violation("no-qdq", source, "no QuantizeLinear/DequantizeLinear nodes: not an INT8 graph"))
    per_channel = 0
    for node in qdq:
        violations += _check_node(g, node)
        scale = g.consts.get(node.input[1])
        weight = node.op_type == "DequantizeLinear" and node.input[0] in g.consts
        per_channel += weight and getattr(scale, "size", 1) > 1
    return QdqReport(
        source=source,
        quantize_nodes=sum(n.op_type == "QuantizeLinear" for n in qdq),
        dequantize_nodes=sum(n.op_type == "DequantizeLinear" for n in qdq),
        per_channel_weights=per_channel,
        violations=tuple(violations),
    )
