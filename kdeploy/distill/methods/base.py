"""The contract every distillation method keeps (after mdistiller's ``Distiller``).

A method is a small ``nn.Module`` whose ``forward`` returns a dict of named, already-weighted
losses; the trainer sums them. It never sees the models themselves: the trainer hands it logits
and, for the module paths it asks for, the features captured by forward hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from kdeploy.distill.methods.params import METHOD_PARAMS, MethodParams
from kdeploy.registry import Registry


@dataclass
class Outputs:
    """What a method may look at for one batch."""

    student_logits: Tensor
    targets: Tensor
    teacher_logits: Tensor | None = None
    student_features: list[Tensor] = field(default_factory=list)
    teacher_features: list[Tensor] = field(default_factory=list)
    epoch: int = 0  # 0-based epoch, for warm-ups
    # soft targets of the hard-label (CE) term when the model trains with label smoothing or mixup/cutmix;
    # None: ``targets`` alone (class indices)
    target_probs: Tensor | None = None


class Method(nn.Module):
    """Base class. Subclasses set ``Params`` and implement ``forward``."""

    Params: ClassVar[type[MethodParams]] = MethodParams
    needs_teacher: ClassVar[bool] = True

    def __init__(self, params: MethodParams) -> None:
        super().__init__()
        self.params = params

    def feature_layers(self) -> tuple[list[str], list[str]]:
        """Module paths (student, teacher) whose outputs this method needs; logits-only methods: none."""
        return [], []

    def setup(self, student_features: list[Tensor], teacher_features: list[Tensor]) -> None:
        """Build learned parts (regressors) from one batch of example features."""

    def forward(self, out: Outputs) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


METHOD_CLASSES: Registry[type[Method]] = Registry("distillation method")
M = TypeVar("M", bound=type[Method])


def register_method(name: str) -> Callable[[M], M]:
    """Register a method's loss under ``name``; its ``Params`` must be the schema registered there in ``params``."""

    def decorator(cls: M) -> M:
        if name not in METHOD_PARAMS or cls.Params is not METHOD_PARAMS.get(name):
            raise TypeError(f"method {name!r}: set Params to its schema, registered with @register_params({name!r})")
        return METHOD_CLASSES.register(name)(cls)

    return decorator


def hard_label_ce(out: Outputs, label_smoothing: float = 0.0) -> Tensor:
    """The cross-entropy (hard-label) term: against ``target_probs`` when the trainer made them, else ``targets``."""
    target = out.target_probs if out.target_probs is not None else out.targets
    return F.cross_entropy(out.student_logits, target, label_smoothing=label_smoothing)


def zscore(logits: Tensor) -> Tensor:
    """Each row shifted to mean 0 and scaled to std 1 (Sun et al. 2024, "Logit Standardization in KD")."""
    mean = logits.mean(dim=1, keepdim=True)
    return (logits - mean) / (logits.std(dim=1, keepdim=True) + 1e-7)


def kl_soft(student_logits: Tensor, teacher_logits: Tensor, temperature: float, standardize: bool = False) -> Tensor:
    """Hinton's soft term: KL(teacher_T || student_T), mean over the batch, scaled by T^2. ``standardize``
    z-scores both models' logits first, so the student matches the teacher's logit *relations*, not their range."""
    s, t = student_logits.float(), teacher_logits.float()
    if standardize:
        s, t = zscore(s), zscore(t)
    log_p_s = torch.log_softmax(s / temperature, dim=1)
    log_p_t = torch.log_softmax(t / temperature, dim=1)
    kl = torch.sum(log_p_t.exp() * (log_p_t - log_p_s), dim=1).mean()
    return kl * temperature**2


def optional_soft_term(out: Outputs, kd_weight: float, temperature: float) -> dict[str, Tensor]:
    """``{"kd": kd_weight * kl_soft(...)}`` next to a feature method's own terms, or nothing at weight 0."""
    if not kd_weight:
        return {}
    assert out.teacher_logits is not None
    return {"kd": kd_weight * kl_soft(out.student_logits, out.teacher_logits, temperature)}
