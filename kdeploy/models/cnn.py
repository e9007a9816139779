"""A scalable VGG-style CNN: three conv stages, global average pooling, a linear head.

Channels are ``4*width``, ``8*width``, ``16*width`` with 1, 2 and 2 convolutions per stage
(``convs``); on 3×32×32 with 10 classes ``width=32`` has 4,435,594 parameters and ``width=16``
1,111,882. Stages 1 and 2 end with a 2×2 max-pool, so 32×32 inputs give 16×16, 8×8, 8×8 features.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from kdeploy.models.init import he_init_convs
from kdeploy.models.registry import register_model

MULTIPLIERS = (4, 8, 16)


def check_width(width: int) -> None:
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive integer, got {width!r}")


def finish_classifier(model: nn.Module, channels: int, num_classes: int, dropout: float) -> None:
    """Give ``model`` the children ``pool`` (global average + flatten), ``drop`` and ``head`` (linear), then He-
    initialise every convolution (fan-out, ReLU): the tail and the init this CNN and ``dwcnn`` share."""
    model.pool = nn.Sequential(OrderedDict(avg=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten()))
    model.drop = nn.Dropout(dropout)
    model.head = nn.Linear(channels, num_classes)
    he_init_convs(model)


def conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    ]


class CNN(nn.Module):
    """Children ``stage1``, ``stage2``, ``stage3`` (feature layers), ``pool``, ``drop``, ``head``."""

    def __init__(
        self,
        *,
        num_classes: int,
        in_shape: tuple[int, int, int],
        width: int = 32,
        dropout: float = 0.3,
        convs: Sequence[int] = (1, 2, 2),
    ) -> None:
        super().__init__()
        check_width(width)
        if len(convs) != 3 or not all(isinstance(n, int) and n >= 1 for n in convs):
            raise ValueError(f"convs must be three positive integers (convolutions per stage), got {convs!r}")
        channels = in_shape[0]
        stages: list[nn.Sequential] = []
        for index, (mult, count) in enumerate(zip(MULTIPLIERS, convs, strict=True)):
            layers: list[nn.Module] = []
            for _ in range(count):
                layers += conv_bn_relu(channels, width * mult)
                channels = width * mult
            if index < 2:
                layers.append(nn.MaxPool2d(2))
            stages.append(nn.Sequential(*layers))
        self.stage1, self.stage2, self.stage3 = stages
        finish_classifier(self, channels, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.head(self.drop(self.pool(x)))


@register_model("cnn")
def cnn(
    *,
    num_classes: int,
    in_shape: tuple[int, int, int],
    width: int = 32,
    dropout: float = 0.3,
    convs: Sequence[int] = (1, 2, 2),
) -> CNN:
    """Scalable CNN; ``width=8`` suits Fashion-MNIST students, ``width=32`` a CIFAR teacher."""
    return CNN(num_classes=num_classes, in_shape=in_shape, width=width, dropout=dropout, convs=convs)
