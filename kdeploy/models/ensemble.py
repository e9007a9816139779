"""An ensemble teacher: the mean of the logits of several trained copies of one registered model.

Averaging logits is taking the geometric mean of the members' softmax distributions, at every temperature,
one of the two ways Hinton et al. (2015) combine an ensemble into soft targets. The members are trained
separately (different seeds) and loaded with a list ``teacher.checkpoint``, one file per member; a saved ensemble
(its run's ``teacher.safetensors``) holds them all and loads as one file. Members are addressed by module path
(``members.0.block3``) like any other layer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from kdeploy.models.registry import create_model, register_model


@register_model("ensemble")
class Ensemble(nn.Module):
    """``members`` copies of registered model ``model`` (built with ``member_kwargs``); returns their mean logits."""

    def __init__(
        self,
        *,
        num_classes: int,
        in_shape: tuple[int, int, int],
        model: str,
        members: int = 2,
        member_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if isinstance(members, bool) or not isinstance(members, int) or members < 1:
            raise ValueError(f"members must be a positive integer, got {members!r}")
        if model == "ensemble":
            raise ValueError("members cannot themselves be ensembles; list every member's file in one ensemble")
        super().__init__()
        kwargs = dict(member_kwargs or {})
        self.members = nn.ModuleList(
            create_model(model, num_classes=num_classes, in_shape=in_shape, **kwargs) for _ in range(members)
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([member(x) for member in self.members]).mean(0)
