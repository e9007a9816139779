"""The trainer's device paths, checked on whatever this machine has (issue 12, CUDA training; issue 10 item 5).

On a GPU (``train.device: cuda``): the training split held on the GPU as uint8 gives the same batches as on the
CPU (same crops, flips and order per (seed, epoch)); fp32, bf16 and fp16 (GradScaler) training, channels_last, an
EMA with mixup/CutMix/label smoothing and a live teacher, a cached teacher table and ``torch.compile`` each train
to a finite loss and above chance; samples/s per setting. On the CPU: fp32 vs bf16 teacher epochs of the
MNIST-shaped MLP teacher (784-1200-1200-10, batch 128) at ``--cpu-threads`` threads, with the CPU model and AMX flag.
Data are synthetic (class-dependent patterns plus noise), so nothing needs to be downloaded.

    PYTHONPATH=. python benchmarks/train_device_check.py --out benchmarks/results/train_device_check.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from bench_distill import cpu_description, load_average  # this folder is on sys.path when run as a script

from kdeploy.data import Augment, Dataset, Split, iterate_batches
from kdeploy.distill import Trainer, create_method
from kdeploy.distill.distributed import World
from kdeploy.models import create_model
from kdeploy.recipe import ModelConfig, TrainConfig


def synthetic(n: int, shape: tuple[int, int, int], classes: int = 10, seed: int = 0) -> Dataset:
    gen = torch.Generator().manual_seed(seed)
    patterns = torch.rand(classes, *shape, generator=gen) * 160

    def split(m: int) -> Split:
        labels = torch.randint(0, classes, (m,), generator=gen)
        noise = torch.rand(m, *shape, generator=gen) * 95
        return Split((patterns[labels] + noise).to(torch.uint8).contiguous(), labels)

    c = shape[0]
    return Dataset(
        "synthetic",
        split(n),
        split(n // 10),
        split(n // 10),
        classes,
        [str(i) for i in range(classes)],
        shape,
        (0.5,) * c,
        (0.25,) * c,
        "synthetic",
    )


def same_batches_on_gpu(data: Dataset, device: torch.device) -> bool:
    aug = Augment(crop_padding=4, flip=True)
    on_gpu = Split(data.train.images.to(device), data.train.labels.to(device))
    args = {"shuffle": True, "augment": aug, "mean": data.mean, "std": data.std}
    cpu = iterate_batches(data.train, 256, generator=torch.Generator().manual_seed(7), **args)
    gpu = iterate_batches(on_gpu, 256, generator=torch.Generator().manual_seed(7), **args)
    return all(torch.equal(a[0], b[0].cpu()) and torch.equal(a[1], b[1].cpu()) for a, b in zip(cpu, gpu, strict=True))


def fit(
    data: Dataset,
    device: torch.device,
    model: str,
    kwargs: dict,
    train: dict,
    cfg: dict,
    kd: bool = False,
    cached: bool = False,
) -> dict[str, Any]:
    trainer = Trainer(
        data, 256, 1000, 0, TrainConfig(**train), Augment(crop_padding=2, flip=True), World(device=device)
    )
    shape = {"num_classes": data.num_classes, "in_shape": data.in_shape}
    torch.manual_seed(0)
    student = create_model(model, **shape, **kwargs)
    teacher = None
    if kd:
        teacher = create_model(model, **shape, **kwargs).to(device).eval()
    table = trainer.teacher_cache(teacher) if cached else None
    method = create_method("kd", {}) if kd else create_method("ce", {})
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = trainer.fit(
            "student" if kd else "teacher",
            student,
            ModelConfig(model=model, **cfg),
            method,
            Path(tmp) / "s.pt",
            teacher=None if cached else teacher,
            cached_teacher=table,
        )
    return {
        "accuracy": result.accuracy,
        "final_loss": result.history[-1]["loss"],
        "samples_per_s": round(result.samples_per_second),
        "wall_s": round(time.perf_counter() - t0, 1),
        "compile_s": round(result.compile_seconds, 1),
        "ok": math.isfinite(result.history[-1]["loss"]) and result.accuracy > 0.3,
    }


def gpu_checks(device: torch.device, n: int = 20000) -> dict[str, Any]:
    cifar = synthetic(n, (3, 32, 32))
    out: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke)",
        "same_batches": same_batches_on_gpu(cifar, device),
    }
    cnn = ("cnn", {"width": 16})
    runs = {
        "cnn fp32": (*cnn, {}, {"epochs": 2, "optimizer": "sgd", "lr": 0.05}),
        "cnn bf16 channels_last": (
            *cnn,
            {"precision": "bf16", "channels_last": True},
            {"epochs": 2, "optimizer": "sgd", "lr": 0.05},
        ),
        "cnn fp16 GradScaler": (*cnn, {"precision": "fp16"}, {"epochs": 2, "optimizer": "sgd", "lr": 0.05}),
        "cnn bf16 compile": (
            *cnn,
            {"precision": "bf16", "compile": True},
            {"epochs": 2, "optimizer": "sgd", "lr": 0.05},
        ),
    }
    for name, (model, kwargs, train, cfg) in runs.items():
        out[name] = fit(cifar, device, model, kwargs, train, cfg)
    levers = {
        "epochs": 2,
        "optimizer": "sgd",
        "lr": 0.05,
        "ema": 0.99,
        "mixup": 0.2,
        "cutmix": 1.0,
        "label_smoothing": 0.1,
        "schedule": "onecycle",
        "warmup_epochs": 0.5,
        "batch_size": 128,
    }
    out["kd live teacher, ema+mixup+cutmix+ls, bf16"] = fit(cifar, device, *cnn, {"precision": "bf16"}, levers, kd=True)
    plain = {"epochs": 2, "optimizer": "sgd", "lr": 0.05}
    out["kd cached teacher fp32"] = fit(synthetic(n, (3, 32, 32)), device, *cnn, {}, plain, kd=True, cached=True)
    mnist = synthetic(n * 11 // 4, (1, 28, 28))
    for precision in ("fp32", "bf16"):
        out[f"mlp teacher {precision}"] = fit(
            mnist, device, "mlp", {"hidden": [1200, 1200]}, {"precision": precision}, {"epochs": 1}
        )
    return out


def cpu_precision(threads: int, n: int = 20000) -> dict[str, Any]:
    torch.set_num_threads(threads)
    mnist = synthetic(n, (1, 28, 28))
    before = load_average()
    rates = {}
    for precision in ("fp32", "bf16", "fp32", "bf16"):  # twice, alternating: drift in the load shows
        trainer = Trainer(mnist, 128, 1000, 0, TrainConfig(precision=precision), Augment(translate=2))
        torch.manual_seed(0)
        teacher = create_model("mlp", num_classes=10, in_shape=(1, 28, 28), hidden=[1200, 1200], dropout=0.3)
        with tempfile.TemporaryDirectory() as tmp:
            r = trainer.fit(
                "teacher", teacher, ModelConfig(model="mlp", epochs=1), create_method("ce", {}), Path(tmp) / "t.pt"
            )
        rates.setdefault(precision, []).append(round(r.samples_per_second))
    best = {p: max(v) for p, v in rates.items()}
    return {
        "cpu": cpu_description(),
        "threads": threads,
        "samples_per_s": rates,
        "bf16_over_fp32": round(best["bf16"] / best["fp32"], 2),
        "load_before": before,
        "load_after": load_average(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--cpu-threads", type=int, default=2)
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; the device checks run on the CPU if no GPU")
    args = parser.parse_args()
    report: dict[str, Any] = {"torch": torch.__version__}
    n = 600 if args.smoke else 20000
    if torch.cuda.is_available() or args.smoke:
        report["cuda"] = gpu_checks(torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"), n)
    if not args.skip_cpu:
        report["cpu"] = cpu_precision(args.cpu_threads, n)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    failed = [k for k, v in report.get("cuda", {}).items() if isinstance(v, dict) and not v["ok"]]
    if failed or report.get("cuda", {}).get("same_batches") is False:
        print(f"FAILED: {failed or 'same_batches'}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
