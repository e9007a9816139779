"""Where a KD student parts from its teacher: on the training images it was taught on, and on the test split.

For each split: the teacher's and the student's errors, how many images they disagree on, how many test errors
are the student's alone (teacher right), and the mean squared difference of their centred logits (what
distillation at a high temperature fits), next to the spread of the teacher's centred logits. A student that
matches its teacher closely on the training images but not on the test images copies the teacher's answers
without its way of generalizing. Usage::

    python benchmarks/kd_agreement.py RUN [--teacher-run RUN2] [--threads 1]

``--teacher-run`` compares against the teacher of another run folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from kdeploy.data import Split, iterate_batches
from kdeploy.rundata import load_run_data
from kdeploy.runs import Run, WeightsMeta


@torch.no_grad()
def logits(model: torch.nn.Module, split: Split, meta: WeightsMeta) -> torch.Tensor:
    batches = iterate_batches(split, 1000, shuffle=False, mean=meta.mean, std=meta.std)
    return torch.cat([model(x) for x, _, _ in batches])


def centred(z: torch.Tensor) -> torch.Tensor:
    return z - z.mean(1, keepdim=True)


def compare(teacher: torch.Tensor, student: torch.Tensor, labels: torch.Tensor) -> str:
    t, s = teacher.argmax(1), student.argmax(1)
    mse = float(((centred(teacher) - centred(student)) ** 2).mean())
    return (f"teacher errors {int((t != labels).sum())}, student errors {int((s != labels).sum())}, "
            f"disagree {int((t != s).sum())}, student wrong where the teacher is right "
            f"{int(((s != labels) & (t == labels)).sum())}, centred-logit MSE {mse:.4f} "
            f"(teacher logit std {float(centred(teacher).std()):.2f})")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--teacher-run", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run = Run(args.run)
    data = load_run_data(run)
    teacher, t_meta = Run(args.teacher_run or args.run).load_model("teacher")
    student, s_meta = run.load_model("student")
    for name, split in (("train", data.train), ("test", data.test)):
        print(f"{name}: {compare(logits(teacher, split, t_meta), logits(student, split, s_meta), split.labels)}")


if __name__ == "__main__":
    main()
