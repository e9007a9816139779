"""What kdeploy ships, readable without importing torch: the shipped recipes and the built-in model and dataset
names with one-line descriptions.

``kdeploy recipes``, ``models`` and ``datasets`` read this module so that they answer at once (torch alone takes
about 2 s to import). The registries stay the source of truth for building things: ``tests/test_cli.py`` checks
that the names here are exactly the registered ones, so a new built-in model or dataset fails the tests until it
has its line here (the same line as in README's tables).
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"

_CIFAR_RESNET = "CIFAR ResNet (He et al.), depth {}, filters {}"
MODELS: dict[str, str] = {
    "mlp": "MLP (kwargs: hidden, dropout, input_dropout); hidden: [] is a linear classifier",
    "cnn": "scalable CNN (kwargs: width, dropout, convs); width 8 suits Fashion-MNIST students, 32 a CIFAR teacher",
    **{f"resnet{depth}": _CIFAR_RESNET.format(depth, "16-16-32-64") for depth in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": _CIFAR_RESNET.format(8, "32-64-128-256"),
    "resnet32x4": _CIFAR_RESNET.format(32, "32-64-128-256"),
    "dwcnn": "MobileNet-style depthwise-separable CNN (kwargs: width, dropout); width 4 ~10k, hard for per-tensor INT8",
    "fast_cnn": "fast-training CIFAR CNN: whitening stem, 3 conv blocks (kwargs: widths, tta: none, flip or "
    "flip_translate); (64, 256, 256) ~2M",
    "ensemble": "mean logits of trained members, a teacher (kwargs: model, members, member_kwargs; checkpoint: a list)",
    "torchvision": "a torchvision.models architecture (kwargs: arch, small_input, weights)",
    "timm": "a timm architecture, needs the timm extra (kwargs: arch, pretrained, model_kwargs)",
}

DATASETS: dict[str, str] = {
    "mnist": "MNIST handwritten digits, 28x28 grey, 10 classes (IDX files)",
    "fashion_mnist": "Fashion-MNIST clothing, 28x28 grey, 10 classes (IDX files)",
    "cifar10": "CIFAR-10, 32x32 colour, 10 classes (python pickles, an image tree or a JPEG tarball)",
    "cifar100": "CIFAR-100, 32x32 colour, 100 classes (python pickles, an image tree or a JPEG tarball)",
    "imagefolder": "your images in class folders (train/<class>/*.jpg, test/..., optional val/...) or a tarball",
}


def shipped_recipes(folder: str | os.PathLike[str] | None = None) -> list[tuple[str, str]]:
    """(path, description) of every recipe in ``recipes/``."""
    root = Path(folder) if folder else RECIPES_DIR
    found = []
    for p in sorted(root.glob("*.yaml")):
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            continue
        found.append((str(p), str(raw.get("description", "")).strip()))
    return found
