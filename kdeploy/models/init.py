"""Weight initialisation shared by the built-in CNNs."""

from __future__ import annotations

from torch import nn


def he_init_convs(model: nn.Module) -> None:
    """He-initialise every convolution of ``model`` (fan-out, ReLU), in module order; BatchNorm keeps PyTorch's
    own init (scale 1, shift 0)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
