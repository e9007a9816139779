"""Progress bars for interactive terminals: the rich implementation of ``kdeploy.progress.Reporter``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)


class _BarTask:
    """One bar: ``update`` advances it and shows the latest fields (loss, accuracy) beside it."""

    def __init__(self, bar: Progress, task_id: TaskID) -> None:
        self.bar, self.task_id = bar, task_id

    def update(self, advance: int = 1, **fields: Any) -> None:
        info = " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
        self.bar.update(self.task_id, advance=advance, info=info)


class RichReporter:
    """Messages as plain lines and tasks as transient progress bars, on ``console``. Tasks open at once (the
    baseline and the student training side by side) share one live display, a bar each."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._lock = threading.Lock()
        self._bars: Progress | None = None
        self._open = 0

    def log(self, message: str) -> None:
        self.console.print(message, highlight=False, markup=False)

    def _columns(self) -> list[ProgressColumn]:
        return [
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
        ]

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[_BarTask]:
        with self._lock:
            if self._bars is None:
                self._bars = Progress(*self._columns(), console=self.console, transient=True)
                self._bars.start()
            bars, self._open = self._bars, self._open + 1
            task_id = bars.add_task(description, total=total, info="")
        try:
            yield _BarTask(bars, task_id)
        finally:
            with self._lock:
                bars.remove_task(task_id)
                self._open -= 1
                if self._open == 0:
                    bars.stop()
                    self._bars = None
