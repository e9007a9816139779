"""Test accuracy of a run's model as saved, and after recomputing its BatchNorm running statistics.

A weight EMA averages the weights but copies the live model's BatchNorm buffers; with a fast BN momentum those
describe the last few batches of the live model. This recomputes them for the saved weights (train-mode forwards
without gradients over the first ``--images`` training images, unaugmented, a cumulative average over batches)
and tests again::

    KDEPLOY_DATA=../shared/data python benchmarks/bn_recompute.py runs/exp/s24/ema_ce0/seed0 --role student
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
from torch import nn

from kdeploy.data.batches import iterate_batches
from kdeploy.data.datasets import Split
from kdeploy.evaluate import accuracy
from kdeploy.recipe import load_data, load_recipe
from kdeploy.runs import Run


def recompute_bn(model: nn.Module, split: Split, mean: Sequence[float], std: Sequence[float], batch: int) -> None:
    """Replace every BatchNorm's running statistics by their plain average over ``split``'s batches, in order."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
    model.train()
    with torch.no_grad():
        for k, (x, _, _) in enumerate(iterate_batches(split, batch, shuffle=False, mean=mean, std=std)):
            for bn in bns:
                bn.momentum = 1.0 / (k + 1)  # the k-th batch gets weight 1/(k+1): a plain average
            model(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", help="run folder (with recipe.yaml and <role>.safetensors)")
    p.add_argument("--role", default="student")
    p.add_argument("--images", type=int, default=20480, help="training images for the statistics")
    p.add_argument("--batch", type=int, default=1024)
    args = p.parse_args()
    torch.set_num_threads(1)
    data = load_data(load_recipe(f"{args.run}/recipe.yaml"))
    model, _ = Run(args.run).load_model(args.role)
    print(f"as saved: {accuracy(model, data.test, data.mean, data.std, args.batch):.4f}")
    stats = data.train.head(args.images)
    recompute_bn(model, stats, data.mean, data.std, args.batch)
    acc = accuracy(model, data.test, data.mean, data.std, args.batch)
    print(f"BatchNorm statistics recomputed over {len(stats)} images: {acc:.4f}")


if __name__ == "__main__":
    main()
