"""Any torchvision classification model by name, adapted to the dataset's channels and image size."""

from __future__ import annotations

import difflib
from typing import Any

import torch
from torch import nn

from kdeploy.errors import UserError
from kdeploy.models.registry import register_model
from kdeploy.timeouts import socket_timeout

DOWNLOAD_TIMEOUT_S = 30.0
# Inception-style models return auxiliary outputs while training; the trainer expects plain logits.
_NO_AUX = ("googlenet", "inception_v3")


@register_model("torchvision")
def torchvision_model(
    *,
    num_classes: int,
    in_shape: tuple[int, int, int],
    arch: str = "resnet18",
    small_input: bool = False,
    weights: str | None = None,
) -> nn.Module:
    """``torchvision.models.get_model(arch)`` with ``num_classes`` outputs and ``in_shape[0]`` input channels.

    ``small_input`` (ResNet family only) swaps the 7×7/2 stem and its max-pool for a 3×3/1 conv, the
    usual CIFAR adaptation. ``weights`` ("DEFAULT", "IMAGENET1K_V1", ...) loads torchvision's pretrained
    weights (needs internet once); the classifier is replaced when ``num_classes`` differs.
    """
    import torchvision

    valid = torchvision.models.list_models(module=torchvision.models)
    if arch not in valid:
        close = difflib.get_close_matches(str(arch), valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        examples = "resnet18, resnet50, mobilenet_v3_small, efficientnet_b0, convnext_tiny, vit_b_16"
        raise UserError(
            f"unknown torchvision arch {arch!r}{hint}; e.g. {examples} "
            f"({len(valid)} in all: torchvision.models.list_models())"
        )
    extra: dict[str, Any] = {"aux_logits": False} if arch in _NO_AUX else {}
    if weights is None:
        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **extra)
    else:
        model = _pretrained(arch, str(weights), extra)
        _replace_classifier(model, arch, num_classes)

    if small_input:
        if not isinstance(model, torchvision.models.ResNet):
            raise UserError(
                f"torchvision arch {arch!r}: small_input is supported for resnet archs only "
                "(resnet*, resnext*, wide_resnet*); set small_input: false"
            )
        old = model.conv1
        model.conv1 = nn.Conv2d(in_shape[0], old.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
    elif in_shape[0] != 3:
        _adapt_input_channels(model, arch, in_shape[0])
    return model


def _pretrained(arch: str, weights: str, extra: dict[str, Any]) -> nn.Module:
    import torchvision

    names = [w.name for w in torchvision.models.get_model_weights(arch)]
    if weights != "DEFAULT" and weights.split(".")[-1] not in names:
        raise UserError(
            f"torchvision arch {arch!r}: unknown weights {weights!r}; valid: DEFAULT, {', '.join(names)}, or null"
        )
    try:
        with socket_timeout(DOWNLOAD_TIMEOUT_S):
            return torchvision.models.get_model(arch, weights=weights, **extra)
    except (OSError, RuntimeError) as error:  # URLError, timeouts, a truncated or corrupt file
        raise UserError(
            f"cannot download torchvision weights {weights!r} for {arch!r}: {error}; "
            "run with internet once or set weights: null"
        ) from None


def _replace_classifier(model: nn.Module, arch: str, num_classes: int) -> None:
    """Swap the last Linear (or 1×1 Conv, SqueezeNet) producing the pretrained class count."""
    import torchvision

    pretrained_classes = len(torchvision.models.get_model_weights(arch).DEFAULT.meta["categories"])
    if num_classes == pretrained_classes:
        return
    for path, module in reversed(list(model.named_modules())):
        if isinstance(module, nn.Linear) and module.out_features == pretrained_classes:
            new: nn.Module = nn.Linear(module.in_features, num_classes, bias=module.bias is not None)
        elif isinstance(module, nn.Conv2d) and module.out_channels == pretrained_classes:
            new = nn.Conv2d(module.in_channels, num_classes, module.kernel_size, module.stride, module.padding)
        else:
            continue
        _set_submodule(model, path, new)
        return
    raise UserError(f"torchvision arch {arch!r}: cannot find its classifier to resize; use num_classes 1000")


def _adapt_input_channels(model: nn.Module, arch: str, channels: int) -> None:
    """Replace the first 3-channel conv by one taking ``channels`` inputs (pretrained RGB filters summed
    for 1 channel, tiled and rescaled otherwise, as timm does)."""
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            new = nn.Conv2d(
                channels,
                module.out_channels,
                module.kernel_size,
                module.stride,
                module.padding,
                module.dilation,
                module.groups,
                bias=module.bias is not None,
            )
            with torch.no_grad():
                weight = module.weight
                if channels == 1:
                    new.weight.copy_(weight.sum(dim=1, keepdim=True))
                else:
                    repeats = -(-channels // 3)
                    new.weight.copy_(weight.repeat(1, repeats, 1, 1)[:, :channels] * (3 / channels))
                if module.bias is not None:
                    new.bias.copy_(module.bias)
            _set_submodule(model, path, new)
            return
    raise UserError(f"torchvision arch {arch!r}: found no 3-channel input conv to adapt to {channels} channels")


def _set_submodule(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, new)


def list_archs(pattern: str = "*") -> list[str]:
    """torchvision classification model names matching a shell-style ``pattern``, sorted."""
    import fnmatch

    import torchvision

    return sorted(fnmatch.filter(torchvision.models.list_models(module=torchvision.models), pattern or "*"))


torchvision_model.list_archs = list_archs  # type: ignore[attr-defined]  # `kdeploy models torchvision`
