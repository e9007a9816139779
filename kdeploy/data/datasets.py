"""In-memory datasets: ``Split``/``Dataset``, the dataset registry, and ``load_dataset`` (val split, limit)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from kdeploy.errors import UserError
from kdeploy.registry import Registry

ImageSize = int | tuple[int, int]


@dataclass
class Split:
    """One part of a dataset, whole in memory: uint8 images N×C×H×W (contiguous) and int64 labels N."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"Split.images must be uint8 N×C×H×W, got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"Split.labels must be int64 of length {self.images.shape[0]}")
        if not self.images.is_contiguous():
            self.images = self.images.contiguous()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @classmethod
    def empty(cls, shape: Sequence[int]) -> Split:
        return cls(torch.empty((0, *shape), dtype=torch.uint8), torch.empty(0, dtype=torch.int64))

    def subset(self, index: torch.Tensor) -> Split:
        return Split(self.images.index_select(0, index), self.labels.index_select(0, index))

    def head(self, n: int | None) -> Split:
        if n is None or n >= len(self):
            return self
        return Split(self.images[:n].clone(), self.labels[:n].clone())

    def sample(self, n: int | None, seed: int) -> Split:
        """A seeded random subset of ``n`` samples (in their original order), e.g. for quick runs: taking the
        first ``n`` of a class-sorted source (CIFAR's JPEG folders) would keep only one or two classes."""
        index = sample_index(len(self), n, seed)
        return self if index is None else self.subset(index)

    def compact(self) -> Split:
        """This split in memory of its own: a view into a bigger tensor keeps all of that tensor alive."""
        if self.images.untyped_storage().nbytes() <= self.images.nbytes:
            return self
        return Split(self.images.clone(), self.labels.clone())


def sample_index(size: int, n: int | None, seed: int) -> torch.Tensor | None:
    """The sorted positions of a seeded random ``n`` of ``size`` samples; None when that is all of them."""
    if n is None or n >= size:
        return None
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:n].sort().values


@dataclass(frozen=True)
class Carving:
    """Where the train and val samples sit in the official train set they were carved from (int64 positions,
    ascending): the val split is drawn per seed, but together the two parts are the same images for every seed."""

    train: torch.Tensor
    val: torch.Tensor


