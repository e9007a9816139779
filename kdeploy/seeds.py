"""Multi-seed distillation: one run per seed in ``<parent>/seed<N>``, then mean ± std of every model's accuracy.

```
runs/<name>/
  seed0/ seed1/ ...   complete run folders (export, quantize and bench take any of them)
  seeds.json          per-seed accuracies and the summary (mean, sample std, n) per model and metric
  seeds.md            the summary table
runs/latest -> <name>/seed<first>   a concrete run, so `kdeploy export` / `bench` without arguments work
```

The seed is the recipe's ``seed``: it draws the validation split, the initial weights and the batch order. The test
split is the same for every seed. With ``teacher.seed`` one teacher, trained with that seed in the first seed's run,
serves every seed, and every seed validates on that seed's split. Models are selected on validation ("best epoch");
"last epoch" is the model after the final epoch. Std is the sample standard deviation (n - 1), as papers report it.
"""

from __future__ import annotations

import math
import os
import re
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdeploy import atomic, progress
from kdeploy.errors import UserError
from kdeploy.recipe import Recipe
from kdeploy.runs import ROLES, ModelMetrics, Run, SeedsFolder, default_run_dir, point_latest

if TYPE_CHECKING:
    from kdeploy.distill.distributed import World

METRICS = {"accuracy": "best epoch", "last_accuracy": "last epoch"}
GAIN = "student - baseline"


@dataclass
class SeedsResult:
    root: Path
    runs: dict[int, Run]
    summary: SeedsSummary  # what seeds.json holds


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or a range ``"0-4"`` (inclusive) -> distinct integer seeds, in order."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        try:
            values = list(range(int(m[1]), int(m[2]) + 1)) if m else [int(part)]
        except ValueError:
            values = [-1]
        if min(values, default=-1) < 0:
            raise UserError(f"--seeds {text!r}: expected integers >= 0 like 0,1,2 or a range like 0-4")
        seeds += [v for v in values if v not in seeds]
    if not seeds:
        raise UserError(f"--seeds {text!r}: no seed given; pass e.g. --seeds 0,1,2")
    return seeds


def seeds_root(recipe: Recipe, out: str | os.PathLike[str] | None) -> Path:
    return default_run_dir(recipe.name, out)


def seed_folder(root: Path, seed: int) -> Path:
    return SeedsFolder(root).seed_run(seed)


def prepare_parent(root: Path, resume: bool, force: bool) -> None:
    """Refuse to mix a multi-seed folder into something else; --force clears it, --resume keeps it."""
    if not root.exists() or not any(root.iterdir()):
        return
    if Run(root).recipe_path.is_file() and not force:
        raise UserError(f"{root} holds a single-seed run; pass --force to replace it or --out DIR for the seeds")
    multi = SeedsFolder(root).holds_seeds()
    if not multi and not force:
        raise UserError(f"{root} exists and is not a kdeploy run; choose another --out or pass --force")
    if multi and not (resume or force):
        raise UserError(f"{root} already holds a multi-seed run; pass --resume to continue it, --force or --out DIR")


@dataclass(frozen=True)
class Stat:
    """Mean and sample std (n - 1; None for one value) of a metric over seeds, with the values themselves."""

    mean: float | None
    std: float | None
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Stat:
        """The statistics of ``values``; None and NaN are left out."""
        vals = tuple(v for v in values if v is not None and not math.isnan(v))
        mean = statistics.mean(vals) if vals else None
        return cls(mean, statistics.stdev(vals) if len(vals) > 1 else None, vals)

    @property
    def n(self) -> int:
        return len(self.values)

    def percent(self) -> str:
        """``98.12 ± 0.08`` in percent points, or ``-`` when there is nothing to show."""
        if self.mean is None:
            return "-"
        return f"{self.mean * 100:.2f}" + (f" ± {self.std * 100:.2f}" if self.std is not None else "")

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "n": self.n, "values": list(self.values)}


@dataclass(frozen=True)
class RoleStats:
    """One role's test accuracy over the seeds (or the paired gain's, student - baseline of each seed)."""

    accuracy: Stat  # the model selected on validation ("best epoch")
    last_accuracy: Stat  # after the final epoch

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k).to_json() for k in METRICS}


Summary = dict[str, RoleStats]  # role (and GAIN) -> statistics


def aggregate(per_seed: dict[int, dict[str, ModelMetrics]], one_teacher: bool = False) -> Summary:
    """Each role's :class:`RoleStats` over the seeds' ``metrics.json`` models, plus the paired KD gain.
    ``one_teacher``: the seeds shared the first seed's teacher (``teacher.seed``), counted once."""
    summary: Summary = {}
    for role in ROLES:
        found = [m[role] for m in per_seed.values() if role in m]
        found = found[:1] if one_teacher and role == "teacher" else found
        if found:
            summary[role] = RoleStats(**{k: Stat.of(getattr(m, k) for m in found) for k in METRICS})
    both = [(m["student"], m["baseline"]) for m in per_seed.values() if "student" in m and "baseline" in m]
    if both:
        summary[GAIN] = RoleStats(**{k: Stat.of(_difference(getattr(s, k), getattr(b, k)) for s, b in both)
                                     for k in METRICS})  # fmt: skip
    return summary


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else float(a) - float(b)


