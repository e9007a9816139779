"""DIST (Huang et al., NeurIPS 2022, "Knowledge Distillation from A Stronger Teacher").

KL asks the student to reproduce the teacher's probabilities exactly. DIST asks only that they be *correlated*:
per image across the classes (the inter-class relation, weight ``beta``) and per class across the batch (the
intra-class relation, weight ``gamma``). A Pearson correlation ignores shift and scale, so a small student is
not pushed to copy a much stronger teacher's confidence, only how it ranks and relates the classes.

loss = ce_weight * CE
       + T^2 * (beta * (1 - mean_i r(p_s[i, :], p_t[i, :])) + gamma * (1 - mean_c r(p_s[:, c], p_t[:, c])))

with p = softmax(logits / T). At T = 1 (the paper's ImageNet setting) the T^2 factor is 1. The intra-class term
correlates over the batch a process sees: under DDP, each process's share of it.

A correlation is divided by the spread of the student's probabilities, so the gradient grows as the student's
output flattens: an untrained student, or one knocked flat by too large a step, gets pushed hardest. At a learning
rate tuned for KD, scale ``beta`` and ``gamma`` to KD's gradient (``benchmarks/kd_grad_scale.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from kdeploy.distill.methods.base import Method, Outputs, hard_label_ce, register_method
from kdeploy.distill.methods.params import DISTParams


def row_pearson(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_terms(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """(inter, intra): one minus the mean row and column correlation of the two models' probabilities, times T^2."""
    t = temperature
    p_s = torch.softmax(student_logits.float() / t, dim=1)
    p_t = torch.softmax(teacher_logits.float() / t, dim=1)
    inter = 1.0 - row_pearson(p_s, p_t).mean()
    intra = 1.0 - row_pearson(p_s.t(), p_t.t()).mean()
    return inter * t**2, intra * t**2


@register_method("dist")
class DIST(Method):
    Params = DISTParams

    def forward(self, out: Outputs) -> dict[str, Tensor]:
        p = self.params
        assert out.teacher_logits is not None
        inter, intra = dist_terms(out.student_logits, out.teacher_logits, p.temperature)
        return {"ce": p.ce_weight * hard_label_ce(out), "inter": p.beta * inter, "intra": p.gamma * intra}
