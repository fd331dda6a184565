"""The unlearning phase: a deletion request's records checked, its plan (what it retrains, and
where its transcript points in the log before it) made durable with the rollback in one
transaction, and the signed transcript written once the retraining is done."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from verifiable_mu._canonical import canonical_json
from verifiable_mu._dsse import sign_statement
from verifiable_mu._keys import SigningKey
from verifiable_mu._log import LogEntry
from verifiable_mu._seeds import atomic_write
from verifiable_mu._sorted_tree import SortedTree
from verifiable_mu._tags import TAG_REQUEST, tagged_hash

from ._config import ForgetReport, WorkspaceConfig
from ._errors import BadInput, WorkspaceError
from ._state import DeletionPlan, Record, State

__all__ = ["check_ids", "validate_ids", "plan_request", "open_request", "write_transcript", "report"]


def check_ids(ids: Any) -> list[str]:
    """``ids`` as a list of strings; :class:`BadInput` for one string (or bytes, or a dict) in its place."""
    if isinstance(ids, (str, bytes, bytearray)) or not hasattr(ids, "__iter__") or isinstance(ids, dict):
        one = ids.decode() if isinstance(ids, (bytes, bytearray)) else ids
        raise BadInput(
            f"ids must be a list of record ids, not a {type(ids).__name__}"
            + (f" (for one record: [{one!r}])" if isinstance(one, str) else "")
        )
    return [str(i) for i in ids]


def validate_ids(state: State, ids: Sequence[str], *, commits_test_split: Callable[[], bool]) -> list[Record]:
    """Each id's record; :class:`BadInput` for none, a repeated, unknown or deleted id, and for a
    test record where the log does not commit the test split (``commits_test_split``)."""
    if not ids:
        raise BadInput("no record ids were given")
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise BadInput(f"record id {i!r} is given twice")
        seen.add(i)
    out = []
    for i in ids:
        row = state.record(i)
        if row is None:
            raise BadInput(f"unknown record id {i!r}")
        rownum, role, shard, slc, commitment, key, deleted_by = row
        if deleted_by is not None:
            raise BadInput(f"record {i!r} was already deleted (request {deleted_by})")
        if role not in ("train", "test", "audit"):
            raise WorkspaceError(f"record {i!r} has the unknown role {role!r}: the workspace is damaged")
        if role == "test" and not commits_test_split():
            raise BadInput(f"record {i!r} is in the test split, which this workspace's log does not commit "
                           "(it was committed by an older release): its deletion could not be proven")
        out.append(Record(rownum, i, shard, slc, commitment, key))
    return out


def plan_request(state: State, recs: Sequence[Record], *, batch_of: Callable[[LogEntry], list[bytes]]) -> DeletionPlan:
    """The plan of a request for ``recs``, from the log as it is before the request: each shard's
    first stage to retrain (held-out records retrain nothing), each trained record's slice entry
    and first use, each shard's rollback checkpoint, the model entry."""
    from_stage: dict[int, int] = {}
    trained = [r for r in recs if r.shard is not None and r.slice is not None]
    for r in trained:
        assert r.shard is not None and r.slice is not None
        from_stage[r.shard] = min(from_stage.get(r.shard, r.slice + 1), r.slice + 1)  # stages are 1-based
    first_use: dict[str, int] = {}
    old_slice: dict[str, int] = {}
    for r in trained:
        assert r.shard is not None and r.slice is not None
        first, last = state.stage_step_entries(r.shard, r.slice + 1)
        found = next((e.index for e in state.log.entries(first, last + 1)
                      if e.kind == "step" and r.commitment in batch_of(e)), None)  # fmt: skip
        if found is None:
            raise WorkspaceError(f"record {r.id!r} is not used by any logged step of its slice: the log is damaged")
        first_use[r.commitment.hex()] = found
        old_slice[r.commitment.hex()] = state.slice_entry(r.shard, r.slice)
    return DeletionPlan(
        from_stage=from_stage,
        first_use=first_use,
        old_slice=old_slice,
        rollback={s: state.stage_checkpoint_entry(s, r - 1) for s, r in from_stage.items()},
        model_before=int(state.meta("model_index") or -1),
    )


def open_request(
    state: State, cfg: WorkspaceConfig, ids: Sequence[str], recs: Sequence[Record], plan: DeletionPlan, *,
    started: float, clock: float,
) -> int:
    """Log the deletion entry, mark the records deleted, store the request with its plan, roll the
    affected shards back (new generation, new slice trees) and log the new dataset root, all in one
    transaction: the plan is durable before any retraining starts, and a resumed run finishes the
    request with it. Returns the request's number."""
    head_before = state.ensure_signed_head()
    size_before = state.log.size
    with state.log.transaction():
        n = state.next_request()
        request_digest = tagged_hash(TAG_REQUEST, canonical_json({"n": str(n), "ids": sorted(ids)}))
        del_idx = state.log.append("deletion", {
            "request": str(n),
            "request_digest": request_digest.hex(),
            "commitments": sorted(r.commitment.hex() for r in recs),
            "shards": sorted(plan.from_stage),
        })  # fmt: skip
        state.open_request(n, ids, rows=(r.row for r in recs), deletion_index=del_idx, size_before=size_before,
                           head_before=head_before, started=started, plan=plan)  # fmt: skip
        state.start_account(f"request_{n}", clock)  # the request's clock started before its head was signed
        state.charge_phase()
        for shard, from_stage in sorted(plan.from_stage.items()):
            gen = state.new_generation(shard, from_stage)
            for r in range(from_stage - 1, cfg.slices):
                tree = SortedTree.build(state.slice_records(shard, r))
                idx = state.log.append(
                    "slice", {"shard": shard, "slice": r, "generation": gen, "root": tree.root.hex(), "size": str(len(tree))}
                )
                state.insert_slices([(shard, r, gen, tree.root, len(tree), idx)])
        state.log.append("dataset", {"version": n, "root": state.dataset_root().hex(), "slices": cfg.shards * cfg.slices})
    return n


def write_transcript(statement: dict[str, Any], key: SigningKey, directory: str, n: int) -> str:
    """Sign request ``n``'s transcript statement and write its DSSE envelope; its path."""
    env = sign_statement(statement, [key])
    path = os.path.join(directory, f"{n:06d}.dsse.json")
    atomic_write(path, env.to_bytes())
    return path


def report(
    state: State, cfg: WorkspaceConfig, n: int, plan: DeletionPlan, *, steps: int, seconds: float, steps_total: int,
    transcript_path: str,
) -> ForgetReport:
    """What ``forget`` reports for finished request ``n``: ``steps`` retrained by this run,
    ``seconds`` and ``steps_total`` over all its runs, compared with the original training's."""
    full, full_steps = state.account_totals("train")
    head = state.log.latest_tree_head()
    return ForgetReport(
        request=n,
        deleted=state.request_ids(n),
        shards_retrained=tuple(sorted(plan.from_stage)),
        slices_retrained=sum(cfg.slices - (r - 1) for r in plan.from_stage.values()),
        steps=steps,
        seconds=seconds,
        full_training_seconds=full,
        speedup=full / seconds if seconds > 0 else float("inf"),
        steps_total=steps_total,
        full_training_steps=full_steps,
        step_ratio=full_steps / steps_total if steps_total else float("inf"),
        transcript_path=transcript_path,
        tree_head=head.note.decode() if head else "",
    )
