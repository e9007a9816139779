"""benchmarks/bn_recompute.py: the recomputed BatchNorm statistics are the plain average of the batches' own."""

from __future__ import annotations

import torch
from torch import nn

from kdeploy.data.datasets import Split
from kdeploy.evaluate import accuracy

from .conftest import benchmark_module


def test_recompute_bn_averages_the_batch_statistics() -> None:
    bn_recompute = benchmark_module("bn_recompute")
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4, momentum=0.4), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    model[1].running_mean.fill_(5.0)  # stale statistics, as an EMA copies from the live model
    images = torch.randint(0, 256, (12, 3, 4, 4), dtype=torch.uint8)
    split = Split(images, torch.zeros(12, dtype=torch.int64))

    def norm(x: torch.Tensor) -> torch.Tensor:
        return x.float() / 255

    bn_recompute.recompute_bn(model, split, (0.0,), (1.0,), batch=4)
    with torch.no_grad():
        feats = [model[0](norm(images[i : i + 4])) for i in range(0, 12, 4)]
    expected = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0)
    torch.testing.assert_close(model[1].running_mean, expected)
    model.eval()
    with torch.no_grad():
        labels = model(norm(images)).argmax(1)
    assert accuracy(model, Split(images, labels), (0.0,), (1.0,), batch_size=5) == 1.0  # a ragged last batch
    assert accuracy(model, Split(images, (labels + 1) % 4), (0.0,), (1.0,), batch_size=5) == 0.0
