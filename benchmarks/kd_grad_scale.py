"""How hard each distillation loss pushes on the student's logits, on a real teacher: to carry a learning rate tuned
for one method over to another by matching their gradient scale, instead of finding the right weights by divergence.

For each method (``METHOD={params}``, the recipe's ``distill:`` keys) and each student state, prints the loss of its
teacher terms (every term but ``ce``) and the root-mean-square per-image norm of their gradient with respect to the
student's logits. Student states on the first ``--images`` training images: ``initial`` (logits drawn from
N(0, 0.01^2), an untrained network's nearly uniform output) and ``baseline`` (the run's trained CE baseline: a
student near the end of training). Usage::

    python benchmarks/kd_grad_scale.py RUN "kd={temperature: 4, alpha: 0.9}" "dist={temperature: 1}" [--images 1024]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml

from kdeploy.data import Split
from kdeploy.distill.methods import Outputs, create_method
from kdeploy.errors import UserError
from kdeploy.evaluate import predict_logits
from kdeploy.rundata import load_run_data
from kdeploy.runs import Run


def first_logits(run: Run, role: str, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    model, meta = run.load_model(role)
    return predict_logits(model, Split(images, labels), meta.mean, meta.std, batch_size=256)


def parse_method(spec: str) -> torch.nn.Module:
    """``METHOD={params}`` (a method name and its ``distill:`` keys) -> the method; a UserError names a bad one."""
    name, _, params = spec.partition("=")
    return create_method(name, yaml.safe_load(params) or {})


def teacher_terms(
    method: torch.nn.Module, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor
) -> tuple[float, float]:
    """(loss, RMS per-image gradient norm) of the non-CE terms of ``method`` at these student logits."""
    z = student.clone().requires_grad_(True)
    losses = method(Outputs(student_logits=z, teacher_logits=teacher, targets=labels))
    loss = sum(v for k, v in losses.items() if k != "ce")
    loss.backward()
    return float(loss.detach()), float(z.grad.norm() * len(z) ** 0.5)  # a batch mean: N * RMS of each row's part


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("methods", nargs="+", help='METHOD={params}, e.g. "dist={temperature: 1, beta: 0.25}"')
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    try:
        methods = {spec: parse_method(spec) for spec in args.methods}
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    run = Run(args.run)
    train = load_run_data(run).train
    images, labels = train.images[: args.images], train.labels[: args.images]
    teacher = first_logits(run, "teacher", images, labels)
    states = {"initial": 0.01 * torch.randn_like(teacher), "baseline": first_logits(run, "baseline", images, labels)}
    print(f"teacher logits: std {float(teacher.std()):.2f} over {len(teacher)} training images")
    print("| method | " + " | ".join(f"{s}: loss | {s}: grad" for s in states) + " |")
    print("|---|" + "---:|" * (2 * len(states)))
    for spec, method in methods.items():
        cells = [f"{v:.3f}" for s in states.values() for v in teacher_terms(method, s, teacher, labels)]
        print(f"| `{spec}` | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
