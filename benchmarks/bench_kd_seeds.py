"""Does distillation pay? Each shipped recipe's KD student against its CE-only baseline over seeds.

For every row of :data:`ENTRIES` this runs the real CLI twice and reads the numbers back from the run folders:

1. ``kdeploy run RECIPE --set ... --out runs/kd/<recipe>/deploy --batch-sizes 1``: teacher, baseline and student
   of seed 0, ONNX export with the parity gate, static INT8 + FP16, bench at batch 1 (the student's INT8 accuracy
   and latency in the table come from here).
2. ``kdeploy distill RECIPE --seeds 0,1,2 --set teacher.checkpoint=<step 1's teacher> --out runs/kd/<recipe>/seeds``:
   baseline and student for every seed against the one teacher of step 1 (the seeds share it, as the issue allows
   for teachers that are expensive to train; seed 0 repeats step 1's pair). Same seed = same initialisation and
   data order for baseline and student, so ``student - baseline`` per seed is a paired difference.

Usage::

    KDEPLOY_DATA=../shared/data .venv/bin/python benchmarks/bench_kd_seeds.py [--only NAME ...] [--write-readme]

A step whose output already exists is skipped (``--force`` redoes it), so an interrupted sweep continues.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from _markdown import emit, md_row, md_table

from kdeploy.bench.records import BenchRow
from kdeploy.bench.report import read_bench
from kdeploy.runs import Run, SeedsFolder
from kdeploy.seeds import GAIN, Summary, aggregate, parse_seeds

REPO = Path(__file__).resolve().parents[1]
README = Path(__file__).resolve().parent / "README.md"
OUT = REPO / "runs" / "kd"
SEEDS = "0,1,2"


@dataclass(frozen=True)
class Entry:
    recipe: str
    overrides: list[str] = field(default_factory=list)  # on top of the recipe, in both steps
    note: str = ""
    share_teacher: bool = True  # False: every seed trains its own teacher (affordable for cheap teachers)
    run_args: list[str] = field(default_factory=list)  # extra `kdeploy run` options (INT8 settings)


CNN_INT8 = ["--per-channel", "--calib-method", "percentile"]  # per-tensor min-max loses 1.2 points on fast_cnn
ENTRIES = [
    Entry("mnist_demo", note="`make demo`", share_teacher=False),
    Entry("fashion_mnist_mlp"),
    Entry("mnist_mlp"),
    Entry("hinton_mnist", note="paper: baseline 146 errors, student 74"),
    Entry("hinton_mnist_consistent", note="every model jittered, the teacher on the student's batch, 100 epochs"),
    Entry("fashion_mnist_cnn"),
    Entry("cifar10_fast", run_args=CNN_INT8),
    Entry("cifar10_fast_tiny", [f"teacher.checkpoint={OUT / 'cifar10_fast' / 'deploy' / 'teacher.safetensors'}"],
          run_args=[*CNN_INT8, "--calib-samples", "2048"]),  # 512 images: 0.34 points lost on four seeds, 2048: 0.17
]  # fmt: skip
HEADERS = ["recipe", "teacher %", "CE baseline %", "KD student %", "paired gain, points (per seed)",
           "params teacher / student", "student INT8 ONNX: accuracy, p50 batch 1", "overrides", "CPU"]  # fmt: skip


def kdeploy(*args: str) -> None:
    cmd = [str(Path(sys.executable).with_name("kdeploy")), "-q", *args]
    print("$ kdeploy -q " + " ".join(args), file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


def sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def run_entry(entry: Entry, force: bool) -> None:
    root = OUT / entry.recipe
    recipe = f"recipes/{entry.recipe}.yaml"
    deploy, seeds = root / "deploy", root / "seeds"
    if force or not (deploy / "bench.json").is_file():
        run = ["--out", str(deploy), "--force", "--batch-sizes", "1", *entry.run_args]
        kdeploy("run", recipe, *sets(entry.overrides), *run)
    if force or not (seeds / "seeds.json").is_file():
        shared = [f"teacher.checkpoint={deploy / 'teacher.safetensors'}"] if entry.share_teacher else []
        kdeploy("distill", recipe, "--seeds", SEEDS, *sets([*entry.overrides, *shared]), "--out", str(seeds), "--force")


def student_int8(rows: list[BenchRow]) -> str:
    for row in rows:
        if (row.model, row.format, row.batch_size) == ("student", "onnx-int8", 1):
            return f"{row.accuracy * 100:.2f} %, {row.latency_ms.p50:.3f} ms"
    return "-"


def seed_stats(seeds: Path) -> Summary:
    """Each role's statistics over the seed folders' metrics, and the paired gain (as ``seeds.json`` has them)."""
    folder = SeedsFolder(seeds)
    return aggregate({s: Run(folder.seed_run(s)).model_metrics() for s in parse_seeds(SEEDS)})


def cells(entry: Entry) -> list[str]:
    root = OUT / entry.recipe
    stats = seed_stats(root / "seeds")
    models = Run(root / "deploy").model_metrics()
    gain = stats[GAIN].accuracy
    per_seed = ", ".join(f"{v * 100:+.2f}" for v in gain.values)
    verdict = "pays" if gain.mean is not None and gain.mean > (gain.std or 0.0) else "does not pay"
    teacher, student = models["teacher"], models["student"]
    over = " ".join(f"`{o.replace(str(REPO) + '/', '')}`" for o in entry.overrides) or "-"
    teacher_acc = f"{(teacher.accuracy or 0.0) * 100:.2f}"
    if not entry.share_teacher:
        teacher_acc = stats["teacher"].accuracy.percent() + " (own teacher per seed)"
    return [
        f"`{entry.recipe}`" + (f" ({entry.note})" if entry.note else ""),
        teacher_acc,
        stats["baseline"].accuracy.percent(),
        stats["student"].accuracy.percent(),
        f"**{gain.percent()}** ({per_seed}): {verdict}",
        f"{teacher.params:,} / {student.params:,}",
        student_int8(read_bench(root / "deploy").rows),
        over,
        run_cpu(root / "seeds" / "seed0" / "environment.json"),
    ]


def run_cpu(environment: Path) -> str:
    """The CPU a run trained on and its bf16/INT8 flags, from its environment.json (runs before
    `cpu_accelerations` was recorded: the name alone)."""
    env = json.loads(environment.read_text(encoding="utf-8"))
    if "cpu_accelerations" not in env:
        return env["cpu"]
    return f"{env['cpu']} ({', '.join(env['cpu_accelerations']) or 'no native bf16 or VNNI'})"


def readme_rows(readme: Path) -> dict[str, str]:
    """The rows README's table has now, by recipe: kept for recipes whose run folders are not on this machine."""
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    section = text.partition("<!-- bench_kd_seeds:begin -->")[2].partition("<!-- bench_kd_seeds:end -->")[0]
    found = (re.match(r"\| `(\w+)`", line) for line in section.splitlines())
    return {m.group(1): m.string for m in found if m}


