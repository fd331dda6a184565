"""Seeds and small file helpers shared by the training step, the prover and the verifier.

Torch-free, so the verifier's proof checks (which recompute step seeds) need not import torch.
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ._sorted_tree import SortedTree
from ._tags import TAG_ASSIGNMENT, TAG_STEP_SEED, tagged_hash

__all__ = [
    "BackgroundCommit",
    "DurableBatch",
    "assigned_slices",
    "assignment_rank",
    "atomic_write",
    "derive_slices",
    "epoch_order",
    "perm_seed",
    "shard_size",
    "step_seed",
]


def step_seed(run_seed: int, *, shard: int, generation: int, stage: int, epoch: int, step: int) -> int:
    """The 63-bit seed for one step's RNG (dropout and the like), derived, never chosen
    (specs/06-training.md section 3)."""
    d = tagged_hash(TAG_STEP_SEED, struct.pack(">QIIIIQ", run_seed, shard, generation, stage, epoch, step))
    return int.from_bytes(d[:8], "big") >> 1


def perm_seed(run_seed: int, *, shard: int, generation: int, stage: int, epoch: int) -> int:
    """The seed of one epoch's visiting order (specs/06-training.md section 2)."""
    d = tagged_hash(TAG_STEP_SEED, b"perm", struct.pack(">QIII", run_seed, shard, generation, stage), struct.pack(">I", epoch))
    return int.from_bytes(d[:8], "big")


def epoch_order(run_seed: int, *, shard: int, generation: int, stage: int, epoch: int, n: int) -> np.ndarray:
    """The order in which epoch ``epoch`` of a stage visits the stage's ``n`` rows: the prover
    trains in it and the verifier checks every disclosed batch against it."""
    seed = perm_seed(run_seed, shard=shard, generation=generation, stage=stage, epoch=epoch)
    return np.random.default_rng(seed).permutation(n)


def atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` via a synced temporary file and a rename: all or nothing."""
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _syncfs_function() -> Any:
    """libc's ``syncfs(2)`` (Linux), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None  # pragma: no cover - not Linux
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):  # pragma: no cover - a libc without syncfs
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_SYNCFS: Any = _syncfs_function()


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DurableBatch:
    """Files of one folder written together and made durable together, each all or nothing.

    :meth:`add` writes a file's bytes under a temporary name; :meth:`commit` moves each into
    place and makes the batch durable with one sync: ``syncfs(2)`` on Linux, one journal commit
    for the data and the renames of every file (an ``fsync`` per file costs a journal commit
    each), else an ``fsync`` of each file before its rename and one of the folder after. Nothing
    may refer to a file of the batch before :meth:`commit` returns. After a power loss between
    the renames and the sync, a file under its final name may be incomplete: a writer that finds
    its file already there compares the content before relying on it (see
    :meth:`existing_matches`), and a crash leaves no other trace than temporary files.
    :meth:`discard` removes the temporary files of a batch given up.
    """

    def __init__(self, folder: str | os.PathLike[str], *, use_syncfs: bool = True) -> None:
        self.folder = os.fspath(folder)
        self._use_syncfs = use_syncfs and _SYNCFS is not None
        self._pending: dict[str, str] = {}  # final path -> temporary path
        self._present: list[str] = []  # files found in place with the right content: synced too

    def __len__(self) -> int:
        return len(self._pending)

    def pending(self, path: str) -> bool:
        return path in self._pending

    def existing_matches(self, path: str, data: bytes) -> bool:
        """Whether ``path`` is already in place with exactly ``data`` (then it is made durable
        with the batch, as it may be the unsynced leftover of a crashed writer)."""
        if not _same_content(path, data):
            return False
        self._present.append(path)
        return True

    def add(self, name: str, data: bytes) -> None:
        path = os.path.join(self.folder, name)
        if path in self._pending:
            return
        tmp = f"{path}.tmp.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if not self._use_syncfs:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink_quietly(tmp)
            raise
        os.close(fd)
        self._pending[path] = tmp

    def commit(self) -> None:
        if not self._pending and not self._present:
            return
        try:
            for path, tmp in self._pending.items():
                os.replace(tmp, path)
            self._pending.clear()
            if self._use_syncfs:
                fd = os.open(self.folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
                try:
                    if _SYNCFS(fd) != 0:
                        err = _errno()
                        raise OSError(err, f"syncfs of {self.folder} failed: {os.strerror(err)}")
                finally:
                    os.close(fd)
            else:
                for path in self._present:
                    _fsync_file(path)
                _fsync_dir(self.folder)
        finally:
            self.discard()

    def commit_in_background(self) -> BackgroundCommit:
        """:meth:`commit` on a thread (the sync waits on the disk, holding no lock that training
        needs); the caller must :meth:`BackgroundCommit.wait` before anything refers to the
        files. Its own view of the batch is handed over: this object is empty afterwards."""
        mine = DurableBatch(self.folder, use_syncfs=self._use_syncfs)
        mine._pending, mine._present = self._pending, self._present
        self._pending, self._present = {}, []
        return BackgroundCommit(mine)

    def discard(self) -> None:
        for tmp in self._pending.values():
            _unlink_quietly(tmp)
        self._pending.clear()
        self._present.clear()


class BackgroundCommit:
    """A :class:`DurableBatch` committing on its own thread; :meth:`wait` returns once the files
    are in place and durable, or raises what the commit raised."""

    def __init__(self, batch: DurableBatch) -> None:
        import threading

        self._error: BaseException | None = None
        self._batch = batch
        self._thread = threading.Thread(target=self._run, name="vmu-durable-batch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._batch.commit()
        except BaseException as e:  # handed to the waiter
            self._error = e

    def wait(self) -> None:
        self._thread.join()
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def wait_quietly(self) -> None:
        """Wait, ignoring a failure: for a batch given up, whose files nothing will name."""
        with contextlib.suppress(OSError):
            self.wait()


def _same_content(path: str, data: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(data) + 1) == data
    except OSError:
        return False


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _errno() -> int:
    import ctypes

    return ctypes.get_errno()


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def assignment_rank(run_seed: int, key: bytes) -> bytes:
    """The sort key of a training record in the committed assignment ``sha256-rank-v1``
    (specs/06-training.md section 1): ``SHA-256(TAG_ASSIGNMENT || u64be(seed) || key)``."""
    return tagged_hash(TAG_ASSIGNMENT, struct.pack(">Q", run_seed), key)


def shard_size(n_train: int, shards: int, shard: int) -> int:
    """How many of ``n_train`` ranked records the assignment gives ``shard`` (ranks ``i`` with
    ``i mod shards == shard``)."""
    return max(0, (n_train - shard + shards - 1) // shards)


def assigned_slices(run_seed: int, keys: list[bytes], slices: int) -> dict[bytes, int]:
    """The slice the assignment gives each record of one shard, from the shard's keys alone: the
    shard's record at position ``p`` of its ``n_s`` in rank order goes to slice ``p * R // n_s``
    (ranks are global, but a shard holds every ``S``-th of them, so positions within the shard
    follow from its own keys)."""
    order = sorted(keys, key=lambda k: assignment_rank(run_seed, k))
    n = len(order)
    return {k: p * slices // n for p, k in enumerate(order)}


def derive_slices(run_seed: int, pairs: Iterable[tuple[bytes, bytes]], sizes: Sequence[int]) -> list[SortedTree]:
    """Candidate slice trees of one shard, from ``(key, commitment)`` pairs known to be in it and
    the committed slice sizes: the assignment puts the shard's records in its slices by rank, in
    contiguous runs, so slice ``j`` is the records of rank positions ``sizes[0] + ... + sizes[j-1]``
    onward. Candidate ``j`` is right exactly when ``pairs`` holds all of slices ``0..j`` -- and
    then, only then, its root is the committed one (the caller compares roots; a wrong candidate
    never matches). Stops at the first slice the pairs cannot fill."""
    order = sorted(set(pairs), key=lambda p: assignment_rank(run_seed, p[0]))
    out: list[SortedTree] = []
    start = 0
    for n in sizes:
        if start + n > len(order):
            break
        out.append(SortedTree.build(sorted(order[start : start + n])))
        start += n
    return out
