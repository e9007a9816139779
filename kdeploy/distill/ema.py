"""An exponential moving average of a model's weights (``ModelConfig.ema``), updated after every optimizer step.

Decay at update ``t`` is ``min(decay, (1 + t) / (10 + t))`` (the warm-up of TensorFlow's
``ExponentialMovingAverage`` with ``num_updates``), so short schedules are not dominated by the initial weights.
Buffers (BatchNorm running statistics) are copied, not averaged.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


class WeightEMA:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema_params = list(self.model.parameters())
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        for ema_b, b in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)

    def state_dict(self) -> dict[str, Tensor]:
        return {**self.model.state_dict(), "__updates__": torch.tensor(self.updates)}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        state = dict(state)
        self.updates = int(state.pop("__updates__"))
        self.model.load_state_dict(state)
