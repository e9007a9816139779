"""The trainer's levers at tiny size: schedules, per-model batch size, label smoothing, mixup/CutMix with a
consistent live teacher, the EMA of the weights (resumed bit-for-bit), data-dependent init, and the device key."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from kdeploy.data import load_dataset
from kdeploy.distill import Trainer, create_method, distill
from kdeploy.distill.distributed import pick_device
from kdeploy.distill.methods import Outputs
from kdeploy.distill.mixing import mix_batch, one_hot
from kdeploy.distill.schedule import lr_factor
from kdeploy.errors import UserError
from kdeploy.recipe import ModelConfig, TrainConfig, validate

from .conftest import tiny_recipe


def factors(cfg: ModelConfig, steps_per_epoch: int) -> list[float]:
    return [lr_factor(s, steps_per_epoch, cfg) for s in range(cfg.epochs * steps_per_epoch)]


def test_onecycle_rises_then_anneals() -> None:
    f = factors(ModelConfig(model="mlp", epochs=10, schedule="onecycle"), 10)
    peak = int(np.argmax(f))
    assert f[0] == pytest.approx(1 / 25) and peak == 30 and f[peak] == pytest.approx(1.0), "30 % warm-up by default"
    assert (np.diff(f[: peak + 1]) > 0).all() and (np.diff(f[peak:]) < 0).all()
    assert f[-1] == pytest.approx(1 / 25e4)
    f2 = factors(ModelConfig(model="mlp", epochs=10, schedule="onecycle", warmup_epochs=1), 10)
    assert int(np.argmax(f2)) == 10, "warmup_epochs sets the rise"


def test_linear_and_fractional_warmup() -> None:
    cfg = ModelConfig(model="mlp", epochs=4, schedule="linear", warmup_epochs=0.5)
    f = factors(cfg, 10)
    assert f[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0]), "half an epoch of 10 steps: 5 warm-up steps"
    assert f[5] == 1.0 and f[-1] == pytest.approx(1 / 35) and lr_factor(40, 10, cfg) == 0.0
    cosine = ModelConfig(model="mlp", epochs=2)
    assert factors(cosine, 3) == [0.5 * (1 + math.cos(math.pi * s / 6)) for s in range(6)], "cosine unchanged"


def test_new_keys_are_validated_by_key_path(mnist_root: Path) -> None:
    for key, value, message in [
        ("student__ema", 1.0, "student.ema: must be < 1"),
        ("teacher__label_smoothing", -0.1, "teacher.label_smoothing: must be >= 0"),
        ("student__batch_size", 0, "student.batch_size: must be >= 1"),
        ("student__mixup", -1, "student.mixup: must be >= 0"),
        ("train__device", "tpu", "train.device: Input should be 'auto', 'cpu' or 'cuda'"),
        ("teacher__schedule", "exp", "teacher.schedule: Input should be"),
    ]:
        with pytest.raises(UserError, match=message.replace(".", r"\.").replace("(", r"\(")):
            validate(tiny_recipe(mnist_root, **{key: value}))


def test_device_key() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert pick_device("auto") == torch.device("cpu")
        with pytest.raises(UserError, match="train.device: cuda, but torch sees no GPU"):
            pick_device("cuda")


def test_label_smoothing_and_mixed_targets_in_the_ce_term() -> None:
    from kdeploy.distill.methods.base import hard_label_ce

    gen = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(6, 10, generator=gen), torch.randint(0, 10, (6,), generator=gen)
    out = Outputs(logits, labels, target_probs=one_hot(labels, 10, 0.1))
    assert torch.allclose(hard_label_ce(out), F.cross_entropy(logits, labels, label_smoothing=0.1))
    images = torch.randn(6, 1, 8, 8, generator=gen)
    for mixup, cutmix in [(1.0, 0.0), (0.0, 1.0)]:
        mixed = mix_batch(images, labels, 10, mixup, cutmix, np.random.default_rng(0))
        assert torch.allclose(mixed.target_probs.sum(1), torch.ones(6))
        lam = float(mixed.target_probs[0, labels[0]]) if labels[0] != labels[-1] else None
        if cutmix and lam is not None:  # the box's share of the pixels is the partner's label weight
            kept = (mixed.images == images).all(1).float().mean((1, 2))[0]
            assert float(kept) == pytest.approx(lam, abs=1e-6)
        if mixup and lam is not None:
            assert torch.allclose(mixed.images, images * lam + images.flip(0) * (1 - lam), atol=1e-6)


class Spy(nn.Module):
    """A model that records the batches it sees in training mode (``when_training``) or in eval mode."""

    def __init__(self, inner: nn.Module, when_training: bool) -> None:
        super().__init__()
        self.inner, self.seen, self.when_training = inner, [], when_training

    def forward(self, x: Tensor) -> Tensor:
        if self.training == self.when_training:
            self.seen.append(x.detach().clone())
        return self.inner(x)


def tiny_data(mnist_root: Path) -> Any:
    return load_dataset("mnist", root=mnist_root, val_size=100, limit=300)


def mlp(hidden: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def test_mixup_student_and_live_teacher_see_the_same_batch(mnist_root: Path, tmp_path: Path) -> None:
    data = tiny_data(mnist_root)
    from kdeploy.data import Augment

    trainer = Trainer(data, 64, 200, 0, TrainConfig(), Augment(translate=2))
    teacher = Spy(mlp(32, 1), when_training=False).eval()
    student = Spy(mlp(8), when_training=True)
    cfg = ModelConfig(model="mlp", epochs=1, mixup=0.4, cutmix=1.0, label_smoothing=0.1, batch_size=50)
    result = trainer.fit("student", student, cfg, create_method("kd", {}), tmp_path / "s.pt", teacher=teacher)
    n = len(data.train)
    assert [len(x) for x in teacher.seen] == [50] * (n // 50) + [n % 50] * bool(n % 50), "student.batch_size: 50"
    for s, t in zip(student.seen, teacher.seen, strict=True):
        assert torch.equal(s, t), "the teacher runs on the student's augmented, mixed batch"
    assert math.isfinite(result.history[0]["loss"]) and result.history[0]["samples"] == n


@pytest.mark.parametrize(
    "student", [{"mixup": 0.2, "augment": {}}, {"augment": {"cutout": 6}}], ids=["mixup", "cutout"]
)
def test_student_with_mixup_or_cutout_uses_the_live_teacher(
    mnist_root: Path, tmp_path: Path, student: dict[str, Any]
) -> None:
    options = {f"student__{key}": value for key, value in student.items()}
    raw = tiny_recipe(mnist_root, **options, student__epochs=1, teacher__epochs=1)
    run = distill(validate(raw), out=tmp_path / "run")
    assert json.loads(run.metrics_path.read_text())["teacher_outputs"] == "per-batch"


def test_ema_weights_are_saved_and_resume_bit_for_bit(mnist_root: Path, tmp_path: Path) -> None:
    from kdeploy.progress import get_reporter, set_reporter

    from .conftest import InterruptAt

    data = tiny_data(mnist_root)
    cfg = ModelConfig(model="mlp", epochs=2, ema=0.9)

    def fit(state: Path, resume: bool = False) -> tuple[nn.Module, Any]:
        model = mlp(16)
        trainer = Trainer(data, 64, 200, 0, TrainConfig(), None)
        return model, trainer.fit("teacher", model, cfg, create_method("ce", {}), state, resume=resume)

    whole, result = fit(tmp_path / "a.pt")
    state = torch.load(tmp_path / "a.pt", weights_only=True)
    ema = {k: v for k, v in state["ema"].items() if k != "__updates__"}
    assert int(state["ema"]["__updates__"]) == 10 and state["epoch"] == 1
    assert not all(torch.equal(v, state["model"][k]) for k, v in ema.items()), "the EMA differs from the weights"
    best = ema if result.best_epoch == 2 else state["best_state"]
    assert all(torch.equal(v, best[k]) for k, v in whole.state_dict().items()), "the model keeps the EMA weights"

    quiet = get_reporter()
    set_reporter(InterruptAt("teacher epoch 2/2"))
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "b.pt")
    set_reporter(quiet)
    resumed, again = fit(tmp_path / "b.pt", resume=True)
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in whole.state_dict().items())
    untimed = [{k: v for k, v in row.items() if k not in ("seconds", "samples_per_s")} for row in again.history]
    assert untimed == [
        {k: v for k, v in row.items() if k not in ("seconds", "samples_per_s")} for row in result.history
    ]
    assert again.accuracy == result.accuracy


class WhitenedMLP(nn.Module):
    """A model with a data-dependent initialisation (as a patch-whitening first conv would have)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = mlp(8)
        self.calls: list[tuple[int, float]] = []

    def init_from_data(self, images: Tensor) -> None:
        self.calls.append((len(images), float(images.mean())))
        first = self.body[1]
        first.bias.copy_(-(first.weight @ images.flatten(1).mean(0)))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def test_init_from_data_runs_once_before_training_not_on_resume(mnist_root: Path, tmp_path: Path) -> None:
    data = tiny_data(mnist_root)
    trainer = Trainer(data, 64, 200, 0, TrainConfig(), None)
    cfg = ModelConfig(model="mlp", epochs=1)
    model = WhitenedMLP()
    trainer.fit("teacher", model, cfg, create_method("ce", {}), tmp_path / "s.pt")
    ((n, mean),) = model.calls
    assert n == len(data.train) and abs(mean) < 1.5, "all (< 5000) training images, normalised"
    again = WhitenedMLP()
    trainer.fit(
        "teacher", again, cfg.model_copy(update={"epochs": 2}), create_method("ce", {}), tmp_path / "s.pt", resume=True
    )
    assert again.calls == [], "a resumed model keeps its trained weights"


def test_tensorboard_scalars_per_model(mnist_root: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    raw = tiny_recipe(mnist_root, train__tensorboard=True, student__epochs=1, teacher__epochs=2)
    run = distill(validate(raw), out=tmp_path / "run")
    for role, epochs in (("teacher", 2), ("baseline", 1), ("student", 1)):
        events = EventAccumulator(str(run.root / "tensorboard" / role)).Reload()
        tags = set(events.Tags()["scalars"])
        assert {"loss", "loss_ce", "train_acc", "val_acc", "lr", "samples_per_s"} <= tags, (role, tags)
        assert [e.step for e in events.Scalars("loss")] == list(range(1, epochs + 1))
    assert "loss_kd" in EventAccumulator(str(run.root / "tensorboard" / "student")).Reload().Tags()["scalars"]


def test_tensorboard_missing_is_one_line(mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(UserError, match=r"train\.tensorboard: the tensorboard package is not installed; pip install"):
        distill(validate(tiny_recipe(mnist_root, train__tensorboard=True)), out=tmp_path / "run")
    assert not (tmp_path / "run").exists()
