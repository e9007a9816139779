"""Real 2-process DDP runs (gloo on CPU), the torchrun launcher, and mixed precision.

The spawned workers record, from inside the real training loop, the sample indices each rank trained on, the
final weights each rank holds, and every file each rank wrote; the tests then compare the two ranks.
"""

from __future__ import annotations

import faulthandler
import json
import os
import socket
import subprocess
import sys
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DistributedSampler

from kdeploy.data import load_dataset, shard_indices
from kdeploy.distill import distill
from kdeploy.distill import evaluation as evaluation_module
from kdeploy.distill import trainer as trainer_module
from kdeploy.distill.trainer import Trainer
from kdeploy.errors import UserError
from kdeploy.recipe import TrainConfig, validate

from .conftest import REPO, InterruptAt, tiny_recipe, write_recipe

ROLES = ("teacher", "baseline", "student")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ddp_recipe(mnist: Path) -> dict[str, Any]:
    """600 train samples (300 per rank), augmentation and dropout, FitNet (a learned regressor) for the student."""
    raw = tiny_recipe(mnist, teacher__epochs=2, student__epochs=3, data__augment={"translate": 1})
    raw["teacher"]["kwargs"]["dropout"] = 0.2
    raw["distill"] = {"method": "fitnet", "student_layer": "fc1", "teacher_layer": "fc1", "kd_weight": 0.5}
    return raw


