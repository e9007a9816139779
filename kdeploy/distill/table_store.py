"""The teacher-output table on disk, so that it is computed once per teacher and dataset, not once per run.

A run that distils from a given teacher checkpoint (the next seed, another temperature, another student) needs
the very table an earlier run computed: on one fp32 AVX2 core the CIFAR-10 flip-view table took 14 of a KD
run's 67 minutes, and reading it takes 0.1 s. The file is named by a digest of everything the table depends on:
the teacher's class and weights, the images it covers (``Dataset.table_pool``: every seed's train and val
samples together, so the seeds of one dataset share one table) and their normalisation, the views, the precision
and memory format, the device kind, the batch size and the torch version. A changed input gives a new name,
never a stale table.

Files live in ``$KDEPLOY_TEACHER_STORE``, else in ``<user cache>/teacher_outputs`` (``$XDG_CACHE_HOME/kdeploy``
or ``~/.cache/kdeploy``), as safetensors written atomically, so a killed run leaves no truncated table behind.
``train.teacher_cache: memory`` keeps the table in memory only.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from kdeploy import atomic, progress
from kdeploy.data import Dataset, Split
from kdeploy.data.roots import user_cache_dir
from kdeploy.distill.distributed import World
from kdeploy.errors import UserError

STORE_ENV = "KDEPLOY_TEACHER_STORE"


def store_dir() -> Path:
    """``$KDEPLOY_TEACHER_STORE``, else ``teacher_outputs`` in the user cache."""
    return Path(os.environ.get(STORE_ENV) or user_cache_dir() / "teacher_outputs").expanduser()


@dataclass(frozen=True)
class TableSpec:
    """How a table is computed, beyond the teacher and the data: its views (mirrored or not, shifted by up to
    ``shift`` pixels), the precision, memory format, device kind and batch size."""

    flips: bool
    precision: str
    channels_last: bool
    device: str
    batch_size: int
    shift: int = field(default=0, repr=False)  # in the key only when set: tables stored before it keep their names


def _tensor_digest(h: hashlib._Hash, t: Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy())  # the raw bytes, without a copy


def table_key(teacher: nn.Module, images: Split, data: Dataset, spec: TableSpec) -> str:
    """A digest of every input the values of the table over ``images`` depend on (see the module doc)."""
    h = hashlib.sha256()
    model = f"{type(teacher).__module__}.{type(teacher).__qualname__}"
    h.update(f"{model}|{torch.__version__}|{spec}|{data.mean}|{data.std}".encode())
    if spec.shift:
        h.update(f"|shift={spec.shift}".encode())
    for name, t in sorted(teacher.state_dict().items()):
        h.update(name.encode())
        _tensor_digest(h, t)
    _tensor_digest(h, images.images)
    return h.hexdigest()[:32]


def stored_table(
    teacher: nn.Module, images: Split, data: Dataset, spec: TableSpec, world: World, compute: Callable[[], Tensor]
) -> tuple[Tensor, Path | None]:
    """The table over ``images`` from the store when every rank finds it there, else ``compute()`` (rank 0 then
    stores it). Returns the table (on the training device) and the file it was read from, or None when computed."""
    path = store_dir() / f"{table_key(teacher, images, data, spec)}.safetensors"
    found = path.is_file()
    if world.distributed:  # every rank loads, or every rank computes (the computation is a collective)
        found = bool(world.sum(torch.tensor([float(found)])).item() == world.size)
    if found:
        try:
            return load_file(str(path))["table"].to(world.device), path
        except (SafetensorError, KeyError, OSError):  # damaged or foreign: recompute it and replace the file
            if world.distributed:
                raise
    table = compute()
    if world.main:
        try:
            atomic.write_with(path, lambda tmp: save_file({"table": table.detach().cpu().contiguous()}, str(tmp)))
            progress.log(f"teacher outputs kept in {path} for later runs from this teacher and data")
        except UserError as exc:  # a read-only or full cache folder costs later runs time, not this run
            progress.log(f"warning: {exc} (the teacher outputs are not kept for later runs)")
    return table, None
