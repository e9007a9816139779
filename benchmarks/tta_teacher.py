"""A ``fast_cnn`` teacher whose eval-mode logits average over every translation of up to ``radius`` pixels.

Used by benchmarks/README.md ("Hinton's targets") as a user ``target:`` model that loads a trained ``fast_cnn``
checkpoint unchanged (same state-dict keys)::

    PYTHONPATH=benchmarks kdeploy distill recipes/hinton_mnist.yaml --set teacher.model=null \\
        --set teacher.target=tta_teacher:TTATeacher "--set" "teacher.kwargs={widths: [32, 64, 128], radius: 2}" \\
        --set teacher.checkpoint=runs/hinton_mnist/teacher.safetensors

Shifts wrap around (``torch.roll``): MNIST digits sit inside a 4-pixel background margin, so +-2 px never wraps ink.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from kdeploy.models.fast_cnn import FastCNN


class TTATeacher(FastCNN):
    def __init__(self, *, num_classes: int, in_shape: Sequence[int], radius: int = 2, **kwargs: Any) -> None:
        super().__init__(num_classes=num_classes, in_shape=(in_shape[0], in_shape[1], in_shape[2]), **kwargs)
        self.radius = radius

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.features(x)
        r = range(-self.radius, self.radius + 1)
        return torch.stack([self.features(torch.roll(x, (dy, dx), (2, 3))) for dy in r for dx in r]).mean(0)
