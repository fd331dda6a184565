"""SISA schedule, record assignment and the shard-training worker.

The worker is a pure function of its task (plus the checkpoint store, which is content
addressed): it never touches the log. The driver appends what it returns, in a fixed order, so
the log is the same whatever backend ran the worker.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from verifiable_mu._canonical import canonical_json
from verifiable_mu._scaling import Scaling
from verifiable_mu._seeds import DurableBatch, epoch_order
from verifiable_mu._tags import TAG_ASSIGNMENT

__all__ = [
    "batch_commitments",
    "assign",
    "stage_epochs",
    "expected_speedup",
    "StageTask",
    "ShardTask",
    "StepRecord",
    "StageResult",
    "train_shard",
    "train_shard_staged",
    "step_body_json",
    "step_body_template",
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
    log_format: int  # 2: step entries without batch lists (specs/06 section 5)
    store: str  # checkpoint directory every worker can read and write
    data_path: str  # the workspace's data.npz
    record: bool = True  # False: the same schedule without commitments, logging or checkpoints
    platform: dict | None = None  # the logged config's platform: a worker that differs refuses to train
    scaling: dict | None = None  # the logged feature scaling (specs/06 section 5c), applied to every input


class StepRecord(NamedTuple):
    """One step as the worker hands it to the driver (a tuple: built 800 times a second per core
    in the training loop, where a frozen dataclass's constructor cost more than the body)."""

    stage: int
    epoch: int
    step: int
    seed: int
    body: bytes  # the step log entry's canonical JSON body, from step_body_json
    rows: bytes = b""  # the batch's data rows, little-endian int32 (the prover's own record)


def step_body_template(*, shard: int, generation: int, stage: int, epoch: int, lr_json: bytes) -> bytes:
    """The format-2 float32 step body of one epoch of one stage with its two varying fields left
    as ``%d``: ``template % (seed, step)`` is :func:`step_body_json` of that step (the constant
    parts are formatted once per epoch, not per step; tests check the two agree)."""
    return b'{"epoch":%d,"generation":%d,"lr":%s,"seed":"%%d","shard":%d,"stage":%d,"step":"%%d"}' % (
        epoch,
        generation,
        lr_json.replace(b"%", b"%%"),
        shard,
        stage,
    )


def step_body_json(
    *,
    shard: int,
    generation: int,
    stage: int,
    epoch: int,
    step: int,
    seed: int,
    lr_json: bytes,
    batch_hex: bytes | None,
    hints: Sequence[tuple[int, int, int]] | None = None,
) -> bytes:
    """The RFC 8785 bytes of a ``step`` log entry's body (specs/06-training.md section 5),
    written out directly: the stdlib encoder escapes the 2 KB batch string character by
    character, which cost more than the rest of logging a step. Keys in canonical order;
    ``lr_json`` is ``canonical_json(lr)``; ``batch_hex`` is the batch's commitments as lowercase
    hex, concatenated, which needs no escaping. Tests check the output against
    :func:`verifiable_mu._canonical.canonical_json`."""
    hints_json = b"" if hints is None else b'"hints":[%s],' % b",".join(b"[%d,%d,%d]" % h for h in hints)
    batch_json = b"" if batch_hex is None else b'"batch":"%s",' % batch_hex
    return b'{%s"epoch":%d,"generation":%d,%s"lr":%s,"seed":"%d","shard":%d,"stage":%d,"step":"%d"}' % (
        batch_json,
        epoch,
        generation,
        hints_json,
        lr_json,
        seed,
        shard,
        stage,
        step,
    )


@dataclass(slots=True)
class StageResult:
    stage: int
    steps: list[StepRecord] = field(default_factory=list)
    checkpoints: list[tuple[int, bytes]] = field(default_factory=list)  # (steps done, digest)
    seconds: float = 0.0


_DATA_CACHE: dict[tuple[str, bytes], tuple[np.ndarray, np.ndarray]] = {}
_READ_BYTES = 16 << 20  # X is read in chunks of about this many bytes


def _load_rows(path: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``X[rows]`` (float32) and ``y[rows]`` of the workspace's data file, ``rows`` ascending and
    unique. X is streamed from the .npz in chunks, so a worker holds the rows it trains on and one
    chunk, never the whole data set (at 10^6 records x 64 features: 36 MB for a shard, not 256)."""
    key = (path, hashlib.sha256(rows.astype("<i8").tobytes()).digest())
    hit = _DATA_CACHE.get(key)
    if hit is not None:
        return hit
    with np.load(path, allow_pickle=False) as z:
        y = np.ascontiguousarray(z["y"], dtype=np.int64)[rows]
    with zipfile.ZipFile(path) as zf, zf.open("X.npy") as f:
        version = np.lib.format.read_magic(f)
        shape, fortran, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                 else np.lib.format.read_array_header_2_0(f))
        if fortran or dtype.hasobject:  # not what Dataset.save_npz writes: read it whole
            with np.load(path, allow_pickle=False) as z:
                X = np.ascontiguousarray(z["X"][rows], dtype=np.float32)
        else:
            width = int(np.prod(shape[1:], dtype=np.int64))
            row_bytes = max(1, width * dtype.itemsize)
            X = np.empty((len(rows), *shape[1:]), dtype=np.float32)
            per = max(1, _READ_BYTES // row_bytes)
            lo = 0
            for a in range(0, int(shape[0]), per):
                b = min(int(shape[0]), a + per)
                buf = f.read((b - a) * row_bytes)
                hi = int(np.searchsorted(rows, b))
                if hi > lo:
                    chunk = np.frombuffer(buf, dtype=dtype).reshape(b - a, *shape[1:])
                    X[lo:hi] = chunk[rows[lo:hi] - a]
                lo = hi
    _DATA_CACHE.clear()
    _DATA_CACHE[key] = (X, y)
    return X, y


def _check_model_code(model: dict, built: Any) -> None:
    """Refuse to train a factory model whose code here (this pool process or Ray node) is not the
    committed code (specs/06 section 5b): its steps would not replay under that code."""
    from verifiable_mu._modelcode import ModelCodeError, compare_files, locate_source
    from verifiable_mu.training import structure_digest_of

    from ._errors import WorkspaceError

    code = model["code"]
    try:
        why = compare_files(code["files"], locate_source(str(model["name"]).partition(":")[0]))
    except ModelCodeError as e:
        why = str(e)
    if why is None and structure_digest_of(built).hex() != code["structure"]:
        why = "the built model's structure (parameter names, shapes, dtypes) differs"
    if why is not None:
        raise WorkspaceError(f"this worker's model code differs from the committed code: {why}")


def _check_platform(logged: dict, device: object, threads: int) -> None:
    """Refuse to add steps that a replay on the logged platform would not reproduce bit for bit:
    a worker (a pool process, a Ray node) whose kernels, BLAS path or libraries differ from the
    workspace's logged platform (specs/06-training.md section 5)."""
    from verifiable_mu._platform import platform_differences
    from verifiable_mu.training import platform_info

    from ._errors import WorkspaceError

    here = platform_info(device, threads)  # type: ignore[arg-type]
    # A log written before the fingerprint lacks its fields: only what it logged can be held to.
    diffs = platform_differences({**here, **logged}, here)
    if diffs:
        raise WorkspaceError(
            "this machine would not reproduce the workspace's logged training bit for bit ("
            + "; ".join(diffs)
            + "): train and forget where the workspace was created, with the same environment"
        )


def _diverged(task: ShardTask, stage: int, step: int, why: str) -> Exception:
    from ._errors import TrainingDiverged

    return TrainingDiverged(
        f"training diverged in shard {task.shard}, stage {stage}, at step {step} ({why}); nothing of this stage "
        f"was committed. Lower the learning rate (--lr, now {task.hyper['lr']}) or scale the features (vmu init --standardize), in a new "
        "workspace: the committed configuration cannot change"
    )


def all_finite(t: Any) -> bool:
    """Whether every value of a CPU float32 tensor is finite, from one float64 sum: a sum of
    float32 values (each below 2^128 in magnitude) cannot overflow float64, and an infinity or
    a NaN among them makes it infinite or NaN (``tests/test_prover_fast_paths.py`` checks it
    against ``torch.isfinite``). One pass, no temporary tensor of flags."""
    with np.errstate(invalid="ignore"):  # inf + -inf is NaN: the answer, not a problem
        return math.isfinite(float(t.numpy().sum(dtype=np.float64)))


def _finite(ckpt: dict, task: ShardTask, stage: int, step: int) -> dict:
    """``ckpt`` if every weight and momentum value is finite; else the divergence error."""
    for name, t in ckpt.items():
        if not all_finite(t):
            raise _diverged(task, stage, step, f"{name} is not finite")
    return ckpt


def train_shard(task: ShardTask) -> list[StageResult]:
    """Run the task's stages from its start checkpoint; return what the driver must log. Its
    checkpoint files are in place and durable when it returns."""
    out, batch = train_shard_staged(task)
    if batch is not None:
        try:
            t0 = time.perf_counter()
            batch.commit()
            if out:
                out[-1].seconds += time.perf_counter() - t0
        finally:
            batch.discard()
    return out


def train_shard_staged(task: ShardTask) -> tuple[list[StageResult], DurableBatch | None]:
    """:func:`train_shard` without the last step: the checkpoint files are written but only
    staged in the returned batch (None for a task that records nothing), which the caller must
    commit before the driver logs the results (the inline backend commits it while the next
    task trains)."""
    from verifiable_mu.training import (
        Hyper,
        ModelSpec,
        build_model,
        configure_determinism,
        load_checkpoint,
        load_into_model,
        prepare_model,
        resolve_device,
    )

    configure_determinism(task.threads)
    device = resolve_device(task.device)
    if task.record and task.platform is not None:
        _check_platform(task.platform, device, task.threads)
    spec = ModelSpec.from_json(task.model)
    hyper = Hyper.from_json(task.hyper)
    built = build_model(spec, init_seed=0)
    if task.record and "code" in task.model:
        _check_model_code(task.model, built)
    model = prepare_model(built, hyper).to(device)
    ckpt = load_checkpoint(os.path.join(task.store, task.start_checkpoint.hex() + ".safetensors"))
    momentum = load_into_model(model, ckpt, device)
    # Checkpoints are written synchronously: on a writer thread (tried) the GIL hand-offs cost
    # the training loop more than the hashing and fsync they hid (bench: +56 ms against +29 ms).
    # They are made durable together, once per task (one file-system sync, not an fsync per
    # file): the driver logs their digests only after that.
    batch = DurableBatch(task.store) if task.record else None
    try:
        return _train_stages(task, model, momentum, hyper, device, batch), batch
    except BaseException:
        if batch is not None:
            batch.discard()  # the staged files' temporary names
        raise


def _batch_hex(task: ShardTask, st: StageTask) -> np.ndarray | None:
    """Format 1 lists a batch's commitments: each as 64 hex characters, one gather and tobytes
    per step (None for format 2 or an unrecorded run)."""
    if task.record and task.log_format == 1:
        return np.array([c.hex().encode("ascii") for c in st.commitments], dtype="S64")
    return None


def _stage_end_checkpoint(task: ShardTask, stage: int, step: int, model: Any, momentum: Any, batch: DurableBatch | None) -> bytes:
    """The digest of the stage-end checkpoint, saved to the store (``b""`` for plain SISA, which
    still takes the stage-end state, in memory, to be able to unlearn)."""
    from verifiable_mu.training import checkpoint_from_model, save_checkpoint

    if task.record:
        return save_checkpoint(_finite(checkpoint_from_model(model, momentum), task, stage, step), task.store, batch=batch)
    _ = checkpoint_from_model(model, momentum)
    return b""


def _train_stages(
    task: ShardTask, model: Any, momentum: Any, hyper: Any, device: Any, batch: DurableBatch | None
) -> list[StageResult]:
    import torch

    from verifiable_mu.training import checkpoint_from_model, save_checkpoint, step_seed, train_step

    # Only the rows this task trains on (every stage's rows are among them).
    needed = np.unique(np.concatenate([np.asarray(st.rows, dtype=np.int64) for st in task.stages] or [np.empty(0, np.int64)]))
    X_all, y_all = _load_rows(task.data_path, needed)
    scale = None if task.scaling is None else Scaling.from_json(task.scaling, int(np.prod(X_all.shape[1:]))).apply
    B = hyper.batch_size
    lr_json = canonical_json(task.hyper["lr"])
    step = task.start_step
    out: list[StageResult] = []
    for st in task.stages:
        t0 = time.perf_counter()
        res = StageResult(stage=st.stage)
        rows = np.asarray(st.rows, dtype=np.int64)
        at = np.searchsorted(needed, rows)  # the stage's rows within the loaded ones
        X = torch.from_numpy(X_all[at] if scale is None else scale(X_all[at])).to(device)
        y = torch.from_numpy(y_all[at]).to(device)
        n = len(rows)
        rows32 = rows.astype("<i4")  # the prover's own record of each batch: one gather and tobytes
        commits = _batch_hex(task, st)
        in_stage = 0
        total = st.epochs * ((n + B - 1) // B)
        for epoch in range(st.epochs):
            perm = epoch_order(
                task.run_seed, shard=task.shard, generation=task.generation, stage=st.stage, epoch=epoch, n=n
            )
            # Format 2, float32: one template per epoch, two numbers per step.
            template = (
                step_body_template(shard=task.shard, generation=task.generation, stage=st.stage, epoch=epoch, lr_json=lr_json)
                if task.record and commits is None and not hyper.portable
                else None
            )
            for b in range(0, n, B):
                idx = perm[b : b + B]
                seed = step_seed(
                    task.run_seed, shard=task.shard, generation=task.generation, stage=st.stage, epoch=epoch, step=step
                )
                ti = torch.from_numpy(idx).to(device)
                try:
                    loss, hints = train_step(model, momentum, X[ti], y[ti], hyper, seed)
                except FloatingPointError as e:  # a portable step's gradient went non-finite
                    raise _diverged(task, st.stage, step, str(e)) from e
                if not math.isfinite(loss):
                    raise _diverged(task, st.stage, step, f"the batch loss is {loss}")
                step += 1
                in_stage += 1
                if task.record:
                    body = template % (seed, step - 1) if template is not None else step_body_json(
                        shard=task.shard,
                        generation=task.generation,
                        stage=st.stage,
                        epoch=epoch,
                        step=step - 1,
                        seed=seed,
                        lr_json=lr_json,
                        batch_hex=None if commits is None else commits[idx].tobytes(),
                        hints=hints if hyper.portable else None,
                    )
                    res.steps.append(StepRecord(st.stage, epoch, step - 1, seed, body, rows32[idx].tobytes()))
                    if task.checkpoint_every and in_stage % task.checkpoint_every == 0 and in_stage < total:
                        ck = _finite(checkpoint_from_model(model, momentum), task, st.stage, step)
                        res.checkpoints.append((step, save_checkpoint(ck, task.store, batch=batch)))
        res.checkpoints.append((step, _stage_end_checkpoint(task, st.stage, step, model, momentum, batch)))
        res.seconds = time.perf_counter() - t0
        out.append(res)
    return out
