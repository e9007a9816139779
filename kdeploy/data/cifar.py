"""``cifar10`` / ``cifar100``: torchvision's python-pickle batches, an ImageFolder tree, or a JPEG tarball."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdeploy.data import download as dl
from kdeploy.data.datasets import LoadRequest, RawData, Split, check_num_classes, register_dataset
from kdeploy.data.imagefolder import is_tarball, load_image_tree
from kdeploy.data.roots import resolve
from kdeploy.errors import UserError


@dataclass(frozen=True)
class CifarInfo:
    name: str
    aliases: tuple[str, ...]
    tv_class: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str
    tarballs: tuple[str, ...]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


CIFAR10 = CifarInfo(
    name="cifar10",
    aliases=("cifar10", "cifar-10", "CIFAR10", "cifar-10-batches-py"),
    tv_class="CIFAR10",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_file="test_batch",
    meta_file="batches.meta",
    label_key="labels",
    names_key="label_names",
    tarballs=("cifar10-jpg.tar.gz", "cifar10-jpg.tgz", "cifar10-jpg.tar", "cifar10.tar.gz"),
    num_classes=10,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
)
CIFAR100 = CifarInfo(
    name="cifar100",
    aliases=("cifar100", "cifar-100", "CIFAR100", "cifar-100-python"),
    tv_class="CIFAR100",
    train_files=("train",),
    test_file="test",
    meta_file="meta",
    label_key="fine_labels",
    names_key="fine_label_names",
    tarballs=("cifar100-jpg.tar.gz", "cifar100-jpg.tgz", "cifar100-jpg.tar", "cifar100.tar.gz"),
    num_classes=100,
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
)


@dataclass(frozen=True)
class Found:
    kind: str  # "pickle", "tree" (ImageFolder folder) or "tarball"
    path: Path


def _probe(info: CifarInfo) -> Callable[[Path, list[str]], Found | None]:
    def probe(folder: Path, notes: list[str]) -> Found | None:
        needed = [*info.train_files, info.test_file, info.meta_file]
        present = [f for f in needed if (folder / f).is_file()]
        if len(present) == len(needed):
            return Found("pickle", folder)
        if present:
            notes.append(f"{folder} lacks {', '.join(f for f in needed if f not in present)}")
        if (folder / "train").is_dir() and (folder / "test").is_dir():
            return Found("tree", folder)
        for name in info.tarballs:
            if (folder / name).is_file():
                return Found("tarball", folder / name)
        return None

    return probe


def _unpickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh, encoding="latin1")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as exc:
        raise UserError(f"{path}: corrupt CIFAR batch file ({exc}); re-download it") from None


def _pickle_split(info: CifarInfo, folder: Path, files: tuple[str, ...]) -> Split:
    images, labels = [], []
    for name in files:
        batch = _unpickle(folder / name)
        try:
            data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            target = np.asarray(batch[info.label_key], dtype=np.int64)
        except (KeyError, ValueError) as exc:
            raise UserError(f"{folder / name}: corrupt CIFAR batch file ({exc}); re-download it") from None
        if len(target) != len(data) or (len(target) and not 0 <= target.min() <= target.max() < info.num_classes):
            raise UserError(f"{folder / name}: corrupt CIFAR batch file (bad labels); re-download it")
        images.append(data)
        labels.append(target)
    return Split(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)))


def load_cifar(info: CifarInfo, request: LoadRequest) -> RawData:
    def fetch(target: Path) -> None:
        dl.download_cifar(info.name, info.tv_class, target)

    if request.root is not None and is_tarball(request.root):
        found = Found("tarball", request.root)
    else:
        found = resolve(info.name, request.root, info.aliases, _probe(info), fetch if request.download else None)
    if found.kind == "pickle":
        classes = [str(c) for c in _unpickle(found.path / info.meta_file)[info.names_key]]
        train = _pickle_split(info, found.path, info.train_files)
        test = _pickle_split(info, found.path, (info.test_file,))
        val = None
    else:
        tree = load_image_tree(info.name, found.path, request.image_size or (32, 32))
        classes, train, test, val = tree.classes, tree.splits["train"], tree.splits["test"], tree.splits.get("val")
    check_num_classes(info.name, classes, info.num_classes, str(found.path))
    return RawData(
        train=train, test=test, val=val, classes=classes, mean=info.mean, std=info.std, source=str(found.path)
    )


@register_dataset("cifar10")
def load_cifar10(request: LoadRequest) -> RawData:
    return load_cifar(CIFAR10, request)


@register_dataset("cifar100")
def load_cifar100(request: LoadRequest) -> RawData:
    return load_cifar(CIFAR100, request)
