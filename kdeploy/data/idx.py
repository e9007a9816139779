"""IDX files (MNIST's format), gzip-compressed or not, and the ``mnist`` / ``fashion_mnist`` datasets."""

from __future__ import annotations

import gzip
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdeploy.data import download as dl
from kdeploy.data.datasets import LoadRequest, RawData, Split, register_dataset
from kdeploy.data.roots import resolve
from kdeploy.errors import UserError

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_UBYTE = 0x08


def _corrupt(path: Path, detail: str) -> UserError:
    return UserError(f"{path}: corrupt IDX file ({detail}); re-download it")


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An unsigned-byte IDX file with ``ndim`` dimensions as a numpy array (a view on the file's bytes)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror}); check the file's permissions") from None
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise _corrupt(path, f"damaged gzip: {exc}") from None
    header = 4 + 4 * ndim
    if len(data) < header:
        raise _corrupt(path, f"expected at least {header} bytes, got {len(data)}")
    magic = int.from_bytes(data[:4], "big")
    expected_magic = (_UBYTE << 8) | ndim
    if magic != expected_magic:
        raise _corrupt(path, f"bad magic 0x{magic:08x}, expected 0x{expected_magic:08x}")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        raise _corrupt(path, f"expected {expected} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _candidates(stem: str) -> list[str]:
    dotted = stem.replace("-idx", ".idx")  # train-images.idx3-ubyte, a common re-packaging
    return [stem + ".gz", stem, dotted + ".gz", dotted]


def find_idx_files(folder: Path, notes: list[str]) -> dict[str, Path] | None:
    """The four standard IDX files in ``folder`` (any of ``.gz``/plain), or None (noting a partial set)."""
    found: dict[str, Path] = {}
    for key, stem in IDX_FILES.items():
        for name in _candidates(stem):
            if (folder / name).is_file():
                found[key] = folder / name
                break
    if len(found) == len(IDX_FILES):
        return found
    if found:
        missing = [f"{stem}[.gz]" for key, stem in IDX_FILES.items() if key not in found]
        notes.append(f"{folder} lacks {', '.join(missing)}")
    return None


def _split(images: np.ndarray, labels: np.ndarray, paths: tuple[Path, Path], num_classes: int) -> Split:
    if images.shape[0] != labels.shape[0]:
        raise _corrupt(paths[1], f"{labels.shape[0]} labels for {images.shape[0]} images")
    if labels.size and int(labels.max()) >= num_classes:
        raise _corrupt(paths[1], f"label {int(labels.max())} out of range 0..{num_classes - 1}")
    x = torch.from_numpy(images.reshape(images.shape[0], 1, *images.shape[1:]).copy())
    return Split(x, torch.from_numpy(labels.astype(np.int64)))


def load_idx_folder(files: dict[str, Path], num_classes: int) -> tuple[Split, Split]:
    """Read the four files (in parallel: gzip releases the GIL) into train and test splits."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        arrays = dict(
            zip(files, pool.map(lambda k: read_idx(files[k], 3 if k.endswith("images") else 1), files), strict=True)
        )
    train = _split(
        arrays["train_images"], arrays["train_labels"], (files["train_images"], files["train_labels"]), num_classes
    )
    test = _split(
        arrays["test_images"], arrays["test_labels"], (files["test_images"], files["test_labels"]), num_classes
    )
    return train, test


@dataclass(frozen=True)
class IdxInfo:
    name: str
    aliases: tuple[str, ...]
    tv_class: str  # torchvision dataset class (download URLs and its <root>/<class>/raw layout)
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]


MNIST = IdxInfo(
    name="mnist",
    aliases=("mnist", "MNIST"),
    tv_class="MNIST",
    classes=tuple(str(i) for i in range(10)),
    mean=(0.1307,),
    std=(0.3081,),
)
FASHION_MNIST = IdxInfo(
    name="fashion_mnist",
    aliases=("fashion_mnist", "fashion-mnist", "FashionMNIST", "fashionmnist"),
    tv_class="FashionMNIST",
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    mean=(0.2860,),
    std=(0.3530,),
)


def load_idx_dataset(info: IdxInfo, request: LoadRequest) -> RawData:
    def fetch(target: Path) -> None:
        dl.download_idx(info.name, info.tv_class, target)

    files = resolve(info.name, request.root, info.aliases, find_idx_files, fetch if request.download else None)
    train, test = load_idx_folder(files, len(info.classes))
    return RawData(
        train=train,
        test=test,
        classes=list(info.classes),
        mean=info.mean,
        std=info.std,
        source=str(files["train_images"].parent),
    )


@register_dataset("mnist")
def load_mnist(request: LoadRequest) -> RawData:
    return load_idx_dataset(MNIST, request)


@register_dataset("fashion_mnist")
def load_fashion_mnist(request: LoadRequest) -> RawData:
    return load_idx_dataset(FASHION_MNIST, request)
