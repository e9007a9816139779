"""ONNX Runtime helpers shared by export, quantize and bench: sessions with fixed threads, logits, accuracy."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from kdeploy.data import Split, iterate_batches
from kdeploy.errors import UserError

PROVIDERS = ["CPUExecutionProvider"]


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def try_session(path: str | os.PathLike[str], threads: int | None = None) -> tuple[ort.InferenceSession | None, str]:
    """``(session, "")`` or ``(None, first line of ONNX Runtime's error)``.

    ``threads`` fixes ``intra_op_num_threads`` (default: the CPUs this process may use); inter-op is 1 and
    execution sequential, so latency numbers are reproducible.
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or default_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only; ORT warnings about unused initializers are noise here
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=PROVIDERS), ""
    except Exception as exc:  # onnxruntime raises its own pybind exception types (Fail, NotImplemented, ...)
        text = str(exc).strip()
        return None, (text.splitlines()[0] if text else type(exc).__name__)[:300]


def open_session(path: str | os.PathLike[str], threads: int | None = None) -> ort.InferenceSession:
    """An ONNX Runtime CPU session; a file it cannot load is a :class:`UserError`."""
    if not Path(path).is_file():
        raise UserError(f"{path}: no such ONNX file; run `kdeploy export --onnx` first")
    session, error = try_session(path, threads)
    if session is None:
        raise UserError(f"{path}: ONNX Runtime cannot load it ({error}); re-run `kdeploy export`")
    return session


def input_name(session: ort.InferenceSession) -> str:
    return session.get_inputs()[0].name


def run_batch(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    """Logits for one float32 N×C×H×W batch, as float32 (fp16 graphs with fp16 outputs are cast)."""
    out = session.run(None, {input_name(session): x})[0]
    return np.asarray(out, dtype=np.float32)


def onnx_logits(
    session: ort.InferenceSession,
    split: Split,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 256,
) -> np.ndarray:
    """Logits for every sample of ``split``, in order."""
    outs = [
        run_batch(session, x.numpy())
        for x, _, _ in iterate_batches(split, batch_size, shuffle=False, mean=mean, std=std)
    ]
    return np.concatenate(outs) if outs else np.empty((0, 0), dtype=np.float32)


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    if len(labels) == 0:
        return float("nan")
    return float((logits.argmax(1) == labels).mean())


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
    return top1_accuracy(onnx_logits(session, split, mean, std, batch_size), split.labels.numpy())
