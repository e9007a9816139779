"""One short line of how an artifact was made, read from the settings its stage recorded (report.md's column)."""

from __future__ import annotations

from typing import Any

from kdeploy.artifacts.record import Artifact


def _weights(s: dict[str, Any]) -> str:
    """``8-bit per-tensor weights``, with the per-tensor try's accuracy when the quantize stage redid it per channel."""
    bits = 7 if s.get("reduce_range") else 8
    text = f"{bits}-bit per-{'channel' if s.get('per_channel') else 'tensor'} weights"
    tried = s.get("per_tensor_accuracy")
    return text + (f" (per tensor gave {tried:.2%}, under the gate)" if tried is not None else "")


def _int8(s: dict[str, Any]) -> str:
    if s.get("method") == "dynamic":
        return f"dynamic INT8, {_weights(s)}"
    parts = [f"static QDQ INT8 ({s.get('target', 'onnxruntime')})", _weights(s)]
    if s.get("calib_method"):
        parts.append(f"{s['calib_method']} ranges on {s.get('calib_samples', '?')} training images")
    if s.get("nodes_in_float"):
        parts.append(f"{s['nodes_in_float']} nodes in float")
    return ", ".join(parts)


def how_made(art: Artifact) -> str:
    """E.g. ``static QDQ INT8 (onnxruntime), 8-bit per-tensor weights, minmax ranges on 512 training images``."""
    s = art.settings
    if art.format == "onnx":
        return f"opset {s['opset']}" if "opset" in s else ""
    if art.format == "onnx-int8-qat":
        epochs = (s.get("qat") or {}).get("epochs", "?")
        return f"QAD ({epochs} epoch{'' if epochs == 1 else 's'}), then {_int8(s)}"
    if art.format.startswith("onnx-int8"):
        return _int8(s)
    if art.format == "onnx-fp16":
        return "fp16 weights and activations, fp32 inputs and outputs" if s.get("keep_io_types") else "fp16"
    if art.format.startswith("tensorrt"):
        return f"TensorRT {s.get('tensorrt', '?')} {s.get('precision', '')} engine on {s.get('device', '?')}"
    return ""
