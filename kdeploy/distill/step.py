"""The pieces of one training step: the batch as the model sees it, the teacher's outputs for it, the student
and its method as one module, and the epoch's running sums (kept on the device: no sync per step)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from kdeploy.distill.distributed import World
from kdeploy.distill.hooks import FeatureHooks
from kdeploy.distill.methods import Method, Outputs
from kdeploy.errors import UserError


@dataclass
class Batch:
    images: Tensor  # normalised, augmented and (with mixup/cutmix) mixed, on the training device
    labels: Tensor  # class indices (under mixing: the larger share's)
    index: Tensor  # positions in the training split (the cached teacher table's rows)
    epoch: int  # 0-based
    target_probs: Tensor | None = None  # soft targets of the CE term (label smoothing, mixing)
    teacher_logits: Tensor | None = None
    teacher_features: list[Tensor] = field(default_factory=list)


@dataclass
class TeacherOutputs:
    """The teacher's logits (and hooked features) for a batch: looked up in the cached table, or computed by
    running the teacher on the very images the student sees. The table is N×classes, or N×V×classes for a
    student whose augmentation makes V views of each image (shifts and flips: ``Augment.num_views``)."""

    model: nn.Module | None
    hooks: FeatureHooks | None
    cached: Tensor | None

    @property
    def per_view(self) -> bool:
        return self.cached is not None and self.cached.dim() == 3

    @torch.no_grad()
    def __call__(
        self, images: Tensor, index: Tensor, mixed: bool = False, view: Tensor | None = None
    ) -> tuple[Tensor, list[Tensor]]:
        if self.cached is not None and self.hooks is None and not mixed:
            rows = index.to(self.cached.device)
            if not self.per_view:
                return self.cached[rows], []
            if view is None:
                raise ValueError("a table of views needs the view of each image (the batch was not augmented)")
            return self.cached[rows, view.to(self.cached.device)], []
        if self.model is None:
            raise ValueError("mixed batches need the live teacher: the cached table holds unmixed images only")
        if self.hooks is None:
            return self.model(images), []
        return self.hooks.run(self.model, images)


class StudentStep(nn.Module):
    """The trained model and its method as one module, so DistributedDataParallel also averages the gradients of
    the method's learned parts (FitNet's regressor)."""

    def __init__(self, model: nn.Module, method: Method, hooks: FeatureHooks | None, compiled: bool = False) -> None:
        super().__init__()
        self.model, self.method = model, method
        self.hooks = hooks
        # kept out of the module tree: same parameters, and state_dict keys stay those of the model
        self._forward = {"model": torch.compile(model) if compiled else model}

    def forward(self, images: Tensor, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        forward = self._forward["model"]
        logits, features = self.hooks.run(forward, images) if self.hooks is not None else (forward(images), [])
        out = Outputs(
            student_logits=logits,
            targets=batch.labels,
            teacher_logits=batch.teacher_logits,
            student_features=features,
            teacher_features=batch.teacher_features,
            epoch=batch.epoch,
            target_probs=batch.target_probs,
        )
        return logits, self.method(out)


@dataclass
class EpochSums:
    """Samples, correct predictions and per-term loss sums of one epoch, plus the first non-finite loss."""

    device: torch.device
    steps: int = 0
    seen: int = 0
    correct: Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.long))
    totals: dict[str, Tensor] = field(default_factory=dict)
    bad_step: Tensor = field(default_factory=lambda: torch.full((), -1, dtype=torch.long))
    bad_value: Tensor = field(default_factory=lambda: torch.zeros(()))

    def __post_init__(self) -> None:
        self.correct = self.correct.to(self.device)
        self.bad_step = self.bad_step.to(self.device)
        self.bad_value = self.bad_value.to(self.device)

    @torch.no_grad()
    def add(self, losses: dict[str, Tensor], loss: Tensor, logits: Tensor, labels: Tensor) -> None:
        self.steps += 1
        first = (self.bad_step < 0) & ~torch.isfinite(loss)
        self.bad_step = torch.where(first, self.steps, self.bad_step)
        self.bad_value = torch.where(first, loss.detach().float(), self.bad_value)
        n = len(labels)
        for k, v in losses.items():
            self.totals[k] = self.totals.get(k, torch.zeros((), device=self.device)) + v.detach().float() * n
        self.correct += (logits.argmax(1) == labels).sum()
        self.seen += n

    def over_ranks(self, world: World) -> tuple[int, float, dict[str, float]]:
        """(samples, correct, loss sums) over all ranks, as Python numbers (one sync per epoch)."""
        if not world.distributed:
            return self.seen, float(self.correct.item()), {k: float(v) for k, v in self.totals.items()}
        losses = [v.double().cpu() for v in self.totals.values()]
        packed = torch.stack([torch.tensor(float(self.seen)), self.correct.double().cpu(), *losses])
        packed = world.sum(packed)
        sums = {k: float(packed[2 + i]) for i, k in enumerate(self.totals)}
        return int(packed[0].item()), float(packed[1].round().item()), sums


def check_finite(role: str, sums: EpochSums, epoch: int, world: World, state_path: Path) -> None:
    """Stop every rank at once when a loss so far was NaN/inf, naming the epoch and step (one sync)."""
    step = int(sums.bad_step.item())
    if not world.any(step >= 0):  # every rank stops at the same step, none hangs
        return
    where = f"epoch {epoch + 1}, step {step if step >= 0 else sums.steps}"
    kept = f"last good checkpoint kept in {state_path}" if state_path.is_file() else "nothing kept"
    value = sums.bad_value.item() if step >= 0 else "non-finite on another rank"
    raise UserError(
        f"{role}: loss became {value} at {where} ({kept}); lower {role}.lr or check the data, then re-run with --force"
    )
