"""One training loop for teacher, CE-only baseline and distilled student.

The loop sums the named losses a method returns, checkpoints atomically at the end of every
epoch (model, optimizer, schedule, RNG, history), selects the best epoch on the validation
split, and resumes bit-for-bit from the last completed epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from kdeploy import atomic, progress
from kdeploy.data import Augment, Dataset, Split, iterate_batches
from kdeploy.distill.distributed import World
from kdeploy.distill.hooks import FeatureHooks
from kdeploy.distill.methods import Method, Outputs
from kdeploy.errors import UserError
from kdeploy.evaluate import accuracy, predict_logits
from kdeploy.recipe import ModelConfig, TrainConfig
from kdeploy.runs import load_resume_state


@dataclass
class Result:
    accuracy: float  # test accuracy of the best epoch (selected on the validation split)
    val_accuracy: float
    best_epoch: int
    train_seconds: float
    samples_per_second: float
    history: list[dict[str, Any]]
    last_accuracy: float = float("nan")  # test accuracy after the last epoch
    compile_seconds: float = 0.0  # torch.compile warm-up, not part of train_seconds


def check_precision(train: TrainConfig, device: torch.device) -> None:
    """fp16 autocast needs a GPU; bf16 runs on CPUs (fast with AVX512-BF16/AMX) and bf16-capable GPUs."""
    if train.precision == "fp16" and device.type != "cuda":
        raise UserError(
            "train.precision: fp16 needs a CUDA GPU (CPUs lack fast fp16 kernels and it needs loss scaling); "
            "use train.precision=bf16 on CPU"
        )
    if train.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("train.precision: this GPU has no bf16 support; use train.precision=fp16")


class _Step(nn.Module):
    """Model and method as one module, so DistributedDataParallel also averages the gradients of the method's
    learned parts (FitNet's regressor). ``fill`` completes the method's inputs from the student's logits."""

    def __init__(self, model: nn.Module, method: Method, compiled: bool = False) -> None:
        super().__init__()
        self.model, self.method = model, method
        # kept out of the module tree: same parameters, and state_dict keys stay those of the model
        self._forward = {"model": torch.compile(model) if compiled else model}

    def forward(self, x: Tensor, fill: Callable[[Tensor], Outputs]) -> tuple[Tensor, dict[str, Tensor]]:
        logits = self._forward["model"](x)
        return logits, self.method(fill(logits))


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
        augment: Augment | None,
        world: World | None = None,
    ) -> None:
        self.data = data
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.train_cfg = train
        self.augment = augment  # the recipe's data.augment; a model's own `augment` replaces it in fit()
        self.world = world or World()
        self._eval_parts: dict[int, Split] = {}
        # Late in training, tiny gradients and softmax tails become denormal floats, which x86 CPUs process up to
        # ~100x slower; flushing them to zero keeps the epoch rate steady (the values are below 1e-38).
        torch.set_flush_denormal(True)

    # ---- teacher outputs -------------------------------------------------------------------
    def teacher_cache(self, teacher: nn.Module) -> Tensor:
        """Teacher logits for every training sample, computed once (valid only without augmentation).

        Distributed, each rank computes one contiguous slice and an all-reduce over zero-filled buffers assembles
        the whole table on every rank (adding zeros is exact), so the work is split instead of repeated."""
        world, train = self.world, self.data.train
        if not world.distributed:
            return predict_logits(teacher, train, self.data.mean, self.data.std, self.eval_batch_size, world.device)
        bounds = [len(train) * r // world.size for r in range(world.size + 1)]
        lo, hi = bounds[world.rank], bounds[world.rank + 1]
        part = Split(train.images[lo:hi], train.labels[lo:hi])
        full = torch.zeros(len(train), self.data.num_classes)
        if hi > lo:
            full[lo:hi] = predict_logits(
                teacher, part, self.data.mean, self.data.std, self.eval_batch_size, world.device
            )
        return world.sum(full)

    def augment_for(self, cfg: ModelConfig) -> Augment | None:
        """The augmentation ``cfg``'s model trains with: its own ``augment`` or the recipe's; None when off."""
        augment = cfg.augment if cfg.augment is not None else self.augment
        return augment if augment is not None and augment.enabled else None

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
        augment = self.augment_for(cfg)
        model.to(device)
        method.to(device)
        if self.train_cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        s_paths, t_paths = method.feature_layers()
        s_hooks = FeatureHooks(model, s_paths, "student", "distill").attach() if s_paths else None
        t_hooks = FeatureHooks(teacher, t_paths, "teacher", "distill").attach() if (t_paths and teacher) else None
        if s_hooks or t_hooks:
            self._setup_method(model, teacher, method, s_hooks, t_hooks)
            method.to(device)

        lr = cfg.lr * (world.size if self.train_cfg.scale_lr else 1)
        params = [p for p in list(model.parameters()) + list(method.parameters()) if p.requires_grad]
        optimizer = make_optimizer(params, cfg, lr)
        scaler = torch.amp.GradScaler(device.type, enabled=self.train_cfg.precision == "fp16")
        n_train = len(data.train)
        per_rank = math.ceil(n_train / world.size)
        steps_per_epoch = max(1, math.ceil(per_rank / self.batch_size))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps_per_epoch, cfg))

        start_epoch, history, best = 0, [], {"val": -1.0, "epoch": -1, "state": None}
        train_seconds, samples_seen = 0.0, 0
        if resume and state_path.is_file():
            ckpt = load_resume_state(state_path)
            model.load_state_dict(ckpt["model"])
            method.load_state_dict(ckpt["method"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            torch.set_rng_state(ckpt["rng"])
            start_epoch, history = int(ckpt["epoch"]) + 1, list(ckpt["history"])
            best = {"val": float(ckpt["best_val"]), "epoch": int(ckpt["best_epoch"]), "state": ckpt["best_state"]}
            train_seconds, samples_seen = float(ckpt["train_seconds"]), int(ckpt["samples_seen"])
            progress.log(f"{role}: resuming after epoch {start_epoch} of {cfg.epochs}")

        use_teacher = method.needs_teacher and (teacher is not None or cached_teacher is not None)
        if teacher is not None:
            teacher.eval()
        autocast = self._autocast()
        # after resuming: DDP broadcasts rank 0's state, then averages gradients in every backward
        step_module = world.wrap(_Step(model, method, compiled=self.train_cfg.compile))

        def outputs(x: Tensor, y: Tensor, idx: Tensor, epoch: int) -> Callable[[Tensor], Outputs]:
            def fill(logits: Tensor) -> Outputs:
                out = Outputs(student_logits=logits, targets=y, epoch=epoch)
                if s_hooks:
                    out.student_features = s_hooks.pop()
                if use_teacher:
                    out.teacher_logits, out.teacher_features = self._teacher(teacher, t_hooks, cached_teacher, x, idx)
                return out

            return fill

        compile_seconds = 0.0
        if self.train_cfg.compile and start_epoch < cfg.epochs:
            compile_seconds = self._warm_up(step_module, model, method, optimizer, per_rank, outputs, autocast)
            progress.log(f"{role}: torch.compile warm-up {compile_seconds:.1f}s")
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
                augment=augment,
                mean=data.mean,
                std=data.std,
                shard=(world.rank, world.size),
            )
            with progress.task(f"{role} epoch {epoch + 1}/{cfg.epochs}", steps_per_epoch) as bar:
                for step, (x, y, idx) in enumerate(batches):
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    if self.train_cfg.channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    with autocast:
                        logits, losses = step_module(x, outputs(x, y, idx, epoch))
                    loss = sum(losses.values())
                    finite = bool(torch.isfinite(loss))
                    if world.any(not finite):  # every rank stops at the same step, none hangs
                        where = f"epoch {epoch + 1}, step {step + 1}"
                        kept = f"last good checkpoint kept in {state_path}" if state_path.is_file() else "nothing kept"
                        value = loss.item() if not finite else "non-finite on another rank"
                        raise UserError(
                            f"{role}: loss became {value} at {where} ({kept}); "
                            f"lower {role}.lr or check the data, then re-run with --force"
                        )
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    with torch.no_grad():
                        for k, v in losses.items():
                            totals[k] = totals.get(k, 0.0) + v.detach().float() * len(y)
                        correct += (logits.argmax(1) == y).sum().cpu()
                    seen += len(y)
                    bar.update(1, loss=loss.item())
            seconds = time.perf_counter() - t0
            train_seconds += seconds
            seen, correct, totals = self._epoch_sums(seen, correct, totals)
            samples_seen += seen
            val_acc = self._accuracy(model, data.val)
            row: dict[str, Any] = {
                "model": role,
                "epoch": epoch + 1,
                "loss": round(sum(float(v) for v in totals.values()) / max(seen, 1), 6),
                **{f"loss_{k}": round(float(v) / max(seen, 1), 6) for k, v in totals.items()},
                "train_acc": round(correct.item() / max(seen, 1), 6),
                "val_acc": round(val_acc, 6) if not math.isnan(val_acc) else "",
                "lr": round(scheduler.get_last_lr()[0], 8),
                "seconds": round(seconds, 3),
                "samples": seen,
                "samples_per_s": round(seen / seconds, 1),
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
                    state_path,
                    epoch,
                    model,
                    method,
                    optimizer,
                    scheduler,
                    history,
                    best,
                    train_seconds,
                    samples_seen,
                    scaler,
                )

        if s_hooks:
            s_hooks.detach()
        if t_hooks:
            t_hooks.detach()
        last_acc = self._accuracy(model, data.test)
        test_acc = last_acc
        if best["state"] is not None and best["epoch"] != cfg.epochs:
            model.load_state_dict(best["state"])
            test_acc = self._accuracy(model, data.test)
        return Result(
            accuracy=test_acc,
            val_accuracy=best["val"],
            best_epoch=best["epoch"],
            train_seconds=train_seconds,
            samples_per_second=samples_seen / train_seconds if train_seconds else 0.0,
            history=history,
            last_accuracy=last_acc,
            compile_seconds=compile_seconds,
        )

    # ---- helpers -------------------------------------------------------------------------------
    def _epoch_sums(
        self, seen: int, correct: Tensor, totals: dict[str, Tensor]
    ) -> tuple[int, Tensor, dict[str, Tensor]]:
        """The epoch's sample count, correct count and loss sums over all ranks."""
        if not self.world.distributed:
            return seen, correct, totals
        losses = [v.double().cpu() for v in totals.values()]
        packed = torch.stack([torch.tensor(float(seen)), correct.double(), *losses])
        packed = self.world.sum(packed)
        sums = {k: packed[2 + i] for i, k in enumerate(totals)}
        return int(packed[0].item()), packed[1].round().long(), sums

    def _accuracy(self, model: nn.Module, split: Split) -> float:
        """Accuracy on ``split``; distributed, each rank scores every size-th sample and the counts are summed."""
        world = self.world
        if not world.distributed:
            return accuracy(model, split, self.data.mean, self.data.std, self.eval_batch_size, world.device)
        if len(split) == 0:
            return float("nan")
        part = self._eval_parts.get(id(split))
        if part is None:
            part = Split(split.images[world.rank :: world.size], split.labels[world.rank :: world.size])
            self._eval_parts[id(split)] = part
        correct = 0.0
        if len(part):
            logits = predict_logits(model, part, self.data.mean, self.data.std, self.eval_batch_size, world.device)
            correct = float((logits.argmax(1) == part.labels).sum().item())
        counts = world.sum(torch.tensor([correct, float(len(part))], dtype=torch.float64))
        return (counts[0] / counts[1]).item()

    def _warm_up(
        self,
        step_module: nn.Module,
        model: nn.Module,
        method: Method,
        optimizer: torch.optim.Optimizer,
        per_rank: int,
        outputs: Callable[..., Callable[[Tensor], Outputs]],
        autocast: Any,
    ) -> float:
        """Compile the training step before timing starts: forward and backward at the full and at the last
        (shorter) batch size, then put weights, buffers, gradients and RNG back as they were."""
        t0 = time.perf_counter()
        saved = (
            {k: v.detach().clone() for k, v in model.state_dict().items()},
            {k: v.detach().clone() for k, v in method.state_dict().items()},
            torch.get_rng_state(),
        )
        sizes = sorted({min(self.batch_size, per_rank), per_rank % self.batch_size} - {0}, reverse=True)
        x0, y0, idx0 = next(
            iterate_batches(self.data.train, sizes[0], shuffle=False, mean=self.data.mean, std=self.data.std)
        )
        model.train()
        method.train()
        for n in sizes:
            x, y, idx = x0[:n].to(self.world.device), y0[:n].to(self.world.device), idx0[:n]
            if self.train_cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast:
                _, losses = step_module(x, outputs(x, y, idx, 0))
            sum(losses.values()).backward()
        optimizer.zero_grad(set_to_none=True)
        model.load_state_dict(saved[0])
        method.load_state_dict(saved[1])
        torch.set_rng_state(saved[2])
        return time.perf_counter() - t0

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
        scaler: torch.amp.GradScaler,
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
            "scaler": scaler.state_dict(),
        }
        atomic.write_with(path, lambda tmp: torch.save(state, tmp))
