"""Issue-5 targets, measured side by side in one invocation on the same cores.

1. bf16 vs fp32 ``torch.mm`` (a large square one and the MNIST teacher's first layer) in GFLOP/s, 1 and all threads.
2. ``recipes/mnist_mlp.yaml`` through the real CLI (``python -m kdeploy distill``, a fresh process per row):
   1 process (all threads, and 1 thread) vs 2-process gloo DDP (``--nproc 2``, 1 thread each), and bf16 vs fp32.
   Numbers come from the run folder's ``metrics.json``: training samples/s (the training loop only: evaluation,
   data loading and start-up excluded) and test accuracy.
3. ``recipes/cifar10_cnn_logits.yaml``'s teacher and KD student through kdeploy's trainer in this process, on seeded
   random subsets of CIFAR-10 (``data.limit`` keeps the *first* N samples, which in the class-sorted JPEG tarball
   are a few classes only): fp32, fp32 + channels_last, bf16 + channels_last.

Everything is shortened (epochs, samples, CNN width) so the script stays under ~10 minutes; the exact settings are
printed and belong to the results. The 1-minute load average around each row is printed too: on a shared machine
rows taken under different load are not comparable.

    .venv/bin/python benchmarks/bench_scale.py --mnist ../shared/data/mnist --cifar ../shared/data/cifar10
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kdeploy import cpu
from kdeploy.runs import ModelMetrics, Run

REPO = Path(__file__).resolve().parents[1]
ROLES = ("teacher", "baseline", "student")
DDP_LR = "2 processes x 1 thread, scale_lr"


@dataclass
class Row:
    group: str
    name: str
    models: dict[str, ModelMetrics] = field(default_factory=dict)  # role -> what the trainer measured
    wall: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)


def cpu_flags() -> str:
    have = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in cpu.flags()]
    return f"{cpu.model_name()}, {os.cpu_count()} cores, flags: {' '.join(have) or 'none of avx512f/avx512_bf16/amx'}"


def matmul_gflops(m: int, k: int, n: int, dtype: torch.dtype, seconds: float = 2.0) -> float:
    """Best-of-rounds rate of ``(m x k) @ (k x n)``: the least-disturbed round on a shared machine."""
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    for _ in range(3):
        a @ b
    best, end = float("inf"), time.perf_counter() + seconds
    reps = max(1, int(2e9 / (2 * m * k * n)))
    while time.perf_counter() < end:
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = min(best, (time.perf_counter() - t) / reps)
    return 2 * m * k * n / best / 1e9


def matmul_table() -> str:
    lines = ["| shape | threads | fp32 GFLOP/s | bf16 GFLOP/s | bf16 / fp32 |", "|---|---:|---:|---:|---:|"]
    threads = torch.get_num_threads()
    for m, k, n in ((2048, 2048, 2048), (128, 784, 1200)):
        for t in sorted({1, threads}):
            torch.set_num_threads(t)
            f32, b16 = matmul_gflops(m, k, n, torch.float32), matmul_gflops(m, k, n, torch.bfloat16)
            lines.append(f"| {m}x{k} @ {k}x{n} | {t} | {f32:.0f} | {b16:.0f} | {b16 / f32:.2f}x |")
    torch.set_num_threads(threads)
    return "\n".join(lines)


def _allreduce_worker(rank: int, port: int, sizes: list[int], out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    times = {}
    for n in sizes:
        t = torch.ones(n)
        for _ in range(3):
            dist.all_reduce(t)
        best = float("inf")
        for _ in range(20):
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(t)
            best = min(best, time.perf_counter() - t0)
        times[n] = best
    if rank == 0:
        Path(out).write_text(json.dumps(times))
    dist.destroy_process_group()


def allreduce_table(work: Path) -> str:
    """What DDP adds per step on this machine: gloo all-reduce of the MNIST teacher's gradients (2.4 M floats),
    the student's (0.64 M), and the 1-float finiteness check, between 2 local processes (best of 20)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sizes = [1, 636_010, 2_395_210]
    out = work / "allreduce.json"
    torch.multiprocessing.spawn(_allreduce_worker, args=(port, sizes, str(out)), nprocs=2, join=True)
    times = json.loads(out.read_text())
    lines = ["| floats all-reduced (gloo, 2 processes) | ms (best of 20) |", "|---:|---:|"]
    lines += [f"| {int(n):,} | {t * 1000:.2f} |" for n, t in times.items()]
    return "\n".join(lines)


