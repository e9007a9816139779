"""benchmarks/teacher_roofline.py: a training step's FLOPs as counted, and its rate and convolution share."""

from __future__ import annotations

import torch
from torch import nn

from .conftest import benchmark_module


def test_step_flops_count_forward_and_only_the_gradients_computed() -> None:
    roofline = benchmark_module("teacher_roofline")
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 5, bias=False), nn.ReLU(), nn.Linear(5, 3, bias=False))
    # forward 2*6*5 + 2*5*3 = 90; backward: both weight gradients (60 + 30), and the gradient into the first
    # layer's output (2*5*3 = 30), which the first layer's weight gradient needs; nothing into the images
    assert roofline.step_flops_per_image(model, (6,), 3) == 90 + 60 + 30 + 30
    model[1].weight.requires_grad_(False)  # a frozen first layer: neither its gradient nor the one feeding it
    assert roofline.step_flops_per_image(model, (6,), 3) == 90 + 30


def test_rates_of_steps_timed_in_turns_and_the_convolution_share() -> None:
    roofline = benchmark_module("teacher_roofline")
    torch.manual_seed(0)

    def conv_net() -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    steps = {
        "eager": roofline.Step(conv_net(), 4, (3, 8, 8), 4, bf16=False, cl=True),
        "nchw": roofline.Step(conv_net(), 6, (3, 8, 8), 4, bf16=False, cl=False),
    }
    rates = roofline.step_rates(steps, repeats=2)
    assert set(rates) == {"eager", "nchw"} and all(r > 0 for r in rates.values())
    share = roofline.conv_share(steps["eager"])
    assert 0.0 < share < 1.0
