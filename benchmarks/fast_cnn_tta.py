"""Test accuracy of a run's ``fast_cnn`` model under each test-time augmentation mode, and what each costs.

The modes are ``fast_cnn``'s ``tta`` (none, flip, flip_translate); the forward passes each costs are counted on the
model (calls of its head per input). The weights are the run's as saved; only the averaging at test time changes.
Prints a Markdown table::

    KDEPLOY_DATA=../shared/data python benchmarks/fast_cnn_tta.py runs/exp/s32/teacher --role teacher
"""

from __future__ import annotations

import argparse
import time

import torch

from kdeploy.cpu import accelerations, model_name
from kdeploy.evaluate import accuracy
from kdeploy.models.fast_cnn import TTA_MODES, FastCNN
from kdeploy.recipe import load_data, load_recipe
from kdeploy.runs import Run


def forward_passes(model: FastCNN, x: torch.Tensor) -> int:
    """How many times one forward runs the network (its head) on an input."""
    calls = 0

    def count(*_: object) -> None:
        nonlocal calls
        calls += 1

    handle = model.head.register_forward_hook(count)
    with torch.no_grad():
        model.eval()(x)
    handle.remove()
    return calls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", help="run folder (with recipe.yaml and <role>.safetensors)")
    p.add_argument("--role", default="teacher")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data(load_recipe(f"{args.run}/recipe.yaml"))
    model, _ = Run(args.run).load_model(args.role)
    if not isinstance(model, FastCNN):
        raise SystemExit(f"{args.run}: the {args.role} is a {type(model).__name__}, not a fast_cnn")
    print(f"`{args.run}` {args.role}, {len(data.test):,} test images; CPU {model_name()} "
          f"({', '.join(accelerations()) or 'no bf16/INT8 extensions'}), {args.threads} threads, fp32\n")  # fmt: skip
    print("| tta | forward passes | test accuracy | seconds for the test set |\n|---|---:|---:|---:|")
    for mode in TTA_MODES:
        model.tta = mode
        passes = forward_passes(model, data.test.images[:1].float())
        start = time.perf_counter()
        acc = accuracy(model, data.test, data.mean, data.std)
        print(f"| {mode} | {passes} | {acc:.2%} | {time.perf_counter() - start:.1f} |")


if __name__ == "__main__":
    main()
