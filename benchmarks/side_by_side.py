"""The CE baseline and the KD student trained side by side (``train.concurrent_students``) against one after the
other, on the same cores and the same teacher, alternating in one process.

A first ``distill`` trains the teacher (untimed, with a one-epoch student and no baseline); every timed run then
loads it (``teacher.checkpoint``), so its wall time is the two students' training plus loading the data and
testing. Each repeat times both modes, in alternating order; the table gives each run's wall time and
accuracies, and the ratio of the modes' median wall times.

    python benchmarks/side_by_side.py recipes/mnist_demo.yaml --repeats 2 --data-root ../shared/data

Prints a Markdown table with the CPU and its native bf16 (the numbers in benchmarks/README.md come from it).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from _machine import load_average
from _markdown import md_table

from kdeploy import cpu
from kdeploy.distill import distill
from kdeploy.recipe import load_recipe

MODES = {"one after the other": "false", "side by side": "auto"}


@dataclass
class Timed:
    mode: str
    seconds: float
    baseline: float
    student: float
    threads: int | None


def timed_run(recipe: str, overrides: list[str], data_root: str | None, out: Path, mode: str) -> Timed:
    sets = [*overrides, f"train.concurrent_students={MODES[mode]}"]
    t0 = time.perf_counter()
    run = distill(load_recipe(recipe, sets, data_root), out=out, force=True, mark_latest=False)
    seconds = time.perf_counter() - t0
    models = run.model_metrics()
    return Timed(mode, seconds, models["baseline"].accuracy, models["student"].accuracy,
                 models["student"].train_threads)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs of each mode")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override, repeatable")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        quick = [*args.overrides, "baseline=false", "student.epochs=1"]  # the teacher, and its table in the cache
        first = distill(load_recipe(args.recipe, quick, args.data_root), out=Path(tmp) / "teacher", mark_latest=False)
        sets = [*args.overrides, f"teacher.checkpoint={first.weights_path('teacher')}"]
        load_before, runs = load_average(), []
        for rep in range(args.repeats):
            order = list(MODES) if rep % 2 == 0 else list(reversed(MODES))
            runs += [timed_run(args.recipe, sets, args.data_root, Path(tmp) / "timed", mode) for mode in order]
    median = {mode: statistics.median(r.seconds for r in runs if r.mode == mode) for mode in MODES}
    cells = [[r.mode, f"{r.seconds:.1f}", str(r.threads), f"{100 * r.baseline:.2f}", f"{100 * r.student:.2f}"]
             for r in runs]  # fmt: skip
    native = ", ".join(f for f in cpu.NATIVE_BF16 if f in cpu.flags()) or "no native bf16"
    print(f"{cpu.model_name()} ({native}), torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"load average {load_before} before, {load_average()} after\n")  # fmt: skip
    print(md_table(["mode", "wall s (students)", "threads each", "baseline %", "student %"], cells))
    ratio = median["one after the other"] / median["side by side"]
    print(f"\nmedian wall: one after the other {median['one after the other']:.1f} s, side by side "
          f"{median['side by side']:.1f} s: **{ratio:.2f}x** faster side by side")  # fmt: skip


if __name__ == "__main__":
    main()
