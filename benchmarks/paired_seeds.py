"""Paired KD gains over seeds whose student and CE baseline sit in different run folders.

``kdeploy distill R --seeds 0,1,2`` trains both models of every seed in one folder and writes ``seeds.md``. When the
seeds were run apart (a student with ``baseline=false`` next to the baseline another recipe trained for the same
student, seed, data and schedule), this pairs them: pass one ``seed=STUDENT_RUN[,BASELINE_RUN]`` per seed, where a
run is a seed folder holding ``metrics.json``; without ``BASELINE_RUN`` the student's own folder must hold the baseline.
A ``BASELINE_RUN`` may also be a run whose student was trained with ``distill.method: ce`` and ``baseline: false``: the
same loop, loss and initialisation as a baseline (a baseline alone, without training a KD student next to it).

It refuses a pair whose baseline was trained differently: the seed, the data and the ``student:`` and ``train:``
blocks (threads aside) must be equal in both recipes, since the baseline follows ``student:``.

Usage::

    .venv/bin/python benchmarks/paired_seeds.py 0=runs/a/seed0,runs/b/seed0 1=runs/c/seed1 [--name NAME]

Prints the same table as ``seeds.md`` (teacher, baseline, student and ``student - baseline``, mean ± sample std).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kdeploy.errors import UserError
from kdeploy.recipe import Recipe
from kdeploy.rundata import run_recipe
from kdeploy.runs import ModelMetrics, Run
from kdeploy.seeds import SeedsSummary

SAME = ("seed", "data", "student")  # what a CE baseline depends on, besides train: (checked without threads)


def _baseline_key(recipe: Recipe) -> dict:
    dumped = recipe.model_dump()
    train = {k: v for k, v in dumped["train"].items() if k != "threads"}
    return {**{k: dumped[k] for k in SAME}, "train": train}


def ce_baseline(run: Run) -> ModelMetrics | None:
    """The run's CE-only model: its ``baseline``, else a student trained with the ``ce`` method."""
    models = run.model_metrics()
    student = models.get("student")
    return models.get("baseline") or (student if student is not None and student.method == "ce" else None)


def pair(seed: int, student_dir: Path, baseline_dir: Path | None) -> dict[str, ModelMetrics]:
    """The student run's models, with the baseline taken from ``baseline_dir`` after checking it matches."""
    student_run = Run(student_dir)
    recipe = run_recipe(student_run)
    if seed != recipe.seed:
        raise UserError(f"{student_dir}: trained with seed {recipe.seed}, not {seed}")
    models = dict(student_run.model_metrics())
    if "student" not in models:
        raise UserError(f"{student_dir}: no trained student in metrics.json; pass a finished seed folder")
    if baseline_dir is not None:
        baseline_run = Run(baseline_dir)
        if _baseline_key(run_recipe(baseline_run)) != _baseline_key(recipe):
            raise UserError(
                f"{baseline_dir}: its baseline was trained with another seed, data, student or train block than "
                f"{student_dir}'s recipe; pair runs of the same seed and student"
            )
        found = ce_baseline(baseline_run)
        if found is None:
            raise UserError(
                f"{baseline_dir}: no baseline in metrics.json; "
                "pass a run trained with baseline: true or distill.method: ce"
            )
        models["baseline"] = found
    if "baseline" not in models:
        raise UserError(f"{student_dir}: no baseline in metrics.json; pass seed=STUDENT_RUN,BASELINE_RUN")
    return models


def parse_pair(text: str) -> tuple[int, Path, Path | None]:
    seed, _, dirs = text.partition("=")
    folders = [Path(d) for d in dirs.split(",") if d]
    if not seed.isdigit() or len(folders) not in (1, 2):
        raise UserError(f"{text!r}: expected SEED=STUDENT_RUN[,BASELINE_RUN], e.g. 0=runs/a/seed0,runs/b/seed0")
    return int(seed), folders[0], folders[1] if len(folders) == 2 else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pairs", nargs="+", help="SEED=STUDENT_RUN[,BASELINE_RUN]")
    ap.add_argument("--name", help="the table's title (default: the first student run's recipe name)")
    args = ap.parse_args(argv)
    try:
        parsed = [parse_pair(p) for p in args.pairs]
        per_seed = {seed: pair(seed, s, b) for seed, s, b in parsed}
        name = args.name or run_recipe(Run(parsed[0][1])).name
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = SeedsSummary.of(name, list(per_seed), {seed: str(s) for seed, s, _ in parsed}, per_seed)
    print(summary.markdown(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
