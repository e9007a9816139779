"""CIFAR ResNets as in CRD (RepDistiller) and mdistiller's ``resnet.py``: same layers, same names.

Differences that do not change parameters or 32×32 results: forward returns logits only (features are
captured by hooks), the pool is adaptive (so 28×28 inputs work too), the stem takes ``in_shape[0]``
channels, and ReLUs are not in-place (a hooked tensor is never overwritten afterwards).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kdeploy.models.init import he_init_convs
from kdeploy.models.registry import register_model


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + residual)


class CifarResNet(nn.Module):
    """``conv1 -> bn1 -> relu -> layer1 -> layer2 -> layer3 -> avgpool -> fc``; depth = 6n + 2."""

    def __init__(
        self,
        depth: int,
        num_filters: Sequence[int],
        *,
        num_classes: int,
        in_shape: tuple[int, int, int],
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n+2 (20, 32, 44, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        self.inplanes = num_filters[0]
        self.conv1 = nn.Conv2d(in_shape[0], num_filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(num_filters[1], n)
        self.layer2 = self._make_layer(num_filters[2], n, stride=2)
        self.layer3 = self._make_layer(num_filters[3], n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(num_filters[3] * BasicBlock.expansion, num_classes)
        he_init_convs(self)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * BasicBlock.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * BasicBlock.expansion),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * BasicBlock.expansion
        layers += [BasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# name -> (depth, num_filters), as in RepDistiller's models/resnet.py
ARCHS: dict[str, tuple[int, tuple[int, int, int, int]]] = {
    "resnet8": (8, (16, 16, 32, 64)),
    "resnet14": (14, (16, 16, 32, 64)),
    "resnet20": (20, (16, 16, 32, 64)),
    "resnet32": (32, (16, 16, 32, 64)),
    "resnet44": (44, (16, 16, 32, 64)),
    "resnet56": (56, (16, 16, 32, 64)),
    "resnet110": (110, (16, 16, 32, 64)),
    "resnet8x4": (8, (32, 64, 128, 256)),
    "resnet32x4": (32, (32, 64, 128, 256)),
}


def _register(name: str, depth: int, filters: tuple[int, int, int, int]) -> None:
    def factory(*, num_classes: int, in_shape: tuple[int, int, int]) -> CifarResNet:
        return CifarResNet(depth, filters, num_classes=num_classes, in_shape=in_shape)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"CIFAR {name}: depth {depth}, filters {list(filters)}."
    register_model(name)(factory)


for _name, (_depth, _filters) in ARCHS.items():
    _register(_name, _depth, _filters)
