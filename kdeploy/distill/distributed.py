"""torch.distributed for the trainer: where a process sits (``World``), the few collectives the loop needs, and the
``--nproc`` launcher that starts torchrun for the user.

Under ``torchrun`` (``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` set) ``world_from_env`` joins the process
group: gloo on CPU, nccl on CUDA (one GPU per local rank). Without them it is a single process and no collective runs.
"""

from __future__ import annotations

import atexit
import logging
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from kdeploy import progress
from kdeploy.errors import UserError

TORCHRUN_VARS = ("TORCHELASTIC_RUN_ID", "LOCAL_RANK")


@dataclass
class World:
    """Where this process sits in a (possibly distributed) run."""

    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None  # "gloo" or "nccl" once a process group is up

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def _comm(self, t: Tensor) -> Tensor:
        """A copy of ``t`` on the device the backend reduces on (nccl: the GPU, gloo: the CPU)."""
        target = self.device if self.backend == "nccl" else torch.device("cpu")
        return t.detach().to(target, copy=True)

    def sum(self, t: Tensor) -> Tensor:
        """Element-wise sum over all ranks (a new tensor on ``t``'s device); the tensor itself when alone."""
        if not self.distributed:
            return t
        buf = self._comm(t)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        return buf.to(t.device)

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on at least one (so all ranks take the same branch)."""
        if not self.distributed:
            return flag
        return bool(self.sum(torch.tensor([1.0 if flag else 0.0])).item() > 0)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group at the end of a command that succeeded, once every rank is there. ``distill``
        and ``distill_seeds`` already end on a barrier after their last write; this one also waits for what rank 0
        prints after them, so no rank destroys the group while another is still in the command (a test rank once
        died with SIGABRT around teardown, cause not found). ``_shutdown`` (atexit) stays the exit of a failed
        command, where a barrier could wait on a rank that is gone."""
        if self.distributed and dist.is_initialized():
            dist.barrier()
            _shutdown()

    def wrap(self, module: nn.Module) -> nn.Module:
        """DistributedDataParallel around ``module`` when distributed: it broadcasts rank 0's parameters and
        buffers now, and averages gradients during every backward pass."""
        if not self.distributed:
            return module
        if not any(p.requires_grad for p in module.parameters()):
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)


class SilentReporter:
    """The reporter of ranks other than 0: the main rank alone prints progress."""

    def log(self, message: str) -> None:
        pass

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Any]:
        class _Task:
            def update(self, advance: int = 1, **fields: Any) -> None:
                pass

        yield _Task()


def _shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def under_torchrun() -> bool:
    return any(v in os.environ for v in TORCHRUN_VARS)


def pick_device(prefer: str = "auto", local_rank: int = 0) -> torch.device:
    """``train.device``: ``auto`` takes this rank's GPU when torch sees one, else the CPU."""
    cuda = torch.cuda.is_available()
    if prefer == "cuda" and not cuda:
        raise UserError(
            "train.device: cuda, but torch sees no GPU (torch.cuda.is_available() is False); "
            "use train.device=auto or train.device=cpu"
        )
    return torch.device("cuda", local_rank) if cuda and prefer != "cpu" else torch.device("cpu")


def world_from_env(prefer: str = "auto") -> World:
    """The World of this process on the device ``prefer`` picks (``train.device``), joining torchrun's process
    group on first call (idempotent): nccl when the device is a GPU, gloo on the CPU."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    device = pick_device(prefer, local)
    cuda = device.type == "cuda"
    if size <= 1:
        return World(0, 1, device, None)
    backend = "nccl" if cuda else "gloo"
    if cuda and local >= torch.cuda.device_count():
        raise UserError(
            f"local rank {local} has no GPU of its own ({torch.cuda.device_count()} visible); "
            f"start at most {torch.cuda.device_count()} processes per machine"
        )
    if not dist.is_initialized():
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise UserError(
                f"WORLD_SIZE={size} but {' and '.join(missing)} not set; launch with "
                "`torchrun --nproc_per_node N -m kdeploy distill ...` or `kdeploy distill ... --nproc N`"
            )
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group(backend, rank=rank, world_size=size)
        atexit.register(_shutdown)
    return World(rank, size, device, dist.get_backend())


def torchrun_command(nproc: int, args: list[str]) -> list[str]:
    """The command ``--nproc`` runs: torchrun's own launcher (``torch.distributed.run``) behind a thin wrapper that
    turns a failed worker into its exit status (the worker already printed its one-line error) instead of
    torchrun's traceback. ``--standalone``: one machine, a free port."""
    wrapper = f"import sys; from {__name__} import torchrun_main; sys.exit(torchrun_main(sys.argv[1:]))"
    return [sys.executable, "-c", wrapper, "--standalone", f"--nproc_per_node={nproc}", "-m", "kdeploy", *args]


def launch(nproc: int, args: list[str]) -> int:
    """Run ``kdeploy ARGS`` in ``nproc`` processes under torchrun; returns the exit status."""
    if nproc < 1:
        raise UserError(f"--nproc {nproc}: must be >= 1")
    if under_torchrun():
        raise UserError("--nproc: already running under torchrun; drop --nproc (torchrun sets the process count)")
    env = dict(os.environ)
    # torchrun would set 1 thread per process (and print a banner about it); share the cores out instead
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    cmd = torchrun_command(nproc, args)
    same = shlex.join(["torchrun", *cmd[3:]])
    progress.log(f"starting {nproc} processes (OMP_NUM_THREADS={env['OMP_NUM_THREADS']}), as with: {same}")
    try:
        return subprocess.run(cmd, env=env, check=False).returncode
    except KeyboardInterrupt:
        return 130


def torchrun_main(argv: list[str]) -> int:
    """``torchrun ARGV``; a failed worker gives its exit status, a signal 128 + its number."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # failures: one line below
    try:
        run(parse_args(argv))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        progress.log(f"kdeploy: rank {rank} failed with exit status {failure.exitcode}")
        return failure.exitcode if failure.exitcode > 0 else 1
    except (SignalException, KeyboardInterrupt) as exc:
        return 128 + int(getattr(exc, "sigval", 2))
    return 0
