"""Logit matching: the student regresses the teacher's logits (Ba & Caruana 2014, "Do Deep Nets Really Need to
be Deep?"; Kim et al., IJCAI 2021, "Comparing Kullback-Leibler Divergence and Mean Squared Error Loss in Knowledge
Distillation").

loss = ce_weight * CE + kd_weight * mean over images and classes of (z_s - z_t)^2

KD at a high temperature approaches this up to each image's logit mean (Hinton et al. 2015): T^2 * KL's gradient
tends to (z_s - z_t) / C with both logits centred, MSE's is 2 (z_s - z_t) / C, so ``kd_weight: 0.5`` takes steps
the size of KD's soft term at T -> infinity. Unlike KL, MSE also asks for the teacher's logit mean and scale.
Kim et al.'s CIFAR setting is the default: MSE alone, weight 1.
"""

from __future__ import annotations

from torch import Tensor

from kdeploy.distill.methods.base import Method, Outputs, hard_label_ce, register_method
from kdeploy.distill.methods.params import MSEParams


def logit_mse(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Mean over images and classes of the squared logit difference, in fp32."""
    return (student_logits.float() - teacher_logits.float()).pow(2).mean()


@register_method("mse")
class MSE(Method):
    Params = MSEParams

    def forward(self, out: Outputs) -> dict[str, Tensor]:
        p = self.params
        assert out.teacher_logits is not None
        return {
            "ce": p.ce_weight * hard_label_ce(out),
            "mse": p.kd_weight * logit_mse(out.student_logits, out.teacher_logits),
        }
