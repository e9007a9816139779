"""`kdeploy distill`: teacher -> CE-only baseline -> distilled student, into one run folder."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdeploy import atomic, progress
from kdeploy.cores import CoreSample, oversubscription_warning
from kdeploy.data import Augment, Dataset, Split, normalize
from kdeploy.distill.distributed import World, world_from_env
from kdeploy.distill.hooks import resolve
from kdeploy.distill.methods import Method, create_method
from kdeploy.distill.side_by_side import draws_global_rng, threads_each, train_side_by_side
from kdeploy.distill.table_store import store_dir, stored_table
from kdeploy.distill.tensorboard import check_available
from kdeploy.distill.trainer import Result, Trainer
from kdeploy.errors import UserError
from kdeploy.models import build_model, check_model, count_params, model_meta
from kdeploy.models.ensemble import Ensemble
from kdeploy.recipe import ModelConfig, Recipe, dump_recipe, load_data
from kdeploy.runs import (
    DEFAULT_RUNS_DIR,
    ModelMetrics,
    Run,
    RunMetrics,
    available_cores,
    environment,
    load_checkpoint,
    saved_model_spec,
    weights_file,
)


def run_folder(recipe: Recipe, out: str | Path | None) -> Run:
    root = Path(out) if out is not None else DEFAULT_RUNS_DIR / recipe.name
    return Run(root)


def load_data_once(recipe: Recipe, world: World) -> Dataset:
    """Rank 0 loads first (downloads, decodes and caches once); the other ranks then read the cache."""
    if world.main:
        data = load_data(recipe)
        world.barrier()
        return data
    world.barrier()
    return load_data(recipe)


def model_spec(cfg: ModelConfig, data: Dataset) -> dict[str, Any]:
    """The model to build: the recipe's, or, for a teacher given only a checkpoint, the one that file was saved from."""
    if cfg.model is None and cfg.target is None:
        saved = checkpoint_model(str(cfg.checkpoint))
        return model_meta(saved.get("name"), saved.get("target"), saved.get("kwargs"), data.num_classes, data.in_shape)
    return model_meta(cfg.model, cfg.target, dict(cfg.kwargs), data.num_classes, data.in_shape)


def checkpoint_model(checkpoint: str) -> dict[str, Any]:
    """The registry spec a kdeploy weights file records; one line when the file is missing or not kdeploy's."""
    spec = saved_model_spec(weights_file(Path(checkpoint)))
    if spec is None:
        raise UserError(f"{checkpoint}: not written by kdeploy, so it names no model; give teacher.model (and kwargs)")
    return spec


def check_models(recipe: Recipe) -> None:
    """An unknown model name, an unimportable target or a bad kwarg fails here, before the data loads (a teacher
    given only a checkpoint names its model in the file, read when it is built)."""
    for role, cfg in (("teacher", recipe.teacher), ("student", recipe.student)):
        if cfg.model is not None or cfg.target is not None:
            try:
                check_model(cfg.model, cfg.target, dict(cfg.kwargs))
            except UserError as error:  # "model: ...", "target: ..." or "kwargs: ..." -> "teacher.kwargs: ..."
                raise UserError(f"{role}.{error}") from None


def build(cfg: ModelConfig, data: Dataset, seed: int, role: str) -> nn.Module:
    """Create a model with a fixed initialisation and check it outputs one logit per class."""
    torch.manual_seed(seed)
    model = build_model(model_spec(cfg, data))
    with torch.no_grad():
        model.eval()
        out = model(torch.zeros(2, *data.in_shape))
    if out.ndim != 2 or out.shape[1] != data.num_classes:
        raise UserError(
            f"{role}: model outputs shape {tuple(out.shape)}, but {data.name} has {data.num_classes} classes; "
            f"make the model output {data.num_classes} logits (give it a num_classes argument: kdeploy passes it)"
        )
    return model


def from_seed(seed: int, fit: Callable[[], Result]) -> Result:
    """``fit()`` with torch's global RNG seeded with ``seed`` first (a resumed fit then restores its own state)."""
    torch.manual_seed(seed)
    return fit()


def check_layers(method: Method, student: nn.Module, teacher: nn.Module) -> None:
    s_paths, t_paths = method.feature_layers()
    for p in s_paths:
        resolve(student, p, "student", "distill")
    for p in t_paths:
        resolve(teacher, p, "teacher", "distill")


