"""Batches by indexing in-memory splits: shuffle, shard (like DistributedSampler), augment, normalise."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from kdeploy.data.datasets import Split
from kdeploy.data.transforms import Augment, augment_with_views, normalize


def shard_indices(
    n: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    shard: tuple[int, int] = (0, 1),
) -> torch.Tensor:
    """This rank's indices of one epoch: DistributedSampler's rule (pad by wrapping, or trim when drop_last)
    so every rank gets the same count; ranks must share the generator's seed to share the permutation."""
    rank, world = shard
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"shard {shard} is invalid; expected (rank, world) with 0 <= rank < world")
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    if n == 0:
        return order
    if drop_last:
        total = (n // world) * world
        order = order[:total]
    else:
        total = math.ceil(n / world) * world
        if total > n:
            order = torch.cat([order, order.repeat(math.ceil((total - n) / n))[: total - n]])
    return order[rank:total:world]


def count_batches(n: int, batch_size: int, *, drop_last: bool = False, shard: tuple[int, int] = (0, 1)) -> int:
    """How many batches ``iterate_batches`` yields for a split of ``n`` samples."""
    world = shard[1]
    per_rank = n // world if drop_last else math.ceil(n / world)
    return per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)


def iterate_batches(split: Split, batch_size: int, **options: Any) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Yield ``(x, y, idx)``: float32 normalised N×C×H×W, int64 labels, int64 indices into ``split``. The
    keyword options (``shuffle`` required) are those of ``iterate_batches_with_views``."""
    for x, y, idx, _ in iterate_batches_with_views(split, batch_size, **options):
        yield x, y, idx


def iterate_batches_with_views(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    augment: Augment | None = None,
    mean: float | Sequence[float] = 0.0,
    std: float | Sequence[float] = 1.0,
    drop_last: bool = False,
    shard: tuple[int, int] = (0, 1),
    device: torch.device | str | None = None,
) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor | None]]:
    """Yield ``(x, y, idx, view)``: float32 normalised N×C×H×W, int64 labels, int64 indices into ``split``,
    and the view the augmentation made of each image (``augment_with_views``; on the images' device; None
    without augmentation).

    One epoch per call. ``drop_last`` trims the shard to equal parts and drops the last short batch.
    ``device``: move the uint8 batch there before augmenting and normalising (4x less to transfer); a split whose
    tensors already live on a GPU is indexed there. ``idx`` stays on the CPU.
    The default mean/std give the [0, 1] scale: pass the dataset's.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = shard_indices(len(split), shuffle=shuffle, generator=generator, drop_last=drop_last, shard=shard)
    augment_generator = generator
    if generator is not None and shard[1] > 1:
        # ranks share the generator (one permutation) but must not share crop/flip draws: each rank forks its own
        # stream from the shared state, still reproducible per (seed, epoch, rank)
        base = int(torch.randint(2**62, (1,), generator=generator))
        augment_generator = torch.Generator().manual_seed(base + shard[0])
    target = torch.device(device) if device is not None else None
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        if drop_last and len(idx) < batch_size:
            break
        at = idx.to(split.images.device, non_blocking=True)  # a split held on the GPU is gathered there
        images = split.images.index_select(0, at)
        labels = split.labels.index_select(0, at.to(split.labels.device))
        if target is not None:
            images = images.to(target, non_blocking=True)
            labels = labels.to(target, non_blocking=True)
        view = None
        if augment is not None and augment.enabled:
            images, view = augment_with_views(images, augment, augment_generator)
        yield normalize(images, mean, std), labels, idx, view
