"""One training loop for teacher, CE-only baseline and distilled student.

The loop sums the named losses a method returns, checkpoints atomically at the end of every
epoch (model, optimizer, schedule, RNG, history), selects the best epoch on the validation
split, and resumes bit-for-bit from the last completed epoch.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from kdeploy import atomic, progress
from kdeploy.data import Dataset, iterate_batches
from kdeploy.distill.hooks import FeatureHooks
from kdeploy.distill.methods import Method, Outputs
from kdeploy.errors import UserError
from kdeploy.evaluate import accuracy, predict_logits
from kdeploy.recipe import ModelConfig, TrainConfig


@dataclass
class World:
    """Where this process sits in a (possibly distributed) run."""

    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass
class Result:
    accuracy: float
    val_accuracy: float
    best_epoch: int
    train_seconds: float
    samples_per_second: float
    history: list[dict[str, Any]]


def make_optimizer(params: list[nn.Parameter], cfg: ModelConfig, lr: float) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0
        )
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, steps_per_epoch: int, cfg: ModelConfig) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (warm-up, then the schedule)."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = cfg.warmup_epochs * steps_per_epoch
    if step < warm:
        return (step + 1) / warm
    if cfg.schedule == "cosine":
        t = (step - warm) / max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))
    if cfg.schedule == "step":
        epoch = step // steps_per_epoch
        return cfg.gamma ** sum(1 for m in cfg.milestones if epoch >= m)
    return 1.0


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The shuffling/augmentation RNG of one epoch: the same for every model of a run."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class Trainer:
    """Trains one model of a run; a method supplies the losses."""

    def __init__(
        self,
        data: Dataset,
        batch_size: int,
        eval_batch_size: int,
        seed: int,
        train: TrainConfig,
        augment: Any,
        world: World | None = None,
    ) -> None:
        self.data = data
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.train_cfg = train
        self.augment = augment if augment is not None and augment.enabled else None
        self.world = world or World()

    # ---- teacher outputs -------------------------------------------------------------------
    def teacher_cache(self, teacher: nn.Module) -> Tensor:
        """Teacher logits for every training sample, computed once (valid only without augmentation)."""
        return predict_logits(
            teacher, self.data.train, self.data.mean, self.data.std, self.eval_batch_size, self.world.device
        )

    # ---- the loop ---------------------------------------------------------------------------
    def fit(
        self,
        role: str,
        model: nn.Module,
        cfg: ModelConfig,
        method: Method,
        state_path: Any,
        teacher: nn.Module | None = None,
        cached_teacher: Tensor | None = None,
        resume: bool = False,
    ) -> Result:
        data, world = self.data, self.world
        device = world.device
        model.to(device)
        method.to(device)
        s_paths, t_paths = method.feature_layers()
        s_hooks = FeatureHooks(model, s_paths, "student", "distill").attach() if s_paths else None
        t_hooks = FeatureHooks(teacher, t_paths, "teacher", "distill").attach() if (t_paths and teacher) else None
        if s_hooks or t_hooks:
            self._setup_method(model, teacher, method, s_hooks, t_hooks)
            method.to(device)

        lr = cfg.lr * (world.size if self.train_cfg.scale_lr else 1)
        params = [p for p in list(model.parameters()) + list(method.parameters()) if p.requires_grad]
        optimizer = make_optimizer(params, cfg, lr)
        n_train = len(data.train)
        per_rank = math.ceil(n_train / world.size)
        steps_per_epoch = max(1, math.ceil(per_rank / self.batch_size))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps_per_epoch, cfg))

        start_epoch, history, best = 0, [], {"val": -1.0, "epoch": -1, "state": None}
        train_seconds, samples_seen = 0.0, 0
        if resume and state_path.is_file():
            ckpt = torch.load(state_path, map_location="cpu", weights_only=True)
            model.load_state_dict(ckpt["model"])
            method.load_state_dict(ckpt["method"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            torch.set_rng_state(ckpt["rng"])
            start_epoch, history = int(ckpt["epoch"]) + 1, list(ckpt["history"])
            best = {"val": float(ckpt["best_val"]), "epoch": int(ckpt["best_epoch"]), "state": ckpt["best_state"]}
            train_seconds, samples_seen = float(ckpt["train_seconds"]), int(ckpt["samples_seen"])
            progress.log(f"{role}: resuming after epoch {start_epoch} of {cfg.epochs}")

        use_teacher = method.needs_teacher and (teacher is not None or cached_teacher is not None)
        if teacher is not None:
            teacher.eval()
        autocast = self._autocast()
        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            method.train()
            gen = epoch_generator(self.seed, epoch)
            totals: dict[str, Tensor] = {}
            correct = torch.zeros((), dtype=torch.long)
            seen, t0 = 0, time.perf_counter()
            batches = iterate_batches(
                data.train,
                self.batch_size,
                shuffle=True,
                generator=gen,
                augment=self.augment,
                mean=data.mean,
                std=data.std,
                shard=(world.rank, world.size),
            )
            with progress.task(f"{role} epoch {epoch + 1}/{cfg.epochs}", steps_per_epoch) as bar:
                for step, (x, y, idx) in enumerate(batches):
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    with autocast:
                        logits = model(x)
                        out = Outputs(student_logits=logits, targets=y, epoch=epoch)
                        if s_hooks:
                            out.student_features = s_hooks.pop()
                        if use_teacher:
                            out.teacher_logits, out.teacher_features = self._teacher(
                                teacher, t_hooks, cached_teacher, x, idx
                            )
                        losses = method(out)
                    loss = sum(losses.values())
                    if not torch.isfinite(loss):
                        where = f"epoch {epoch + 1}, step {step + 1}"
                        kept = f"last good checkpoint kept in {state_path}" if state_path.is_file() else "nothing kept"
                        raise UserError(
                            f"{role}: loss became {loss.item()} at {where} ({kept}); "
                            f"lower {role}.lr or check the data, then re-run with --force"
                        )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    with torch.no_grad():
                        for k, v in losses.items():
                            totals[k] = totals.get(k, 0.0) + v.detach().float() * len(y)
                        correct += (logits.argmax(1) == y).sum().cpu()
                    seen += len(y)
                    bar.update(1, loss=loss.item())
            seconds = time.perf_counter() - t0
            train_seconds += seconds
            samples_seen += seen * world.size
            val_acc = accuracy(model, data.val, data.mean, data.std, self.eval_batch_size, device)
            row: dict[str, Any] = {
                "model": role,
                "epoch": epoch + 1,
                "loss": round(sum(float(v) for v in totals.values()) / max(seen, 1), 6),
                **{f"loss_{k}": round(float(v) / max(seen, 1), 6) for k, v in totals.items()},
                "train_acc": round(correct.item() / max(seen, 1), 6),
                "val_acc": round(val_acc, 6) if not math.isnan(val_acc) else "",
                "lr": round(scheduler.get_last_lr()[0], 8),
                "seconds": round(seconds, 3),
                "samples_per_s": round(seen * world.size / seconds, 1),
            }
            history.append(row)
            if math.isnan(val_acc) or val_acc > best["val"]:
                best = {
                    "val": val_acc if not math.isnan(val_acc) else -1.0,
                    "epoch": epoch + 1,
                    "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                }
            progress.log(
                f"{role} epoch {epoch + 1}/{cfg.epochs}: loss {row['loss']:.4f} train {row['train_acc']:.4f} "
                f"val {val_acc:.4f} ({row['samples_per_s']:.0f} samples/s)"
            )
            if world.main:
                self._checkpoint(
                    state_path, epoch, model, method, optimizer, scheduler, history, best, train_seconds, samples_seen
                )

        if s_hooks:
            s_hooks.detach()
        if t_hooks:
            t_hooks.detach()
        if best["state"] is not None:
            model.load_state_dict(best["state"])
        test_acc = accuracy(model, data.test, data.mean, data.std, self.eval_batch_size, device)
        return Result(
            accuracy=test_acc,
            val_accuracy=best["val"],
            best_epoch=best["epoch"],
            train_seconds=train_seconds,
            samples_per_second=samples_seen / train_seconds if train_seconds else 0.0,
            history=history,
        )

    # ---- helpers -------------------------------------------------------------------------------
    def _autocast(self) -> Any:
        precision = self.train_cfg.precision
        if precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.world.device.type, dtype=dtype)

    @torch.no_grad()
    def _teacher(
        self, teacher: nn.Module | None, hooks: FeatureHooks | None, cached: Tensor | None, x: Tensor, idx: Tensor
    ) -> tuple[Tensor, list[Tensor]]:
        if cached is not None and hooks is None:
            return cached[idx].to(x.device, non_blocking=True), []
        assert teacher is not None
        logits = teacher(x)
        return logits, hooks.pop() if hooks else []

    def _setup_method(
        self,
        model: nn.Module,
        teacher: nn.Module | None,
        method: Method,
        s_hooks: FeatureHooks | None,
        t_hooks: FeatureHooks | None,
    ) -> None:
        """One dry forward pass to learn the feature shapes, so the method can build its regressors."""
        x, _, _ = next(
            iterate_batches(
                self.data.train, min(8, len(self.data.train)), shuffle=False, mean=self.data.mean, std=self.data.std
            )
        )
        x = x.to(self.world.device)
        was = model.training
        model.eval()
        with torch.no_grad():
            model(x)
            if teacher is not None:
                teacher.eval()
                teacher(x)
        model.train(was)
        method.setup(s_hooks.pop() if s_hooks else [], t_hooks.pop() if t_hooks else [])

    def _checkpoint(
        self,
        path: Any,
        epoch: int,
        model: nn.Module,
        method: Method,
        optimizer: Any,
        scheduler: Any,
        history: list,
        best: dict,
        train_seconds: float,
        samples_seen: int,
    ) -> None:
        state = {
            "epoch": epoch,
            "model": model.state_dict(),
            "method": method.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "history": history,
            "best_val": best["val"],
            "best_epoch": best["epoch"],
            "best_state": best["state"],
            "train_seconds": train_seconds,
            "samples_seen": samples_seen,
        }
        atomic.write_with(path, lambda tmp: torch.save(state, tmp))