def _join(rank: int, port: int) -> Any:
    """Join a 2-process group through the same environment variables torchrun sets; this rank's World."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank))
    os.environ["WORLD_SIZE"] = "2"
    faulthandler.enable(all_threads=True)  # a rank that aborts in C++ prints every thread's Python stack
    torch.set_num_threads(1)
    from kdeploy.distill.distributed import world_from_env

    return world_from_env()


def _leave(world: Any) -> None:
    """Leave the group (``World.close``) and end this spawned rank without interpreter finalization: every record
    is saved by now. A rank once died with SIGABRT in CI after its last results, cause not found; Python's teardown
    beside gloo's threads is the candidate this exit removes (``distill`` already ends on a barrier, so the one in
    ``close`` adds nothing here). A rank that fails earlier still raises, and the fixture still fails."""
    world.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _worker(rank: int, port: int, work: str, mnist: str) -> None:
    """One rank of a full distillation run."""
    world = _join(rank, port)
    from kdeploy import atomic, progress

    record: dict[str, Any] = {"shards": [], "writes": [], "states": {}, "world": (world.rank, world.size)}

    real_iterate = trainer_module.iterate_batches_with_views

    def iterate(split: Any, batch_size: int, **kw: Any) -> Any:
        indices: list[torch.Tensor] = []
        if kw.get("shuffle"):
            record["shards"].append(indices)  # one list per epoch of each model, in training order
        for x, y, idx, view in real_iterate(split, batch_size, **kw):
            indices.append(idx.clone())
            yield x, y, idx, view

    trainer_module.iterate_batches_with_views = iterate

    real_atomic_path = atomic.atomic_path

    def atomic_path(path: Any) -> Any:
        record["writes"].append(str(path))
        return real_atomic_path(path)

    atomic.atomic_path = atomic_path

    real_fit = trainer_module.Trainer.fit

    def fit(self: Any, role: str, model: Any, cfg: Any, method: Any, *a: Any, **kw: Any) -> Any:
        result = real_fit(self, role, model, cfg, method, *a, **kw)
        record["states"][role] = {
            "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "method": {k: v.detach().clone() for k, v in method.state_dict().items()},
        }
        return result

    trainer_module.Trainer.fit = fit

    raw = ddp_recipe(Path(mnist))
    distill(validate(raw), out=Path(work) / "full", world=world)
    torch.save(record, Path(work) / f"rank{rank}.pt")

    # the same run, interrupted during the student's 3rd epoch on both ranks, then resumed
    quiet = progress.get_reporter()
    progress.set_reporter(InterruptAt("student epoch 2/3"))
    with suppress(KeyboardInterrupt):
        distill(validate(raw), out=Path(work) / "cut", world=world)
    progress.set_reporter(quiet)
    distill(validate(raw), out=Path(work) / "cut", resume=True, world=world)
    _leave(world)


@pytest.fixture(scope="module")
def ddp(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("ddp")
    torch.multiprocessing.spawn(_worker, args=(free_port(), str(work), str(mnist_root)), nprocs=2, join=True)
    return work


def _records(work: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    return tuple(torch.load(work / f"rank{r}.pt", weights_only=False) for r in (0, 1))  # type: ignore[return-value]


def test_ranks_train_on_disjoint_shards_covering_each_epoch(ddp: Path) -> None:
    r0, r1 = _records(ddp)
    assert r0["world"] == (0, 2) and r1["world"] == (1, 2)
    n = json.loads((ddp / "full" / "metrics.json").read_text())["dataset"]["train"]
    assert n == 600
    epochs = 2 + 3 + 3  # teacher, baseline, student
    assert len(r0["shards"]) == len(r1["shards"]) == epochs
    for e, (a, b) in enumerate(zip(r0["shards"], r1["shards"], strict=True)):
        ia, ib = torch.cat(a), torch.cat(b)
        assert len(ia) == len(ib) == n // 2, "the samples are split evenly over 2 ranks"
        assert not set(ia.tolist()) & set(ib.tolist()), f"epoch-run {e}: ranks shared samples"
        assert sorted(ia.tolist() + ib.tolist()) == list(range(n)), "together the ranks see every sample once"
    assert not torch.equal(torch.cat(r0["shards"][0]), torch.cat(r0["shards"][1])), "reshuffled every epoch"


def test_gradients_are_synchronised(ddp: Path) -> None:
    r0, r1 = _records(ddp)
    for role in ROLES:
        a, b = r0["states"][role], r1["states"][role]
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), f"{role} weights differ by rank"
    reg0, reg1 = r0["states"]["student"]["method"], r1["states"]["student"]["method"]
    assert reg0 and all(torch.equal(reg0[k], reg1[k]) for k in reg0), "FitNet's regressor is averaged too"
    saved = load_file(ddp / "full" / "student.safetensors")
    assert all(torch.equal(saved[k], r1["states"]["student"]["model"][k]) for k in saved)


def test_only_rank_zero_writes(ddp: Path) -> None:
    r0, r1 = _records(ddp)
    assert r1["writes"] == [], f"rank 1 wrote {r1['writes'][:3]}"
    written = {Path(p).name for p in r0["writes"]}
    assert {"recipe.yaml", "metrics.json", "history.csv", "student.safetensors", "student.pt"} <= written


def test_run_records_world_and_global_counts(ddp: Path) -> None:
    metrics = json.loads((ddp / "full" / "metrics.json").read_text())
    env = json.loads((ddp / "full" / "environment.json").read_text())
    assert metrics["world_size"] == env["world_size"] == 2 and metrics["backend"] == env["backend"] == "gloo"
    history = [r for r in (ddp / "full" / "history.csv").read_text().splitlines()[1:]]
    header = (ddp / "full" / "history.csv").read_text().splitlines()[0].split(",")
    samples = [int(row.split(",")[header.index("samples")]) for row in history]
    assert samples == [600] * 8, "epoch counts are summed over both ranks"
    for m in metrics["models"].values():
        assert 0.0 <= m["last_accuracy"] <= 1.0 and m["samples_per_second"] > 0


def test_distributed_resume_reaches_the_same_weights(ddp: Path) -> None:
    for role in ROLES:
        a, b = load_file(ddp / "full" / f"{role}.safetensors"), load_file(ddp / "cut" / f"{role}.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), f"{role} differs after a distributed resume"
    assert not list((ddp / "cut" / "state").glob("*.pt"))


def _cache_worker(rank: int, port: int, work: str) -> None:
    world = _join(rank, port)
    data, teacher = _cache_inputs()
    calls: list[int] = []
    real = evaluation_module.predict_logits

    def counting(model: Any, split: Any, *a: Any, **kw: Any) -> Any:
        calls.append(len(split))
        return real(model, split, *a, **kw)

    evaluation_module.predict_logits = counting
    cache = Trainer(data, 8, 4, 0, TrainConfig(), None, world=world).teacher_cache(teacher)
    torch.save({"cache": cache, "calls": calls}, Path(work) / f"cache{rank}.pt")
    _leave(world)


def _cache_inputs() -> tuple[Any, torch.nn.Module]:
    from kdeploy.data import Dataset, Split

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (37, 1, 4, 4), generator=gen, dtype=torch.uint8)
    split = Split(images, torch.zeros(37, dtype=torch.int64))
    data = Dataset(
        name="toy", train=split, val=split, test=split, num_classes=3, classes=["a", "b", "c"], in_shape=(1, 4, 4),
        mean=(0.5,), std=(0.25,), source="generated",
    )  # fmt: skip
    torch.manual_seed(0)
    return data, torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))


def test_teacher_cache_is_split_across_ranks(tmp_path: Path) -> None:
    """Each rank computes half the cached teacher logits; both end with the whole table, equal to one process's."""
    torch.multiprocessing.spawn(_cache_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"cache{r}.pt") for r in (0, 1))
    data, teacher = _cache_inputs()
    alone = Trainer(data, 8, 4, 0, TrainConfig(), None).teacher_cache(teacher)
    assert torch.equal(r0["cache"], r1["cache"])  # both ranks hold the same table, bit for bit
    torch.testing.assert_close(r0["cache"], alone, rtol=1e-6, atol=1e-6)  # other batch splits: last-bit changes
    assert r0["calls"] == [18] and r1["calls"] == [19]


