"""A CIFAR CNN that trains to high accuracy in few epochs: patch-whitening stem, three conv blocks, GELU.

The shape follows the published fast-CIFAR line of work (Page's ResNet-9 notes, Keller Jordan's airbench): a
2×2 stem convolution whose filters are the whitening transform of 2×2 image patches (set from data by
:meth:`FastCNN.init_from_data`, then frozen), three blocks of conv → max-pool → BatchNorm → GELU → conv →
BatchNorm → GELU, global max-pooling and a linear head scaled down by ``head_scale``. BatchNorm scales are
frozen at 1 (only the shifts learn), which keeps a large learning rate stable.

On 3×32×32 images ``widths=(64, 256, 256)`` has 1,972,792 parameters (the teacher of ``cifar10_fast.yaml``),
``(40, 160, 160)`` 775,192 and ``(32, 48, 48)`` 93,464 (the students of ``cifar10_fast.yaml`` and
``cifar10_fast_tiny.yaml``). ``tta="flip"`` makes the model average its logits over the image and its mirror
image in eval mode (test-time augmentation); ``tta="flip_translate"`` also averages over two copies shifted by one
pixel (up-left and down-right, reflect-padded), each with its mirror: six passes, half the weight on the
unshifted pair, as in the published fast-CIFAR line of work. TTA is part of the model, so exported ONNX files and
every accuracy measured downstream include it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from kdeploy.models.registry import register_model

STEM_PATCH = 2
TTA_MODES = ("none", "flip", "flip_translate")


class ShiftBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose scale is frozen at 1 and whose shift is stored divided by ``shift_scale``.

    Storing ``bias / s`` makes plain SGD move the shift s² times faster than the other weights (weight decay
    stays proportional), the per-parameter learning-rate boost of the fast-CIFAR recipes expressed in the model,
    so any optimizer configuration trains it the same way. Exports as an ordinary BatchNormalization.
    """

    def __init__(self, channels: int, momentum: float, shift_scale: float) -> None:
        super().__init__(channels, momentum=momentum)
        self.weight.requires_grad_(False)
        self.shift_scale = shift_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias * self.shift_scale,
            self.training,
            self.momentum,
            self.eps,
        )


def _conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    """3×3 convolution whose first ``in_channels`` filters start as identities (Dirac), the rest random."""
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[: min(in_channels, out_channels)])
    return conv


class _Block(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, bn_momentum: float, shift_scale: float) -> None:
        super().__init__(
            _conv(in_channels, out_channels),
            nn.MaxPool2d(2),
            ShiftBatchNorm(out_channels, bn_momentum, shift_scale),
            nn.GELU(),
            _conv(out_channels, out_channels),
            ShiftBatchNorm(out_channels, bn_momentum, shift_scale),
            nn.GELU(),
        )


@register_model("fast_cnn")
class FastCNN(nn.Module):
    """Fast-training CIFAR CNN; children ``stem``, ``block1``-``block3`` (feature layers), ``pool``, ``head``."""

    def __init__(
        self,
        *,
        num_classes: int,
        in_shape: tuple[int, int, int],
        widths: Sequence[int] = (64, 256, 256),
        head_scale: float = 1 / 9,
        bn_momentum: float = 0.4,
        shift_scale: float = 8.0,
        tta: Literal["none", "flip", "flip_translate"] = "none",
    ) -> None:
        super().__init__()
        if len(widths) != 3 or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths):
            raise ValueError(f"widths must be three positive integers, got {widths!r}")
        if tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
        channels = in_shape[0]
        stem_width = 2 * channels * STEM_PATCH * STEM_PATCH  # each whitening filter and its negation
        self.stem = nn.Sequential(nn.Conv2d(channels, stem_width, STEM_PATCH, bias=True), nn.GELU())
        self.stem[0].weight.requires_grad_(False)
        self.block1 = _Block(stem_width, widths[0], bn_momentum, shift_scale)
        self.block2 = _Block(widths[0], widths[1], bn_momentum, shift_scale)
        self.block3 = _Block(widths[1], widths[2], bn_momentum, shift_scale)
        self.pool = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.head = nn.Linear(widths[2], num_classes, bias=False)
        self.head_scale = head_scale
        self.tta = tta

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.stem(x))))
        return self.head(self.pool(x)) * self.head_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self.tta == "none":
            return self.features(x)
        logits = self._mirrored(x)  # the plain image first: feature hooks keep a module's first output
        if self.tta == "flip":
            return logits
        h, w = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        shifted = self._mirrored(padded[..., :h, :w]) + self._mirrored(padded[..., 2:, 2:])
        return 0.5 * logits + 0.25 * shifted

    def _mirrored(self, x: torch.Tensor) -> torch.Tensor:
        """Logits averaged over the image and its mirror image."""
        return 0.5 * (self.features(x) + self.features(x.flip(-1)))

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the stem to the whitening transform of the images' 2×2 patches (eigenvectors scaled by
        1/sqrt(eigenvalue)), each filter paired with its negation so the GELU after it keeps both signs."""
        conv = self.stem[0]
        c = images.shape[1]
        patches = images.float().unfold(2, STEM_PATCH, 1).unfold(3, STEM_PATCH, 1)  # N, C, H', W', p, p
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * STEM_PATCH * STEM_PATCH)
        patches = patches - patches.mean(0, keepdim=True)
        cov = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        filters = (eigenvectors.T / (eigenvalues + eps).sqrt()[:, None]).reshape(-1, c, STEM_PATCH, STEM_PATCH)
        conv.weight.copy_(torch.cat([filters, -filters]).to(conv.weight))
        conv.bias.zero_()
