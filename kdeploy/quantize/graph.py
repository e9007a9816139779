"""ONNX graph rewrites and inspection for the quantizers (no ONNX Runtime here)."""

from __future__ import annotations

import ast
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from kdeploy.export.qdq_check import consumers, producers

NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"  # the dynamo exporter's module path of each node
INTEGER_OPS = ("MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "QLinearMatMul", "QLinearConv")


def _attr(node: onnx.NodeProto, name: str, default: float) -> float:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def gemm_to_matmul(model: onnx.ModelProto) -> int:
    """Rewrite ``Gemm(A, W, b)`` with a constant ``W`` (alpha = beta = 1, no transA) as ``MatMul(A, W') + b``.

    Numerically the same function; it lets ORT's dynamic quantizer, which covers MatMul but not Gemm, quantize
    ``nn.Linear`` layers. Returns how many nodes were rewritten (in place).
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    uses = Counter(i for n in graph.node for i in n.input)
    new_nodes: list[onnx.NodeProto] = []
    count = 0
    for node in graph.node:
        ok = (
            node.op_type == "Gemm"
            and node.input[1] in inits
            and _attr(node, "alpha", 1.0) == 1.0
            and _attr(node, "beta", 1.0) == 1.0
            and int(_attr(node, "transA", 0)) == 0
        )
        if not ok:
            new_nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if int(_attr(node, "transB", 0)):
            weight = np.ascontiguousarray(weight.T)
        w_name = f"{node.input[1]}__matmul"
        graph.initializer.append(numpy_helper.from_array(weight, w_name))
        uses[node.input[1]] -= 1
        has_bias = len(node.input) > 2 and node.input[2] != ""
        mm_out = f"{node.output[0]}__matmul" if has_bias else node.output[0]
        new_nodes.append(onnx.helper.make_node("MatMul", [node.input[0], w_name], [mm_out], name=f"{node.name}_matmul"))
        if has_bias:
            new_nodes.append(
                onnx.helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=f"{node.name}_add")
            )
        count += 1
    if count:
        del graph.node[:]
        graph.node.extend(new_nodes)
        unused = [t for t in graph.initializer if uses.get(t.name, 0) <= 0 and t.name in inits]
        for t in unused:
            graph.initializer.remove(t)
    return count


def op_counts(path: Path) -> Counter[str]:
    return Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


def gelu_nodes(model: onnx.ModelProto) -> list[list[str]]:
    """The node names of each exact GELU the export decomposed, ``x * 0.5 * (1 + erf(x / sqrt 2))`` (opset < 20):
    the Div (or Mul), Erf, Add and both Muls. Kept out of static quantization, GELU runs in float between a
    dequantize of ``x`` and a quantize of its output, instead of with a Q/DQ pair on its Erf, Add and inner Mul
    outputs too."""
    graph = model.graph
    made, uses = producers(graph), consumers(graph)
    found: list[list[str]] = []
    for erf in (n for n in graph.node if n.op_type == "Erf"):
        scale = made.get(erf.input[0])
        if scale is None or scale.op_type not in ("Div", "Mul"):
            continue
        x, chain, tensor = scale.input[0], [scale, erf], erf.output[0]
        while len(uses.get(tensor, [])) == 1 and uses[tensor][0].op_type in ("Add", "Mul") and len(chain) < 6:
            node = uses[tensor][0]
            chain.append(node)
            tensor = node.output[0]
            if node.op_type == "Mul" and x in node.input:
                found.append([n.name for n in chain])
                break
    return found


def module_nodes(model: onnx.ModelProto, paths: Sequence[str]) -> dict[str, list[str]]:
    """Each module path (``stem.0``) -> the names of the nodes exported from that module or its submodules, read
    from the dynamo exporter's name scopes or the TorchScript exporter's ``/stem/stem.0/Conv`` node names."""
    found: dict[str, list[str]] = {path: [] for path in paths}
    for node in model.graph.node:
        scopes = _scopes(node)
        for path in paths:
            if path in scopes:
                found[path].append(node.name)
    return found


def _scopes(node: onnx.NodeProto) -> set[str]:
    for prop in node.metadata_props:
        if prop.key == NAME_SCOPES_KEY:
            return set(ast.literal_eval(prop.value))
    return set(node.name.split("/")[1:-1]) if node.name.startswith("/") else set()
