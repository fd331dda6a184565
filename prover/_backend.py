"""Execution backends for shard tasks: inline, local processes, or Ray (optional).

Every backend yields ``(task, results)`` in the order of ``tasks`` so that the driver -- the one
process that writes the log -- appends the same entries in the same order whatever ran them.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor

from verifiable_mu._seeds import BackgroundCommit

from . import _sisa
from ._errors import BadInput

__all__ = ["run_tasks", "available_cores"]


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


_Staged = tuple[_sisa.ShardTask, list[_sisa.StageResult], BackgroundCommit | None]


def _inline(tasks: Sequence[_sisa.ShardTask]) -> Iterator[tuple[_sisa.ShardTask, list[_sisa.StageResult]]]:
    """Tasks one after the other in this process. Each task's checkpoint files are made durable
    on a thread while the next task trains, and the task is handed to the driver (which logs
    it) only once they are: the wait for the disk overlaps training instead of adding to it.
    A task that fails hands over the one before it first."""
    prev: _Staged | None = None

    def settle(item: _Staged) -> tuple[_sisa.ShardTask, list[_sisa.StageResult]]:
        t, out, sync = item
        if sync is not None:
            t0 = time.perf_counter()
            sync.wait()
            if out:
                out[-1].seconds += time.perf_counter() - t0  # the wait this task's files cost
        return t, out

    try:
        for t in tasks:
            try:
                out, batch = _sisa.train_shard_staged(t)
            except BaseException:
                done, prev = prev, None
                if done is not None:  # the finished task before the failure still reaches the log
                    yield settle(done)
                raise
            item, prev = prev, (t, out, batch.commit_in_background() if batch is not None else None)
            if item is not None:
                yield settle(item)
        done, prev = prev, None
        if done is not None:
            yield settle(done)
    finally:
        if prev is not None and prev[2] is not None:  # abandoned (the driver stopped): never logged
            prev[2].wait_quietly()


def run_tasks(
    tasks: Sequence[_sisa.ShardTask], *, backend: str = "local", workers: int = 0, ray_address: str | None = None
) -> Iterator[tuple[_sisa.ShardTask, list[_sisa.StageResult]]]:
    if not tasks:
        return
    if backend == "local":
        n = workers or min(available_cores(), len(tasks))
        n = max(1, min(n, len(tasks), available_cores()))
        if n == 1:
            yield from _inline(tasks)
            return
        # spawn, not fork: torch's thread pools do not survive fork reliably.
        with ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("spawn")) as ex:
            yield from zip(tasks, ex.map(_sisa.train_shard, tasks), strict=True)
        return
    if backend == "ray":
        from ._ray import run_ray  # optional extra

        yield from run_ray(tasks, address=ray_address)  # concurrency: the cluster's CPUs, not workers
        return
    raise BadInput(f"unknown backend {backend!r} (use local or ray)")
