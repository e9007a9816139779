"""Dropout whose CPU mask comes from random bits instead of ``bernoulli_``.

``torch.nn.Dropout`` draws its CPU mask with ``bernoulli_``, one Mersenne-Twister draw per element: 1.2 ms for a
128 x 1200 activation on a Xeon core, a quarter of the ``mnist_mlp`` teacher's whole training step. Here 16 random
bits per element (four per ``int64`` draw, ~0.07 ms for the same tensor) are compared with ``p`` rounded to 1/65536,
so an element is dropped with probability ``p`` +- 8e-6 and the kept ones are scaled by ``1 / (1 - p)``, as
``nn.Dropout`` does. On other devices, in eval mode and at ``p`` of 0 or 1 it is ``nn.Dropout``: the same module in
``state_dict`` (it has no parameters), in ``repr`` and in ONNX export (identity).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

BITS = 16
LEVELS = 1 << BITS


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> Tensor:
    """A bool tensor of ``shape``, True with probability 1 - ``p`` (to 1/65536), from ``torch``'s global RNG."""
    n = math.prod(shape)
    words = torch.randint(-(2**63), 2**63 - 1, (math.ceil(n / 4),), dtype=torch.int64, device=device)
    halves = words.view(torch.int16)[:n].view(shape)  # uniform over -32768..32767
    return halves >= round(p * LEVELS) - LEVELS // 2


class BitsDropout(nn.Dropout):
    def forward(self, x: Tensor) -> Tensor:
        if not self.training or x.device.type != "cpu" or self.p in (0.0, 1.0) or self.inplace:
            return F.dropout(x, self.p, self.training, self.inplace)
        return x.mul(keep_mask(x.shape, self.p, x.device)).mul_(1.0 / (1.0 - self.p))
