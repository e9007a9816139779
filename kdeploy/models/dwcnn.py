"""A small MobileNet-style CNN: a 3×3 stem, depthwise-separable blocks, global average pooling, a linear head.

Each block is a depthwise 3×3 convolution (one filter per channel) → BatchNorm → ReLU, then a pointwise 1×1
convolution → BatchNorm → ReLU (Howard et al. 2017, MobileNets). Channels are ``4*width`` (stem), then ``8*width``
and ``16*width``; the first block of each of those two stages has stride 2, so 28×28 inputs give 14×14, 7×7
features and 32×32 inputs 16×16, 8×8. ``width=4`` with 10 classes has 10,474 parameters on 1×28×28 inputs
and 10,762 on 3×32×32.

It is the classic hard case for per-tensor INT8 weights: once BatchNorm is folded into the depthwise filters (nine
weights each), their per-channel ranges differ, by orders of magnitude in long-trained MobileNets (Nagel et al.
2019, data-free quantization), so one scale per tensor rounds the small channels coarsely or away.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from kdeploy.models.cnn import check_width, finish_classifier
from kdeploy.models.registry import register_model

# (output channels as a multiple of width, stride) of the depthwise-separable blocks
BLOCKS = ((8, 2), (8, 1), (16, 2), (16, 1))


def separable(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """Depthwise 3×3 → BN → ReLU → pointwise 1×1 → BN → ReLU, children ``dw``, ``dw_bn``, ``dw_act``, ``pw``..."""
    return nn.Sequential(
        OrderedDict(
            dw=nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=1, groups=in_channels, bias=False),
            dw_bn=nn.BatchNorm2d(in_channels),
            dw_act=nn.ReLU(),
            pw=nn.Conv2d(in_channels, out_channels, 1, bias=False),
            pw_bn=nn.BatchNorm2d(out_channels),
            pw_act=nn.ReLU(),
        )
    )


class DWCNN(nn.Module):
    """Children ``stem``, ``block1`` ... ``block4`` (feature layers), ``pool``, ``drop``, ``head``."""

    def __init__(self, *, num_classes: int, in_shape: tuple[int, int, int], width: int = 4,
                 dropout: float = 0.1) -> None:  # fmt: skip
        super().__init__()
        check_width(width)
        channels = 4 * width
        self.stem = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(in_shape[0], channels, 3, padding=1, bias=False),
                bn=nn.BatchNorm2d(channels),
                act=nn.ReLU(),
            )
        )
        for index, (mult, stride) in enumerate(BLOCKS, start=1):
            self.add_module(f"block{index}", separable(channels, mult * width, stride))
            channels = mult * width
        finish_classifier(self, channels, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for index in range(1, len(BLOCKS) + 1):
            x = getattr(self, f"block{index}")(x)
        return self.head(self.drop(self.pool(x)))


@register_model("dwcnn")
def dwcnn(*, num_classes: int, in_shape: tuple[int, int, int], width: int = 4, dropout: float = 0.1) -> DWCNN:
    """MobileNet-style depthwise-separable CNN; ``width=4`` (10k parameters) suits Fashion-MNIST students."""
    return DWCNN(num_classes=num_classes, in_shape=in_shape, width=width, dropout=dropout)
