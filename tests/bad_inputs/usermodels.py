"""User models for the bad-input corpus, loaded through a recipe's explicit ``target:`` import path."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FiveClassNet(nn.Module):
    """A user model hard-wired to 5 classes (it takes no ``num_classes``): wrong for a 10-class dataset."""

    def __init__(self, in_features: int = 784) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.flatten(1))


class DivergesAfter(nn.Module):
    """A linear classifier whose training loss becomes NaN after ``steps`` training forward passes
    (a stand-in for a run that blows up mid-training)."""

    def __init__(self, num_classes: int, in_shape: tuple[int, int, int], steps: int) -> None:
        super().__init__()
        self.fc = nn.Linear(int(torch.tensor(in_shape).prod()), num_classes)
        self.steps = steps
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        logits = self.fc(x.flatten(1))
        if self.training:
            self.calls += 1
            if self.calls > self.steps:
                return logits * float("nan")
        return logits
