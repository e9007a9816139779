"""Optimizer and learning-rate schedule of one model (``ModelConfig.optimizer``/``schedule``/``warmup_epochs``).

``lr_factor`` is the multiplier of the base learning rate at each optimizer step; ``LambdaLR`` applies it, so the
schedule is part of the scheduler's state and resumes exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kdeploy.recipe import ModelConfig

ONECYCLE_START = 1 / 25  # torch's OneCycleLR defaults: div_factor 25,
ONECYCLE_END = 1 / (25 * 1e4)  # final_div_factor 1e4,
ONECYCLE_WARM = 0.3  # pct_start 0.3 when warmup_epochs is 0


def make_optimizer(params: list[nn.Parameter], cfg: ModelConfig, lr: float) -> torch.optim.Optimizer:
    """SGD (Nesterov when momentum > 0), Adam or AdamW, fused (one pass over each parameter per step instead of
    several elementwise ones; the same update) when every parameter is a float tensor on the CPU or a GPU."""
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    kwargs = {"fused": True} if fused else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0, **kwargs
        )
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay, **kwargs)
    return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay, **kwargs)


def warmup_steps(cfg: ModelConfig, steps_per_epoch: int) -> int:
    """``warmup_epochs`` (an int, or a float for a fraction of epochs) in optimizer steps."""
    return round(cfg.warmup_epochs * steps_per_epoch)


def _cos(start: float, end: float, t: float) -> float:
    """Cosine from ``start`` (t=0) to ``end`` (t=1)."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(max(t, 0.0), 1.0)))


def lr_factor(step: int, steps_per_epoch: int, cfg: ModelConfig) -> float:
    """Multiplier of the base learning rate at optimizer step ``step``.

    - ``none``/``cosine``/``step``/``linear``: linear warm-up over ``warmup_epochs``, then constant, cosine to 0,
      ``gamma`` at each of ``milestones``, or linear to 0 at the last step.
    - ``onecycle`` (Smith & Topin; torch's ``OneCycleLR`` with its defaults): cosine from lr/25 up to lr over
      ``warmup_epochs`` (30 % of the steps when 0), then cosine down to lr/25e4 at the last step.
    """
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = warmup_steps(cfg, steps_per_epoch)
    if cfg.schedule == "onecycle":
        warm = warm or round(ONECYCLE_WARM * total)
        if step < warm:
            return _cos(ONECYCLE_START, 1.0, step / warm)
        return _cos(1.0, ONECYCLE_END, (step - warm) / max(1, total - 1 - warm))
    if step < warm:
        return (step + 1) / warm
    if cfg.schedule == "cosine":
        return _cos(1.0, 0.0, (step - warm) / max(1, total - warm))
    if cfg.schedule == "linear":
        return max(0.0, 1.0 - (step - warm) / max(1, total - warm))
    if cfg.schedule == "step":
        epoch = step // steps_per_epoch
        return cfg.gamma ** sum(1 for m in cfg.milestones if epoch >= m)
    return 1.0