def weights_meta(role: str, recipe: Recipe, cfg: ModelConfig, data: Dataset, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "role": role,
        "recipe": recipe.name,
        "model": model_spec(cfg, data),
        "dataset": {
            "name": data.name,
            "in_shape": list(data.in_shape),
            "num_classes": data.num_classes,
            "classes": list(data.classes),
            "mean": list(data.mean),
            "std": list(data.std),
        },
        **extra,
    }


def check_writable(folder: Path) -> None:
    existing = folder.resolve()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot create {folder}: {existing} is a file; choose another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write into {existing}: permission denied or read-only; choose another --out")


def prepare(run: Run, recipe: Recipe, resume: bool, force: bool) -> None:
    """Refuse to clobber a run by accident; check a resumed run uses the same recipe and the folder is writable,
    all before any data is loaded."""
    check_writable(run.root)
    if not run.recipe_path.is_file():
        if run.root.exists() and any(run.root.iterdir()) and not force:
            raise UserError(f"{run.root} exists and is not a kdeploy run; choose another --out or pass --force")
        return
    if resume:
        stored = run.recipe_path.read_text(encoding="utf-8")
        if stored != dump_recipe(recipe):
            raise UserError(
                f"{run.root}: the recipe differs from the run's recipe.yaml; resume with the same recipe "
                "and --set values, or pass --force to start over"
            )
    elif not force:
        raise UserError(
            f"{run.root} already holds a run; pass --resume to continue it, --force to replace it, or --out DIR"
        )


def distill(
    recipe: Recipe,
    out: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    world: World | None = None,
    mark_latest: bool = True,
) -> Run:
    """Train teacher (or load it), baseline and student; returns the run folder.

    Under torchrun every rank calls this; rank 0 alone writes files. ``mark_latest=False`` leaves ``latest``
    alone (the multi-seed driver points it itself)."""
    check_models(recipe)
    world = world or world_from_env(recipe.train.device)
    if recipe.train.tensorboard:
        check_available()
    run = run_folder(recipe, out)
    prepare(run, recipe, resume, force)
    world.barrier()  # every rank has checked the folder before rank 0 changes it
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    cores = CoreSample.begin() if world.device.type == "cpu" and not world.distributed else None
    session = DistillSession.setup(recipe, run, world, resume, force, mark_latest)
    if cores is not None:
        warn_if_oversubscribed(cores)
    teacher = session.train_teacher()
    session.train_students(teacher)
    session.close()
    return run


def warn_if_oversubscribed(cores: CoreSample) -> None:
    """One warning line when other processes leave fewer free cores than the threads CPU training will use. The
    sample spans loading the data, and at least 0.1 s (the ticks of 2 cores tell a busy core from an idle one)."""
    line = oversubscription_warning(cores.busy(min_window=0.1), torch.get_num_threads(), available_cores())
    if line:
        progress.log(line)


TABLE_MAX_BYTES = 1 << 30


def table_pays(views: int, epochs: int, samples: int, classes: int) -> bool:
    """A table of the teacher's outputs in ``views`` views of ``samples`` images costs ``views`` teacher passes
    over the data; the live teacher costs one pass per epoch. Cache when the table is no dearer (flip views, two,
    are always cached) and holds at most 1 GiB of fp32 logits."""
    return views <= max(2, epochs) and samples * views * classes * 4 <= TABLE_MAX_BYTES


def table_label(views: Augment | None) -> tuple[str, str]:
    """metrics.json's ``teacher_outputs`` for a table over ``views``, and the words the log line adds."""
    n_views = 1 if views is None else views.num_views
    if n_views == 1:
        return "cached", ""
    if views.shift == 0:
        return "cached, both flip views", " and their mirror images"
    kinds = "shifts and flips" if views.flip else "shifts"
    return f"cached, {n_views} views", f" in each of {n_views} views ({kinds})"


