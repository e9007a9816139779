"""Shared fixtures: the offline MNIST files and tiny recipes that train in seconds."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from kdeploy import progress

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("KDEPLOY_DATA") or REPO.parent / "shared" / "data")  # worktrees: set KDEPLOY_DATA
MNIST = DATA / "mnist"
CIFAR10 = DATA / "cifar10"
RECIPES = REPO / "recipes"


@pytest.fixture(scope="session", autouse=True)
def _session_teacher_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Module- and session-scoped runs (and the commands they launch) keep teacher outputs out of the user's
    store, which would otherwise make a later test session read instead of compute them."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDEPLOY_TEACHER_STORE", str(tmp_path_factory.mktemp("teacher_store")))
        yield


@pytest.fixture(autouse=True)
def _own_teacher_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from an empty teacher-output store."""
    monkeypatch.setenv("KDEPLOY_TEACHER_STORE", str(tmp_path / "teacher_store"))


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    if not (MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"MNIST files not found in {MNIST}")
    return MNIST


def tiny_recipe(root: Path, **changes: Any) -> dict[str, Any]:
    """A recipe that trains tiny MLPs on a few hundred MNIST samples in a few seconds."""
    raw: dict[str, Any] = {
        "name": "tiny",
        "seed": 0,
        "data": {"name": "mnist", "root": str(root), "batch_size": 64, "val_size": 200, "limit": 600},
        "teacher": {"model": "mlp", "kwargs": {"hidden": [64]}, "epochs": 2, "lr": 0.003},
        "student": {"model": "mlp", "kwargs": {"hidden": [16]}, "epochs": 2, "lr": 0.003},
        "distill": {"method": "kd", "temperature": 4.0, "alpha": 0.7},
        "baseline": True,
    }
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return raw


def write_recipe(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def benchmark_module(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` imported as a module (benchmarks/ is scripts, not a package; its folder goes on
    ``sys.path``, as when a script runs, for the helpers the scripts share, such as ``_markdown``)."""
    if str(REPO / "benchmarks") not in sys.path:
        sys.path.append(str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


class InterruptAt:
    """A progress reporter that raises KeyboardInterrupt (a Ctrl-C) when a given message appears; installed on
    every rank of a distributed run, since they log at the same points."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def log(self, message: str) -> None:
        if message.startswith(self.marker):
            raise KeyboardInterrupt

    def task(self, description: str, total: int) -> Any:
        class _Task:
            def update(self, advance: int = 1, **fields: Any) -> None:
                pass

        return nullcontext(_Task())


class Capture:
    """A progress reporter that keeps every logged message and never interrupts."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)

    def task(self, description: str, total: int) -> Any:
        return progress.LogReporter(quiet=True).task(description, total)


@contextmanager
def reporting_to(reporter: Any) -> Iterator[Any]:
    """Install ``reporter`` as kdeploy's progress reporter for the block, then restore the one before."""
    old = progress.get_reporter()
    progress.set_reporter(reporter)
    try:
        yield reporter
    finally:
        progress.set_reporter(old)
