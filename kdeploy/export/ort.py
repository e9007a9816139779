"""ONNX Runtime, one way for export, quantize and bench: sessions with fixed threads, logits, accuracy.

:func:`make_session` is the only place an ``InferenceSession`` is configured: intra-op threads fixed (default:
every core this process may use), inter-op 1 and sequential execution, so latencies are reproducible.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from kdeploy.data import Split
from kdeploy.errors import UserError, first_line
from kdeploy.evaluate import split_accuracy, split_logits
from kdeploy.runs import available_cores

CPU = ["CPUExecutionProvider"]
GRAPH_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def make_session(
    path: str | os.PathLike[str],
    threads: int | None = None,
    providers: Sequence[str] = CPU,
    graph_level: str = "all",
) -> ort.InferenceSession:
    """An InferenceSession with ``threads`` intra-op threads (default :func:`available_cores`); raises what ORT
    raises for a file it cannot load."""
    if graph_level not in GRAPH_LEVELS:
        raise ValueError(f"graph_level must be one of {tuple(GRAPH_LEVELS)}, got {graph_level!r}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or available_cores()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = GRAPH_LEVELS[graph_level]
    opts.log_severity_level = 3  # errors only; ORT warnings about unused initializers are noise here
    return ort.InferenceSession(str(path), sess_options=opts, providers=list(providers))


def try_session(
    path: str | os.PathLike[str], threads: int | None = None, graph_level: str = "all"
) -> tuple[ort.InferenceSession | None, str]:
    """``(session, "")`` or ``(None, first line of ONNX Runtime's error)`` (CPU provider)."""
    try:
        return make_session(path, threads, graph_level=graph_level), ""
    except Exception as exc:  # onnxruntime raises its own pybind exception types (Fail, NotImplemented, ...)
        return None, first_line(exc)


def open_session(path: str | os.PathLike[str], threads: int | None = None) -> ort.InferenceSession:
    """An ONNX Runtime CPU session; a file it cannot load is a :class:`UserError`."""
    if not Path(path).is_file():
        raise UserError(f"{path}: no such ONNX file; run `kdeploy export --onnx` first")
    session, error = try_session(path, threads)
    if session is None:
        raise UserError(f"{path}: ONNX Runtime cannot load it ({error}); re-run `kdeploy export`")
    return session


def run_batch(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    """Logits for one float32 N×C×H×W batch, as float32 (fp16 graphs with fp16 outputs are cast)."""
    out = session.run(None, {session.get_inputs()[0].name: x})[0]
    return np.asarray(out, dtype=np.float32)


def onnx_logits(
    session: ort.InferenceSession, split: Split, mean: Sequence[float], std: Sequence[float], batch_size: int = 256
) -> np.ndarray:
    """Logits for every sample of ``split``, in order."""
    return split_logits(lambda x: run_batch(session, x.numpy()), split, mean, std, batch_size)


def onnx_accuracy(
    path: str | os.PathLike[str],
    split: Split,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 256,
    threads: int | None = None,
) -> float:
    """Top-1 accuracy of an ONNX classifier on ``split`` with the ONNX Runtime CPU provider."""
    session = open_session(path, threads)
    return split_accuracy(lambda x: run_batch(session, x.numpy()), split, mean, std, batch_size)
