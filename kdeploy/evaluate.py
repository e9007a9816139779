"""Accuracy over a split, one way for every runtime: PyTorch, ONNX Runtime, TensorRT and the bench runners.

A runtime is wrapped as a ``predict`` callable (a normalised float32 CPU batch in, logits out as numpy or torch);
:func:`split_logits`, :func:`count_correct` and :func:`split_accuracy` feed it the split in order.
:func:`accuracy` and :func:`predict_logits` are the PyTorch shorthands the trainer uses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from kdeploy.data import Split, iterate_batches

Predict = Callable[[torch.Tensor], "np.ndarray | torch.Tensor"]


def _numpy(logits: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(logits, torch.Tensor):
        return logits.detach().float().cpu().numpy()
    return np.asarray(logits, dtype=np.float32)


def _batches(
    predict: Predict, split: Split, mean: Sequence[float], std: Sequence[float], batch_size: int
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    for x, y, _ in iterate_batches(split, batch_size, shuffle=False, mean=mean, std=std):
        yield _numpy(predict(x)), y


def split_logits(
    predict: Predict, split: Split, mean: Sequence[float], std: Sequence[float], batch_size: int = 1000
) -> np.ndarray:
    """Logits (float32) for every sample of ``split``, in order."""
    outs = [logits for logits, _ in _batches(predict, split, mean, std, batch_size)]
    return np.concatenate(outs) if outs else np.empty((0, 0), dtype=np.float32)


def count_correct(
    predict: Predict, split: Split, mean: Sequence[float], std: Sequence[float], batch_size: int = 1000
) -> int:
    """How many samples of ``split`` ``predict`` classifies right (top-1); distributed callers sum the counts."""
    return sum(
        int((logits.argmax(1) == y.numpy()).sum()) for logits, y in _batches(predict, split, mean, std, batch_size)
    )


def split_accuracy(
    predict: Predict, split: Split, mean: Sequence[float], std: Sequence[float], batch_size: int = 1000
) -> float:
    """Top-1 accuracy of ``predict`` on ``split`` (NaN for an empty split)."""
    if len(split) == 0:
        return float("nan")
    return count_correct(predict, split, mean, std, batch_size) / len(split)


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of logits already computed (e.g. kept for a comparison); NaN without samples."""
    if len(labels) == 0:
        return float("nan")
    return int((logits.argmax(1) == labels).sum()) / len(labels)


# ---- PyTorch ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def torch_predict(model: nn.Module, device: torch.device | str = "cpu") -> Predict:
    """``predict`` for a module: the batch moved to ``device``, float32 logits back on the CPU."""
    return lambda x: model(x.to(device, non_blocking=True)).float().cpu()


def predict_logits(
    model: nn.Module,
    split: Split,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 1000,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Logits for every sample of ``split``, in order (eval mode; the module's mode is restored)."""
    with _eval_mode(model):
        return torch.from_numpy(split_logits(torch_predict(model, device), split, mean, std, batch_size))


def accuracy(
    model: nn.Module,
    split: Split,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 1000,
    device: torch.device | str = "cpu",
) -> float:
    """Top-1 accuracy of a PyTorch module on ``split`` (eval mode; the module's mode is restored)."""
    with _eval_mode(model):
        return split_accuracy(torch_predict(model, device), split, mean, std, batch_size)
