"""Issue-2 targets, measured side by side in one process on the same cores.

1. Training throughput of kdeploy's KD loop vs a straightforward loop (torchvision MNIST with
   per-sample ToTensor/Normalize through a DataLoader, batch 64, teacher forward every step, Adam).
2. Teacher training rate in GFLOP/s (forward + backward = 3x forward FLOPs) vs the machine's
   fp32 matmul ceiling (a large torch.mm), measured in the same run.

3. bf16 vs fp32 teacher training: samples/s of each and their ratio, at batch 128 and at the recipe's teacher batch
   size, with the CPU model, whether it has AMX, and the load average before and after (other processes' load skews
   every row).

    python benchmarks/bench_distill.py --data-root ../shared/data/mnist
    python benchmarks/bench_distill.py --precision-only     # item 3 alone (about a minute)
    python benchmarks/bench_distill.py --precision-only --compile   # item 3 with train.compile: true

Prints Markdown tables; numbers in benchmarks/README.md come from this command.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import tempfile
import time
from pathlib import Path

import torch
from _machine import load_average, matmul_gflops
from torch import nn
from torch.nn import functional as F

from kdeploy import cpu
from kdeploy.data import Augment, load_dataset
from kdeploy.distill import Trainer, create_method
from kdeploy.distill.methods import kl_soft
from kdeploy.models import create_model
from kdeploy.recipe import ModelConfig, load_recipe

REPO = Path(__file__).resolve().parents[1]


def mlp_forward_flops(model: nn.Module) -> int:
    return sum(2 * m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))


def straightforward_loop(root: Path, teacher: nn.Module, student: nn.Module, steps: int) -> float:
    """The notebook loop: torchvision dataset, per-sample transforms, DataLoader, batch 64."""
    import torchvision
    from torchvision import transforms

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for gz in root.glob("*-ubyte.gz"):
            with gzip.open(gz) as src, open(raw / gz.name.removesuffix(".gz"), "wb") as dst:
                shutil.copyfileobj(src, dst)
        tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
        ds = torchvision.datasets.MNIST(tmp, train=True, transform=tf, download=False)
        loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True)
        opt = torch.optim.Adam(student.parameters(), lr=1e-3)
        teacher.eval()
        student.train()
        seen, t0 = 0, time.perf_counter()
        for step, (x, y) in enumerate(loader):
            if step == steps:
                break
            with torch.no_grad():
                t_logits = teacher(x)
            s_logits = student(x)
            loss = 0.3 * F.cross_entropy(s_logits, y) + 0.7 * kl_soft(s_logits, t_logits, 5.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(y)
        return seen / (time.perf_counter() - t0)


def kdeploy_epoch(recipe_path: Path, root: Path, teacher: nn.Module, student: nn.Module, cached: bool) -> float:
    recipe = load_recipe(recipe_path, [], str(root))
    data = load_dataset("mnist", root=str(root), val_size=5000, seed=0)
    aug = JITTER if not cached else None
    trainer = Trainer(data, recipe.data.batch_size, 1000, 0, recipe.train, aug)
    method = create_method("kd", recipe.distill.params())
    cfg = recipe.student.model_copy(update={"epochs": 1, "augment": None})  # JITTER, not the recipe's
    logits = trainer.teacher_cache(teacher) if cached else None
    with tempfile.TemporaryDirectory() as tmp:
        result = trainer.fit(
            "student", student, cfg, method, Path(tmp) / "s.pt", teacher=teacher, cached_teacher=logits
        )
    return result.samples_per_second


MLP_TEACHER = {"hidden": [1200, 1200], "dropout": 0.3}
JITTER = Augment(translate=2)  # the augmented rows: +-2 px jitter, whatever the recipe's student gets
MLP_BATCH = 128


def teacher_rate(
    recipe_path: Path, root: Path, precision: str, compiled: bool = False, batch: int = MLP_BATCH
) -> tuple[float, float]:
    """(samples/s, GFLOP/s) of one teacher epoch with the recipe's settings at the given precision and batch size
    (``compiled``: ``train.compile: true``, the warm-up untimed)."""
    overrides = [f"train.precision={precision}", "train.channels_last=false", f"train.compile={str(compiled).lower()}"]
    recipe = load_recipe(recipe_path, overrides, str(root))
    data = load_dataset("mnist", root=str(root), val_size=5000, seed=0)
    # the MLP teacher the issue measures (2x1200, dropout 0.3, Adam), whatever teacher the recipe names
    teacher = create_model("mlp", num_classes=10, in_shape=(1, 28, 28), **MLP_TEACHER)
    trainer = Trainer(data, batch, 1000, 0, recipe.train, JITTER)
    cfg = ModelConfig(model="mlp", kwargs=MLP_TEACHER, epochs=1, optimizer="adam", lr=1e-3)
    with tempfile.TemporaryDirectory() as tmp:
        result = trainer.fit("teacher", teacher, cfg, create_method("ce", {}), Path(tmp) / "t.pt")
    sps = result.samples_per_second
    return sps, sps * 3 * mlp_forward_flops(teacher) / 1e9


def cpu_description() -> str:
    """The CPU model and whether it has AMX (bf16 tiles)."""
    return f"{cpu.model_name()}, amx_bf16: {'yes' if cpu.has_amx() else 'no'}"


def recipe_teacher_batch(recipe: Path, root: Path) -> int:
    """The batch size the recipe trains its teacher at (``teacher.batch_size``, else ``data.batch_size``)."""
    config = load_recipe(recipe, [], str(root))
    return config.batch_size_for(config.teacher)


def precision_table(recipe: Path, root: Path, threads: int, compiled: bool = False) -> None:
    """Teacher epochs in fp32 and bf16 (same recipe, same data) and the bf16/fp32 speed ratio, at batch 128 (the
    issue's measurement) and at the recipe's teacher batch size where that differs."""
    before = load_average()
    batches = sorted({MLP_BATCH, recipe_teacher_batch(recipe, root)})
    rates = {(b, p): teacher_rate(recipe, root, p, compiled, b)[0] for b in batches for p in ("fp32", "bf16")}
    print(
        f"\nCPU: {cpu_description()}; {threads} threads; load average 1/5/15 min before {before}, "
        f"after {load_average()}\n"
    )
    print("| teacher epoch | fp32 samples/s | bf16 samples/s | bf16 / fp32 |")
    print("|---|---:|---:|---:|")
    how = ", torch.compile" if compiled else ""
    for b in batches:
        f32, b16 = rates[b, "fp32"], rates[b, "bf16"]
        print(f"| {recipe.name} teacher, batch {b}{how} | {f32:,.0f} | {b16:,.0f} | {b16 / f32:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data" / "mnist")
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "mnist_mlp.yaml")
    parser.add_argument("--steps", type=int, default=300, help="steps of the straightforward loop")
    parser.add_argument("--precision-only", action="store_true", help="only the bf16 vs fp32 teacher table")
    parser.add_argument("--compile", action="store_true", help="that table with train.compile: true")
    args = parser.parse_args()
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    if args.precision_only:
        precision_table(args.recipe, args.data_root, threads, args.compile)
        return
    teacher = create_model("mlp", num_classes=10, in_shape=(1, 28, 28), hidden=[1200, 1200])
    make_student = lambda: create_model("mlp", num_classes=10, in_shape=(1, 28, 28), hidden=[800])  # noqa: E731

    ceiling = matmul_gflops()
    naive = straightforward_loop(args.data_root, teacher, make_student(), args.steps)
    ours_aug = kdeploy_epoch(args.recipe, args.data_root, teacher, make_student(), cached=False)
    ours_cached = kdeploy_epoch(args.recipe, args.data_root, teacher, make_student(), cached=True)
    bf16_ceiling = matmul_gflops(dtype=torch.bfloat16)
    before = load_average()
    rates = {p: teacher_rate(args.recipe, args.data_root, p) for p in ("fp32", "bf16")}

    print(
        f"\nmatmul ceilings (4096^2 torch.mm, {threads} threads): fp32 {ceiling:.0f} GFLOP/s, "
        f"bf16 {bf16_ceiling:.0f} GFLOP/s\n"
    )
    print("| loop | samples/s | vs straightforward |")
    print("|---|---:|---:|")
    print(
        f"| straightforward (DataLoader, per-sample transforms, batch 64, teacher every step) | {naive:,.0f} | 1.0x |"
    )
    print(
        f"| kdeploy KD, recipe settings (batch augmentation, teacher every step) | {ours_aug:,.0f} "
        f"| {ours_aug / naive:.1f}x |"
    )
    print(f"| kdeploy KD, teacher outputs cached (no augmentation) | {ours_cached:,.0f} | {ours_cached / naive:.1f}x |")
    print(
        "\n| teacher training (one epoch, forward + backward = 3x forward FLOPs) | samples/s | GFLOP/s "
        "| vs fp32 ceiling | vs same-precision ceiling |"
    )
    print("|---|---:|---:|---:|---:|")
    for precision, (sps, gflops) in rates.items():
        own = ceiling if precision == "fp32" else bf16_ceiling
        print(
            f"| {precision} | {sps:,.0f} | {gflops:.0f} | {100 * gflops / ceiling:.0f}% | {100 * gflops / own:.0f}% |"
        )
    ratio = rates["bf16"][0] / rates["fp32"][0]
    print(
        f"\nbf16 / fp32 teacher samples/s: {ratio:.2f}x; CPU: {cpu_description()}; {threads} threads; "
        f"load average 1/5/15 min before the teacher rows {before}, after {load_average()}"
    )


if __name__ == "__main__":
    main()