def table(entries: list[Entry], kept: dict[str, str]) -> str:
    """One row per recipe: measured from its run folders here, else README's row as it was."""
    rows = []
    for e in entries:
        if (OUT / e.recipe / "seeds" / "seeds.json").is_file():
            rows.append(md_row(cells(e)))
        elif e.recipe in kept:
            rows.append(kept[e.recipe])
    return "\n".join([md_table(HEADERS, []), *rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=[e.recipe for e in ENTRIES], help="run only these recipes")
    ap.add_argument("--force", action="store_true", help="redo steps whose outputs exist")
    ap.add_argument("--report-only", action="store_true", help="only write the table from existing run folders")
    ap.add_argument("--write-readme", action="store_true", help=f"replace the section in {README.name}")
    args = ap.parse_args()
    chosen = [e for e in ENTRIES if not args.only or e.recipe in args.only]
    if not args.report_only:
        try:
            for entry in chosen:
                run_entry(entry, args.force)
        except subprocess.CalledProcessError as exc:
            sys.exit(f"error: {exc}")
    text = "\n\n".join([
        "### Does KD pay? Paired gains over seeds (`benchmarks/bench_kd_seeds.py`)",
        f"Command: `KDEPLOY_DATA=../shared/data python benchmarks/bench_kd_seeds.py --write-readme`. Seeds {SEEDS} "
        "share one teacher (`teacher.checkpoint`, from the `kdeploy run` of seed 0) unless the row says each seed "
        "trained its own; baseline and student of a seed "
        "share initialisation, data order and augmentation, so the gain is paired. mean ± sample std; the gain "
        "'pays' when its mean exceeds its std. Two cores; the CPU each row trained on is in its last column. A "
        "recipe whose run folders are not on the machine that writes the table keeps its row as it was.",
        table(ENTRIES, readme_rows(README)),
    ])  # fmt: skip
    emit(text, README, "bench_kd_seeds", args.write_readme)


if __name__ == "__main__":
    main()