@dataclass
class Dataset:
    name: str
    train: Split  # the official train set minus the validation part
    val: Split  # a seeded random subset of the official train set (model selection)
    test: Split  # the official test set (final numbers only)
    num_classes: int
    classes: list[str]
    in_shape: tuple[int, int, int]
    mean: tuple[float, ...]  # per channel, [0, 1] scale
    std: tuple[float, ...]
    source: str  # where it was loaded from
    carving: Carving | None = None  # set when train and val were carved from one official train set

    @property
    def table_covers_val(self) -> bool:
        """Whether ``table_pool`` adds the val split to the train split (train and val carved from one set)."""
        return self.carving is not None and len(self.val) > 0

    def table_pool_size(self) -> int:
        """``len(self.table_pool()[0])``, without building the pool."""
        return len(self.train) + (len(self.val) if self.table_covers_val else 0)

    def table_pool(self) -> tuple[Split, torch.Tensor]:
        """The images a table of teacher outputs covers, and each training sample's row in it. With a carving,
        the train and val samples together in the official train set's order: the same images for every seed
        (whose val splits differ), so that all seeds share one stored table. Else the train split itself."""
        if not self.table_covers_val:
            return self.train, torch.arange(len(self.train))
        order = torch.cat([self.carving.train, self.carving.val]).argsort()
        rows = torch.empty_like(order)
        rows[order] = torch.arange(len(order))
        pool = Split(torch.cat([self.train.images, self.val.images])[order],
                     torch.cat([self.train.labels, self.val.labels])[order])  # fmt: skip
        return pool, rows[: len(self.train)]

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly description for run records."""
        return {
            "name": self.name,
            "source": self.source,
            "sizes": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
            "num_classes": self.num_classes,
            "in_shape": list(self.in_shape),
            "mean": list(self.mean),
            "std": list(self.std),
        }


@dataclass(frozen=True)
class LoadRequest:
    """What a registered loader is asked for."""

    name: str
    root: Path | None
    download: bool
    image_size: tuple[int, int] | None = None


@dataclass
class RawData:
    """What a registered loader returns: the official splits (``val`` only when the source has one)."""

    train: Split
    test: Split
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    val: Split | None = None
    extra: dict[str, Any] = field(default_factory=dict)


DatasetLoader = Callable[[LoadRequest], RawData]
DATASETS: Registry[DatasetLoader] = Registry("dataset")


def register_dataset(name: str) -> Callable[[DatasetLoader], DatasetLoader]:
    """Decorator: ``@register_dataset("name")`` on a ``LoadRequest -> RawData`` function."""
    return DATASETS.register(name)


def list_datasets() -> list[str]:
    return DATASETS.names()


def _image_size(value: ImageSize | None) -> tuple[int, int] | None:
    if value is None:
        return None
    size = (value, value) if isinstance(value, int) else tuple(value)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise UserError(f"image_size {value!r} is invalid; use a positive int or [height, width]")
    return (int(size[0]), int(size[1]))


def _val_count(val_size: int | float, n: int) -> int:
    if isinstance(val_size, bool) or not isinstance(val_size, int | float):
        raise UserError(f"val_size {val_size!r} is invalid; use a count (int >= 0) or a fraction in (0, 1)")
    if isinstance(val_size, float) and val_size != 0:
        if not 0 < val_size < 1:
            raise UserError(f"val_size {val_size} is invalid; a fraction must be in (0, 1), or give a count")
        count = round(val_size * n)
    else:
        count = int(val_size)
    if count < 0:
        raise UserError(f"val_size {val_size} is negative; use a count >= 0 or a fraction in (0, 1)")
    if count >= n:
        raise UserError(f"val_size {val_size} leaves no training samples (official train set: {n}); lower val_size")
    return count


def validation_index(size: int, val_size: int | float, seed: int, limit: int | None = None) -> Carving:
    """The positions of a seeded random held-out subset of ``size`` samples (``val``) and of the rest
    (``train``), each in ascending order and each narrowed to ``limit`` as ``Split.sample`` narrows a split."""
    count = _val_count(val_size, size)
    perm = torch.randperm(size, generator=torch.Generator().manual_seed(seed)) if count else torch.arange(size)
    parts = (perm[count:].sort().values, perm[:count].sort().values)
    train, val = (p if (keep := sample_index(len(p), limit, seed)) is None else p[keep] for p in parts)
    return Carving(train=train, val=val)


def resize_split(split: Split, size: tuple[int, int], chunk: int = 4096) -> Split:
    """Bilinear, antialiased resize of a whole split (in chunks, to bound memory)."""
    if tuple(split.images.shape[2:]) == size:
        return split
    out = torch.empty((len(split), split.images.shape[1], *size), dtype=torch.uint8)
    for start in range(0, len(split), chunk):
        x = split.images[start : start + chunk].float()
        y = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        out[start : start + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return Split(out, split.labels)


def load_dataset(
    name: str,
    *,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    val_size: int | float = 5000,
    seed: int = 0,
    limit: int | None = None,
    image_size: ImageSize | None = None,
) -> Dataset:
    """Load a registered dataset into memory and carve the validation split out of the official train set.

    ``val_size``: a count, a fraction in (0, 1), or 0 for an empty val split (ignored when the source ships
    its own ``val/``). ``limit`` keeps a seeded random subset of ``limit`` samples of each split (quick runs, tests).
    ``image_size`` resizes every split (int or (H, W)); ``None`` keeps the native size.
    """
    loader = DATASETS.get(name)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UserError(f"limit {limit!r} is invalid; use a positive int or leave it unset")
    size = _image_size(image_size)
    _val_count(val_size, n=2**62)  # type and range errors before the (slower) load
    request = LoadRequest(name=name, root=Path(root).expanduser() if root else None, download=download, image_size=size)
    raw = loader(request)
    if size is not None:
        raw.train, raw.test = resize_split(raw.train, size), resize_split(raw.test, size)
        raw.val = resize_split(raw.val, size) if raw.val is not None else None
    if raw.val is not None:
        carving = None
        train, val = raw.train.sample(limit, seed), raw.val.sample(limit, seed)
    else:
        carving = validation_index(len(raw.train), val_size, seed, limit)
        train, val = _take(raw.train, carving.train), raw.train.subset(carving.val)
        raw.test = raw.test.compact()  # train/val are copies now; a test view would pin all decoded images
    test = raw.test.sample(limit, seed)
    shape = tuple(int(s) for s in raw.train.images.shape[1:])
    channels = shape[0]
    for stat in (raw.mean, raw.std):
        if len(stat) != channels:
            raise ValueError(f"{name}: mean/std have {len(stat)} entries for {channels} channels")
    return Dataset(
        name=name,
        train=train,
        val=val,
        test=test,
        num_classes=len(raw.classes),
        classes=list(raw.classes),
        in_shape=(shape[0], shape[1], shape[2]),
        mean=tuple(float(m) for m in raw.mean),
        std=tuple(float(s) for s in raw.std),
        source=raw.source,
        carving=carving,
    )


def _take(split: Split, index: torch.Tensor) -> Split:
    """``split.subset(index)``, or ``split`` itself when ``index`` (ascending, unique) takes every sample."""
    return split if len(index) == len(split) else split.subset(index)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images on the [0, 1] scale (exact, from 256-bin histograms)."""
    if images.shape[0] == 0:
        raise ValueError("no images to compute statistics from")
    values = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        p = hist / hist.sum()
        mean = float((p * values).sum())
        var = float((p * values * values).sum()) - mean * mean
        means.append(round(mean, 4))
        stds.append(max(round(max(var, 0.0) ** 0.5, 4), 1e-4))
    return tuple(means), tuple(stds)


def check_num_classes(name: str, classes: Sequence[str], expected: int, source: str) -> None:
    if len(classes) != expected:
        raise UserError(f"{name}: {source} has {len(classes)} classes, expected {expected}; check the folder layout")


__all__ = [
    "DATASETS",
    "Carving",
    "Dataset",
    "DatasetLoader",
    "LoadRequest",
    "RawData",
    "Split",
    "channel_stats",
    "list_datasets",
    "load_dataset",
    "register_dataset",
]
