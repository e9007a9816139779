"""Where a step of the ``mnist_mlp`` teacher (784-1200-1200-10, dropout 0.3, Adam, batch 128) goes, fp32 vs bf16.

1. A bare step outside the trainer: forward, backward and optimizer times (ms), per precision.
2. One teacher epoch through kdeploy's ``Trainer`` under ``torch.profiler``: the ops with the most CPU time, and
   the epoch's samples/s (training only, profiler overhead included).

``--nn-dropout`` measures the MLP as it was before its dropout drew masks from random bits, with ``nn.Dropout``
(``bernoulli_`` masks)::

    python benchmarks/profile_mlp_step.py [--nn-dropout] [--data-root ../shared/data/mnist]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.profiler import ProfilerActivity, profile

from kdeploy import cpu
from kdeploy.data import Augment, load_dataset
from kdeploy.distill import Trainer, create_method
from kdeploy.models import create_model
from kdeploy.models import mlp as mlp_module
from kdeploy.recipe import ModelConfig, load_recipe

REPO = Path(__file__).resolve().parents[1]
TEACHER = {"hidden": [1200, 1200], "dropout": 0.3}
BATCH = 128


def teacher() -> nn.Module:
    return create_model("mlp", num_classes=10, in_shape=(1, 28, 28), **TEACHER)


def bare_step_ms(precision: str, steps: int = 300) -> tuple[float, float, float]:
    """Mean forward, backward and optimizer milliseconds of a bare step on random data."""
    torch.manual_seed(0)
    model = teacher()
    opt = torch.optim.Adam(model.parameters(), 1e-3, fused=True)
    x, y = torch.randn(BATCH, 1, 28, 28), torch.randint(0, 10, (BATCH,))
    totals = [0.0, 0.0, 0.0]
    for i in range(steps + 20):  # 20 untimed warm-up steps
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(model(x).float(), y)
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        if i >= 20:
            for k, dt in enumerate((t1 - t0, t2 - t1, t3 - t2)):
                totals[k] += dt
    return tuple(1e3 * t / steps for t in totals)  # type: ignore[return-value]


def profiled_epoch(root: Path, precision: str, limit: int) -> tuple[float, str]:
    """(samples/s, top-ops table) of one teacher epoch over ``limit`` training images through the Trainer."""
    recipe = load_recipe(REPO / "recipes" / "mnist_mlp.yaml", [f"train.precision={precision}"], str(root))
    data = load_dataset("mnist", root=str(root), val_size=5000, seed=0, limit=limit)
    trainer = Trainer(data, BATCH, 1000, 0, recipe.train, Augment(translate=2))
    cfg = ModelConfig(model="mlp", kwargs=TEACHER, epochs=1, optimizer="adam", lr=1e-3)
    with tempfile.TemporaryDirectory() as tmp, profile(activities=[ProfilerActivity.CPU]) as prof:
        result = trainer.fit("teacher", teacher(), cfg, create_method("ce", {}), Path(tmp) / "t.pt")
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8)
    return result.samples_per_second, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data" / "mnist")
    ap.add_argument("--limit", type=int, default=15000, help="training images of the profiled epoch")
    ap.add_argument("--nn-dropout", action="store_true", help="the MLP with nn.Dropout (bernoulli_ masks)")
    args = ap.parse_args()
    if args.nn_dropout:
        mlp_module.BitsDropout = nn.Dropout  # type: ignore[attr-defined,misc]
    form = "MLP with nn.Dropout" if args.nn_dropout else "as committed (BitsDropout)"
    print(f"CPU: {cpu.model_name()}, amx_bf16: {'yes' if cpu.has_amx() else 'no'}; {torch.get_num_threads()} "
          f"threads; {form}\n")  # fmt: skip
    print("| bare step | forward ms | backward ms | optimizer ms | total ms |\n|---|---:|---:|---:|---:|")
    for precision in ("fp32", "bf16"):
        parts = bare_step_ms(precision)
        print(f"| {precision} | " + " | ".join(f"{v:.2f}" for v in parts) + f" | {sum(parts):.2f} |")
    for precision in ("fp32", "bf16"):
        sps, table = profiled_epoch(args.data_root, precision, args.limit)
        print(f"\n{precision} teacher epoch under the profiler: {sps:,.0f} samples/s, {1e3 * BATCH / sps:.2f} ms/step")
        print(table)


if __name__ == "__main__":
    main()
