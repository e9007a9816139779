"""Other processes on this process's cores: the busy-core sample, and the warning CPU training gives for it."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from kdeploy.cores import busy_cores, oversubscription_warning
from kdeploy.distill import distill
from kdeploy.recipe import validate
from kdeploy.runs import available_cores

from .conftest import Capture, reporting_to, tiny_recipe

needs_proc_stat = pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="busy-core sampling reads /proc/stat")


@contextmanager
def another_process_spinning(seconds: float) -> Iterator[None]:
    """One other process keeping one core busy for the block (at most ``seconds``)."""
    spin = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass"
    proc = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.3)  # let it start
        yield
    finally:
        proc.kill()
        proc.wait()


@needs_proc_stat
def test_busy_cores_sees_another_process_spinning() -> None:
    """The sample counts other processes' CPU use (not this process's, not a stale load average)."""
    with another_process_spinning(3):
        busy = busy_cores(window=1.0)
    assert busy is not None and busy >= 0.6, busy


@pytest.mark.parametrize(
    ("busy", "threads", "cores", "fits"),
    [
        (None, 2, 2, None),  # nothing known: no warning
        (0.3, 2, 2, None),  # a quiet machine
        (1.0, 2, 2, 1),  # one busy core: one thread fits
        (3.9, 2, 2, 1),  # every core busy: one thread is the least to advise
        (3.9, 1, 2, None),  # already one thread
        (2.2, 8, 8, 6),
    ],
)
def test_oversubscription_warning_names_the_thread_count_that_fits(
    busy: float | None, threads: int, cores: int, fits: int | None
) -> None:
    line = oversubscription_warning(busy, threads, cores)
    if fits is None:
        assert line is None
    else:
        assert line is not None and line.startswith(f"warning: other processes keep {busy:.1f} of {cores} cores busy")
        assert line.endswith(f"--set train.threads={fits} leaves them their share")


@needs_proc_stat
@pytest.mark.skipif(available_cores() < 2, reason="needs a core for the other process and one for training")
def test_cpu_training_warns_when_another_process_takes_a_core(mnist_root: Path, tmp_path: Path) -> None:
    """Training on every core while another process spins says so in one line, and still trains."""
    raw = tiny_recipe(mnist_root, train__threads=available_cores(), teacher__epochs=1, student__epochs=1)
    with another_process_spinning(60), reporting_to(Capture()) as log:
        run = distill(validate(raw), out=tmp_path / "run")
    warnings = [line for line in log.lines if line.startswith("warning: other processes keep")]
    assert len(warnings) == 1, log.lines
    assert run.weights_path("student").is_file()
