"""Whole-batch image ops on uint8 tensors: augmentation (random crop, flip, translate) and normalisation."""

from __future__ import annotations

from collections.abc import Sequence

import pydantic
import torch
import torch.nn.functional as F


class Augment(pydantic.BaseModel, extra="forbid"):
    """Training-time augmentation, applied per batch (also the recipe's ``augment`` section)."""

    crop_padding: int = pydantic.Field(0, ge=0, description="random crop with this much zero padding (pixels)")
    flip: bool = pydantic.Field(False, description="random horizontal flip")
    translate: int = pydantic.Field(0, ge=0, description="random shift by up to ±N pixels (Hinton et al. 'jitter')")

    @property
    def enabled(self) -> bool:
        return bool(self.crop_padding or self.flip or self.translate)

    @property
    def flip_only(self) -> bool:
        """Only random flips: every augmented image is one of two views, so per-image outputs can be cached."""
        return self.flip and not (self.crop_padding or self.translate)


def _stat(values: float | Sequence[float], channels: int, like: torch.Tensor, what: str) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float32, device=like.device).flatten()
    if t.numel() not in (1, channels):
        raise ValueError(f"{what} has {t.numel()} values for {channels} channels")
    return t.view(-1, 1, 1)


def normalize(
    images_uint8: torch.Tensor, mean: float | Sequence[float] = 0.0, std: float | Sequence[float] = 1.0
) -> torch.Tensor:
    """float32 ``(x / 255 - mean) / std`` per channel, for N×C×H×W (or C×H×W) uint8 images."""
    channels = images_uint8.shape[-3]
    m = _stat(mean, channels, images_uint8, "mean")
    s = _stat(std, channels, images_uint8, "std")
    scale = 1.0 / (255.0 * s)
    return torch.addcmul(-m / s, images_uint8.to(torch.float32), scale)


def _randint(bound: int, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(-bound, bound + 1, (n,), generator=generator, device=gen_device).to(device)


def augment_batch(images_uint8: torch.Tensor, aug: Augment, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop-with-padding, horizontal flip and translation of a uint8 N×C×H×W batch, in one gather.

    Crop with padding ``p`` is a zero-filled shift by up to ±p; ``translate`` adds a further shift of up to
    ±t; the two compose into one zero-filled shift. Flip happens after the shift (the same distribution).
    """
    return augment_with_flips(images_uint8, aug, generator)[0]


def augment_with_flips(
    images_uint8: torch.Tensor, aug: Augment, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``augment_batch`` plus which images it flipped (bool, per image; None when ``aug`` does not flip), so that
    outputs cached for the plain and the flipped view of every image can be looked up (same random draws)."""
    if not aug.enabled or images_uint8.shape[0] == 0:
        return images_uint8, None
    if images_uint8.dim() != 4:
        raise ValueError(f"augment_batch expects N×C×H×W, got {tuple(images_uint8.shape)}")
    x = images_uint8
    n, c, h, w = x.shape
    dev = x.device
    dy = torch.zeros(n, dtype=torch.int64, device=dev)
    dx = torch.zeros(n, dtype=torch.int64, device=dev)
    for bound in (aug.crop_padding, aug.translate):
        if bound:
            dy += _randint(bound, n, generator, dev)
            dx += _randint(bound, n, generator, dev)
    margin = aug.crop_padding + aug.translate
    cols = torch.arange(w, device=dev).expand(n, w)
    flip = None
    if aug.flip:
        gen_device = generator.device if generator is not None else torch.device("cpu")
        flip = (torch.rand(n, generator=generator, device=gen_device) < 0.5).to(dev)
        cols = torch.where(flip[:, None], cols.flip(1), cols)
    padded = F.pad(x, (margin, margin, margin, margin)) if margin else x
    hp, wp = h + 2 * margin, w + 2 * margin
    rows = torch.arange(h, device=dev)[None, :] + (margin - dy)[:, None]  # out[i] = in[i - dy]
    cols = cols + (margin - dx)[:, None]
    flat = (rows[:, :, None] * wp + cols[:, None, :]).reshape(n, 1, h * w).expand(n, c, h * w)
    return padded.reshape(n, c, hp * wp).gather(2, flat).view(n, c, h, w), flip
