"""Helpers for the reliability tests: run the installed CLI in a real subprocess, hash folders, check errors."""

from __future__ import annotations

import hashlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).resolve().parent / "bad_inputs"
KDEPLOY = REPO / ".venv" / "bin" / "kdeploy"


def cli_command() -> list[str]:
    """The installed console script, else ``python -m kdeploy`` with this interpreter."""
    return [str(KDEPLOY)] if KDEPLOY.is_file() else [sys.executable, "-m", "kdeploy"]


def cli_env(tmp: Path) -> dict[str, str]:
    """An environment that isolates the run: own cache dir, no $KDEPLOY_DATA, corpus user models importable."""
    env = {k: v for k, v in os.environ.items() if k != "KDEPLOY_DATA"}
    env["XDG_CACHE_HOME"] = str(tmp / "cache")
    env["PYTHONPATH"] = os.pathsep.join([str(CORPUS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONWARNINGS"] = "default"  # a stray warning on stderr must show up (and fail the one-line check)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@dataclass
class CliResult:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def run_cli(args: list[str], tmp: Path, timeout: float = 120.0, cwd: Path | None = None) -> CliResult:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [*cli_command(), *args],
        capture_output=True,
        text=True,
        env=cli_env(tmp),
        cwd=cwd or tmp,
        timeout=timeout,
        check=False,
    )
    return CliResult(args, proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - t0)


class ForkServer:
    """Client of ``tests/forkserver.py``: each ``run`` is a separate forked ``kdeploy`` process (see there)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("forkserver.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )

    def _read(self, timeout: float) -> dict | None:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the fork server died")
        return json.loads(line)

    def run(self, args: list[str], tmp: Path, timeout: float = 120.0) -> CliResult:
        assert self.proc.stdin is not None
        out, err = tmp / f".out-{time.monotonic_ns()}", tmp / f".err-{time.monotonic_ns()}"
        request = {"argv": args, "cwd": str(tmp), "env": cli_env(tmp), "stdout": str(out), "stderr": str(err)}
        t0 = time.perf_counter()
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        started = self._read(60.0)
        if started is None:
            raise RuntimeError("the fork server did not start the command")
        done = self._read(timeout)
        if done is None:
            os.kill(started["pid"], signal.SIGKILL)
            done = self._read(60.0) or {"returncode": -9}
        result = CliResult(args, done["returncode"], out.read_text(), err.read_text(), time.perf_counter() - t0)
        out.unlink()
        err.unlink()
        return result

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (and the targets of symlinks), keyed by relative path."""
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


# what must never precede the error line: tracebacks and Python warnings (kdeploy's own progress lines may)
NOISE = re.compile(r"Traceback|^\s+File \"|\w+(Warning|Error): |^\s+warnings\.warn|^error: ")


def assert_one_line_error(result: CliResult, pattern: str, code: int = 2) -> str:
    """Exit ``code``; no traceback or warning; the error is one stderr line ``error: ...`` matching ``pattern``.

    Only kdeploy's own progress lines may come before it (e.g. ``data: mnist from ...`` when the data loaded).
    """
    where = f"{' '.join(result.args)}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == code, f"exit {result.returncode}, expected {code}: {where}"
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, where
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, f"no message on stderr: {where}"
    *before, line = lines
    assert not [x for x in before if NOISE.search(x)], f"stderr holds more than progress and the error: {where}"
    assert line.startswith("error: "), where
    assert re.search(pattern, line), f"{line!r} does not match {pattern!r}"
    assert len(line) < 600, f"one readable line, not a dump ({len(line)} chars)"
    return line
