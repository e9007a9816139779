"""Hinton et al. 2015, "Distilling the Knowledge in a Neural Network".

loss = (1 - alpha) * CE(student, labels) + alpha * T^2 * KL(teacher_T || student_T)

``alpha`` weights the *soft* (teacher) term, as in Hinton's paper. torchdistill's ``KDLoss`` uses the
opposite convention (its ``alpha`` weights CE); mdistiller uses separate ``CE_WEIGHT`` / ``KD_WEIGHT``.
Set ``ce_weight``/``kd_weight`` explicitly here to reproduce either (README: "Which term does alpha weight?").

``standardize: true`` z-scores both logits per sample before the temperature (Sun et al., CVPR 2024, "Logit
Standardization in Knowledge Distillation"); the paper pairs it with T = 2, ``kd_weight`` 9 and ``ce_weight`` 0.1.
"""

from __future__ import annotations

from torch import Tensor

from kdeploy.distill.methods.base import Method, Outputs, hard_label_ce, kl_soft, register_method
from kdeploy.distill.methods.params import KDParams


@register_method("kd")
class KD(Method):
    Params = KDParams

    def forward(self, out: Outputs) -> dict[str, Tensor]:
        p = self.params
        assert out.teacher_logits is not None
        ce_weight, kd_weight = p.weights
        return {
            "ce": ce_weight * hard_label_ce(out),
            "kd": kd_weight * kl_soft(out.student_logits, out.teacher_logits, p.temperature, p.standardize),
        }
