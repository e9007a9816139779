"""Interrupted distillation with real signals to the installed ``kdeploy`` script.

One scenario, checked step by step: SIGINT once the teacher's first checkpoint exists (exit 130, a one-line
"how to resume", nothing partial), ``--resume`` killed with SIGKILL once the baseline's first checkpoint exists,
``--resume`` again to the end; the result must equal an uninterrupted run bit for bit (CPU, one thread).
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from kdeploy.distill import distill
from kdeploy.recipe import validate
from kdeploy.runs import ROLES, read_meta

from .cli_helpers import NOISE, cli_command, cli_env, run_cli
from .conftest import write_recipe

TIMING = {"seconds", "samples_per_s"}  # history columns that measure time, not training


def interrupt_recipe(mnist: Path) -> dict:
    """About 0.5 s per teacher epoch on one core: signals land mid-run, not after it."""
    return {
        "name": "interrupts",
        "seed": 3,
        "data": {"name": "mnist", "root": str(mnist), "batch_size": 64, "val_size": 500, "limit": 6000},
        "teacher": {"model": "mlp", "kwargs": {"hidden": [512], "dropout": 0.2}, "epochs": 3, "lr": 0.002},
        "student": {"model": "mlp", "kwargs": {"hidden": [32]}, "epochs": 2, "lr": 0.003},
        "distill": {"method": "kd", "temperature": 4.0, "alpha": 0.7},
        "train": {"threads": 1},
    }


@dataclass
class Signalled:
    returncode: int
    stderr: str
    seconds_after_signal: float


def run_until(args: list[str], tmp: Path, wait_for: Path, sig: signal.Signals, timeout: float = 180) -> Signalled:
    """Start ``kdeploy ARGS``; once ``wait_for`` exists, send ``sig``; wait for the exit."""
    err_path = tmp / f"stderr-{sig.name}-{time.monotonic_ns()}.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(
            [*cli_command(), *args],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=cli_env(tmp),
            # a shell's background job (`make test &`) inherits SIGINT ignored and Python keeps it ignored: give
            # the child the default disposition, so it installs its KeyboardInterrupt handler as in a terminal
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.monotonic() + timeout
        try:
            while not wait_for.exists():
                if proc.poll() is not None:
                    pytest.fail(f"kdeploy ended (exit {proc.returncode}) before {wait_for.name} appeared: too fast")
                if time.monotonic() > deadline:
                    pytest.fail(f"{wait_for} did not appear within {timeout} s")
                time.sleep(0.01)
            proc.send_signal(sig)
            t0 = time.monotonic()
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    return Signalled(code, err_path.read_text(), time.monotonic() - t0)


def check_every_file_loads(root: Path) -> list[str]:
    """Open every file of the run with its reader; returns the relative names seen."""
    checked = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.name.startswith(".") and path.suffix == ".tmp":
            pass  # a temp file of a write that was killed: never under a real name (the SIGINT test wants none)
        elif path.suffix == ".safetensors":
            assert load_file(path) and read_meta(path)["role"] == path.stem
        elif path.suffix == ".pt":
            state = torch.load(path, map_location="cpu", weights_only=True)
            assert {"epoch", "model", "optimizer", "rng"} <= set(state)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".yaml":
            yaml.safe_load(path.read_text())
        elif path.suffix == ".csv":
            assert list(csv.DictReader(path.open()))
        else:
            pytest.fail(f"unexpected file in the run folder: {path.relative_to(root)}")
        checked.append(str(path.relative_to(root)))
    return checked


@dataclass
class Scenario:
    tmp: Path
    recipe: Path
    reference: Path
    cut: Path
    sigint: Signalled | None = None
    after_sigint: list[str] | None = None
    sigkill: Signalled | None = None
    after_sigkill: list[str] | None = None
    final_stderr: str = ""


@pytest.fixture(scope="module")
def scenario(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    tmp = tmp_path_factory.mktemp("interrupts")
    recipe = write_recipe(tmp / "interrupts.yaml", interrupt_recipe(mnist_root))
    s = Scenario(tmp, recipe, tmp / "reference", tmp / "cut")
    ref = run_cli(["-q", "distill", str(recipe), "--out", str(s.reference)], tmp, timeout=300)
    assert ref.returncode == 0, ref.stderr

    base = ["distill", str(recipe), "--out", str(s.cut)]
    s.sigint = run_until(base, tmp, s.cut / "state" / "teacher.pt", signal.SIGINT)
    s.after_sigint = check_every_file_loads(s.cut)
    s.sigkill = run_until([*base, "--resume"], tmp, s.cut / "state" / "baseline.pt", signal.SIGKILL)
    s.after_sigkill = check_every_file_loads(s.cut)
    final = run_cli(["-q", *base, "--resume"], tmp, timeout=300)
    assert final.returncode == 0, final.stderr
    s.final_stderr = final.stderr
    return s


def test_sigint_exits_130_with_how_to_resume(scenario: Scenario) -> None:
    got = scenario.sigint
    assert got is not None
    assert got.returncode == 130, got.stderr
    lines = [line for line in got.stderr.splitlines() if line.strip()]
    assert lines[-1] == "interrupted: nothing partial was written; continue with the same command with --resume"
    assert not [line for line in lines if NOISE.search(line)], got.stderr
    assert got.seconds_after_signal < 10, "Ctrl-C is honoured within the current step, not at the end of the run"


def test_sigint_leaves_only_whole_files(scenario: Scenario) -> None:
    names = scenario.after_sigint or []
    assert "state/teacher.pt" in names and "recipe.yaml" in names
    assert not [n for n in names if n.endswith(".tmp") or "/." in n or n.startswith(".")], names
    assert "teacher.safetensors" not in names, "the teacher was interrupted: no final weights yet"


def test_sigkill_lands_mid_run(scenario: Scenario) -> None:
    got = scenario.sigkill
    assert got is not None and got.returncode == -signal.SIGKILL
    names = scenario.after_sigkill or []
    assert "teacher.safetensors" in names and "state/baseline.pt" in names
    assert "student.safetensors" not in names, "killed before the end of the run"


def test_resume_continues_from_the_last_epoch(scenario: Scenario) -> None:
    log = scenario.final_stderr
    assert "teacher: done in an earlier session" in log
    assert "baseline: resuming after epoch 1 of 2" in log


def test_resumed_run_equals_an_uninterrupted_run(scenario: Scenario) -> None:
    for role in ROLES:
        a = load_file(scenario.reference / f"{role}.safetensors")
        b = load_file(scenario.cut / f"{role}.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{role}.{key} differs after SIGINT + SIGKILL + resume"
    ref = json.loads((scenario.reference / "metrics.json").read_text())["models"]
    got = json.loads((scenario.cut / "metrics.json").read_text())["models"]
    for role in ROLES:
        for key in ("accuracy", "val_accuracy", "best_epoch", "params"):
            assert got[role][key] == ref[role][key], f"{role} {key}: {got[role][key]} vs {ref[role][key]}"

    def rows(root: Path) -> list[dict[str, str]]:
        with open(root / "history.csv", newline="") as fh:
            return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(fh)]

    assert rows(scenario.cut) == rows(scenario.reference)
    assert not list((scenario.cut / "state").glob("*.pt")), "resume state is removed once every model finished"


def test_sigint_while_the_students_train_side_by_side(mnist_root: Path, tmp_path: Path) -> None:
    """Ctrl-C reaches the main thread; both training threads stop within a step, and --resume finishes the pair
    as an uninterrupted side-by-side run (here in this process) does."""
    raw = interrupt_recipe(mnist_root)
    raw["train"]["threads"] = 2
    raw["teacher"] = {"model": "mlp", "kwargs": {"hidden": [64]}, "epochs": 1, "lr": 0.002}
    raw["student"] = {"model": "mlp", "kwargs": {"hidden": [128]}, "epochs": 4, "lr": 0.003}
    recipe = write_recipe(tmp_path / "pair.yaml", raw)
    threads = torch.get_num_threads()
    try:
        reference = distill(validate(raw), out=tmp_path / "reference")
    finally:
        torch.set_num_threads(threads)

    base = ["distill", str(recipe), "--out", str(tmp_path / "cut")]
    got = run_until(base, tmp_path, tmp_path / "cut" / "state" / "baseline.pt", signal.SIGINT)
    assert got.returncode == 130, got.stderr
    assert "baseline and student train side by side, 1 thread each" in got.stderr
    assert got.stderr.splitlines()[-1].startswith("interrupted: nothing partial was written"), got.stderr
    assert got.seconds_after_signal < 10
    names = check_every_file_loads(tmp_path / "cut")
    assert "baseline.safetensors" not in names and "student.safetensors" not in names, names

    final = run_cli(["-q", *base, "--resume"], tmp_path, timeout=300)
    assert final.returncode == 0, final.stderr
    for role in ROLES:
        a, b = load_file(reference.weights_path(role)), load_file(tmp_path / "cut" / f"{role}.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), f"{role} differs after SIGINT + resume side by side"
