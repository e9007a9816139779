"""Attention Transfer (Zagoruyko & Komodakis 2017).

For each (student, teacher) layer pair: a(f) = normalize(mean_c |f|^p, flattened);
loss = ce_weight * CE + beta / 2 * sum_pairs mean((a(s) - a(t))^2)   (beta = 1000 in the paper's code)
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import Tensor
from torch.nn import functional as F

from kdeploy.distill.methods.base import Method, MethodParams, Outputs, hard_label_ce, register_method
from kdeploy.errors import UserError


class ATParams(MethodParams):
    student_layers: list[str] = Field(min_length=1)
    teacher_layers: list[str] = Field(min_length=1)
    p: float = Field(2.0, gt=0)
    beta: float = Field(1000.0, ge=0)
    ce_weight: float = Field(1.0, ge=0)

    @model_validator(mode="after")
    def _pairs(self) -> ATParams:
        if len(self.student_layers) != len(self.teacher_layers):
            raise ValueError("student_layers and teacher_layers must have the same length")
        return self


def attention_map(feature: Tensor, p: float) -> Tensor:
    return F.normalize(feature.float().abs().pow(p).mean(1).flatten(1), dim=1)


def at_loss(student: Tensor, teacher: Tensor, p: float) -> Tensor:
    if student.shape[2:] != teacher.shape[2:]:
        student = F.interpolate(student, size=teacher.shape[2:], mode="bilinear", align_corners=False)
    return (attention_map(student, p) - attention_map(teacher, p)).pow(2).mean()


@register_method("at")
class AT(Method):
    Params = ATParams

    def feature_layers(self) -> tuple[list[str], list[str]]:
        return list(self.params.student_layers), list(self.params.teacher_layers)

    def setup(self, student_features: list[Tensor], teacher_features: list[Tensor]) -> None:
        for s, t in zip(student_features, teacher_features, strict=True):
            if s.dim() != 4 or t.dim() != 4:
                raise UserError(
                    "distill.student_layers: attention transfer needs convolutional feature maps (N x C x H x W); "
                    "choose conv stages such as layer2"
                )

    def forward(self, out: Outputs) -> dict[str, Tensor]:
        p = self.params
        pairs = zip(out.student_features, out.teacher_features, strict=True)
        at = torch.stack([at_loss(s, t.detach(), p.p) for s, t in pairs]).sum()
        return {"ce": p.ce_weight * hard_label_ce(out), "at": p.beta / 2 * at}
