"""Batch-level mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) with ``Beta(a, a)`` mixing weights.

Each batch is mixed with itself reversed (as timm's ``Mixup`` does), so no second batch is drawn. The draws come
from a NumPy generator seeded by (seed, epoch): a resumed or distributed run mixes the same way. The student's
teacher then runs on the mixed batch ("consistent teaching", Beyer et al. 2022).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class Mixed:
    images: Tensor
    labels: Tensor  # the label of the larger share of each sample (train accuracy, methods that need a class)
    target_probs: Tensor  # the mixed one-hot targets of the cross-entropy term


def mixing_rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, 0x6D6978])


def one_hot(labels: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    probs = torch.nn.functional.one_hot(labels, num_classes).float()
    return probs * (1.0 - smoothing) + smoothing / num_classes if smoothing else probs


def mix_batch(
    images: Tensor, labels: Tensor, num_classes: int, mixup: float, cutmix: float, rng: np.random.Generator
) -> Mixed:
    """Mix ``images`` (N×C×H×W, normalised) with their reverse; with both ``mixup`` and ``cutmix`` set, each batch
    uses one of the two, chosen with equal odds."""
    use_cutmix = cutmix > 0 and (mixup <= 0 or rng.random() < 0.5)
    lam = float(rng.beta(cutmix, cutmix) if use_cutmix else rng.beta(mixup, mixup))
    partner = images.flip(0)
    if use_cutmix:
        h, w = images.shape[-2:]
        cut_h, cut_w = int(h * np.sqrt(1.0 - lam)), int(w * np.sqrt(1.0 - lam))
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
        mixed = images.clone()
        mixed[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)  # the share the box really left
    else:
        mixed = images * lam + partner * (1.0 - lam)
    other = labels.flip(0)
    probs = one_hot(labels, num_classes) * lam + one_hot(other, num_classes) * (1.0 - lam)
    return Mixed(mixed, labels if lam >= 0.5 else other, probs)
