"""The CE baseline and the distilled student trained side by side: two threads, each with its share of the cores.

Neither student needs the other, and small models use two cores poorly: on two cores of a first-generation EPYC
the demo's 784-800-10 MLP steps about 1.5x faster with two threads than with one, so two one-thread trainings at once
finish the pair sooner than two two-thread trainings in turn. PyTorch's kernels release the GIL and each thread
runs its own ``Job``; the shuffling, augmentation and mixing RNGs are explicit generators (``epoch_generator``),
so each model trains exactly as it would alone with the same thread count. A model that draws from the global RNG
in training (dropout, stochastic depth) would make both trainings depend on how the threads interleave:
``draws_global_rng`` finds out with one forward pass, and ``train.concurrent_students: auto`` then trains the two
one after the other.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait

import torch
from torch import Tensor, nn

from kdeploy.distill.trainer import Result, Stopped


def draws_global_rng(model: nn.Module, images: Tensor) -> bool:
    """Whether a training-mode forward pass of ``model`` on ``images`` consumes torch's global CPU RNG. A copy runs
    it, so batch-norm statistics and the RNG itself are as they were."""
    probe = copy.deepcopy(model).cpu().train()
    state = torch.get_rng_state()
    try:
        with torch.no_grad():
            probe(images.cpu())
        return not torch.equal(state, torch.get_rng_state())
    finally:
        torch.set_rng_state(state)


def threads_each(jobs: int) -> int:
    """The intra-op threads each of ``jobs`` trainings side by side gets: an equal share, at least one."""
    return max(1, torch.get_num_threads() // jobs)


def _first_error(futures: list[Future[Result]]) -> BaseException | None:
    """The error that stopped the pair: a real one before the ``Stopped`` it caused in the other thread."""
    errors = [e for f in futures if f.done() and (e := f.exception()) is not None]
    return next((e for e in errors if not isinstance(e, Stopped)), errors[0] if errors else None)


def train_side_by_side(fits: dict[str, Callable[[], Result]], stop: threading.Event) -> list[tuple[str, Result]]:
    """Run every ``fits`` callable in its own thread with ``threads_each(len(fits))`` intra-op threads; return
    ``(role, result)`` in ``fits``' order once all have finished. When one fails, or the caller is interrupted,
    ``stop`` is set (the trainer checks it every step), the others end, and the first real error is raised."""

    def work(fit: Callable[[], Result]) -> Result:
        torch.set_flush_denormal(True)  # per-thread CPU state, as the trainer sets it for the main thread
        return fit()

    threads = torch.get_num_threads()
    torch.set_num_threads(threads_each(len(fits)))
    try:
        with ThreadPoolExecutor(len(fits), thread_name_prefix="kdeploy-train") as pool:
            futures = [pool.submit(work, fit) for fit in fits.values()]
            try:
                wait(futures, return_when=FIRST_EXCEPTION)
            finally:
                if not all(f.done() and f.exception() is None for f in futures):
                    stop.set()
            error = _first_error(futures)
            if error is not None:
                raise error
        return list(zip(fits, (f.result() for f in futures), strict=True))
    finally:
        torch.set_num_threads(threads)
