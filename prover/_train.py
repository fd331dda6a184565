"""The training phase: the work left for each shard, running it (inline, in processes or on Ray),
and committing each finished stage's steps and checkpoints to the log, one transaction a stage."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np

from verifiable_mu._tags import TAG_MODEL, tagged_hash

from . import _sisa
from ._config import WorkspaceConfig
from ._errors import WorkspaceError
from ._state import State

__all__ = ["RunOptions", "TaskSettings", "shard_task", "commit_stage", "run_shards", "log_model", "shard_digests"]

#: Below this many estimated steps, ``workers=0`` (auto) trains inline instead of starting processes.
AUTO_PARALLEL_STEPS = 20_000


class RunOptions(TypedDict):
    """Where a run's shard tasks run (:func:`run_shards`)."""

    backend: str
    workers: int | None
    ray_address: str | None


@dataclass(frozen=True, slots=True)
class TaskSettings:
    """What every shard task of a run shares (see :class:`prover._sisa.ShardTask`)."""

    model: dict[str, Any]
    device: str
    store: str
    data_path: str
    record: bool
    scaling: dict[str, Any] | None
    platform: dict[str, Any] | None


def shard_task(
    state: State, cfg: WorkspaceConfig, shard: int, settings: TaskSettings, *, from_scratch: bool = False
) -> _sisa.ShardTask | None:
    """The work left for ``shard`` (None when complete); ``from_scratch``: all stages from the
    initial weights (benchmarks compare that with and without verifiability)."""
    gen, target_from = state.shard_generation(shard)
    if from_scratch:
        gen = 0
        entry = next(e for e in state.log.entries(0, state.log.size) if e.kind == "checkpoint" and e.body["shard"] == shard)
        last_stage, step, digest = 0, 0, bytes.fromhex(entry.body["digest"])
    elif target_from is None:
        return None
    else:
        last_stage, step, digest = state.resume_point(shard, target_from, gen)
    ep = _sisa.stage_epochs(cfg.epochs, cfg.slices)
    stages = []
    by_slice = state.live_rows_by_slice(shard)
    rows_l: list[int] = []
    commits: list[bytes] = []
    for r in range(cfg.slices):
        got = by_slice.get(r, ([], []))
        rows_l += got[0]
        commits += got[1]
        if r + 1 > last_stage:  # stage r + 1 trains on slices 0..r
            stages.append(
                _sisa.StageTask(stage=r + 1, rows=np.asarray(rows_l, dtype=np.int64), commitments=list(commits), epochs=ep)
            )
    return _sisa.ShardTask(
        shard=shard,
        generation=gen,
        start_step=step,
        start_checkpoint=digest,
        stages=stages,
        model=settings.model,
        hyper=cfg.hyper_json(),
        run_seed=cfg.seed,
        device=settings.device,
        threads=cfg.threads,
        checkpoint_every=cfg.checkpoint_every,
        log_format=cfg.log_format,
        store=settings.store,
        data_path=settings.data_path,
        record=settings.record,
        scaling=settings.scaling,
        platform=settings.platform,
    )


def _stage_items(task: _sisa.ShardTask, res: _sisa.StageResult) -> list[tuple[str, dict[str, Any] | bytes]]:
    """A stage's log entries: each step, each checkpoint after the step it follows, and the
    stage-end checkpoint (alone, for an emptied stage without steps)."""

    def checkpoint(step: int, digest: bytes) -> tuple[str, dict[str, Any]]:
        return "checkpoint", {"shard": task.shard, "generation": task.generation, "stage": res.stage, "step": str(step),
                              "digest": digest.hex()}

    ck = dict(res.checkpoints)
    items: list[tuple[str, dict[str, Any] | bytes]] = []
    for s in res.steps:
        items.append(("step", s.body))
        done = s.step + 1
        if done in ck:
            items.append(checkpoint(done, ck[done]))
    if not res.steps:  # an emptied stage: no steps, the stage-end checkpoint all the same
        items.append(checkpoint(*res.checkpoints[-1]))
    return items


