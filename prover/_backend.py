"""Execution backends for shard tasks: inline, local processes, or Ray (optional).

Every backend yields ``(task, results)`` in the order of ``tasks`` so that the driver -- the one
process that writes the log -- appends the same entries in the same order whatever ran them.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor

from . import _sisa
from ._errors import BadInput

__all__ = ["run_tasks", "available_cores"]


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def run_tasks(
    tasks: Sequence[_sisa.ShardTask], *, backend: str = "local", workers: int = 0, ray_address: str | None = None
) -> Iterator[tuple[_sisa.ShardTask, list[_sisa.StageResult]]]:
    if not tasks:
        return
    if backend == "local":
        n = workers or min(available_cores(), len(tasks))
        n = max(1, min(n, len(tasks), available_cores()))
        if n == 1:
            for t in tasks:
                yield t, _sisa.train_shard(t)
            return
        # spawn, not fork: torch's thread pools do not survive fork reliably.
        with ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("spawn")) as ex:
            for t, res in zip(tasks, ex.map(_sisa.train_shard, tasks), strict=True):
                yield t, res
        return
    if backend == "ray":
        from ._ray import run_ray  # optional extra

        yield from run_ray(tasks, address=ray_address)  # concurrency: the cluster's CPUs, not workers
        return
    raise BadInput(f"unknown backend {backend!r} (use local or ray)")
