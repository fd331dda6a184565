"""The verifier's Ray backend for step 18: one Ray task per replayed segment.

A task runs :func:`verifier._segment.replay_segment` -- a pure function of its
:class:`~verifier._segment.SegmentPlan`, which carries the segment's checkpoints, steps and the
openings of the records its batches use (nothing is read from disk) -- and returns the segment's
report entry. The driver (the ``vmu-verify`` process) takes the entries in plan order, so the
report and the first failure are the same as with the local backend; after a failure the tasks
still queued or running are cancelled.

A worker that dies (killed, out of memory, node lost) is retried by Ray up to
:data:`MAX_RETRIES` times (the replay is deterministic, so a retry gives the same entry). An
exception raised by the replay itself (a checkpoint that does not load) is not retried; it is
raised on the driver as it was raised on the worker.

Every worker must run the same torch as the driver: the driver chose bit-exact or distance
replay for its own torch version, and a worker on another version is refused (as an error, not a
rejection of the bundle). Connecting (private local instance, ``--ray-address``, token
authentication) is :mod:`verifiable_mu._ray_support`, shared with the prover; here a missing
Ray or an unreachable cluster is :class:`~verifiable_mu._errors.MalformedInput` (exit code 2:
the bundle was not judged).

This module imports neither Ray nor torch at import time, and never the prover.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Generator, Sequence
from typing import Any

from verifiable_mu import _ray_support
from verifiable_mu._errors import MalformedInput

from ._segment import SegmentPlan, replay_segment

__all__ = ["MAX_RETRIES", "TASK_NAME_PREFIX", "connect", "run_segments", "task_cpus"]

#: Retries after a worker dies (the replay is deterministic, so a retry gives the same result).
MAX_RETRIES = 3
#: Ray task names are ``vmu-replay-<end index>`` (the log index of the segment's end checkpoint).
TASK_NAME_PREFIX = "vmu-replay-"


def connect(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Attach to Ray (see :func:`verifiable_mu._ray_support.connect`); errors are MalformedInput."""
    _ray_support.connect(address, num_cpus=num_cpus, missing=MalformedInput, error=MalformedInput)


def _replay_on_worker(sp: SegmentPlan) -> tuple[dict[str, Any], str, str]:
    """What one Ray task runs: the segment's entry, this worker's torch version and host name."""
    import torch

    return replay_segment(sp), torch.__version__, socket.gethostname()


_REMOTE: Any = None


def _remote(ray: Any) -> Any:
    global _REMOTE
    if _REMOTE is None:
        _REMOTE = ray.remote(max_retries=MAX_RETRIES, retry_exceptions=False)(_replay_on_worker)
    return _REMOTE


def task_cpus(ray: Any, threads: int) -> float:
    """CPUs to reserve for one task: the bundle's logged thread count (the replay pins torch to
    it), at most what the largest node has, so that a task is never unschedulable (the thread
    count is set inside the task whatever is reserved; only the packing of tasks changes)."""
    largest = _ray_support.max_node_cpus(ray)
    if largest <= 0:
        raise MalformedInput("the Ray cluster has no node with CPUs to replay on")
    return float(min(threads, largest))


def _where(sp: SegmentPlan) -> str:
    r = sp.work.ref
    return f"segment ending at entry {r.end_index} (shard {r.shard}, generation {r.generation})"


def run_segments(
    plans: Sequence[SegmentPlan], *, address: str | None = None, max_parallel: int = 0
) -> Generator[dict[str, Any], None, None]:
    """Run one Ray task per segment; yield their report entries in the order of ``plans``.

    ``max_parallel`` > 0 keeps at most that many tasks in flight; 0 keeps twice as many as the
    cluster can run at once (so that segment data does not all sit in the object store at once).
    Closing the iterator early cancels the tasks still in flight.
    """
    if not plans:
        return
    import torch

    ray = _ray_support.import_ray(missing=MalformedInput)
    connect(address)
    cpus = task_cpus(ray, max(sp.threads for sp in plans))
    window = max_parallel if max_parallel > 0 else 2 * max(1, int(ray.cluster_resources().get("CPU", 0) // cpus))
    remote = _remote(ray)

    def submit(sp: SegmentPlan) -> Any:
        return remote.options(
            name=f"{TASK_NAME_PREFIX}{sp.work.ref.end_index}", num_cpus=min(sp.threads, cpus), num_gpus=0
        ).remote(sp)

    results = _ray_support.in_order(
        ray,
        plans,
        submit,
        window,
        task_failed=lambda sp, e: MalformedInput(
            f"the replay of {_where(sp)} failed on Ray: {_ray_support.first_line(e)}"
        ),
        ray_failed=lambda sp, e: MalformedInput(
            f"Ray could not finish the replay of {_where(sp)} ({type(e).__name__} after {MAX_RETRIES} "
            f"retries): {_ray_support.first_line(e)}; the bundle was not judged, run the verifier again"
        ),
    )
    with contextlib.closing(results):
        for _, (seg, version, host) in results:
            if version != torch.__version__:
                raise MalformedInput(
                    f"Ray node {host} runs torch {version} but this verifier runs torch {torch.__version__}: "
                    "replay results would not be comparable; install the same torch on every node"
                )
            yield seg
