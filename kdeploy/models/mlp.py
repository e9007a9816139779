"""A plain multilayer perceptron (Hinton et al.'s 1200-1200 MNIST teacher by default)."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from kdeploy.models.dropout import BitsDropout
from kdeploy.models.registry import register_model


class MLP(nn.Sequential):
    """``flatten -> drop_in -> [fcK -> actK -> dropK]* -> head``; hook hidden layers by name (``"fc2"``)."""

    def __init__(
        self,
        *,
        num_classes: int,
        in_shape: tuple[int, int, int],
        hidden: Sequence[int] = (1200, 1200),
        dropout: float = 0.0,
        input_dropout: float = 0.0,
    ) -> None:
        if isinstance(hidden, int) or not all(isinstance(h, int) and h > 0 for h in hidden):
            raise ValueError(f"hidden must be a list of positive integers, got {hidden!r}")
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["flatten"] = nn.Flatten()
        layers["drop_in"] = BitsDropout(input_dropout)
        width = math.prod(in_shape)
        for i, size in enumerate(hidden, start=1):
            layers[f"fc{i}"] = nn.Linear(width, size)
            layers[f"act{i}"] = nn.ReLU()
            layers[f"drop{i}"] = BitsDropout(dropout)
            width = size
        layers["head"] = nn.Linear(width, num_classes)
        super().__init__(layers)


@register_model("mlp")
def mlp(
    *,
    num_classes: int,
    in_shape: tuple[int, int, int],
    hidden: Sequence[int] = (1200, 1200),
    dropout: float = 0.0,
    input_dropout: float = 0.0,
) -> MLP:
    """MLP with the given hidden widths; ``hidden: []`` gives a linear classifier."""
    return MLP(
        num_classes=num_classes,
        in_shape=in_shape,
        hidden=hidden,
        dropout=dropout,
        input_dropout=input_dropout,
    )
