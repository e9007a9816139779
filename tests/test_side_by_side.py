"""The baseline and the student trained side by side: the same models as one after the other, and failures."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from kdeploy.distill import distill
from kdeploy.distill.side_by_side import draws_global_rng, train_side_by_side
from kdeploy.distill.trainer import Result, Stopped
from kdeploy.models import create_model
from kdeploy.recipe import validate

from .conftest import Capture, reporting_to, tiny_recipe


def _result() -> Result:
    return Result(0.5, 0.5, 1, 1.0, 1.0, [])


def test_global_rng_probe_finds_dropout_and_leaves_the_model_alone() -> None:
    plain = create_model("mlp", num_classes=10, in_shape=(1, 28, 28), hidden=[16])
    dropped = create_model("mlp", num_classes=10, in_shape=(1, 28, 28), hidden=[16], dropout=0.2)
    normed = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(784), nn.Linear(784, 10))
    before = {k: v.clone() for k, v in normed.state_dict().items()}
    x = torch.randn(4, 1, 28, 28)
    rng = torch.get_rng_state()
    assert not draws_global_rng(plain, x)
    assert not draws_global_rng(normed, x)
    assert draws_global_rng(dropped, x)
    assert torch.equal(rng, torch.get_rng_state()), "the probe puts the RNG back"
    assert all(torch.equal(before[k], v) for k, v in normed.state_dict().items()), "batch-norm statistics kept"


def test_results_come_back_in_order_with_the_threads_restored() -> None:
    threads = torch.get_num_threads()
    seen: dict[str, int] = {}

    def fit(role: str, seconds: float) -> Result:
        time.sleep(seconds)
        seen[role] = torch.get_num_threads()
        return _result()

    fits = {"baseline": lambda: fit("baseline", 0.2), "student": lambda: fit("student", 0.0)}
    assert [role for role, _ in train_side_by_side(fits, threading.Event())] == ["baseline", "student"]
    assert seen == {"baseline": max(1, threads // 2), "student": max(1, threads // 2)}
    assert torch.get_num_threads() == threads


def test_a_failure_stops_the_other_thread_and_is_raised() -> None:
    stop = threading.Event()

    def fails() -> Result:
        raise ValueError("loss became nan")

    def runs_until_stopped() -> Result:
        for _ in range(1000):
            if stop.is_set():
                raise Stopped("baseline: stopped")
            time.sleep(0.01)
        raise AssertionError("never stopped")

    with pytest.raises(ValueError, match="loss became nan"):
        train_side_by_side({"baseline": runs_until_stopped, "student": fails}, stop)
    assert stop.is_set()


def _weights(run_root: Path, role: str) -> dict[str, torch.Tensor]:
    return load_file(run_root / f"{role}.safetensors")


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="side by side needs two threads")
def test_side_by_side_trains_the_models_one_after_the_other_would(mnist_root: Path, tmp_path: Path) -> None:
    """Two threads side by side (one intra-op thread each) against one thread in turn, from the same teacher
    (a teacher trained with two threads differs in its last bits from one trained with one): the same weights."""
    threads = torch.get_num_threads()
    both = tiny_recipe(mnist_root, data__augment={"translate": 1, "flip": False}, train__threads=2)
    try:
        with reporting_to(Capture()) as capture:
            side = distill(validate(both), out=tmp_path / "side")
        one = tiny_recipe(mnist_root, data__augment={"translate": 1, "flip": False}, train__threads=1)
        one["teacher"]["checkpoint"] = str(side.weights_path("teacher"))
        alone = distill(validate(one), out=tmp_path / "alone")
    finally:
        torch.set_num_threads(threads)
    assert "baseline and student train side by side, 1 thread each" in capture.lines
    for role in ("baseline", "student"):
        a, b = _weights(side.root, role), _weights(alone.root, role)
        assert all(torch.equal(a[k], b[k]) for k in a), f"{role} weights differ side by side"
    assert side.model_metrics()["student"].accuracy == alone.model_metrics()["student"].accuracy
    threads_of = {role: m.train_threads for role, m in side.model_metrics().items()}
    assert threads_of == {"teacher": 2, "baseline": 1, "student": 1}, "metrics.json records each model's threads"
    rows = [(r["model"], r["epoch"], r["loss"]) for r in side.read_history() if r["model"] != "teacher"]
    assert rows == [(r["model"], r["epoch"], r["loss"]) for r in alone.read_history() if r["model"] != "teacher"]


def test_a_student_with_dropout_trains_after_the_baseline(mnist_root: Path, tmp_path: Path) -> None:
    raw = tiny_recipe(mnist_root, train__threads=2, teacher__epochs=1, student__epochs=1)
    raw["student"]["kwargs"]["dropout"] = 0.2
    with reporting_to(Capture()) as capture:
        distill(validate(raw), out=tmp_path / "run")
    assert any("one after the other: the student draws from torch's global RNG" in line for line in capture.lines)
    raw["train"]["concurrent_students"] = False
    with reporting_to(Capture()) as capture:
        distill(validate(raw), out=tmp_path / "off")
    assert not any("side by side" in line or "one after the other" in line for line in capture.lines)


def test_students_with_dropout_depend_on_the_seed_alone(mnist_root: Path, tmp_path: Path) -> None:
    """Dropout draws from torch's global RNG. Each student starts from it seeded afresh, so the baseline is the same
    whatever the teacher, and a student trained alone (``baseline: false``) is the one trained after its baseline."""
    raw = tiny_recipe(mnist_root, teacher__epochs=1, student__epochs=1, train__concurrent_students=False)
    raw["student"]["kwargs"]["dropout"] = 0.2
    raw["teacher"]["kwargs"]["dropout"] = 0.2  # its training draws from the same RNG, more with more epochs
    first = distill(validate(raw), out=tmp_path / "first")
    raw["teacher"]["epochs"] = 2
    other_teacher = distill(validate(raw), out=tmp_path / "other_teacher")
    raw["teacher"] = {"checkpoint": str(first.weights_path("teacher"))}
    raw["baseline"] = False
    alone = distill(validate(raw), out=tmp_path / "alone")
    for role, a, b in (("baseline", first, other_teacher), ("student", first, alone)):
        wa, wb = _weights(a.root, role), _weights(b.root, role)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), f"{role} weights differ"
    student, teacher_changed = _weights(first.root, "student"), _weights(other_teacher.root, "student")
    assert not all(torch.equal(student[k], teacher_changed[k]) for k in student), "the student does see its teacher"


def test_progress_bars_of_two_threads_share_one_live_display() -> None:
    """rich allows one live display per console: tasks open at once get a bar each in it, and it ends with them."""
    import io

    from rich.console import Console

    from kdeploy.cli.reporter import RichReporter

    out = io.StringIO()
    reporter = RichReporter(Console(file=out, force_terminal=True, width=100))
    both_open = threading.Barrier(2, timeout=10)

    def train(role: str) -> None:
        with reporter.task(f"{role} epoch 1/1", total=3) as bar:
            both_open.wait()
            for _ in range(3):
                bar.update(1, loss=0.5)
            both_open.wait()

    threads = [threading.Thread(target=train, args=(role,)) for role in ("baseline", "student")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    assert reporter._bars is None and reporter._open == 0, "the live display ends with its last task"
    assert "baseline epoch 1/1" in out.getvalue() and "student epoch 1/1" in out.getvalue()
