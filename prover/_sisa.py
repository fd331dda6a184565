"""SISA schedule, record assignment and the shard-training worker.

The worker is a pure function of its task (plus the checkpoint store, which is content
addressed): it never touches the log. The driver appends what it returns, in a fixed order, so
the log is the same whatever backend ran the worker.
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from verifiable_mu._tags import TAG_ASSIGNMENT, TAG_STEP_SEED, tagged_hash

__all__ = [
    "batch_commitments",
    "assign",
    "stage_epochs",
    "expected_speedup",
    "perm_seed",
    "StageTask",
    "ShardTask",
    "StepRecord",
    "StageResult",
    "train_shard",
    "step_body_json",
]


def batch_commitments(batch: str) -> list[str]:
    """Split a step entry's ``batch`` field into its 64-hex-character commitments."""
    return [batch[i : i + 64] for i in range(0, len(batch), 64)]


def assign(keys: Sequence[bytes], *, seed: int, shards: int, slices: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic, balanced assignment of records to (shard, slice) from a committed seed.

    Records are ordered by ``SHA-256(TAG_ASSIGNMENT || u64 seed || key)``; the record of rank
    ``i`` goes to shard ``i mod S`` and slice ``(i div S) * R div ceil(n / S)``, so shard sizes
    differ by at most one and slices within a shard by at most one.
    """
    n = len(keys)
    prefix = hashlib.sha256(TAG_ASSIGNMENT + struct.pack(">Q", seed))  # = tagged_hash(TAG_ASSIGNMENT, seed, key)

    def rank_key(i: int) -> bytes:
        h = prefix.copy()
        h.update(keys[i])
        return h.digest()

    order = sorted(range(n), key=rank_key)
    shard = np.empty(n, dtype=np.int64)
    slc = np.empty(n, dtype=np.int64)
    per_shard = [0] * shards
    for rank, i in enumerate(order):
        shard[i] = rank % shards
        per_shard[rank % shards] += 1
    pos = [0] * shards
    for i in order:
        s = int(shard[i])
        slc[i] = pos[s] * slices // max(per_shard[s], 1)
        pos[s] += 1
    return shard, slc


def stage_epochs(epochs: int, slices: int) -> int:
    """SISA's schedule: stage r trains ``2E/(R+1)`` epochs on slices 1..r (at least 1)."""
    return max(1, round(2 * epochs / (slices + 1)))


def expected_speedup(shards: int, slices: int) -> float:
    """``S * 3R / (2R + 1)``: full retraining against one deletion at a uniform slice."""
    return shards * 3 * slices / (2 * slices + 1)


def perm_seed(run_seed: int, *, shard: int, generation: int, stage: int, epoch: int) -> int:
    d = tagged_hash(TAG_STEP_SEED, b"perm", struct.pack(">QIII", run_seed, shard, generation, stage), struct.pack(">I", epoch))
    return int.from_bytes(d[:8], "big")


@dataclass(frozen=True, slots=True, kw_only=True)
class StageTask:
    stage: int  # 1-based slice index r: trains on slices 1..r
    rows: np.ndarray  # indices into the workspace data arrays, in slice-tree order
    commitments: Sequence[bytes]  # commitment of each row, same order
    epochs: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ShardTask:
    shard: int
    generation: int
    start_step: int
    start_checkpoint: bytes  # digest; the file is in the store
    stages: Sequence[StageTask]
    model: dict  # ModelSpec json
    hyper: dict  # Hyper json
    run_seed: int
    device: str
    threads: int
    checkpoint_every: int
    store: str  # checkpoint directory every worker can read and write
    data_path: str  # the workspace's data.npz
    record: bool = True  # False: the same schedule without commitments, logging or checkpoints


@dataclass(frozen=True, slots=True)
class StepRecord:
    stage: int
    epoch: int
    step: int
    seed: int
    batch: str  # the batch's commitments as 64-char hex each, concatenated in batch order


def step_body_json(shard: int, generation: int, s: StepRecord, lr_json: str) -> bytes:
    """The RFC 8785 bytes of a ``step`` log entry's body (specs/06-training.md section 5),
    written out directly: the stdlib encoder escapes the 2 KB batch string character by
    character, which cost more than the rest of logging a step. Keys in canonical order;
    ``lr_json`` is ``canonical_json(lr)``; ``batch`` is lowercase hex, which needs no escaping.
    Tests check the output against :func:`verifiable_mu._canonical.canonical_json`."""
    return (
        f'{{"batch":"{s.batch}","epoch":{s.epoch:d},"generation":{generation:d},"lr":{lr_json},'
        f'"seed":"{s.seed:d}","shard":{shard:d},"stage":{s.stage:d},"step":"{s.step:d}"}}'
    ).encode("ascii")


@dataclass(slots=True)
class StageResult:
    stage: int
    steps: list[StepRecord] = field(default_factory=list)
    checkpoints: list[tuple[int, bytes]] = field(default_factory=list)  # (steps done, digest)
    seconds: float = 0.0


_DATA_CACHE: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def _load_data(path: str) -> tuple[np.ndarray, np.ndarray]:
    hit = _DATA_CACHE.get(path)
    if hit is None:
        with np.load(path, allow_pickle=False) as z:
            hit = (np.ascontiguousarray(z["X"], dtype=np.float32), np.ascontiguousarray(z["y"], dtype=np.int64))
        _DATA_CACHE.clear()
        _DATA_CACHE[path] = hit
    return hit


def train_shard(task: ShardTask) -> list[StageResult]:
    """Run the task's stages from its start checkpoint; return what the driver must log."""
    from verifiable_mu.training import (
        ModelSpec,
        build_model,
        configure_determinism,
        load_checkpoint,
        load_into_model,
        resolve_device,
    )

    configure_determinism(task.threads)
    device = resolve_device(task.device)
    spec = ModelSpec.from_json(task.model)
    model = build_model(spec, init_seed=0).to(device)
    ckpt = load_checkpoint(os.path.join(task.store, task.start_checkpoint.hex() + ".safetensors"))
    momentum = load_into_model(model, ckpt, device)
    X_all, y_all = _load_data(task.data_path)
    out: list[StageResult] = []
    # Checkpoints are copied on this thread, then hashed, encoded and written (with fsync) on a
    # writer thread while training goes on: hashing, file writes and fsync release the GIL.
    # Every file is on disk before this function returns, so before the driver logs it.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vmu-checkpoint") as writer:
        pending = _train_stages(task, model, momentum, X_all, y_all, device, writer, out)
        for res in out:
            res.checkpoints = [(at, d if isinstance(d, bytes) else d.result()) for at, d in pending[res.stage]]
    return out


def _train_stages(
    task: ShardTask,
    model: Any,
    momentum: dict,
    X_all: np.ndarray,
    y_all: np.ndarray,
    device: Any,
    writer: ThreadPoolExecutor,
    out: list[StageResult],
) -> dict[int, list[tuple[int, bytes | Future[bytes]]]]:
    import torch

    from verifiable_mu.training import Hyper, checkpoint_from_model, save_checkpoint, sgd_step, step_seed

    hyper = Hyper.from_json(task.hyper)
    B = hyper.batch_size
    step = task.start_step
    pending: dict[int, list[tuple[int, bytes | Future[bytes]]]] = {}
    for st in task.stages:
        ckpts = pending[st.stage] = []
        t0 = time.perf_counter()
        res = StageResult(stage=st.stage)
        rows = np.asarray(st.rows, dtype=np.int64)
        X = torch.from_numpy(X_all[rows]).to(device)
        y = torch.from_numpy(y_all[rows]).to(device)
        n = len(rows)
        commits = [c.hex() for c in st.commitments]
        in_stage = 0
        total = st.epochs * ((n + B - 1) // B)
        for epoch in range(st.epochs):
            perm = np.random.default_rng(
                perm_seed(task.run_seed, shard=task.shard, generation=task.generation, stage=st.stage, epoch=epoch)
            ).permutation(n)
            for b in range(0, n, B):
                idx = perm[b : b + B]
                seed = step_seed(
                    task.run_seed, shard=task.shard, generation=task.generation, stage=st.stage, epoch=epoch, step=step
                )
                ti = torch.from_numpy(idx).to(device)
                sgd_step(model, momentum, X[ti], y[ti], hyper, seed)
                step += 1
                in_stage += 1
                if task.record:
                    res.steps.append(StepRecord(st.stage, epoch, step - 1, seed, "".join([commits[i] for i in idx.tolist()])))
                    if task.checkpoint_every and in_stage % task.checkpoint_every == 0 and in_stage < total:
                        ckpts.append((step, writer.submit(save_checkpoint, checkpoint_from_model(model, momentum), task.store)))
        if task.record:
            ckpts.append((step, writer.submit(save_checkpoint, checkpoint_from_model(model, momentum), task.store)))
        else:
            # Plain SISA still keeps the stage-end state (in memory) to be able to unlearn.
            ckpts.append((step, b""))
            _ = checkpoint_from_model(model, momentum)
        res.seconds = time.perf_counter() - t0
        out.append(res)
    return pending