def cli_row(group: str, name: str, recipe: str, sets: list[str], work: Path, nproc: int = 1) -> Row:
    """One `kdeploy distill` in a fresh process; the row's numbers are the run folder's metrics.json."""
    out = work / f"{group}-{len(list(work.iterdir()))}"
    cmd = [sys.executable, "-m", "kdeploy", "-q", "distill", recipe, "--out", str(out), "--force"]
    cmd += [a for s in sets for a in ("--set", s)] + (["--nproc", str(nproc)] if nproc > 1 else [])
    print(f"running {group}: {name} ...", file=sys.stderr, flush=True)
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{group} {name} failed:\n{proc.stderr[-3000:]}")
    return Row(group, name, Run(out).model_metrics(), wall, (load0, os.getloadavg()[0]))


def cifar_rows(args: argparse.Namespace, work: Path) -> list[Row]:
    """The CIFAR CNN recipe's teacher (CE) and student (KD, teacher per batch: the recipe augments) on random
    subsets, through kdeploy's trainer, for each precision setting."""
    from kdeploy.data import load_dataset
    from kdeploy.distill import Trainer, create_method
    from kdeploy.distill.run import build
    from kdeploy.recipe import load_recipe

    w = args.cifar_width
    sets = [f"teacher.kwargs.width={w}", f"student.kwargs.width={w // 2}", "teacher.epochs=1", "student.epochs=1"]
    recipe = load_recipe(REPO / "recipes" / "cifar10_cnn_logits.yaml", sets, args.cifar)
    full = load_dataset("cifar10", root=args.cifar, val_size=recipe.data.val_size, seed=recipe.seed)
    gen = torch.Generator().manual_seed(0)

    def sample(split: Any, n: int) -> Any:
        return split.subset(torch.randperm(len(split), generator=gen)[:n])

    data = dataclasses.replace(
        full, train=sample(full.train, args.cifar_train), val=sample(full.val, 1000), test=sample(full.test, 2000)
    )
    print(
        f"  cifar10_cnn: {' '.join(sets)}; random subsets: {len(data.train)} train / {len(data.val)} val / "
        f"{len(data.test)} test; batch {recipe.data.batch_size}, augment crop+flip as in the recipe"
    )
    rows = []
    torch.set_num_threads(args.threads)
    print(f"  cifar10_cnn rows: 1 process x {args.threads} thread(s)")
    for name, update in (
        ("fp32", {}),
        ("bf16", {"precision": "bf16"}),
        ("fp32 channels_last", {"channels_last": True}),
        ("bf16 channels_last", {"channels_last": True, "precision": "bf16"}),
    ):
        print(f"running cifar10_cnn: {name} ...", file=sys.stderr, flush=True)
        train = recipe.train.model_copy(update=update)
        trainer = Trainer(
            data, recipe.data.batch_size, recipe.data.eval_batch_size, recipe.seed, train, recipe.data.augment
        )
        load0, t0 = os.getloadavg()[0], time.perf_counter()
        teacher = build(recipe.teacher, data, recipe.seed, "teacher")
        student = build(recipe.student, data, recipe.seed, "student")
        ce, kd = create_method("ce", {}), create_method("kd", recipe.distill.params())
        models = {"teacher": trainer.fit("teacher", teacher, recipe.teacher, ce, work / "t.pt")}
        trainer.prepare_teacher(teacher)
        models["student"] = trainer.fit("student", student, recipe.student, kd, work / "s.pt", teacher=teacher)
        rows.append(Row("cifar10_cnn", name, models, time.perf_counter() - t0, (load0, os.getloadavg()[0])))
    return rows


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.2f}"


