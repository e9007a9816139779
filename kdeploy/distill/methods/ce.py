"""Plain cross-entropy: trains the teacher and the CE-only baseline student."""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F

from kdeploy.distill.methods.base import Method, Outputs, register_method
from kdeploy.distill.methods.params import CEParams


@register_method("ce")
class CrossEntropy(Method):
    Params = CEParams
    needs_teacher = False

    def forward(self, out: Outputs) -> dict[str, Tensor]:
        return {"ce": F.cross_entropy(out.student_logits, out.targets, label_smoothing=self.params.label_smoothing)}
