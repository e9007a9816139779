"""How much of bf16's speed autocast leaves on the table for the ``mnist_mlp`` teacher (784-1200-1200-10, batch 128,
fused Adam): one bare training step in four forms, on random data.

- ``fp32``: the reference.
- ``autocast bf16``: what ``train.precision: bf16`` does: fp32 weights, cast to bf16 in every forward pass and
  their gradients cast back to fp32 in every backward pass.
- ``bf16 weights + fp32 masters``: the model holds bf16 weights; fused Adam updates fp32 master copies from the
  bf16 gradients, which are then copied back into the model.
- ``pure bf16``: weights and Adam state in bf16, no masters (an upper bound: small updates are lost in rounding).

Not a kdeploy feature: a measurement of what a master-weight precision mode could gain::

    python benchmarks/profile_bf16_master.py [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable

import torch
from profile_mlp_step import BATCH, teacher
from torch import nn
from torch.nn import functional as F

from kdeploy import cpu

Step = Callable[[], None]


def timed(step: Step, steps: int) -> float:
    """Mean milliseconds of ``step`` after 20 untimed warm-up calls."""
    for _ in range(20):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps * 1e3


def adam(params: list[nn.Parameter] | list[torch.Tensor]) -> torch.optim.Adam:
    return torch.optim.Adam(params, 1e-3, fused=True)


def float_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, autocast: bool) -> Step:
    opt = adam(list(model.parameters()))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def master_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Step:
    low = copy.deepcopy(model).to(torch.bfloat16)
    params = list(low.parameters())
    masters = [p.detach().float().clone() for p in params]
    opt = adam(masters)

    def step() -> None:
        loss = F.cross_entropy(low(x.to(torch.bfloat16)).float(), y)
        for p in params:
            p.grad = None
        loss.backward()
        for m, p in zip(masters, params, strict=True):
            m.grad = p.grad.float()
        opt.step()
        with torch.no_grad():
            torch._foreach_copy_(params, masters)

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = teacher()
    x, y = torch.randn(BATCH, 1, 28, 28), torch.randint(0, 10, (BATCH,))
    forms = {
        "fp32": float_step(copy.deepcopy(model), x, y, autocast=False),
        "autocast bf16": float_step(copy.deepcopy(model), x, y, autocast=True),
        "bf16 weights + fp32 masters": master_step(model, x, y),
        "pure bf16 (upper bound)": float_step(copy.deepcopy(model).to(torch.bfloat16), x.bfloat16(), y, autocast=False),
    }
    ms = {name: timed(step, args.steps) for name, step in forms.items()}
    print(f"CPU: {cpu.model_name()} ({', '.join(cpu.accelerations()) or 'none'}); {args.threads} threads\n")
    print("| step | ms | fp32 ms / this |\n|---|---:|---:|")
    for name, v in ms.items():
        print(f"| {name} | {v:.2f} | {ms['fp32'] / v:.2f}x |")


if __name__ == "__main__":
    main()
