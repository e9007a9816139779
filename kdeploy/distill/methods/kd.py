"""Hinton et al. 2015, "Distilling the Knowledge in a Neural Network".

loss = (1 - alpha) * CE(student, labels) + alpha * T^2 * KL(teacher_T || student_T)

``alpha`` weights the *soft* (teacher) term, as in Hinton's paper and torchdistill's
``KDLoss``. mdistiller uses separate ``CE_WEIGHT`` / ``KD_WEIGHT`` instead; set
``ce_weight``/``kd_weight`` explicitly here to reproduce that convention.
"""

from __future__ import annotations

from pydantic import Field, model_validator
from torch import Tensor

from kdeploy.distill.methods.base import Method, MethodParams, Outputs, hard_label_ce, kl_soft, register_method


class KDParams(MethodParams):
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the soft (teacher) term; CE gets 1 - alpha")
    ce_weight: float | None = Field(None, ge=0, description="overrides 1 - alpha (mdistiller convention)")
    kd_weight: float | None = Field(None, ge=0, description="overrides alpha (mdistiller convention)")

    @model_validator(mode="after")
    def _weights(self) -> KDParams:
        if self.ce_weight is None:
            self.ce_weight = 1.0 - self.alpha
        if self.kd_weight is None:
            self.kd_weight = self.alpha
        return self


@register_method("kd")
class KD(Method):
    Params = KDParams

    def forward(self, out: Outputs) -> dict[str, Tensor]:
        p = self.params
        assert out.teacher_logits is not None
        return {
            "ce": p.ce_weight * hard_label_ce(out),
            "kd": p.kd_weight * kl_soft(out.student_logits, out.teacher_logits, p.temperature),
        }