def commit_stage(state: State, cfg: WorkspaceConfig, task: _sisa.ShardTask, res: _sisa.StageResult) -> int:
    """Append one stage's steps and checkpoints and move the shard's state, atomically."""
    t_commit = time.perf_counter()
    with state.log.transaction():
        items = _stage_items(task, res)
        rng = state.log.append_many(items)
        step_idx = [rng.start + i for i, (k, _) in enumerate(items) if k == "step"]
        end_step, end_digest = res.checkpoints[-1]
        state.commit_stage(
            task.shard, task.generation, res.stage, (end_step, end_digest, rng.start + len(items) - 1),
            list(zip(step_idx, (s.rows for s in res.steps), strict=True)), last=res.stage == cfg.slices,
        )
        state.charge(len(res.steps), res.seconds + (time.perf_counter() - t_commit))
        state.account_clock = time.perf_counter()  # the driver's next phase starts after this commit
        _fault_point("inside")
    _fault_point("after")
    return len(res.steps)


def run_shards(
    state: State,
    cfg: WorkspaceConfig,
    tasks: list[_sisa.ShardTask],
    *,
    commit: Callable[[_sisa.ShardTask, _sisa.StageResult], int],
    backend: str = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    progress: bool = False,
) -> int:
    """Run shard tasks (in parallel when allowed) and ``commit`` their stages in shard order."""
    from ._backend import run_tasks

    total_stages = sum(len(t.stages) for t in tasks)
    if workers is None:
        workers = cfg.workers
    if workers == 0:
        # auto: a process pool costs seconds to start (each worker imports torch), so small
        # jobs run inline; large ones use min(cores, shards) processes.
        steps_est = sum(st.epochs * -(-len(st.rows) // cfg.batch_size) for t in tasks for st in t.stages)
        workers = 1 if steps_est < AUTO_PARALLEL_STEPS else 0
    bar = _progress(total_stages, "training stages", progress)
    steps = 0
    # Stage commits need atomicity, not an fsync each: in WAL mode synchronous=NORMAL keeps
    # every commit atomic and the database consistent after a crash, and the FULL-synchronous
    # commit that signs the next tree head makes all of them durable before anything is signed.
    try:
        with state.log.relaxed_sync():
            for task, results in run_tasks(tasks, backend=backend, workers=workers, ray_address=ray_address):
                for res in results:
                    steps += commit(task, res)
                    bar(1)
    finally:
        bar(None)
    return steps


def shard_digests(state: State, cfg: WorkspaceConfig) -> list[bytes]:
    """Every shard's final checkpoint digest, in shard order."""
    digests = state.stage_digests(cfg.slices)
    if len(digests) != cfg.shards:
        raise WorkspaceError("not every shard is trained: run 'vmu train' first")
    return digests


def log_model(state: State, cfg: WorkspaceConfig, reason: str, request: int | None) -> int:
    """Inside a transaction: log the model entry over every shard's final checkpoint."""
    digests = shard_digests(state, cfg)
    body: dict[str, Any] = {
        "reason": reason,
        "shards": [d.hex() for d in digests],
        "digest": tagged_hash(TAG_MODEL, b"".join(digests)).hex(),
    }
    if request is not None:
        body["request"] = str(request)
    idx = state.log.append("model", body)
    state.set_meta("model_index", str(idx))
    return idx


_FAULT_COUNT = [0]


def _fault_point(where: str) -> None:
    """Crash-test hook: ``VMU_UNSAFE_FAULT_INJECTION=N:inside|after`` kills the process with
    ``os._exit(137)`` at the N-th stage commit (inside the open transaction, or just after it).
    For tests only; it warns on stderr whenever it is armed."""
    spec = os.environ.get("VMU_UNSAFE_FAULT_INJECTION")
    if not spec:
        return
    n, _, point = spec.partition(":")
    if point != where:
        return
    _FAULT_COUNT[0] += 1
    if _FAULT_COUNT[0] == int(n):
        print(f"vmu: UNSAFE fault injection: killing the process at stage commit {n} ({where})", file=sys.stderr)
        sys.stderr.flush()
        os._exit(137)


def _progress(total: int, desc: str, enabled: bool) -> Callable[[int | None], None]:
    if not enabled or total == 0:
        return lambda _n: None
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="stage", leave=False)

    def update(n: int | None) -> None:
        if n is None:
            bar.close()
        else:
            bar.update(n)

    return update

