"""GPU sweep that chose the ``cifar10_fast`` settings: teacher epochs and the students' widths and KD loss.

A standalone loop (not kdeploy's trainer) that mirrors what the recipes ask for: the data held on the GPU as uint8
with kdeploy's own flip + translate batch augmentation, ``fast_cnn`` with its whitening init, Nesterov SGD at
lr 1.5 / momentum 0.85 / weight decay 1.33e-3 per mean loss at batch 1024, label smoothing 0.2, linear warm-up over
23 % of the steps then linear decay, bf16 autocast, channels_last; students learn from the flip-TTA teacher on the
same augmented batch (``(1 - alpha) * CE + alpha * T^2 * KL``). One seed per row: it ranks settings, it does not
measure gains (the recipes and ``bench_kd_seeds.py`` do that, with seeds).

Ran once on one H200 (93 s for all rows; results in ``benchmarks/results/cifar10_fast_sweep_h200.json``)::

    OUT=benchmarks/results python benchmarks/cifar10_fast_sweep.py DATA_ROOT   # DATA_ROOT/cifar10/cifar10-jpg.tar.gz

``--smoke`` runs every row for one epoch on 2,000 images (a CPU is fine).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kdeploy.data import Augment, load_dataset
from kdeploy.data.transforms import augment_batch, normalize
from kdeploy.models.fast_cnn import FastCNN

TEACHER, MEDIUM, SMALL, TINY = (64, 256, 256), (40, 160, 160), (32, 128, 128), (16, 48, 64)
AUGMENT = Augment(flip=True, translate=2)


class Sweep:
    def __init__(self, root: str, smoke: bool) -> None:
        self.dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        torch.backends.cudnn.benchmark = True
        self.data = load_dataset("cifar10", root=root, val_size=0, limit=2000 if smoke else None)
        self.train_x, self.train_y = self.data.train.images.to(self.dev), self.data.train.labels.to(self.dev)
        self.test_x, self.test_y = self.data.test.images.to(self.dev), self.data.test.labels.to(self.dev)
        self.results: list[dict] = []
        self.out = Path(os.environ.get("OUT", "/tmp")) / "cifar10_fast_sweep.json"

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        x = normalize(images, self.data.mean, self.data.std)
        return x.contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def accuracy(self, model: FastCNN, tta: bool) -> float:
        model.eval()
        model.tta = "flip" if tta else "none"
        correct = 0
        with torch.autocast(self.dev.type, dtype=torch.bfloat16):
            for i in range(0, len(self.test_x), 2000):
                logits = model(self.inputs(self.test_x[i : i + 2000])).float()
                correct += (logits.argmax(1) == self.test_y[i : i + 2000]).sum().item()
        model.train()
        return correct / len(self.test_x)

    def loss(self, logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor, kd: dict | None, teacher) -> torch.Tensor:
        ce = F.cross_entropy(logits, y, label_smoothing=0.2)
        if kd is None:
            return ce
        with torch.no_grad():
            t_logits = teacher(x).float()
        temp = kd["T"]
        kl = F.kl_div(F.log_softmax(logits / temp, 1), F.log_softmax(t_logits / temp, 1), log_target=True,
                      reduction="batchmean")  # fmt: skip
        return (1 - kd["alpha"]) * ce + kd["alpha"] * temp * temp * kl

    def train(self, name: str, widths, epochs: int, teacher=None, kd: dict | None = None, **kwargs) -> FastCNN:
        bs, lr, seed = 1024, 1.5, 0
        torch.manual_seed(seed)
        gen = torch.Generator(device=self.dev).manual_seed(seed)
        model = FastCNN(num_classes=10, in_shape=(3, 32, 32), widths=widths, **kwargs)
        idx = torch.randperm(len(self.train_x), generator=gen, device=self.dev)[:5000]
        model.init_from_data(normalize(self.train_x[idx], self.data.mean, self.data.std).cpu())
        model = model.to(self.dev).to(memory_format=torch.channels_last)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=lr, momentum=0.85, nesterov=True, weight_decay=1.33e-3)
        n = len(self.train_x)
        total = int(epochs * math.ceil(n / bs))
        warm = int(0.23 * total)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / (total - warm))
        )
        t0, step = time.time(), 0
        while step < total:
            perm = torch.randperm(n, generator=gen, device=self.dev)
            for i in range(0, n, bs):
                if step >= total:
                    break
                batch = perm[i : i + bs]
                x = self.inputs(augment_batch(self.train_x[batch], AUGMENT, gen))
                with torch.autocast(self.dev.type, dtype=torch.bfloat16):
                    loss = self.loss(model(x).float(), self.train_y[batch], x, kd, teacher)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
        if self.dev.type == "cuda":
            torch.cuda.synchronize()
        row = {"name": name, "widths": list(widths), "params": sum(p.numel() for p in model.parameters()),
               "epochs": epochs, "bs": bs, "lr": lr, "ls": 0.2, "seed": seed, "kd": kd,
               "seconds": round(time.time() - t0, 1), "acc_tta": self.accuracy(model, True),
               "acc": self.accuracy(model, False)}  # fmt: skip
        print(json.dumps(row), flush=True)
        self.results.append(row)
        self.out.write_text(json.dumps(self.results, indent=1))
        return model


def main() -> None:
    smoke = "--smoke" in sys.argv
    sweep = Sweep(sys.argv[1], smoke)
    ep = (lambda n: 1) if smoke else (lambda n: n)
    teacher = sweep.train("teacher A2 10ep", TEACHER, ep(10))
    sweep.train("teacher A2 shift1 10ep", TEACHER, ep(10), shift_scale=1.0)
    sweep.train("teacher B2 12ep", TEACHER, ep(12))
    sweep.train("teacher A2 14ep", TEACHER, ep(14))
    teacher.eval()
    teacher.tta = "flip"
    for p in teacher.parameters():
        p.requires_grad_(False)
    for widths in (MEDIUM, SMALL, TINY):
        sweep.train(f"student {widths} CE", widths, ep(10))
        sweep.train(f"student {widths} KD T4 a.9", widths, ep(10), teacher, {"T": 4.0, "alpha": 0.9})
        sweep.train(f"student {widths} KD T2 a.5", widths, ep(10), teacher, {"T": 2, "alpha": 0.5})


if __name__ == "__main__":
    main()