class DistillSession:
    """One ``distill`` call: the data, the models, the trainer, and the run's metrics and history, which every
    finished model adds to (and which rank 0 writes after each one, so an interrupted run keeps them)."""

    def __init__(self, recipe: Recipe, run: Run, world: World, data: Dataset, resume: bool, t0: float) -> None:
        self.recipe, self.run, self.world, self.data, self.resume, self.t0 = recipe, run, world, data, resume, t0
        d = recipe.data
        self.trainer = Trainer(data, d.batch_size, d.eval_batch_size, recipe.seed, recipe.train, d.augment, world)
        # every model and the method are built (and the method's layer paths checked) before any training
        self.teacher = build(recipe.teacher, data, recipe.teacher_seed, "teacher")
        self.students = {role: build(recipe.student, data, recipe.seed, "student") for role in ("baseline", "student")}
        self.method = create_method(recipe.distill.method, recipe.distill.params())
        check_layers(self.method, self.students["student"], self.teacher)
        if recipe.teacher.checkpoint:
            load_checkpoint(self.teacher, recipe.teacher.checkpoint)
        self.metrics = run_summary(run.read_metrics() if resume else RunMetrics(), recipe, world, data)
        self.history: list[dict[str, Any]] = run.read_history() if resume else []
        self.teacher_outputs = "per-batch" if self.method.needs_teacher else "unused"

    @classmethod
    def setup(
        cls, recipe: Recipe, run: Run, world: World, resume: bool, force: bool, mark_latest: bool
    ) -> DistillSession:
        """Load the data and build the models (a bad layer path or checkpoint fails here, before any file is
        written); then rank 0 clears or tidies the folder and writes recipe.yaml and environment.json."""
        t0 = time.perf_counter()
        data = load_data_once(recipe, world)
        progress.log(
            f"data: {data.name} from {data.source}: {len(data.train)} train / {len(data.val)} val / "
            f"{len(data.test)} test ({time.perf_counter() - t0:.1f}s)"
        )
        session = cls(recipe, run, world, data, resume, t0)
        if world.main:
            if force and not resume:
                run.clear()
            elif resume:
                run.remove_leftovers()
            run.root.mkdir(parents=True, exist_ok=True)
            atomic.write_text(run.recipe_path, dump_recipe(recipe))
            env = {**environment(), "world_size": world.size, "backend": world.backend, "device": str(world.device)}
            atomic.write_json(run.environment_path, env)
            if mark_latest:
                run.mark_latest()
        return session

    def tensorboard_dir(self, role: str) -> Path | None:
        """``<run>/tensorboard/<role>`` when train.tensorboard is on (rank 0 alone writes)."""
        return self.run.root / "tensorboard" / role if self.recipe.train.tensorboard and self.world.main else None

    def done(self, role: str) -> bool:
        """Finished in an earlier session of a resumed run."""
        return self.resume and self.run.weights_path(role).is_file() and role in self.metrics.models

    def train_teacher(self) -> nn.Module:
        """Train the teacher, load its checkpoint, or reload it from the run; frozen on the device."""
        recipe, data, world = self.recipe, self.data, self.world
        teacher = self.teacher
        if self.done("teacher"):
            teacher, _ = self.run.load_model("teacher")
            progress.log("teacher: done in an earlier session, loaded")
        elif recipe.teacher.checkpoint:
            acc = self.trainer.scorer.accuracy(teacher.to(world.device), data.test)
            result = Result(acc, float("nan"), 0, 0.0, 0.0, [], last_accuracy=acc)
            self.finish("teacher", teacher, recipe.teacher, result, checkpoint=recipe.teacher.checkpoint)
        else:
            result = self.fit_teacher(teacher)
            self.finish("teacher", teacher, recipe.teacher, result)
        return self.trainer.prepare_teacher(teacher)

    def fit_teacher(self, teacher: nn.Module) -> Result:
        """Train the teacher with CE. A teacher with its own ``teacher.seed`` trains with that seed alone (data order
        and, from torch's global RNG seeded afresh, dropout), whatever the run's seed: every run makes the same one."""
        recipe, own = self.recipe, self.recipe.teacher.seed
        ce, path, board = create_method("ce", {}), self.run.state_path("teacher"), self.tensorboard_dir("teacher")
        trainer = self.trainer if own is None else self.trainer.reseeded(own)
        fit = functools.partial(trainer.fit, "teacher", teacher, recipe.teacher, ce, path, resume=self.resume,
                                tensorboard_dir=board)  # fmt: skip
        return fit() if own is None else from_seed(own, fit)

    def train_students(self, teacher: nn.Module) -> None:
        """The CE-only baseline (when on) and the distilled student, from the same initialisation: side by side
        when ``concurrent_students`` says so, else one after the other."""
        jobs: dict[str, Method] = {"baseline": create_method("ce", {})} if self.recipe.baseline else {}
        jobs["student"] = self.method
        for role in [r for r in jobs if self.done(r)]:
            progress.log(f"{role}: done in an earlier session, kept")
            del jobs[role]
        fits = {role: self.student_fit(role, method, teacher) for role, method in jobs.items()}
        # Each student starts from torch's global RNG seeded afresh, so its dropout masks (and a method's own
        # layers) depend on the seed alone, not on what trained before it: the baseline does not change with the
        # teacher, nor the student with the baseline, and both draw the same masks.
        if self.side_by_side(list(fits)):
            torch.manual_seed(self.recipe.seed)  # neither draws global randomness while training: seed once
            results = train_side_by_side(fits, self.trainer.stop)
        else:
            results = [(role, from_seed(self.recipe.seed, fit)) for role, fit in fits.items()]
        for role, result in results:
            if role == "student":
                self.finish(role, self.students[role], self.recipe.student, result, method=self.recipe.distill.method,
                            teacher_outputs=self.teacher_outputs)  # fmt: skip
            else:
                self.finish(role, self.students[role], self.recipe.student, result)

    def student_fit(self, role: str, method: Method, teacher: nn.Module) -> Callable[[], Result]:
        """``Trainer.fit`` for one student, ready to call; a teacher table it needs is computed here, first."""
        distilling = role == "student"
        return functools.partial(
            self.trainer.fit,
            role,
            self.students[role],
            self.recipe.student,
            method,
            self.run.state_path(role),
            teacher=teacher if distilling else None,
            cached_teacher=self.cached_teacher(teacher, method) if distilling else None,
            resume=self.resume,
            tensorboard_dir=self.tensorboard_dir(role),
        )

    def side_by_side(self, roles: list[str]) -> bool:
        """Whether ``roles`` (both students) train at once: ``train.concurrent_students`` true needs one process
        and no torch.compile; auto also a CPU, two or more threads and a student that draws no global
        randomness in training (else each thread's draws would depend on the other's)."""
        setting = self.recipe.train.concurrent_students
        if setting is False or len(roles) < 2 or self.world.distributed or self.recipe.train.compile:
            return False
        if setting == "auto":
            if self.world.device.type != "cpu" or torch.get_num_threads() < 2:
                return False
            sample = normalize(self.data.train.images[:2], self.data.mean, self.data.std)
            if draws_global_rng(self.students["student"], sample):
                progress.log(
                    "baseline and student train one after the other: the student draws from torch's global RNG in "
                    "training (dropout?), which side by side would tie both to thread timing"
                )
                return False
        each = threads_each(len(roles))
        progress.log(f"{' and '.join(roles)} train side by side, {each} thread{'s' if each > 1 else ''} each")
        return True

    def cached_teacher(self, teacher: nn.Module, method: Method) -> Tensor | None:
        """The teacher's logits for every training image in each view the student's augmentation can make of it
        (the image itself; with flips its mirror image; with shifts each shift: ``Augment.num_views``), when that
        table pays (``table_pays``), the student trains without mixup/cutmix/cutout and the method needs no teacher
        features; else None (live teacher on the very batch the student sees, or no teacher at all for a method
        that does not use one, such as ``ce``)."""
        if not method.needs_teacher:
            return None
        cfg = self.recipe.student
        _, t_paths = method.feature_layers()
        augment = self.trainer.augment_for(cfg)
        unviewed = cfg.mixup or cfg.cutmix or (augment is not None and not augment.tabular)  # no fixed views
        if self.recipe.train.teacher_cache == "never" or unviewed or t_paths:
            return None
        size = self.data.table_pool_size()
        if augment is not None and not table_pays(augment.num_views, cfg.epochs, size, self.data.num_classes):
            return None
        return self.teacher_table(teacher, augment)

    def teacher_table(self, teacher: nn.Module, views: Augment | None) -> Tensor:
        """The table over ``Dataset.table_pool``, narrowed to the training samples' rows: read from the on-disk
        store or computed and stored; with ``teacher_cache: memory``, computed over the training samples alone
        and kept in memory."""
        t = time.perf_counter()
        if self.recipe.train.teacher_cache == "memory":
            table, how, covered = self.trainer.teacher_cache(teacher, views), "cached once", len(self.data.train)
        else:
            pool, rows = self.data.table_pool()
            table, how = self.stored_table(teacher, views, pool)
            covered = len(pool)
            if covered != len(rows):
                table = table.index_select(0, rows.to(table.device))
        self.teacher_outputs, what = table_label(views)
        val = f" (its {covered} rows also cover the val split)" if covered != len(table) else ""
        progress.log(f"teacher outputs {how} for {len(table)} samples{what}{val} ({time.perf_counter() - t:.1f}s)")
        return table

    def stored_table(self, teacher: nn.Module, views: Augment | None, pool: Split) -> tuple[Tensor, str]:
        """The teacher's table over ``pool`` from the store, else computed and stored, and the words the log line
        uses. An ensemble's table is the mean of its members' tables (as its logits are), each stored on its own:
        a member another ensemble shares, or one distilled from alone, is computed once."""
        spec = self.trainer.table_spec(views)
        members = list(teacher.members) if isinstance(teacher, Ensemble) else [teacher]
        tables, stored = [], []
        for member in members:
            compute = functools.partial(self.trainer.teacher_cache, member, views, pool)
            table, path = stored_table(member, pool, self.data, spec, self.world, compute)
            tables.append(table)
            stored.append(path)
        if len(members) == 1:
            return tables[0], f"read from {stored[0]}" if stored[0] else "cached once"
        read = sum(path is not None for path in stored)
        how = f"averaged over its {len(members)} members' tables ({read} read from {store_dir()}, the rest computed)"
        return torch.stack(tables).mean(0), how

    def finish(self, role: str, model: nn.Module, cfg: ModelConfig, result: Result, *,
               checkpoint: str | list[str] | None = None, method: str | None = None,
               teacher_outputs: str | None = None) -> None:  # fmt: skip
        """Record a trained model: its metrics entry and history rows; rank 0 writes weights, history and
        metrics, and drops the model's resume state."""
        entry = dataclasses.replace(model_entry(result, model, self.recipe.train.compile), checkpoint=checkpoint,
                                    method=method, teacher_outputs=teacher_outputs)  # fmt: skip
        self.metrics.models[role] = entry
        self.history = [r for r in self.history if r.get("model") != role] + result.history
        if self.world.main:
            self.run.save_weights(role, model, weights_meta(role, self.recipe, cfg, self.data, entry.to_dict()))
            self.run.write_history(self.history)
            self.run.write_metrics(self.metrics)
            self.run.state_path(role).unlink(missing_ok=True)
        progress.log(f"{role}: test accuracy {result.accuracy:.4f} ({entry.params:,} params)")

    def close(self) -> None:
        self.metrics.teacher_outputs = self.teacher_outputs
        self.metrics.wall_seconds = round((self.metrics.wall_seconds or 0.0) + time.perf_counter() - self.t0, 2)
        if self.world.main:
            self.run.write_metrics(self.metrics)
        self.world.barrier()  # the run folder is complete on every rank's return


def run_summary(metrics: RunMetrics, recipe: Recipe, world: World, data: Dataset) -> RunMetrics:
    """``metrics`` (a resumed run's, or empty) with this session's run-level fields."""
    dataset = {"name": data.name, "source": data.source, "train": len(data.train), "val": len(data.val),
               "test": len(data.test)}  # fmt: skip
    return dataclasses.replace(metrics, recipe=recipe.name, seed=recipe.seed, method=recipe.distill.method,
                               world_size=world.size, backend=world.backend, dataset=dataset)  # fmt: skip


def model_entry(result: Result, model: nn.Module, compiled: bool) -> ModelMetrics:
    """One model's entry in metrics.json (also stored in its weights' metadata)."""
    return ModelMetrics(
        accuracy=result.accuracy,
        last_accuracy=result.last_accuracy,
        val_accuracy=None if math.isnan(result.val_accuracy) else result.val_accuracy,
        best_epoch=result.best_epoch,
        params=count_params(model),
        train_seconds=round(result.train_seconds, 3),
        samples_per_second=round(result.samples_per_second, 1),
        compile_seconds=round(result.compile_seconds, 3) if compiled else None,
        train_threads=result.threads,
        train_precision=result.precision,
    )
