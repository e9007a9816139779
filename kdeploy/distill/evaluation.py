"""Accuracy over a split and the teacher-output table, split across ranks when distributed.

Distributed, each rank scores every size-th sample (accuracy) or one contiguous slice (teacher outputs) and one
all-reduce assembles the result, so the work is shared instead of repeated.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdeploy.data import Augment, Dataset, Split, view_images
from kdeploy.distill.distributed import World
from kdeploy.evaluate import accuracy, predict_logits


class SplitScorer:
    """Accuracy of a model on a split of ``data`` (every rank gets the same number)."""

    def __init__(self, data: Dataset, world: World, batch_size: int) -> None:
        self.data, self.world, self.batch_size = data, world, batch_size
        self._parts: dict[int, Split] = {}

    def accuracy(self, model: nn.Module, split: Split) -> float:
        data, world = self.data, self.world
        if not world.distributed:
            return accuracy(model, split, data.mean, data.std, self.batch_size, world.device)
        if len(split) == 0:
            return float("nan")
        part = self._parts.get(id(split))
        if part is None:
            part = Split(split.images[world.rank :: world.size], split.labels[world.rank :: world.size])
            self._parts[id(split)] = part
        correct = 0.0
        if len(part):
            logits = predict_logits(model, part, data.mean, data.std, self.batch_size, world.device)
            correct = float((logits.argmax(1) == part.labels.to(logits.device)).sum().item())
        counts = world.sum(torch.tensor([correct, float(len(part))], dtype=torch.float64))
        return (counts[0] / counts[1]).item()


def teacher_table(
    teacher: nn.Module,
    data: Dataset,
    world: World,
    batch_size: int,
    views: Augment | None = None,
    images: Split | None = None,
) -> Tensor:
    """Teacher logits for every sample of ``images`` (default: the training split), computed once (valid only
    while the student's inputs are the stored images, or views of them under ``views``; no mixing). Kept on the
    training device. N×classes, or with ``views`` N×V×classes: the logits of every image in each of the
    augmentation's V views (``view_images``).

    Distributed, each rank computes one contiguous slice and an all-reduce over zero-filled buffers assembles
    the whole table on every rank (adding zeros is exact)."""
    split = data.train if images is None else images
    if views is None or views.num_views == 1:
        return _table(teacher, data, split, world, batch_size)
    tables = [
        _table(teacher, data, Split(view_images(split.images, views, v), split.labels), world, batch_size)
        for v in range(views.num_views)
    ]
    return torch.stack(tables, dim=1)


def _table(teacher: nn.Module, data: Dataset, train: Split, world: World, batch_size: int) -> Tensor:
    if not world.distributed:
        return predict_logits(teacher, train, data.mean, data.std, batch_size, world.device).to(world.device)
    bounds = [len(train) * r // world.size for r in range(world.size + 1)]
    lo, hi = bounds[world.rank], bounds[world.rank + 1]
    part = Split(train.images[lo:hi], train.labels[lo:hi])
    full = torch.zeros(len(train), data.num_classes)
    if hi > lo:
        full[lo:hi] = predict_logits(teacher, part, data.mean, data.std, batch_size, world.device)
    return world.sum(full).to(world.device)
