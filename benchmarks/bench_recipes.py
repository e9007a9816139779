"""Shipped recipes on CPU-sized schedules, next to the published numbers they are compared with.

The full recipes (15-240 epochs of CNNs/ResNets) take hours to days on a 2-core CPU. This script runs each one
through the real CLI (``kdeploy run RECIPE --set ...``) with a *shortened* schedule, states every override in the
table, and reads the numbers back from the run folder (``metrics.json`` for training accuracy, ``bench.json`` for
the student's INT8 ONNX accuracy and latency). The published references are for the full schedules, so the rows
say how far a short CPU run gets; they are not a reproduction.

Usage::

    KDEPLOY_DATA=../shared/data .venv/bin/python benchmarks/bench_recipes.py [--only NAME ...] [--write-readme]

A run folder (``runs/short/<recipe>``) whose saved recipe equals the recipe with these overrides and that has a
``bench.json`` is reused, so an interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from _markdown import emit, md_table

from kdeploy.bench.records import BenchRow
from kdeploy.bench.report import read_bench
from kdeploy.errors import UserError
from kdeploy.recipe import load_recipe, validate
from kdeploy.runs import Run

REPO = Path(__file__).resolve().parents[1]
README = Path(__file__).resolve().parent / "README.md"
OUT = REPO / "runs" / "short"
CPU = ["train.precision=bf16", "train.channels_last=true"]  # ~2x (bf16) and ~1.2x (channels_last) on AVX512-BF16


@dataclass(frozen=True)
class Entry:
    recipe: str
    published: str
    overrides: list[str] = field(default_factory=list)


def epochs(n: int) -> list[str]:
    return [f"teacher.epochs={n}", f"student.epochs={n}"]


ENTRIES = [
    Entry(
        "cifar10_cnn_logits",
        "scaled CNN teacher 82.44 %, student standard 75.83 % / logits KD 66.54 %",
        epochs(6) + CPU,
    ),
    Entry(
        "cifar10_cnn_feature",
        "feature KD 77.34 % (same teacher and student shapes)",
        # the logits row's teacher and CE baseline (same student, schedule and seed) are reused, not retrained
        epochs(6) + CPU + ["teacher.checkpoint=runs/short/cifar10_cnn_logits/teacher.safetensors", "baseline=false"],
    ),
    Entry(
        "cifar10_resnet",
        "ResNet-50 ~93 % vs <1M-param CNN ~88 %; teacher 87.3 / student 66.4 / distilled 73.1",
        epochs(6) + CPU,
    ),
]


def recipe_path(name: str) -> Path:
    return REPO / "recipes" / f"{name}.yaml"


def up_to_date(entry: Entry, out: Path) -> bool:
    """The run folder holds this recipe with these overrides and finished benchmarking."""
    saved = out / "recipe.yaml"
    if not (saved.is_file() and (out / "bench.json").is_file()):
        return False
    wanted = load_recipe(recipe_path(entry.recipe), entry.overrides).model_dump(mode="json")
    have = validate(yaml.safe_load(saved.read_text(encoding="utf-8"))).model_dump(mode="json")  # today's defaults
    have["data"]["root"] = wanted["data"]["root"]  # where the data was found is not part of the experiment
    return have == wanted


def command(entry: Entry, out: Path) -> list[str]:
    sets = [arg for o in entry.overrides for arg in ("--set", o)]
    return ["kdeploy", "run", f"recipes/{entry.recipe}.yaml", *sets, "--out", str(out.relative_to(REPO)),
            "--force", "--batch-sizes", "1,256"]  # fmt: skip


def run_entry(entry: Entry) -> None:
    """Runs the recipe through the CLI unless its run folder is up to date."""
    out = OUT / entry.recipe
    if up_to_date(entry, out):
        print(f"{entry.recipe}: reusing {out.relative_to(REPO)}", file=sys.stderr)
        return
    cmd = command(entry, out)
    print("$ " + " ".join(cmd), file=sys.stderr)
    subprocess.run([str(Path(sys.executable).with_name("kdeploy")), *cmd[1:]], cwd=REPO, check=True)


def student_int8(rows: list[BenchRow]) -> str:
    by_key = {(r.model, r.format, r.batch_size): r for r in rows}
    int8, teacher = by_key.get(("student", "onnx-int8", 1)), by_key.get(("teacher", "pytorch", 1))
    if not (int8 and teacher):
        return "-"
    p50 = int8.latency_ms.p50
    return f"{int8.accuracy:.2%}, {p50:.3f} ms ({teacher.latency_ms.p50 / p50:.1f}x the teacher)"


def cells(entry: Entry) -> list[str]:
    out = OUT / entry.recipe
    saved = Run(out).read_metrics()
    models = saved.models
    roles = ("teacher", "baseline", "student")
    accuracy = " / ".join(f"{models[r].accuracy:.2%}" if r in models else "-" for r in roles)
    params = " / ".join(f"{(models[r].params or 0) / 1e6:.2f}M" for r in ("teacher", "student") if r in models)
    overrides = ", ".join(f"`{o}`" for o in entry.overrides)
    took = f"{(saved.wall_seconds or 0.0) / 60:.0f} min"
    rows = read_bench(out).rows
    return [f"`{entry.recipe}.yaml`", entry.published, params, accuracy, student_int8(rows), overrides, took]


def table(entries: list[Entry]) -> str:
    headers = ["recipe", "published (full schedule)", "params teacher / student",
               "measured: teacher / CE baseline / KD student (test)", "student INT8 ONNX: accuracy, p50 batch 1",
               "overrides (short CPU schedule)", "training wall time"]  # fmt: skip
    return md_table(headers, [cells(e) for e in entries if (OUT / e.recipe / "bench.json").is_file()])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=[e.recipe for e in ENTRIES], help="run only these recipes")
    ap.add_argument("--write-readme", action="store_true", help=f"replace the section in {README.name}")
    args = ap.parse_args()
    chosen = [e for e in ENTRIES if not args.only or e.recipe in args.only]
    try:
        for entry in chosen:
            run_entry(entry)
    except (UserError, subprocess.CalledProcessError) as exc:
        sys.exit(f"error: {exc}")
    text = "\n\n".join([
        "### Shipped recipes on short CPU schedules (`benchmarks/bench_recipes.py`)",
        "Command: `KDEPLOY_DATA=../shared/data python benchmarks/bench_recipes.py --write-readme`; each row ran "
        "`kdeploy run recipes/<recipe>.yaml --set <overrides> --out runs/short/<recipe> --batch-sizes 1,256` "
        "(distill, ONNX export with parity, static INT8 + FP16, bench on 2 threads).",
        table(ENTRIES),
    ])  # fmt: skip
    emit(text, README, "bench_recipes", args.write_readme)


if __name__ == "__main__":
    main()
