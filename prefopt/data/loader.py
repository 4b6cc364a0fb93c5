"""Training batches read ahead by DataLoader workers, in the order the step fixes.

Which rows a micro-step trains is a function of (step, micro-step, process)
alone: the sampler (a seeded permutation per epoch) maps a global sample
position to row indices. This module does not change that; it moves the
reading off the training loop. A ``torch.utils.data.DataLoader`` walks the
micro-steps this process will train, from the step it starts (or resumes) at,
and its workers read the rows of the next ``workers * prefetch`` micro-steps
while the accelerator computes. Batches come back in sampler order, so a run
with workers, without them, or resumed part way reads exactly the same rows.
"""

from __future__ import annotations

import atexit
import multiprocessing.util  # noqa: F401  (registers its exit hook before ours: see _stop_all_workers)
import os
import signal
import weakref
from pathlib import Path
from typing import Any, Iterator, Protocol

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from prefopt.errors import PrefoptError


class PositionSampler(Protocol):
    def take(self, position: int, count: int) -> list[int]: ...


def sample_position(step: int, micro: int, rank: int, world: int, batch_size: int, grad_accum: int) -> int:
    """The global position of a process's batch: every process and micro-step gets its own slice."""
    return ((step * grad_accum + micro) * world + rank) * batch_size


class MicroSteps(Sampler):
    """(step, micro, row indices) of every micro-step this process trains, from ``start`` on."""

    def __init__(self, sampler: PositionSampler, batch_size: int, grad_accum: int, rank: int, world: int,
                 start: int, max_steps: int):
        self.sampler = sampler
        self.batch_size, self.grad_accum = batch_size, grad_accum
        self.rank, self.world = rank, world
        self.start, self.max_steps = start, max_steps

    def __iter__(self) -> Iterator[tuple[int, int, list[int]]]:
        for step in range(self.start, self.max_steps):
            for micro in range(self.grad_accum):
                position = sample_position(step, micro, self.rank, self.world, self.batch_size, self.grad_accum)
                yield step, micro, self.sampler.take(position, self.batch_size)

    def __len__(self) -> int:
        return max(self.max_steps - self.start, 0) * self.grad_accum


class _Batches(Dataset):
    """Reads the rows of one micro-step (in a worker, or inline without workers)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __getitem__(self, item: tuple[int, int, list[int]]) -> tuple[int, int, Any]:
        step, micro, indices = item
        try:
            return step, micro, self.dataset.batch(indices)
        except PrefoptError as exc:
            # Handed back as a value: a DataLoader re-raises worker exceptions wrapped in a
            # multi-line traceback, and a damaged shard must read as one `error:` line.
            return step, micro, exc


def _init_worker(worker_id: int) -> None:
    """Leave stopping to the main process, and the run's locks to it alone.

    SIGTERM / SIGINT sent to the whole process group (Ctrl-C, a scheduler, a
    launcher) must reach the main process only: it finishes the step, writes its
    checkpoint and then ends the workers. A worker killed first would fail the
    step instead.

    A flock belongs to the open file, which fork() shares: a worker keeping its
    copy would keep the run directory locked after its main process is killed,
    until the worker notices (seconds later). Closing the copy (not unlocking,
    which would unlock the parent too) leaves the main process the only holder.
    """
    from prefopt.locking import is_lock_file

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)

    fds = Path("/proc/self/fd")
    if not fds.is_dir():  # not Linux: workers are spawned there, and inherit no files
        return
    for entry in list(fds.iterdir()):
        try:
            target = os.readlink(entry)
        except OSError:
            continue
        if is_lock_file(os.path.basename(target)):
            os.close(int(entry.name))


class BatchLoader:
    """``batch(step, micro)`` in training order; the rows are read ahead when ``workers`` > 0."""

    def __init__(self, dataset, sampler: PositionSampler, *, batch_size: int, grad_accum: int, rank: int,
                 world: int, start: int, max_steps: int, workers: int = 0, prefetch: int = 2):
        steps = MicroSteps(sampler, batch_size, grad_accum, rank, world, start, max_steps)
        self._loader = DataLoader(
            _Batches(dataset), sampler=steps, batch_size=None, num_workers=workers,
            prefetch_factor=prefetch if workers else None,
            pin_memory=torch.cuda.is_available(),  # page-locked batches copy to the GPU asynchronously
            worker_init_fn=_init_worker,
        )
        self._batches: Iterator | None = None
        self._finalizer: weakref.finalize | None = None

    def batch(self, step: int, micro: int):
        """x0_w, x0_l, prompts, degraded prompts of this micro-step.

        Micro-steps are asked for in order; ones the loop skipped (a step cut short
        by a non-finite loss) are passed over.
        """
        if self._batches is None:
            self._batches = iter(self._loader)
            if self._loader.num_workers:
                self._finalizer = _stop_when_dropped(self, self._batches)
        while True:
            got_step, got_micro, batch = next(self._batches)
            if (got_step, got_micro) >= (step, micro):
                break
        if (got_step, got_micro) != (step, micro):  # asked out of order: a bug in the loop, not the data
            raise RuntimeError(f"data loader at step {got_step}.{got_micro}, training asked for {step}.{micro}")
        if isinstance(batch, PrefoptError):
            raise batch
        return tuple(batch)  # the DataLoader hands sequences back as lists

    def close(self) -> None:
        """Stop the workers now."""
        if self._finalizer is not None:
            self._finalizer()
        self._batches = self._finalizer = None


# Stopping workers, and why torch's own shutdown is not enough here.
#
# Workers ignore SIGTERM (see _init_worker), so they end only when asked (``None`` on
# their index queue) or when their parent is gone. torch asks in the iterator's
# ``__del__``, which fails silently when the iterator dies in a reference cycle (an
# exception's traceback makes one easily): the cycle's multiprocessing queues are
# finalized first. The worker then outlives its iterator, and at exit multiprocessing's
# hook, which terminates daemonic children and joins them, waits on it forever (stop
# 17's CI sat 75 minutes after its last test). So each loader holds a finalizer with a
# strong reference to its iterator: the iterator is never cyclic garbage, and the
# finalizer asks the workers to end when the loader is dropped, closed, or at exit.

_running: dict[int, weakref.finalize] = {}  # id(loader) -> its finalizer, while its workers may run


def _stop_when_dropped(loader: BatchLoader, batches) -> weakref.finalize:
    stop = weakref.finalize(loader, _stop_workers, batches, id(loader))
    stop.atexit = False  # run by _stop_all_workers, whose place among the exit hooks is known
    _running[id(loader)] = stop
    return stop


def _stop_workers(batches, key: int) -> None:
    """Ask the iterator's workers to finish, as torch does, and let torch join them."""
    _running.pop(key, None)
    if getattr(batches, "_shutdown", False):  # torch already stopped them (the iterator ran to its end)
        return
    # torch's _shutdown_workers does nothing once its own exit hook has run (the order of
    # exit hooks depends on import order), so the request is made here first; a second
    # None from _shutdown_workers is never read. These are torch's private names (2.x): read
    # with getattr, so a torch that renames them still gets its own shutdown call, and
    # tests/test_pair_reader.py's orphan tests say whether that is enough.
    done = getattr(batches, "_workers_done_event", None)
    if done is not None:
        done.set()
    for queue in getattr(batches, "_index_queues", ()):
        queue.put(None)
    batches._shutdown_workers()


# atexit runs hooks last-registered first; multiprocessing.util is imported above, so
# this runs before multiprocessing's join.
@atexit.register
def _stop_all_workers() -> None:
    for stop in list(_running.values()):
        stop()
