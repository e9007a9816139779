"""`kdeploy distill`: teacher -> CE-only baseline -> distilled student, into one run folder."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdeploy import atomic, progress
from kdeploy.data import Dataset
from kdeploy.distill.distributed import World, world_from_env
from kdeploy.distill.hooks import resolve
from kdeploy.distill.methods import Method, create_method
from kdeploy.distill.trainer import Result, Trainer, check_precision
from kdeploy.errors import UserError
from kdeploy.models import build_model, count_params, model_meta
from kdeploy.recipe import ModelConfig, Recipe, dump_recipe, load_data
from kdeploy.runs import DEFAULT_RUNS_DIR, Run, environment, load_state, load_state_file


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
    return model_meta(cfg.model, cfg.target, dict(cfg.kwargs), data.num_classes, data.in_shape)


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
    world = world or world_from_env()
    check_precision(recipe.train, world.device)
    run = run_folder(recipe, out)
    prepare(run, recipe, resume, force)
    world.barrier()  # every rank has checked the folder before rank 0 changes it
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)

    t0 = time.perf_counter()
    data = load_data_once(recipe, world)
    progress.log(
        f"data: {data.name} from {data.source}: {len(data.train)} train / {len(data.val)} val / "
        f"{len(data.test)} test ({time.perf_counter() - t0:.1f}s)"
    )
    teacher = build(recipe.teacher, data, recipe.seed, "teacher")
    students = {role: build(recipe.student, data, recipe.seed, "student") for role in ("baseline", "student")}
    method = create_method(recipe.distill.method, recipe.distill.params())
    check_layers(method, students["student"], teacher)
    if recipe.teacher.checkpoint:
        load_state(teacher, load_state_file(Path(recipe.teacher.checkpoint)), recipe.teacher.checkpoint)

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

    trainer = Trainer(
        data, recipe.data.batch_size, recipe.data.eval_batch_size, recipe.seed, recipe.train, recipe.data.augment, world
    )
    metrics = run.read_metrics() if resume else {"models": {}}
    metrics.update(
        {
            "recipe": recipe.name,
            "seed": recipe.seed,
            "method": recipe.distill.method,
            "world_size": world.size,
            "backend": world.backend,
            "dataset": {
                "name": data.name,
                "source": data.source,
                "train": len(data.train),
                "val": len(data.val),
                "test": len(data.test),
            },
        }
    )
    history = run.read_history() if resume else []

    def finish(role: str, model: nn.Module, cfg: ModelConfig, result: Result, extra: dict[str, Any]) -> None:
        nonlocal history
        entry = {
            "accuracy": result.accuracy,
            "last_accuracy": result.last_accuracy,
            "val_accuracy": None if math.isnan(result.val_accuracy) else result.val_accuracy,
            "best_epoch": result.best_epoch,
            "params": count_params(model),
            "train_seconds": round(result.train_seconds, 3),
            "samples_per_second": round(result.samples_per_second, 1),
            **({"compile_seconds": round(result.compile_seconds, 3)} if recipe.train.compile else {}),
            **extra,
        }
        metrics["models"][role] = entry
        history = [r for r in history if r.get("model") != role] + result.history
        if world.main:
            run.save_weights(role, model, weights_meta(role, recipe, cfg, data, entry))
            run.write_history(history)
            run.write_metrics(metrics)
            run.state_path(role).unlink(missing_ok=True)
        progress.log(f"{role}: test accuracy {result.accuracy:.4f} ({entry['params']:,} params)")

    # ---- teacher -----------------------------------------------------------------------------
    if resume and run.weights_path("teacher").is_file() and "teacher" in metrics["models"]:
        teacher, _ = run.load_model("teacher")
        progress.log("teacher: done in an earlier session, loaded")
    elif recipe.teacher.checkpoint:
        from kdeploy.evaluate import accuracy

        acc = accuracy(teacher, data.test, data.mean, data.std, recipe.data.eval_batch_size, world.device)
        result = Result(acc, float("nan"), 0, 0.0, 0.0, [], last_accuracy=acc)
        finish("teacher", teacher, recipe.teacher, result, {"checkpoint": recipe.teacher.checkpoint})
    else:
        result = trainer.fit(
            "teacher", teacher, recipe.teacher, create_method("ce", {}), run.state_path("teacher"), resume=resume
        )
        finish("teacher", teacher, recipe.teacher, result, {})
    teacher.to(world.device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    # ---- baseline and student ------------------------------------------------------------
    jobs: list[tuple[str, Method]] = [("student", method)]
    if recipe.baseline:
        jobs.insert(0, ("baseline", create_method("ce", {})))
    cache_mode = "per-batch"
    for role, job_method in jobs:
        if resume and run.weights_path(role).is_file() and role in metrics["models"]:
            progress.log(f"{role}: done in an earlier session, kept")
            continue
        cached = None
        if role == "student":
            _, t_paths = job_method.feature_layers()
            if recipe.train.teacher_cache == "auto" and trainer.augment_for(recipe.student) is None and not t_paths:
                t = time.perf_counter()
                cached = trainer.teacher_cache(teacher)
                cache_mode = "cached"
                progress.log(f"teacher outputs cached once for {len(cached)} samples ({time.perf_counter() - t:.1f}s)")
        result = trainer.fit(
            role,
            students[role],
            recipe.student,
            job_method,
            run.state_path(role),
            teacher=teacher if role == "student" else None,
            cached_teacher=cached,
            resume=resume,
        )
        extra = {"method": recipe.distill.method, "teacher_outputs": cache_mode} if role == "student" else {}
        finish(role, students[role], recipe.student, result, extra)

    metrics["teacher_outputs"] = cache_mode
    metrics["wall_seconds"] = round(metrics.get("wall_seconds", 0.0) + time.perf_counter() - t0, 2)
    if world.main:
        run.write_metrics(metrics)
    world.barrier()  # the run folder is complete on every rank's return
    return run
