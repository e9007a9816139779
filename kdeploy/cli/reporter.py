"""Progress bars for interactive terminals: the rich implementation of ``kdeploy.progress.Reporter``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn


class _BarTask:
    """One bar: ``update`` advances it and shows the latest fields (loss, accuracy) beside it."""

    def __init__(self, bar: Progress, task_id: TaskID) -> None:
        self.bar, self.task_id = bar, task_id

    def update(self, advance: int = 1, **fields: Any) -> None:
        info = " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
        self.bar.update(self.task_id, advance=advance, info=info)


class RichReporter:
    """Messages as plain lines and tasks as transient progress bars, on ``console``."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def log(self, message: str) -> None:
        self.console.print(message, highlight=False, markup=False)

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[_BarTask]:
        columns = [
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
        ]
        with Progress(*columns, console=self.console, transient=True) as bar:
            yield _BarTask(bar, bar.add_task(description, total=total, info=""))
