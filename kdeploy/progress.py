"""One small reporter for progress and messages. The CLI picks the implementation (rich bars or
plain log lines); library code only calls ``progress.log`` and ``progress.task``."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol


class Task(Protocol):
    """One unit of work with a known size: ``update`` after each step, with the latest figures."""

    def update(self, advance: int = 1, **fields: Any) -> None: ...


class Reporter(Protocol):
    def log(self, message: str) -> None: ...

    def task(self, description: str, total: int) -> AbstractContextManager[Task]: ...


def _fmt(fields: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())


class _LogTask:
    def __init__(self, description: str, total: int, every: float) -> None:
        self.description, self.total, self.every = description, total, every
        self.done, self.fields, self.last = 0, {}, time.monotonic()

    def update(self, advance: int = 1, **fields: Any) -> None:
        self.done += advance
        self.fields.update(fields)
        now = time.monotonic()
        if self.every and now - self.last >= self.every:
            self.last = now
            print(f"  {self.description}: {self.done}/{self.total} {_fmt(self.fields)}", file=sys.stderr, flush=True)


class LogReporter:
    """Plain lines on stderr; ``quiet`` drops the periodic progress lines."""

    def __init__(self, quiet: bool = False, every: float = 10.0) -> None:
        self.quiet, self.every = quiet, every

    def log(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[_LogTask]:
        t = _LogTask(description, total, 0.0 if self.quiet else self.every)
        yield t


_current: Reporter = LogReporter()


def set_reporter(reporter: Reporter) -> None:
    global _current
    _current = reporter


def get_reporter() -> Reporter:
    return _current


def log(message: str) -> None:
    _current.log(message)


def task(description: str, total: int) -> AbstractContextManager[Task]:
    """``with progress.task("epoch 1/10", total=steps) as t: ... t.update(loss=0.3)``"""
    return _current.task(description, total)
