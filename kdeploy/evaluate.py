"""Test-set accuracy of a PyTorch module on an in-memory split (used by the trainer and bench)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kdeploy.data import Split, iterate_batches


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    split: Split,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 1000,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Logits for every sample of ``split``, in order."""
    was_training = model.training
    model.eval()
    outs = []
    for x, _, _ in iterate_batches(split, batch_size, shuffle=False, mean=mean, std=std):
        outs.append(model(x.to(device, non_blocking=True)).float().cpu())
    model.train(was_training)
    if not outs:
        return torch.empty(0)
    return torch.cat(outs)


def accuracy(
    model: nn.Module,
    split: Split,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 1000,
    device: torch.device | str = "cpu",
) -> float:
    if len(split) == 0:
        return float("nan")
    logits = predict_logits(model, split, mean, std, batch_size, device)
    return (logits.argmax(1) == split.labels).float().mean().item()
