"""One training step of the demo's models at one and at two intra-op threads, and two one-thread processes at once.

Why `train.concurrent_students: auto` trains the baseline and the student side by side on two cores: when two
threads step a model less than 2x faster than one, two one-thread trainings at once beat two two-thread trainings
in turn. A step is forward, cross-entropy, backward and the optimizer on random data; the mean after 5 warm-up
steps.

    python benchmarks/thread_scaling.py            # about a minute on 2 cores

Prints a Markdown table with the CPU.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import torch
from _markdown import md_table

from kdeploy import cpu
from kdeploy.models import create_model

MODELS = {  # name: (model, kwargs, batch, optimizer, steps)
    "MLP 784-800-10, batch 128, Adam (the demo's students)": ("mlp", {"hidden": [800]}, 128, "adam", 200),
    "fast_cnn 16/32/64, batch 512, SGD, channels-last (the demo's teacher)": (
        "fast_cnn", {"widths": [16, 32, 64]}, 512, "sgd", 20),
}  # fmt: skip


def step_ms(name: str, threads: int) -> float:
    torch.set_num_threads(threads)
    model_name, kwargs, batch, opt, steps = MODELS[name]
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=10, in_shape=(1, 28, 28), **kwargs)
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    if opt == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), fused=True)
    else:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for i in range(steps + 5):
        if i == 5:
            t0 = time.perf_counter()
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return (time.perf_counter() - t0) / steps * 1000


def two_processes(name: str) -> list[float]:
    """The one-thread step time of two processes started together (each its own core's worth of work)."""
    cmd = [sys.executable, __file__, "--one", name]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    return [float(p.communicate()[0]) for p in procs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: print one model's one-thread step time
    args = ap.parse_args()
    if args.one:
        print(step_ms(args.one, 1))
        return
    rows = []
    for name in MODELS:
        one, two = step_ms(name, 1), step_ms(name, 2)
        pair = two_processes(name)
        rows.append([name, f"{one:.1f} ms", f"{two:.1f} ms", f"{one / two:.2f}x",
                     " / ".join(f"{t:.1f} ms" for t in pair), f"{2 * two / max(pair):.2f}x"])  # fmt: skip
    native = ", ".join(f for f in cpu.NATIVE_BF16 if f in cpu.flags()) or "no native bf16"
    print(f"{cpu.model_name()} ({native}), torch {torch.__version__}, fp32\n")
    headers = ["model", "1 thread", "2 threads", "2 threads' speed-up", "two 1-thread processes at once",
               "a pair side by side vs in turn"]  # fmt: skip
    print(md_table(headers, rows))


if __name__ == "__main__":
    main()
