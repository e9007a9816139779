"""Test accuracy of a run's model as saved, and after recomputing its BatchNorm running statistics.

A weight EMA averages the weights but copies the live model's BatchNorm buffers; with a fast BN momentum those
describe the last few batches of the live model. This recomputes them for the saved weights (train-mode forwards
without gradients over the first ``--images`` training images, unaugmented, a cumulative average over batches)
and tests again::

    KDEPLOY_DATA=../shared/data python benchmarks/bn_recompute.py runs/exp/s24/ema_ce0/seed0 --role student
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from kdeploy.recipe import load_data, load_recipe
from kdeploy.runs import Run


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, norm, batch: int) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(labels), batch):
            correct += (model(norm(images[i : i + batch])).argmax(1) == labels[i : i + batch]).sum().item()
    return correct / len(labels)


def recompute_bn(model: nn.Module, images: torch.Tensor, norm, batch: int) -> None:
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
    model.train()
    with torch.no_grad():
        for k, i in enumerate(range(0, len(images), batch)):
            for bn in bns:
                bn.momentum = 1.0 / (k + 1)  # the k-th batch gets weight 1/(k+1): a plain average
            model(norm(images[i : i + batch]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", help="run folder (with recipe.yaml and <role>.safetensors)")
    p.add_argument("--role", default="student")
    p.add_argument("--images", type=int, default=20480, help="training images for the statistics")
    p.add_argument("--batch", type=int, default=1024)
    args = p.parse_args()
    torch.set_num_threads(1)
    run = Run(args.run)
    data = load_data(load_recipe(f"{args.run}/recipe.yaml"))
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)

    def norm(x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255 - mean) / std

    model, _ = run.load_model(args.role)
    print(f"as saved: {accuracy(model, data.test.images, data.test.labels, norm, args.batch):.4f}")
    recompute_bn(model, data.train.images[: args.images], norm, args.batch)
    acc = accuracy(model, data.test.images, data.test.labels, norm, args.batch)
    print(f"BatchNorm statistics recomputed over {min(args.images, len(data.train))} images: {acc:.4f}")


if __name__ == "__main__":
    main()
