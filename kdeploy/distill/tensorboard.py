"""``train.tensorboard: true``: per-epoch scalars of each model under ``<run>/tensorboard/<model>``.

Written with ``torch.utils.tensorboard`` (the optional ``kdeploy[tensorboard]`` extra). Event files are appended to
while training, the one kind of file in a run folder that does not arrive by rename; they are only a view.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from kdeploy.errors import UserError


def check_available() -> None:
    if importlib.util.find_spec("tensorboard") is None:
        raise UserError(
            "train.tensorboard: the tensorboard package is not installed; "
            "pip install 'kdeploy[tensorboard]' (or tensorboard), or set train.tensorboard=false"
        )


class EpochScalars:
    """One model's writer: every history column that is a number (each loss term, train/val accuracy, lr,
    samples/s) as ``<column>`` at step = epoch."""

    SKIP = frozenset({"model", "epoch", "seconds", "samples"})

    def __init__(self, folder: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        folder.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(folder))

    def write(self, row: dict[str, Any]) -> None:
        for key, value in row.items():
            if key not in self.SKIP and isinstance(value, int | float):
                self.writer.add_scalar(key, value, global_step=int(row["epoch"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
