"""Any timm model by name (``model: timm`` with ``kwargs: {arch: resnet18, pretrained: false}``).

timm is an optional extra (``pip install 'kdeploy[timm]'``); without it, building a ``timm`` model
says so in one line. ``pretrained: true`` loads the Hugging Face hub weights: when the hub is not
reachable (checked with a short connection probe, never timm's long retry loop) only the local cache
is tried, and a miss is one line naming the fix. Feature layers for FitNet/AT are module paths of
the timm model as printed by ``model.named_modules()`` (``layer2``, ``stages.1``, ``blocks.3``).
"""

from __future__ import annotations

import contextlib
import difflib
import os
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

from torch import nn

from kdeploy.errors import UserError
from kdeploy.models.registry import register_model
from kdeploy.timeouts import socket_timeout

INSTALL = "pip install 'kdeploy[timm]'"
PROBE_TIMEOUT_S = 3.0
DOWNLOAD_TIMEOUT_S = 30.0


def import_timm() -> Any:
    """``import timm``, or a one-line :class:`UserError` naming the extra."""
    try:
        import timm
    except ImportError:
        raise UserError(f"model 'timm' needs the timm package; install it with: {INSTALL}") from None
    return timm


def list_archs(pattern: str = "*") -> list[str]:
    """timm architecture names matching a shell-style ``pattern`` (``"resnet*"``), sorted."""
    return sorted(import_timm().list_models(pattern or "*"))


@register_model("timm")
def timm_model(
    *,
    num_classes: int,
    in_shape: tuple[int, int, int],
    arch: str = "resnet18",
    pretrained: bool = False,
    model_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """``timm.create_model(arch)`` with ``num_classes`` outputs and ``in_shape[0]`` input channels.

    ``model_kwargs`` go to ``timm.create_model`` as they are (``drop_rate``, ``drop_path_rate``, ...).
    With ``pretrained`` the classifier is re-initialised when ``num_classes`` differs and the stem is
    adapted to the channel count (timm's own handling).
    """
    timm = import_timm()
    if not isinstance(arch, str) or not timm.is_model(arch):
        valid = timm.list_models()
        close = difflib.get_close_matches(str(arch), valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(
            f"unknown timm arch {arch!r}{hint}; list them with: kdeploy models timm 'resnet*' ({len(valid)} in all)"
        )
    if not isinstance(pretrained, bool):
        raise UserError(f"timm arch {arch!r}: pretrained must be true or false, got {pretrained!r}")
    extra = dict(model_kwargs or {})
    for key in ("num_classes", "in_chans", "pretrained"):
        if key in extra:
            raise UserError(f"timm arch {arch!r}: set {key!r} outside model_kwargs (it comes from the recipe)")
    kwargs = {"num_classes": num_classes, "in_chans": in_shape[0], **extra}
    if not pretrained:
        try:
            return timm.create_model(arch, pretrained=False, **kwargs)
        except TypeError as error:  # an unknown model_kwargs key
            raise UserError(f"timm arch {arch!r}: bad model_kwargs ({error})") from None
    return _pretrained(timm, arch, kwargs)


def _pretrained(timm: Any, arch: str, kwargs: dict[str, Any]) -> nn.Module:
    offline = not _hub_reachable()
    where = "the Hugging Face hub is not reachable and the weights are not in the local cache"
    try:
        with _hub_offline(offline), socket_timeout(DOWNLOAD_TIMEOUT_S):
            return timm.create_model(arch, pretrained=True, **kwargs)
    except (OSError, RuntimeError, ValueError) as error:  # hub errors, URLError, timeouts, corrupt files
        reason = where if offline else f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        raise UserError(
            f"cannot load pretrained timm weights for {arch!r}: {reason}; "
            "run with internet once or set pretrained: false"
        ) from None


def _hub_reachable() -> bool:
    """A quick TCP probe of the hub endpoint (False at once when ``HF_HUB_OFFLINE`` is set)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Make huggingface_hub read only its cache (it checks this constant on every request)."""
    if not offline:
        yield
        return
    try:
        from huggingface_hub import constants
    except ImportError:  # timm without huggingface_hub downloads from plain URLs (socket timeout applies)
        yield
        return
    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


timm_model.list_archs = list_archs  # type: ignore[attr-defined]  # `kdeploy models timm` lists these
