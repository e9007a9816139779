"""FitNets (Romero et al. 2015): a learned regressor maps a student layer onto a teacher layer.

loss = ce_weight * CE + hint_weight * MSE(regressor(student[layer]), teacher[layer])
       (+ kd_weight * T^2 * KL on the logits, off by default)

Layers are module paths (``stage2``, ``layer3.0``, ``fc1``) captured by forward hooks.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from kdeploy.distill.methods.base import Method, Outputs, hard_label_ce, optional_soft_term, register_method
from kdeploy.distill.methods.params import FitNetParams


def make_regressor(student: Tensor, teacher: Tensor) -> nn.Module:
    """1x1 conv + BN for feature maps, a linear layer for vectors."""
    if student.dim() == 4 and teacher.dim() == 4:
        return nn.Sequential(
            nn.Conv2d(student.shape[1], teacher.shape[1], kernel_size=1, bias=False),
            nn.BatchNorm2d(teacher.shape[1]),
        )
    return nn.Linear(student[0].numel(), teacher[0].numel())


def match(student: Tensor, teacher: Tensor) -> Tensor:
    """Bring a regressed student feature to the teacher's shape (spatial pooling, flattening)."""
    if student.dim() == 4 and teacher.dim() == 4:
        if student.shape[2:] != teacher.shape[2:]:
            student = F.adaptive_avg_pool2d(student, teacher.shape[2:])
        return student
    return student.reshape(teacher.shape)


@register_method("fitnet")
class FitNet(Method):
    Params = FitNetParams

    def __init__(self, params: FitNetParams) -> None:
        super().__init__(params)
        self.regressor: nn.Module = nn.Identity()

    def feature_layers(self) -> tuple[list[str], list[str]]:
        return [self.params.student_layer], [self.params.teacher_layer]

    def setup(self, student_features: list[Tensor], teacher_features: list[Tensor]) -> None:
        s, t = student_features[0], teacher_features[0]
        if s.dim() != 4 or t.dim() != 4:
            s = s.flatten(1)
        self.regressor = make_regressor(s, t)

    def forward(self, out: Outputs) -> dict[str, Tensor]:
        p = self.params
        s, t = out.student_features[0], out.teacher_features[0].detach()
        if s.dim() != 4 or t.dim() != 4:
            s = s.flatten(1)
        hint = F.mse_loss(match(self.regressor(s), t).float(), t.float())
        losses = {"ce": p.ce_weight * hard_label_ce(out), "hint": p.hint_weight * hint}
        return losses | optional_soft_term(out, p.kd_weight, p.temperature)