def test_shards_match_distributed_sampler() -> None:
    for n in (10, 11, 400):
        for world in (2, 3):
            for rank in range(world):
                sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=7)
                sampler.set_epoch(3)
                gen = torch.Generator().manual_seed(7 + 3)  # DistributedSampler seeds with seed + epoch
                ours = shard_indices(n, shuffle=True, generator=gen, shard=(rank, world))
                assert ours.tolist() == list(sampler), (n, world, rank)


def test_nproc_launches_torchrun_and_only_rank_zero_prints(mnist_root: Path, tmp_path: Path) -> None:
    raw = tiny_recipe(mnist_root, teacher__epochs=1, student__epochs=1)
    recipe = write_recipe(tmp_path / "tiny.yaml", raw)
    out = tmp_path / "multi"
    cmd = [sys.executable, "-m", "kdeploy", "-q", "distill", str(recipe), "--nproc", "2", "--seeds", "0,1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*cmd, "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("teacher epoch 1/1") == 2, "one line per seed: rank 1 prints nothing"
    assert proc.stdout.count("over seeds 0, 1") == 1
    for seed in (0, 1):
        metrics = json.loads((out / f"seed{seed}" / "metrics.json").read_text())
        assert metrics["world_size"] == 2 and metrics["backend"] == "gloo" and metrics["seed"] == seed
    assert json.loads((out / "seeds.json").read_text())["summary"]["student"]["accuracy"]["n"] == 2

    again = subprocess.run([*cmd, "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "already holds a multi-seed run" in again.stderr
    assert "Traceback" not in again.stderr, "refused before any process starts"


# ---- mixed precision --------------------------------------------------------------------------------------
def _fit_once(mnist: Path, tmp: Path, **train: Any) -> dict[str, Any]:
    raw = tiny_recipe(mnist, teacher__epochs=1, baseline=False)
    raw["train"] = train
    run = distill(validate(raw), out=tmp / "_".join(f"{k}{v}" for k, v in train.items()))
    return {"metrics": run.read_metrics(), "history": run.read_history()}


def test_bf16_autocast_trains_close_to_fp32(mnist_root: Path, tmp_path: Path) -> None:
    fp32 = _fit_once(mnist_root, tmp_path, precision="fp32")
    bf16 = _fit_once(mnist_root, tmp_path, precision="bf16")
    l32 = [float(r["loss"]) for r in fp32["history"]]
    l16 = [float(r["loss"]) for r in bf16["history"]]
    assert l32 != l16, "bf16 autocast changes the arithmetic"
    assert all(abs(a - b) < 0.05 * a for a, b in zip(l32, l16, strict=True)), (l32, l16)
    for role in ("teacher", "student"):
        a, b = fp32["metrics"].models[role].accuracy, bf16["metrics"].models[role].accuracy
        assert abs(a - b) < 0.05, (role, a, b)


def test_channels_last_cnn_in_bf16(mnist_root: Path, tmp_path: Path) -> None:
    from kdeploy.distill import Trainer, create_method
    from kdeploy.models import build_model
    from kdeploy.recipe import ModelConfig, TrainConfig

    data = load_dataset("mnist", root=mnist_root, val_size=100, limit=300)
    spec = {"name": "cnn", "target": None, "kwargs": {"width": 4}, "num_classes": 10, "in_shape": [1, 28, 28]}
    model = build_model(spec)
    train = TrainConfig(precision="bf16", channels_last=True)
    trainer = Trainer(data, 64, 200, 0, train, None)
    cfg = ModelConfig(model="cnn", epochs=1, lr=0.003)
    result = trainer.fit("teacher", model, cfg, create_method("ce", {}), tmp_path / "state.pt")
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.isfinite(torch.tensor(float(r["loss"]))) for r in result.history)
    assert 0.0 <= result.accuracy <= 1.0 and result.last_accuracy == result.accuracy, "1 epoch: best is last"


def test_fp16_on_cpu_is_refused_before_writing(mnist_root: Path, tmp_path: Path) -> None:
    raw = tiny_recipe(mnist_root)
    raw["train"] = {"precision": "fp16"}
    with pytest.raises(UserError, match="fp16 needs a CUDA GPU.*use train.precision=auto"):
        distill(validate(raw), out=tmp_path / "r")
    assert not (tmp_path / "r").exists()
