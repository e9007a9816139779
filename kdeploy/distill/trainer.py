"""One training loop for teacher, CE-only baseline and distilled student (after mdistiller's trainer).

``Trainer.fit`` = ``setup`` (model on the device, data-dependent init, feature hooks, the method's learned parts,
one ``TrainState``, resume) -> ``train`` (epochs: ``train_epoch`` -> ``train_iter`` per batch, validation,
best-epoch tracking, a checkpoint per epoch) -> ``finish`` (the best epoch's weights, test accuracy).
The state is saved and restored only by ``TrainState`` (``state.py``); resuming is bit-for-bit on the CPU.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdeploy import progress
from kdeploy.data import Augment, Dataset, Split, iterate_batches, iterate_batches_with_views, normalize
from kdeploy.distill.distributed import World
from kdeploy.distill.ema import WeightEMA
from kdeploy.distill.evaluation import SplitScorer, teacher_table
from kdeploy.distill.hooks import FeatureHooks
from kdeploy.distill.methods import Method
from kdeploy.distill.mixing import mix_batch, mixing_rng, one_hot
from kdeploy.distill.precision import Precision, resolve_precision
from kdeploy.distill.schedule import lr_factor, make_optimizer
from kdeploy.distill.state import BestEpoch, TrainState
from kdeploy.distill.step import Batch, EpochSums, StudentStep, TeacherOutputs, check_finite
from kdeploy.distill.table_store import TableSpec
from kdeploy.distill.tensorboard import EpochScalars
from kdeploy.recipe import ModelConfig, TrainConfig, training_batch

INIT_IMAGES = 5000  # training images a model's init_from_data(images) sees


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
    threads: int | None = None  # torch's intra-op threads while it trained
    precision: Precision | None = None  # the precision it trained in (train.precision resolved)


class Stopped(Exception):
    """Raised in a training loop whose ``Trainer.stop`` is set: a model training beside it failed, or the user
    interrupted the run (``side_by_side``)."""


@dataclass
class Job:
    """What one ``fit`` call trains, and how."""

    role: str
    cfg: ModelConfig
    state: TrainState
    step: nn.Module  # StudentStep, DDP-wrapped when distributed
    teacher: TeacherOutputs | None
    augment: Augment | None
    batch_size: int
    steps_per_epoch: int
    state_path: Path
    hooks: list[FeatureHooks] = field(default_factory=list)
    scalars: EpochScalars | None = None  # train.tensorboard


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The shuffling/augmentation RNG of one epoch: the same for every model of a run (a CPU generator on every
    device, so a GPU run draws the same crops and flips as a CPU run)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class Trainer:
    """Trains the models of a run one after another; a method supplies the losses."""

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
        self.augment = augment  # the recipe's data.augment; a model's own `augment` replaces it
        self.world = world or World()
        self.precision = resolve_precision(train.precision, self.world.device)
        self.scorer = SplitScorer(data, self.world, eval_batch_size)
        # the training images live on the training device (uint8): batches are gathered there, no copy per step
        self.train_split = Split(data.train.images.to(self.device), data.train.labels.to(self.device))
        # Late in training, tiny gradients and softmax tails become denormal floats, which x86 CPUs process up to
        # ~100x slower; flushing them to zero keeps the epoch rate steady (the values are below 1e-38).
        torch.set_flush_denormal(True)
        self.stop = threading.Event()  # set: every training loop of this trainer ends at its next step

    @property
    def device(self) -> torch.device:
        return self.world.device

    def reseeded(self, seed: int) -> Trainer:
        """This trainer (same data, settings and stop signal) with another seed for initial batches and data order."""
        trainer = copy.copy(self)
        trainer.seed = seed
        return trainer

    def prepare_teacher(self, teacher: nn.Module) -> nn.Module:
        """Frozen, in eval mode, on the device and in the training memory format: a teacher loaded from a checkpoint
        then runs the same kernels, so gives the same logits, as one trained in this process."""
        teacher.to(self.device).eval()
        if self.train_cfg.channels_last:
            teacher.to(memory_format=torch.channels_last)
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher

    def teacher_cache(self, teacher: nn.Module, views: Augment | None = None, images: Split | None = None) -> Tensor:
        """Teacher logits for every training sample (or every sample of ``images``, such as the data's
        ``table_pool``), per view of ``views`` (``evaluation.teacher_table``), in the training precision and memory
        format, as the live teacher runs (the CIFAR-10 teacher on one AVX512-BF16 core: 81-85 s instead of
        257-283 s in fp32 NCHW for its 100,000 flip views)."""
        self.prepare_teacher(teacher)
        with self.autocast():
            return teacher_table(teacher, self.data, self.world, self.eval_batch_size, views, images)

    def table_spec(self, views: Augment | None = None) -> TableSpec:
        """How ``teacher_cache`` computes its table, for the on-disk store's key."""
        flips, shift = (views.flip, views.shift) if views is not None and views.enabled else (False, 0)
        cfg = self.train_cfg
        return TableSpec(flips, self.precision, cfg.channels_last, self.device.type, self.eval_batch_size, shift)

    def augment_for(self, cfg: ModelConfig) -> Augment | None:
        """The augmentation ``cfg``'s model trains with: its own ``augment`` or the recipe's; None when off."""
        augment = cfg.augment if cfg.augment is not None else self.augment
        return augment if augment is not None and augment.enabled else None

    # ---- fit = setup -> train -> finish ---------------------------------------------------------------
    def fit(
        self,
        role: str,
        model: nn.Module,
        cfg: ModelConfig,
        method: Method,
        state_path: Path,
        teacher: nn.Module | None = None,
        cached_teacher: Tensor | None = None,
        resume: bool = False,
        tensorboard_dir: Path | None = None,
    ) -> Result:
        """Train ``model`` with ``method``'s losses; ``tensorboard_dir``: write per-epoch scalars there."""
        job = self.setup(role, model, cfg, method, Path(state_path), teacher, cached_teacher, resume)
        job.scalars = EpochScalars(tensorboard_dir) if tensorboard_dir is not None else None
        compile_seconds = 0.0
        if self.train_cfg.compile and job.state.epoch < cfg.epochs:
            compile_seconds = self.warm_up(job)
            progress.log(f"{role}: torch.compile warm-up {compile_seconds:.1f}s")
        self.train(job)
        return self.finish(job, compile_seconds)

    def setup(
        self,
        role: str,
        model: nn.Module,
        cfg: ModelConfig,
        method: Method,
        state_path: Path,
        teacher: nn.Module | None,
        cached_teacher: Tensor | None,
        resume: bool,
    ) -> Job:
        resuming = resume and state_path.is_file()
        self.setup_model(model, method, fresh=not resuming)
        hooks = self.setup_method(model, teacher, method)
        state = self.setup_state(model, method, cfg)
        if resuming:
            state.restore(state_path)
            progress.log(f"{role}: resuming after epoch {state.epoch} of {cfg.epochs}")
        teacher_outputs = None
        if method.needs_teacher and (teacher is not None or cached_teacher is not None):
            if teacher is not None:
                teacher.eval()
            t_hooks = hooks[1] if len(hooks) > 1 else None
            teacher_outputs = TeacherOutputs(teacher, t_hooks, cached_teacher)
        s_hooks = hooks[0] if hooks else None
        # after resuming: DDP broadcasts rank 0's state, then averages gradients in every backward
        step = self.world.wrap(StudentStep(model, method, s_hooks, compiled=self.train_cfg.compile))
        return Job(
            role=role,
            cfg=cfg,
            state=state,
            step=step,
            teacher=teacher_outputs,
            augment=self.augment_for(cfg),
            batch_size=self.batch_for(cfg),
            steps_per_epoch=self.steps_per_epoch(cfg),
            state_path=state_path,
            hooks=[h for h in hooks if h is not None],
        )

    def batch_for(self, cfg: ModelConfig) -> int:
        """This model's training batch (``training_batch``: its own, else the data's)."""
        return training_batch(cfg, self.batch_size)

    def steps_per_epoch(self, cfg: ModelConfig) -> int:
        """Optimizer steps in one epoch on one rank (each rank sees its share of the training split)."""
        per_rank = math.ceil(len(self.data.train) / self.world.size)
        return max(1, math.ceil(per_rank / self.batch_for(cfg)))

    def setup_model(self, model: nn.Module, method: Method, fresh: bool) -> None:
        """Model and method on the device; a fresh model with ``init_from_data`` sees training images once."""
        model.to(self.device)
        method.to(self.device)
        if self.train_cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        init = getattr(model, "init_from_data", None)
        if fresh and callable(init):
            n = min(INIT_IMAGES, len(self.data.train))
            order = torch.randperm(len(self.data.train), generator=torch.Generator().manual_seed(self.seed))[:n]
            images = self.train_split.images.index_select(0, order.to(self.device))
            with torch.no_grad():
                init(normalize(images, self.data.mean, self.data.std))

    def setup_method(self, model: nn.Module, teacher: nn.Module | None, method: Method) -> list[FeatureHooks | None]:
        """Attach the feature hooks the method asks for ([student, teacher]); one dry forward pass tells the
        method the feature shapes, so it can build its regressors."""
        s_paths, t_paths = method.feature_layers()
        s_hooks = FeatureHooks(model, s_paths, "student", "distill").attach() if s_paths else None
        t_hooks = FeatureHooks(teacher, t_paths, "teacher", "distill").attach() if (t_paths and teacher) else None
        if not (s_hooks or t_hooks):
            return []
        x, _, _ = next(
            iterate_batches(
                self.train_split, min(8, len(self.data.train)), shuffle=False, mean=self.data.mean, std=self.data.std
            )
        )
        was = model.training
        model.eval()
        with torch.no_grad():
            model(x)
            if teacher is not None:
                teacher.eval()
                teacher(x)
        model.train(was)
        method.setup(s_hooks.pop() if s_hooks else [], t_hooks.pop() if t_hooks else [])
        method.to(self.device)
        return [s_hooks, t_hooks]

    def setup_state(self, model: nn.Module, method: Method, cfg: ModelConfig) -> TrainState:
        """Optimizer, schedule, loss scaler (fp16 only) and EMA of a fresh run."""
        lr = cfg.lr * (self.world.size if self.train_cfg.scale_lr else 1)
        params = [p for p in list(model.parameters()) + list(method.parameters()) if p.requires_grad]
        optimizer = make_optimizer(params, cfg, lr)
        steps = self.steps_per_epoch(cfg)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, cfg))
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        ema = WeightEMA(model, cfg.ema) if cfg.ema else None
        return TrainState(model, method, optimizer, scheduler, scaler, ema)

    def train(self, job: Job) -> None:
        state = job.state
        for epoch in range(state.epoch, job.cfg.epochs):
            row = self.train_epoch(job, epoch)
            val_acc = self.scorer.accuracy(state.eval_model, self.data.val)
            scored = not math.isnan(val_acc)  # NaN: no validation split (val_size 0), the last epoch is kept
            row["val_acc"] = round(val_acc, 6) if scored else ""
            state.history.append(row)
            if job.scalars is not None:
                job.scalars.write(row)
            if job.cfg.keep == "last" or not scored or val_acc > state.best.val:
                weights = {k: v.detach().cpu().clone() for k, v in state.eval_model.state_dict().items()}
                state.best = BestEpoch(val_acc if scored else -1.0, epoch + 1, weights)
            state.epoch = epoch + 1
            val = f" val {val_acc:.4f}" if scored else ""
            progress.log(
                f"{job.role} epoch {epoch + 1}/{job.cfg.epochs}: loss {row['loss']:.4f} train {row['train_acc']:.4f}"
                f"{val} ({row['samples_per_s']:.0f} samples/s)"
            )
            if self.world.main:
                state.save(job.state_path)

    def train_epoch(self, job: Job, epoch: int) -> dict[str, Any]:
        """One pass over this rank's shard; returns the epoch's history row (sums over all ranks)."""
        state, world = job.state, self.world
        state.model.train()
        state.method.train()
        gen = epoch_generator(self.seed, epoch)
        mix_rng = mixing_rng(self.seed, epoch) if (job.cfg.mixup or job.cfg.cutmix) else None
        sums = EpochSums(self.device)
        sync_every = 1 if self.device.type == "cpu" else 50  # on a GPU, look at the loss without a sync per step
        t0 = time.perf_counter()
        batches = iterate_batches_with_views(
            self.train_split,
            job.batch_size,
            shuffle=True,
            generator=gen,
            augment=job.augment,
            mean=self.data.mean,
            std=self.data.std,
            shard=(world.rank, world.size),
        )
        with progress.task(f"{job.role} epoch {epoch + 1}/{job.cfg.epochs}", job.steps_per_epoch) as bar:
            for step, (x, y, idx, view) in enumerate(batches):
                if self.stop.is_set():
                    raise Stopped(f"{job.role}: stopped in epoch {epoch + 1}")
                batch = self.make_batch(job, x, y, idx, epoch, mix_rng, view)
                look = (step + 1) % sync_every == 0 or step + 1 == job.steps_per_epoch
                loss = self.train_iter(job, batch, sums, look)
                bar.update(1, **({"loss": loss.item()} if look else {}))
        seconds = time.perf_counter() - t0
        state.train_seconds += seconds
        seen, correct, totals = sums.over_ranks(world)
        state.samples_seen += seen
        return {
            "model": job.role,
            "epoch": epoch + 1,
            "loss": round(sum(totals.values()) / max(seen, 1), 6),
            **{f"loss_{k}": round(v / max(seen, 1), 6) for k, v in totals.items()},
            "train_acc": round(correct / max(seen, 1), 6),
            "val_acc": "",
            "lr": round(state.scheduler.get_last_lr()[0], 8),
            "seconds": round(seconds, 3),
            "samples": seen,
            "samples_per_s": round(seen / seconds, 1),
        }

    def make_batch(
        self,
        job: Job,
        x: Tensor,
        y: Tensor,
        idx: Tensor,
        epoch: int,
        mix_rng: Any | None,
        view: Tensor | None = None,
    ) -> Batch:
        """The batch as the model sees it: mixed when mixup/cutmix is on, soft targets for label smoothing or
        mixing, and the teacher's outputs on exactly these (augmented, mixed) images; ``view`` picks each
        image's row in a cached table of per-view outputs."""
        cfg = job.cfg
        if self.train_cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        probs = None
        if mix_rng is not None:
            mixed = mix_batch(x, y, self.data.num_classes, cfg.mixup, cfg.cutmix, mix_rng)
            x, y, probs = mixed.images, mixed.labels, mixed.target_probs
            if cfg.label_smoothing:
                probs = probs * (1.0 - cfg.label_smoothing) + cfg.label_smoothing / self.data.num_classes
        elif cfg.label_smoothing:
            probs = one_hot(y, self.data.num_classes, cfg.label_smoothing)
        batch = Batch(x, y, idx, epoch, target_probs=probs)
        if job.teacher is not None:
            with self.autocast():  # the live teacher in the training precision (AMX bf16: 2.5x)
                batch.teacher_logits, batch.teacher_features = job.teacher(x, idx, mix_rng is not None, view)
        return batch

    def train_iter(self, job: Job, batch: Batch, sums: EpochSums, look: bool = True) -> Tensor:
        """Forward, backward and optimizer step on one batch; adds the batch to ``sums``. ``look``: check the
        losses so far are finite first (a device sync: every step on the CPU, every 50th on a GPU)."""
        state = job.state
        with self.autocast():
            logits, losses = job.step(batch.images, batch)
        loss = sum(losses.values())
        sums.add(losses, loss, logits, batch.labels)
        if look:
            check_finite(job.role, sums, batch.epoch, self.world, job.state_path)
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.scheduler.step()
        if state.ema is not None:
            state.ema.update(state.model)
        return loss

    def finish(self, job: Job, compile_seconds: float) -> Result:
        """Detach the hooks; test the last epoch and the best one; the model keeps the best epoch's weights
        (the EMA's when on)."""
        for hooks in job.hooks:
            hooks.detach()
        if job.scalars is not None:
            job.scalars.close()
        state = job.state
        model = state.model
        if state.ema is not None:
            model.load_state_dict(state.ema.model.state_dict())
        last_acc = self.scorer.accuracy(model, self.data.test)
        test_acc = last_acc
        if state.best.weights is not None and state.best.epoch != job.cfg.epochs:
            model.load_state_dict(state.best.weights)
            test_acc = self.scorer.accuracy(model, self.data.test)
        return Result(
            accuracy=test_acc,
            val_accuracy=state.best.val,
            best_epoch=state.best.epoch,
            train_seconds=state.train_seconds,
            samples_per_second=state.samples_seen / state.train_seconds if state.train_seconds else 0.0,
            history=state.history,
            last_accuracy=last_acc,
            compile_seconds=compile_seconds,
            threads=torch.get_num_threads(),
            precision=self.precision,
        )

    # ---- helpers -------------------------------------------------------------------------------------
    def autocast(self) -> Any:
        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def warm_up(self, job: Job) -> float:
        """Compile the training step before timing starts: forward and backward at the full and at the last
        (shorter) batch size, then put weights, buffers, gradients and RNG back as they were."""
        t0 = time.perf_counter()
        model, method = job.state.model, job.state.method
        saved = (
            {k: v.detach().clone() for k, v in model.state_dict().items()},
            {k: v.detach().clone() for k, v in method.state_dict().items()},
            torch.get_rng_state(),
        )
        per_rank = math.ceil(len(self.data.train) / self.world.size)
        sizes = sorted({min(job.batch_size, per_rank), per_rank % job.batch_size} - {0}, reverse=True)
        x0, y0, idx0 = next(
            iterate_batches(self.train_split, sizes[0], shuffle=False, mean=self.data.mean, std=self.data.std)
        )
        model.train()
        method.train()
        for n in sizes:
            batch = self.make_batch(job, x0[:n], y0[:n], idx0[:n], 0, None)
            with self.autocast():
                _, losses = job.step(batch.images, batch)
            sum(losses.values()).backward()
        job.state.optimizer.zero_grad(set_to_none=True)
        model.load_state_dict(saved[0])
        method.load_state_dict(saved[1])
        torch.set_rng_state(saved[2])
        return time.perf_counter() - t0