def table(rows: list[Row]) -> str:
    head = "| experiment | config | " + " | ".join(f"{r} samples/s" for r in ROLES)
    head += " | " + " | ".join(f"{r} acc %" for r in ROLES) + " | wall s | load 1m before/after |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        m = row.models
        sps = [f"{m[r].samples_per_second:,.0f}" if r in m and m[r].samples_per_second else "-" for r in ROLES]
        acc = [pct(m[r].accuracy) if r in m else "-" for r in ROLES]
        lo = f"{row.load[0]:.1f} / {row.load[1]:.1f}"
        lines.append(f"| {row.group} | {row.name} | {' | '.join(sps)} | {' | '.join(acc)} | {row.wall:.0f} | {lo} |")
    return "\n".join(lines)


def speed(m: ModelMetrics) -> float:
    if not m.samples_per_second:
        raise SystemExit("a run's metrics.json has no samples_per_second; rerun it with this kdeploy")
    return m.samples_per_second


def ratio(rows: list[Row], group: str, base: str, other: str) -> str:
    a = next(r for r in rows if r.group == group and r.name == base).models
    b = next(r for r in rows if r.group == group and r.name == other).models
    parts = [f"{r} {speed(b[r]) / speed(a[r]):.2f}x" for r in ROLES if r in a and r in b]
    return f"- {group}: {other} vs {base} (samples/s): " + ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mnist", default=str(REPO.parent / "shared" / "data" / "mnist"))
    parser.add_argument("--cifar", default=str(REPO.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--mnist-limit", type=int, default=20000, help="MNIST train/test samples kept")
    parser.add_argument("--mnist-epochs", type=int, default=2)
    parser.add_argument("--cifar-train", type=int, default=4000, help="random CIFAR-10 training samples")
    parser.add_argument("--cifar-width", type=int, default=16, help="teacher width (student: half; recipe: 32/16)")
    parser.add_argument(
        "--threads", type=int, default=1, help="threads of the single-process rows (DDP rows: 1 per process)"
    )
    parser.add_argument("--skip-cifar", action="store_true")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()

    print(f"machine: {cpu_flags()}; torch {torch.__version__}, {torch.get_num_threads()} threads by default")
    print("\n## bf16 vs fp32 torch.mm (best round of 2 s)\n")
    print(matmul_table(), flush=True)

    mnist = [
        f"data.root={args.mnist}",
        f"data.limit={args.mnist_limit}",
        f"teacher.epochs={args.mnist_epochs}",
        f"student.epochs={args.mnist_epochs}",
        "train.precision=fp32",  # the recipe trains in bf16; the bf16 row below overrides this again
    ]
    recipe = "recipes/mnist_mlp.yaml"
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        print("\n## DDP communication per step\n")
        print(allreduce_table(Path(tmp)), flush=True)
    print("\nshortened:")
    print(f"  mnist_mlp: --set {' --set '.join(mnist)}")
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        work = Path(tmp)
        t = f"train.threads={args.threads}"
        one = f"1 process x {args.threads} thread{'s' if args.threads > 1 else ''}"
        rows = [
            cli_row("mnist_mlp", f"{one} fp32", recipe, [*mnist, t], work),
            cli_row("mnist_mlp", "2 processes x 1 thread fp32 (gloo DDP)", recipe, mnist, work, nproc=2),
            cli_row("mnist_mlp", f"{DDP_LR} fp32", recipe, [*mnist, "train.scale_lr=true"], work, nproc=2),
            cli_row("mnist_mlp", f"{one} bf16", recipe, [*mnist, t, "train.precision=bf16"], work),
        ]
        if not args.skip_cifar:
            rows += cifar_rows(args, work)
    print("\n## training throughput and test accuracy\n")
    print(table(rows))
    print()
    print(ratio(rows, "mnist_mlp", f"{one} fp32", "2 processes x 1 thread fp32 (gloo DDP)"))
    print(ratio(rows, "mnist_mlp", f"{one} fp32", f"{one} bf16"))
    if args.json:
        results = [dataclasses.asdict(r) for r in rows]
        Path(args.json).write_text(json.dumps({"machine": cpu_flags(), "rows": results}, indent=1) + "\n")
    if not args.skip_cifar:
        print(ratio(rows, "cifar10_cnn", "fp32", "bf16"))
        print(ratio(rows, "cifar10_cnn", "fp32", "fp32 channels_last"))
        print(ratio(rows, "cifar10_cnn", "fp32", "bf16 channels_last"))


if __name__ == "__main__":
    main()