@dataclass
class SeedsSummary:
    """What ``seeds.json`` holds: the recipe, its seeds, each seed's run folder and accuracies, the statistics."""

    recipe: str
    seeds: list[int]
    runs: dict[int, str]  # seed -> run folder name
    per_seed: dict[int, dict[str, dict[str, float | None]]]  # seed -> role -> metric -> value
    stats: Summary
    teacher_seed: int | None = None  # one teacher, trained with this seed, for every seed (``teacher.seed``)

    @classmethod
    def of(
        cls,
        recipe: str,
        seeds: list[int],
        runs: dict[int, str],
        per_seed: dict[int, dict[str, ModelMetrics]],
        teacher_seed: int | None = None,
    ) -> SeedsSummary:
        """The summary of each seed's models (role -> metrics) and their statistics over the seeds."""
        return cls(
            recipe=recipe,
            seeds=seeds,
            runs=runs,
            per_seed={
                s: {role: {k: getattr(mm, k) for k in METRICS} for role, mm in m.items()} for s, m in per_seed.items()
            },
            stats=aggregate(per_seed, one_teacher=teacher_seed is not None),
            teacher_seed=teacher_seed,
        )

    @property
    def teacher_note(self) -> str:
        """What a shared teacher means for the table ("" when each seed trained its own)."""
        if self.teacher_seed is None:
            return ""
        return (f"One teacher, trained with seed {self.teacher_seed} (`teacher.seed`), for every seed; every seed "
                f"validates on seed {self.teacher_seed}'s split.")  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "seeds": self.seeds,
            "runs": {str(s): name for s, name in self.runs.items()},
            "teacher_seed": self.teacher_seed,
            "std": "sample standard deviation (n - 1)",
            "per_seed": {str(s): roles for s, roles in self.per_seed.items()},
            "summary": {role: stats.to_json() for role, stats in self.stats.items()},
        }

    def markdown(self) -> str:
        seeds = ", ".join(str(s) for s in self.seeds)
        lines = [
            f"# {self.recipe}: test accuracy (%) over seeds {seeds}",
            "",
            "mean ± sample std (n - 1). Best epoch: the model selected on the validation split. Last epoch: after "
            f"the final epoch. `{GAIN}` is the paired difference of the same seed (points).",
            *(["", self.teacher_note] if self.teacher_note else []),
            "",
            "| model | best epoch | last epoch | n | per seed (best epoch) |",
            "|---|---:|---:|---:|---|",
        ]
        for role, stats in self.stats.items():
            best, last = stats.accuracy, stats.last_accuracy
            per_seed = ", ".join(f"{v * 100:.2f}" for v in best.values)
            lines.append(f"| {role} | {best.percent()} | {last.percent()} | {best.n} | {per_seed} |")
        return "\n".join(lines) + "\n"


def distill_seeds(
    recipe: Recipe,
    seeds: list[int],
    out: str | os.PathLike[str] | None = None,
    resume: bool = False,
    force: bool = False,
    world: World | None = None,
) -> SeedsResult:
    """Run the recipe once per seed into ``<out>/seed<N>`` and summarise; every rank calls it under torchrun. With
    ``teacher.seed`` the first seed's run trains the teacher and the others load its weights file."""
    from kdeploy.distill import distill
    from kdeploy.distill.distributed import world_from_env

    world = world or world_from_env(recipe.train.device)
    root = seeds_root(recipe, out)
    prepare_parent(root, resume, force)
    world.barrier()  # all ranks checked before rank 0 clears
    if world.main and force and not resume and root.is_dir():
        Run(root).clear()
    runs: dict[int, Run] = {}
    for i, seed in enumerate(seeds):
        progress.log(f"seed {seed} ({i + 1}/{len(seeds)})")
        seeded = recipe.model_copy(deep=True, update={"seed": seed})
        if runs and recipe.teacher.seed is not None and not recipe.teacher.checkpoint:
            seeded.teacher.checkpoint = str(runs[seeds[0]].weights_path("teacher"))  # one teacher, trained once
        runs[seed] = distill(
            seeded, out=seed_folder(root, seed), resume=resume, force=force, world=world, mark_latest=False
        )
    world.barrier()  # rank 0 has written every seed's metrics.json
    per_seed = {s: r.model_metrics() for s, r in runs.items()}
    names = {s: r.root.name for s, r in runs.items()}
    result = SeedsSummary.of(recipe.name, seeds, names, per_seed, teacher_seed=recipe.teacher.seed)
    if world.main:
        folder = SeedsFolder(root)
        atomic.write_json(folder.summary_path, result.to_json())
        atomic.write_text(folder.markdown_path, result.markdown())
        point_latest(root.parent, runs[seeds[0]].root)
    world.barrier()
    return SeedsResult(root=root, runs=runs, summary=result)
