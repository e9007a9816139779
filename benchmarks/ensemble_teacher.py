"""A teacher that averages the logits of several trained ``fast_cnn`` checkpoints (Hinton et al. 2015 distil
an ensemble into one net).

Used by benchmarks/README.md ("The 0.1M student: 30 epochs over three seeds, and an ensemble of two teachers") as a
user ``target:`` model. First merge the members' weight files into one (each member's keys get the prefix
``members.<i>.``)::

    python benchmarks/ensemble_teacher.py runs/exp/s20/ens2.safetensors \\
        runs/kd/cifar10_fast/teacher_run/teacher.safetensors runs/exp/s18/teacher24/teacher.safetensors
    PYTHONPATH=benchmarks kdeploy distill recipes/cifar10_fast_tiny.yaml --set teacher.model=null \\
        --set teacher.target=ensemble_teacher:EnsembleTeacher \\
        --set "teacher.kwargs={widths: [64, 256, 256], members: 2}" \\
        --set teacher.checkpoint=runs/exp/s20/ens2.safetensors

Every member has the same ``fast_cnn`` kwargs (``members`` is the count); the logits are averaged, not the
probabilities, so the ensemble is one model whose output the KD temperature softens as any teacher's.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from kdeploy import atomic
from kdeploy.errors import UserError
from kdeploy.models.fast_cnn import FastCNN
from kdeploy.runs import load_state_file


class EnsembleTeacher(nn.Module):
    def __init__(self, *, num_classes: int, in_shape: Sequence[int], members: int = 2, **kwargs: Any) -> None:
        super().__init__()
        if members < 1:
            raise ValueError(f"members must be at least 1, got {members}")
        shape = (in_shape[0], in_shape[1], in_shape[2])
        self.members = nn.ModuleList(FastCNN(num_classes=num_classes, in_shape=shape, **kwargs) for _ in range(members))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


def merge(out: Path, paths: Sequence[Path]) -> Path:
    """One weight file holding every member's state under ``members.<i>.``, in the order given."""
    state = {f"members.{i}.{k}": v.contiguous() for i, p in enumerate(paths) for k, v in load_state_file(p).items()}
    return atomic.write_with(out, lambda tmp: save_file(state, str(tmp)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the merged .safetensors file to write")
    parser.add_argument("members", type=Path, nargs="+", help="the members' .safetensors weight files")
    args = parser.parse_args(argv)
    try:
        path = merge(args.out, args.members)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{path}: {len(args.members)} members")
    return 0


if __name__ == "__main__":
    sys.exit(main())
