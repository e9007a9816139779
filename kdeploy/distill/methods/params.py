"""Every distillation method's parameters, registered by method name.

A leaf: pydantic only, no torch and no trainer. The recipe validates its ``distill:`` section against these
schemas and ``kdeploy methods`` lists them, without loading the losses. Each method's loss, in this package's
module of the same name, declares ``Params = <its schema here>``; ``register_method`` checks the two agree.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kdeploy.registry import Registry


class MethodParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


METHOD_PARAMS: Registry[type[MethodParams]] = Registry("distillation method")
register_params = METHOD_PARAMS.register


@register_params("ce")
class CEParams(MethodParams):
    """Plain cross-entropy: trains the teacher and the CE-only baseline."""

    label_smoothing: float = 0.0


@register_params("kd")
class KDParams(MethodParams):
    """Hinton et al. 2015: (1 - alpha) * CE + alpha * T^2 * KL(teacher_T || student_T)."""

    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the soft (teacher) term; CE gets 1 - alpha")
    ce_weight: float | None = Field(None, ge=0, description="overrides 1 - alpha (mdistiller convention)")
    kd_weight: float | None = Field(None, ge=0, description="overrides alpha (mdistiller convention)")
    standardize: bool = Field(False, description="z-score each sample's logits before T (Sun et al. 2024)")

    @property
    def weights(self) -> tuple[float, float]:
        """(CE weight, soft-term weight): the explicit weights where given, else ``1 - alpha`` and ``alpha``."""
        ce = 1.0 - self.alpha if self.ce_weight is None else self.ce_weight
        kd = self.alpha if self.kd_weight is None else self.kd_weight
        return ce, kd


@register_params("fitnet")
class FitNetParams(MethodParams):
    """Romero et al. 2015: CE + hint_weight * MSE(regressor(student layer), teacher layer)."""

    student_layer: str
    teacher_layer: str
    hint_weight: float = Field(100.0, ge=0)
    ce_weight: float = Field(1.0, ge=0)
    kd_weight: float = Field(0.0, ge=0)
    temperature: float = Field(4.0, gt=0)


@register_params("at")
class ATParams(MethodParams):
    """Zagoruyko & Komodakis 2017: CE + beta * sum over layer pairs of mean((a(s) - a(t))^2)."""

    student_layers: list[str] = Field(min_length=1)
    teacher_layers: list[str] = Field(min_length=1)
    p: float = Field(2.0, gt=0)
    beta: float = Field(1000.0, ge=0)
    ce_weight: float = Field(1.0, ge=0)
    kd_weight: float = Field(0.0, ge=0, description="adds kd_weight * T^2 * KL on the logits, as FitNet's")
    temperature: float = Field(4.0, gt=0)

    @model_validator(mode="after")
    def _pairs(self) -> ATParams:
        if len(self.student_layers) != len(self.teacher_layers):
            raise ValueError("student_layers and teacher_layers must have the same length")
        return self


@register_params("dkd")
class DKDParams(MethodParams):
    """Zhao et al. 2022: CE + warm-up * (alpha * TCKD + beta * NCKD)."""

    alpha: float = Field(1.0, ge=0, description="weight of the target-class term (TCKD)")
    beta: float = Field(8.0, ge=0, description="weight of the non-target-class term (NCKD)")
    temperature: float = Field(4.0, gt=0)
    warmup: int = Field(20, ge=0, description="epochs over which the DKD weight ramps up linearly")
    ce_weight: float = Field(1.0, ge=0)


@register_params("dist")
class DISTParams(MethodParams):
    """Huang et al. 2022: CE + T^2 * (beta * inter-class + gamma * intra-class Pearson distance)."""

    beta: float = Field(1.0, ge=0, description="weight of the per-image (inter-class) correlation term")
    gamma: float = Field(1.0, ge=0, description="weight of the per-class (intra-class, across the batch) term")
    temperature: float = Field(1.0, gt=0)
    ce_weight: float = Field(1.0, ge=0)


@register_params("mse")
class MSEParams(MethodParams):
    """Ba & Caruana 2014, Kim et al. 2021: ce_weight * CE + kd_weight * mean((z_s - z_t)^2) on the logits."""

    kd_weight: float = Field(1.0, ge=0, description="weight of the logit MSE (0.5: KD's step size at T -> inf)")
    ce_weight: float = Field(0.0, ge=0, description="weight of the hard-label CE; Kim et al. use none")


def describe(name: str) -> str:
    """``name: param=default, ...`` (required parameters without a default)."""
    fields = METHOD_PARAMS.get(name).model_fields
    listing = ", ".join(k if f.is_required() else f"{k}={f.default!r}" for k, f in fields.items())
    return f"{name}: {listing}"


def given(params: MethodParams) -> dict[str, Any]:
    """Only the parameters the recipe set: what a resolved recipe stores, so it means what the user wrote."""
    return params.model_dump(exclude_unset=True)
