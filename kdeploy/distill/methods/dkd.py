"""Decoupled Knowledge Distillation (Zhao et al., CVPR 2022), as in mdistiller's ``DKD.py``.

KD splits into a target-class term (TCKD, weight ``alpha``) and a non-target-class term
(NCKD, weight ``beta``); both are linearly warmed up over ``warmup`` epochs.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from kdeploy.distill.methods.base import Method, Outputs, hard_label_ce, register_method
from kdeploy.distill.methods.params import DKDParams


def dkd_loss(
    logits_s: Tensor, logits_t: Tensor, target: Tensor, alpha: float, beta: float, temperature: float
) -> tuple[Tensor, Tensor]:
    """Return (tckd, nckd), each already multiplied by its weight and T^2."""
    t = temperature
    gt = F.one_hot(target, logits_s.shape[1]).bool()
    p_s = F.softmax(logits_s.float() / t, dim=1)
    p_t = F.softmax(logits_t.float() / t, dim=1)
    # binary (target vs rest) distributions
    b_s = torch.stack([(p_s * gt).sum(1), (p_s * ~gt).sum(1)], dim=1).clamp_min(1e-12)
    b_t = torch.stack([(p_t * gt).sum(1), (p_t * ~gt).sum(1)], dim=1).clamp_min(1e-12)
    tckd = (b_t * (b_t.log() - b_s.log())).sum(1).mean() * t**2
    # distributions over the non-target classes only
    mask = gt.float() * 1000.0
    log_q_s = F.log_softmax(logits_s.float() / t - mask, dim=1)
    log_q_t = F.log_softmax(logits_t.float() / t - mask, dim=1)
    nckd = (log_q_t.exp() * (log_q_t - log_q_s)).masked_fill(gt, 0.0).sum(1).mean() * t**2
    return alpha * tckd, beta * nckd


@register_method("dkd")
class DKD(Method):
    Params = DKDParams

    def forward(self, out: Outputs) -> dict[str, Tensor]:
        p = self.params
        assert out.teacher_logits is not None
        ramp = min((out.epoch + 1) / p.warmup, 1.0) if p.warmup else 1.0
        tckd, nckd = dkd_loss(out.student_logits, out.teacher_logits, out.targets, p.alpha, p.beta, p.temperature)
        return {
            "ce": p.ce_weight * hard_label_ce(out),
            "tckd": ramp * tckd,
            "nckd": ramp * nckd,
        }
