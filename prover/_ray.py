"""The Ray backend: one Ray task per shard, results back to the driver in shard order.

Only the driver (the process that called :meth:`Workspace.train` or :meth:`Workspace.forget`)
writes the log. A Ray task runs :func:`prover._sisa.train_shard` -- a pure function of its task
that reads the workspace's ``data.npz`` and writes content-addressed checkpoint files into the
workspace's ``checkpoints/`` -- and returns its stage results; the driver commits them in task
order, so the log is the same, entry for entry, whatever backend ran the shards.

Fault handling. A worker that dies (killed, out of memory, node lost) is retried by Ray up to
:data:`MAX_RETRIES` times; the retry recomputes the same bits (the task is deterministic) and
rewrites the same checkpoint files (content addressed, written atomically), so nothing is
duplicated. An exception raised by the training code itself is not retried: it would fail the
same way again.

Connecting. With no address (and no ``RAY_ADDRESS``), a private local instance is started
(``num_cpus`` = the cores this process may use, no dashboard). With an address, the TCP port is
probed first so that an unreachable cluster gives a clear error at once instead of Ray's long
wait; if Ray token authentication is not configured explicitly (``RAY_AUTH_MODE`` unset) but a
token is available (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``), the
token is sent. A Ray connection that is already open in this process is used as it is. This
connection code lives in :mod:`verifiable_mu._ray_support`, shared with the verifier's Ray backend.

The workspace directory must be visible at the same absolute path on every node that runs
tasks (a shared file system); a task on a node that cannot see it fails with a clear error.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, Sequence
from typing import Any

from verifiable_mu import _ray_support
from verifiable_mu._ray_support import PROBE_TIMEOUT_S, default_token_path, in_order
from verifiable_mu._ray_support import first_line as _first_line

from . import _sisa
from ._errors import BadInput, WorkspaceError

__all__ = ["run_ray", "connect", "MAX_RETRIES", "TASK_NAME_PREFIX", "PROBE_TIMEOUT_S", "default_token_path"]

#: Retries after a worker dies (the task is deterministic, so a retry gives the same result).
MAX_RETRIES = 3
#: Ray task names are ``vmu-shard-<n>`` (``ray::vmu-shard-<n>`` is the worker's process title).
TASK_NAME_PREFIX = "vmu-shard-"

_host_port = _ray_support.host_port  # the address parser (kept under its old name for callers and tests)


def _import_ray() -> Any:
    return _ray_support.import_ray(missing=BadInput)


def connect(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Attach to Ray: reuse this process's connection, join ``address`` (or ``RAY_ADDRESS``),
    or start a private local instance with ``num_cpus`` CPUs (default: the usable cores).

    The connection code is shared with the verifier (:mod:`verifiable_mu._ray_support`); here a
    missing Ray is :class:`BadInput` and a cluster that cannot be started or reached is
    :class:`WorkspaceError`.
    """
    _ray_support.connect(address, num_cpus=num_cpus, missing=BadInput, error=WorkspaceError)


def _train_on_worker(task: _sisa.ShardTask) -> list[_sisa.StageResult]:
    """What one Ray task runs: check the shared workspace is visible here, then train."""
    for what, path, ok in (
        ("checkpoint store", task.store, os.path.isdir),
        ("data file", task.data_path, os.path.isfile),
    ):
        if not ok(path):
            raise WorkspaceError(
                f"Ray node {socket.gethostname()} cannot see the workspace's {what} {path}: on a cluster the workspace "
                "must be on a directory every node mounts at the same path"
            )
    return _sisa.train_shard(task)


_REMOTE: Any = None


def _remote() -> Any:
    global _REMOTE
    if _REMOTE is None:
        ray = _import_ray()
        _REMOTE = ray.remote(max_retries=MAX_RETRIES, retry_exceptions=False)(_train_on_worker)
    return _REMOTE


def _submit(task: _sisa.ShardTask) -> Any:
    return (
        _remote()
        .options(
            name=f"{TASK_NAME_PREFIX}{task.shard}",
            num_cpus=task.threads,
            num_gpus=1 if task.device == "cuda" else 0,
        )
        .remote(task)
    )


def _check_resources(ray: Any, tasks: Sequence[_sisa.ShardTask]) -> None:
    res = ray.cluster_resources()
    need_cpu = max(t.threads for t in tasks)
    if res.get("CPU", 0) < need_cpu:
        raise WorkspaceError(
            f"the Ray cluster has {res.get('CPU', 0):g} CPUs but each shard task needs {need_cpu} (the workspace's threads)"
        )
    if any(t.device == "cuda" for t in tasks) and res.get("GPU", 0) < 1:
        raise WorkspaceError(
            "the workspace trains on CUDA but the Ray cluster has no GPU: add GPU nodes, or create the workspace "
            "with --device cpu"
        )


def run_ray(
    tasks: Sequence[_sisa.ShardTask], *, address: str | None = None, max_parallel: int = 0
) -> Iterator[tuple[_sisa.ShardTask, list[_sisa.StageResult]]]:
    """Run one Ray task per shard; yield ``(task, results)`` in the order of ``tasks``.

    ``max_parallel`` > 0 keeps at most that many tasks in flight (benchmarks); 0 leaves the
    concurrency to Ray (the cluster's CPUs divided by each task's ``threads``).
    """
    if not tasks:
        return
    ray = _import_ray()
    connect(address)
    _check_resources(ray, tasks)
    window = len(tasks) if max_parallel <= 0 else max_parallel
    yield from in_order(
        ray,
        tasks,
        _submit,
        window,
        task_failed=lambda t, e: WorkspaceError(f"shard {t.shard} failed on Ray: {_first_line(e)}"),
        ray_failed=lambda t, e: WorkspaceError(
            f"Ray could not finish shard {t.shard} ({type(e).__name__} after {MAX_RETRIES} retries): "
            f"{_first_line(e)}; the log holds every stage committed so far, run the same command again"
        ),
        force_cancel=True,
    )
