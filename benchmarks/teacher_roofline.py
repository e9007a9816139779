"""How fast can this CPU train a recipe's teacher at all? Its training step against the machine's matmul ceiling.

Measured in one process on the same cores:

1. the matmul ceiling: a large ``torch.mm`` in fp32 (and in bf16 where the CPU multiplies it natively);
2. the FLOPs of one training step per image, counted by ``torch.utils.flop_counter`` on a real forward and
   backward of the teacher in training mode (frozen weights' gradients are not counted, because not computed);
3. the teacher's training step at the recipe's batch size, precision (``auto`` resolved as training would) and
   memory format, on random images: images/s, GFLOP/s and the share of the ceiling;
4. the share of that step spent in convolutions (``torch.profiler``), which bounds what fusing the other ops
   (BatchNorm, GELU, pooling) could save;
5. the time the recipe's teacher schedule needs at that rate, and the rate a time budget would need.

    KDEPLOY_DATA=../shared/data python benchmarks/teacher_roofline.py                     # cifar10_fast, 45 min
    python benchmarks/teacher_roofline.py --recipe recipes/cifar10_fast.yaml --budget-min 20 --steps 5
    python benchmarks/teacher_roofline.py --compile     # also the step under torch.compile, timed in turns

A teacher whose step already runs near the ceiling cannot train faster on that CPU without fewer FLOPs.
Prints Markdown; numbers in benchmarks/README.md come from this command.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from _machine import load_average, matmul_gflops
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from kdeploy import cpu
from kdeploy.data import load_dataset
from kdeploy.distill.precision import resolve_precision
from kdeploy.models import create_model
from kdeploy.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
CEILING_N = 2048  # the ceiling's torch.mm size


class Step:
    """One SGD training step of ``model`` on a fixed batch, under the recipe's precision and memory format."""

    def __init__(
        self,
        model: nn.Module,
        batch: int,
        in_shape: tuple[int, ...],
        classes: int,
        bf16: bool,
        cl: bool,
        compiled: bool = False,
    ):
        fmt = torch.channels_last if cl else torch.contiguous_format
        model = model.to(memory_format=fmt).train()
        self.model = torch.compile(model) if compiled else model
        self.x = torch.randn(batch, *in_shape).contiguous(memory_format=fmt)
        self.y = torch.randint(0, classes, (batch,))
        params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.SGD(params, lr=0.01, momentum=0.85, nesterov=True)
        self.bf16 = bf16

    def __call__(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            loss = nn.functional.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()


def step_flops_per_image(model: nn.Module, in_shape: tuple[int, ...], classes: int) -> float:
    """FLOPs of one training step (forward + backward), per image, counted on a batch of 8 in fp32."""
    probe = Step(model, 8, in_shape, classes, bf16=False, cl=False)
    with FlopCounterMode(display=False) as counter:
        probe()
    return counter.get_total_flops() / 8


def conv_share(step: Step) -> float:
    """Fraction of one step's CPU time spent in convolution kernels (forward and backward)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if "convolution" in e.key)
    return conv / total if total else float("nan")


def step_rates(steps: dict[str, Step], repeats: int) -> dict[str, float]:
    """Images/s of each step, timed in turns (A, B, A, B, ...) so that drifting load hits every variant alike."""
    for step in steps.values():
        step()  # warm-up, untimed (torch.compile compiles here)
    spent = dict.fromkeys(steps, 0.0)
    for _ in range(repeats):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            spent[name] += time.perf_counter() - t0
    return {name: len(steps[name].y) * repeats / spent[name] for name in steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "cifar10_fast.yaml")
    parser.add_argument("--data-root", default=os.environ.get("KDEPLOY_DATA"))
    parser.add_argument("--batch", type=int, help="default: the recipe's teacher batch size")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant, after an untimed warm-up")
    parser.add_argument("--compile", action="store_true", help="also time the step under torch.compile, in turns")
    parser.add_argument("--budget-min", type=float, default=45.0, help="teacher training budget, minutes")
    args = parser.parse_args()
    recipe = load_recipe(args.recipe, [], args.data_root)
    cfg = recipe.teacher
    data = load_dataset(recipe.data.name, root=recipe.data.root, val_size=recipe.data.val_size, seed=recipe.seed)
    in_shape, classes, images = tuple(data.in_shape), data.num_classes, len(data.train)
    precision = resolve_precision(recipe.train.precision, torch.device("cpu"))
    batch = args.batch or recipe.batch_size_for(cfg)
    layout = "channels_last" if recipe.train.channels_last else "NCHW"

    def make_model() -> nn.Module:
        torch.manual_seed(0)
        return create_model(cfg.model, num_classes=classes, in_shape=in_shape, **cfg.kwargs)

    def make_step(compiled: bool) -> Step:
        return Step(make_model(), batch, in_shape, classes, precision == "bf16", recipe.train.channels_last, compiled)

    flops = step_flops_per_image(make_model(), in_shape, classes)
    steps = {f"batch {batch}, {precision}, {layout}": make_step(False)}
    if args.compile:
        steps[f"batch {batch}, {precision}, {layout}, torch.compile"] = make_step(True)
    load_before = load_average()
    ceilings = {"fp32": matmul_gflops(CEILING_N)}
    if cpu.native_bf16():
        ceilings["bf16"] = matmul_gflops(CEILING_N, torch.bfloat16)
    rates = step_rates(steps, args.steps)
    share = conv_share(next(iter(steps.values())))

    ceiling = ceilings.get(precision, ceilings["fp32"])
    needed = flops * images * cfg.epochs / (args.budget_min * 60) / 1e9
    print(
        f"\nCPU: {cpu.model_name()}, accelerations: {', '.join(cpu.accelerations()) or 'none'}; "
        f"{torch.get_num_threads()} threads; load average 1/5/15 min before {load_before}, after {load_average()}\n"
    )
    print("| measure | value |\n|---|---:|")
    for name, value in ceilings.items():
        print(f"| {name} matmul ceiling ({CEILING_N}² torch.mm) | {value:,.0f} GFLOP/s |")
    print(f"| {recipe.name} teacher ({cfg.model}), FLOPs per image per training step | {flops / 1e9:.3f} GFLOP |")
    for name, rate in rates.items():
        achieved = rate * flops / 1e9
        print(f"| training step, {name} | {rate:,.0f} images/s |")
        print(f"| ... achieved | {achieved:,.0f} GFLOP/s, {achieved / ceiling:.0%} of the {precision} ceiling |")
        print(
            f"| ... {cfg.epochs} epochs x {images:,} images at this rate | {images * cfg.epochs / rate / 60:.1f} min |"
        )
    print(f"| share of the (eager) step in convolutions | {share:.0%} |")
    print(
        f"| rate a {args.budget_min:g}-minute budget needs | {needed:,.0f} GFLOP/s, "
        f"{needed / ceiling:.2f}x the {precision} ceiling |"
    )


if __name__ == "__main__":
    main()
