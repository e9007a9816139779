"""``TrainState``: everything one model's training needs to continue bit-for-bit, saved and restored here only.

The file (``state/<role>.pt``) holds tensors and plain values only, so ``torch.load(weights_only=True)`` reads it
(``runs.load_resume_state`` refuses anything else). It is written atomically at the end of every epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdeploy import atomic
from kdeploy.distill.ema import WeightEMA
from kdeploy.distill.methods import Method
from kdeploy.runs import load_resume_state


@dataclass
class BestEpoch:
    """The epoch with the highest validation accuracy so far and the weights it had (on the CPU)."""

    val: float = -1.0
    epoch: int = -1
    weights: dict[str, Tensor] | None = None


@dataclass
class TrainState:
    """One model's training: the live objects (model, method, optimizer, schedule, loss scaler, EMA) and the
    counters around them. ``epoch`` counts completed epochs, so training continues at ``range(epoch, epochs)``."""

    model: nn.Module
    method: Method
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    ema: WeightEMA | None = None
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: BestEpoch = field(default_factory=BestEpoch)
    train_seconds: float = 0.0
    samples_seen: int = 0

    @property
    def eval_model(self) -> nn.Module:
        """The model validation, best-epoch selection, test and the saved weights use: the EMA when on."""
        return self.ema.model if self.ema is not None else self.model

    def save(self, path: Path) -> None:
        state = {
            "epoch": self.epoch - 1,  # the last completed epoch, 0-based (as files written before TrainState)
            "model": self.model.state_dict(),
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else {},
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
            "history": self.history,
            "best_val": self.best.val,
            "best_epoch": self.best.epoch,
            "best_state": self.best.weights,
            "train_seconds": self.train_seconds,
            "samples_seen": self.samples_seen,
        }
        atomic.write_with(path, lambda tmp: torch.save(state, tmp))

    def restore(self, path: Path) -> None:
        state = load_resume_state(path)
        self.model.load_state_dict(state["model"])
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.epoch = int(state["epoch"]) + 1
        self.history = list(state["history"])
        self.best = BestEpoch(float(state["best_val"]), int(state["best_epoch"]), state["best_state"])
        self.train_seconds = float(state["train_seconds"])
        self.samples_seen = int(state["samples_seen"])
