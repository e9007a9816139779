"""Plain cross-entropy: trains the teacher and the CE-only baseline student."""

from __future__ import annotations

from torch import Tensor

from kdeploy.distill.methods.base import Method, Outputs, hard_label_ce, register_method
from kdeploy.distill.methods.params import CEParams


@register_method("ce")
class CrossEntropy(Method):
    Params = CEParams
    needs_teacher = False

    def forward(self, out: Outputs) -> dict[str, Tensor]:
        return {"ce": hard_label_ce(out, self.params.label_smoothing)}
