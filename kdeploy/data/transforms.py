"""Whole-batch image ops on uint8 tensors: augmentation (random crop, flip, translate, cutout) and normalisation."""

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
    cutout: int = pydantic.Field(
        0, ge=0, description="zero a random N×N square per image, clipped at the borders (DeVries & Taylor 2017)"
    )

    @property
    def enabled(self) -> bool:
        return bool(self.crop_padding or self.flip or self.translate or self.cutout)

    @property
    def tabular(self) -> bool:
        """Whether every augmented image is one of ``num_views`` fixed views, so that a table of a model's outputs
        per view can stand in for running it on each batch. Cutout squares are not counted among the views."""
        return not self.cutout

    @property
    def shift(self) -> int:
        """The largest shift in pixels: crop padding and translation compose into one zero-filled shift."""
        return self.crop_padding + self.translate

    @property
    def num_views(self) -> int:
        """How many distinct images one image can become: each shift in [-shift, shift]², mirrored or not. A table
        of per-view outputs (``view_images``) can then stand in for a model run on every augmented batch."""
        side = 2 * self.shift + 1
        return side * side * (2 if self.flip else 1)


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


def _draw_device(generator: torch.Generator | None) -> torch.device:
    """Where ``generator`` draws (the CPU without one): the draws are made there, then moved to the images."""
    return generator.device if generator is not None else torch.device("cpu")


def _randint(low: int, high: int, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``n`` integers in [low, high), drawn from ``generator`` and placed on ``device``."""
    return torch.randint(low, high, (n,), generator=generator, device=_draw_device(generator)).to(device)


def augment_batch(images_uint8: torch.Tensor, aug: Augment, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop-with-padding, horizontal flip and translation of a uint8 N×C×H×W batch, in one gather.

    Crop with padding ``p`` is a zero-filled shift by up to ±p; ``translate`` adds a further shift of up to
    ±t; the two compose into one zero-filled shift. Flip happens after the shift (the same distribution), and
    cutout squares after both.
    """
    return augment_with_views(images_uint8, aug, generator)[0]


def augment_with_views(
    images_uint8: torch.Tensor, aug: Augment, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``augment_batch`` plus each image's view: int64, per image, the index of its shift and flip among
    ``aug.num_views`` (``view_images``' numbering), so that outputs cached per view can be looked up for the same
    random draws. None when ``aug`` is off. With flips only, view 0 is the image as stored and view 1 its mirror.
    A cutout square is not part of the view (``Augment.tabular``)."""
    if not aug.enabled:
        return images_uint8, None
    if images_uint8.dim() != 4:
        raise ValueError(f"augment_batch expects N×C×H×W, got {tuple(images_uint8.shape)}")
    x = images_uint8
    n, dev = x.shape[0], x.device
    dy = torch.zeros(n, dtype=torch.int64, device=dev)
    dx = torch.zeros(n, dtype=torch.int64, device=dev)
    for bound in (aug.crop_padding, aug.translate):
        if bound:
            dy += _randint(-bound, bound + 1, n, generator, dev)
            dx += _randint(-bound, bound + 1, n, generator, dev)
    flip = torch.zeros(n, dtype=torch.bool, device=dev)
    if aug.flip:
        flip = (torch.rand(n, generator=generator, device=_draw_device(generator)) < 0.5).to(dev)
    m, flips = aug.shift, 2 if aug.flip else 1
    view = ((dy + m) * (2 * m + 1) + (dx + m)) * flips + flip.long()
    out = _shift_and_flip(x, dy, dx, flip if aug.flip else None, m) if m or aug.flip else x
    if aug.cutout:
        out = _cutout(out, aug.cutout, generator)
    return out, view


def _cutout(x: torch.Tensor, side: int, generator: torch.Generator | None) -> torch.Tensor:
    """Each image with a ``side``×``side`` square set to 0, centred on a uniformly drawn pixel (drawn after the
    shifts and flips, so a recipe without cutout draws what it drew before the key existed)."""
    n, _, h, w = x.shape
    cy, cx = _randint(0, h, n, generator, x.device), _randint(0, w, n, generator, x.device)
    y0, x0 = (cy - side // 2)[:, None], (cx - side // 2)[:, None]
    rows, cols = torch.arange(h, device=x.device)[None, :], torch.arange(w, device=x.device)[None, :]
    inside_rows = (rows >= y0) & (rows < y0 + side)
    inside_cols = (cols >= x0) & (cols < x0 + side)
    return x.masked_fill((inside_rows[:, :, None] & inside_cols[:, None, :])[:, None], 0)


def _shift_and_flip(
    x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor | None, margin: int
) -> torch.Tensor:
    """Each image shifted by its (dy, dx) with zero fill, then mirrored where ``flip``: one gather."""
    n, c, h, w = x.shape
    dev = x.device
    cols = torch.arange(w, device=dev).expand(n, w)
    if flip is not None:
        cols = torch.where(flip[:, None], cols.flip(1), cols)
    padded = F.pad(x, (margin, margin, margin, margin)) if margin else x
    hp, wp = h + 2 * margin, w + 2 * margin
    rows = torch.arange(h, device=dev)[None, :] + (margin - dy)[:, None]  # out[i] = in[i - dy]
    cols = cols + (margin - dx)[:, None]
    flat = (rows[:, :, None] * wp + cols[:, None, :]).reshape(n, 1, h * w).expand(n, c, h * w)
    return padded.reshape(n, c, hp * wp).gather(2, flat).view(n, c, h, w)


def view_images(images_uint8: torch.Tensor, aug: Augment, view: int) -> torch.Tensor:
    """Every image of a uint8 N×C×H×W batch in one view of ``aug`` (``augment_with_views``' numbering), exactly
    as ``augment_batch`` makes it when it draws that shift and flip: the inputs of a per-view output table."""
    if not 0 <= view < aug.num_views:
        raise ValueError(f"view {view} is not one of the {aug.num_views} views of {aug!r}")
    m = aug.shift
    shift, flipped = divmod(view, 2) if aug.flip else (view, 0)
    dy, dx = (v - m for v in divmod(shift, 2 * m + 1))
    h, w = images_uint8.shape[-2:]
    padded = F.pad(images_uint8, (m, m, m, m)) if m else images_uint8
    out = padded[..., m - dy : m - dy + h, m - dx : m - dx + w]  # out[i, j] = in[i - dy, j - dx]
    return out.flip(-1) if flipped else out.contiguous()
