"""Deletion transcripts: the in-toto statement the prover signs for one request.

The format is specified in specs/07-deletion-transcript.md. Every claim in it points into the
transparency log with an inclusion proof against the signed tree head *after* the request, and
the heads before and after are linked by a consistency proof.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Protocol

from verifiable_mu import _wire_transcript as wire
from verifiable_mu._log import TransparencyLog
from verifiable_mu._sorted_tree import SortedTree
from verifiable_mu._wire_bundle import CommitBlock
from verifiable_mu._wire_entries import ModelBody
from verifiable_mu._wire_transcript import TRANSCRIPT_VERSION, Disclosure, Transcript

from ._state import State

__all__ = ["build_transcript", "transcript_of", "TRANSCRIPT_VERSION", "TranscriptSource"]


class _Grid(Protocol):
    @property
    def shards(self) -> int: ...
    @property
    def slices(self) -> int: ...


class TranscriptSource(Protocol):
    """What a transcript is built from: :class:`prover._workspace.Workspace` is one. A protocol,
    so that this module does not import the workspace module, which imports it (no import
    cycle, pyproject.toml's import-linter contracts)."""

    @property
    def log(self) -> TransparencyLog: ...
    @property
    def store(self) -> str: ...
    @property
    def config(self) -> _Grid: ...
    @property
    def _state(self) -> State: ...


def _slice_tree(state: State, shard: int, slc: int, after: int) -> SortedTree:
    """The sorted tree of slice (shard, slc) as it stood once request ``after`` was done: its
    training records that no request up to ``after`` deleted (``after = n - 1``: before request n)."""
    return SortedTree.build(state.slice_records(shard, slc, after=after))


def _disclose(ws: TranscriptSource, index: int, tree_size: int) -> Disclosure:
    return Disclosure(entry=ws.log.entry(index), inclusion=ws.log.inclusion_proof(index, tree_size))


class _Request:
    """Finished request ``n`` as the workspace recorded it, and the tree size after it."""

    def __init__(self, ws: TranscriptSource, n: int) -> None:
        self.ws, self.n, self.state = ws, n, ws._state
        self.deletion_index, self.size_before, self.head_before = self.state.request_row(n)
        self.plan = self.state.request_plan(n)
        head_after = ws.log.latest_tree_head()
        assert head_after is not None
        self.head_after = head_after
        self.size_after = head_after.size
        #: (id, shard, slice, commitment, key) of the training records the request deleted, by key
        self.deleted = self.state.deleted_training(n)

    def disclose(self, index: int) -> Disclosure:
        return _disclose(self.ws, index, self.size_after)


def _record_claims(r: _Request) -> tuple[wire.RecordClaim, ...]:
    """One claim per deleted training record: its old slice (the live records of that slice
    before this request), its membership there, and its first use."""
    out = []
    for _rid, shard, slc, commitment, key in r.deleted:
        old_tree = _slice_tree(r.state, shard, slc, r.n - 1)
        hexc = commitment.hex()
        out.append(wire.RecordClaim(
            commitment=commitment, key=key, shard=shard, slice=slc,
            old_slice=r.disclose(r.plan.old_slice[hexc]),
            membership=old_tree.membership_proof(key),
            first_use=r.disclose(r.plan.first_use[hexc]),
        ))
    return tuple(out)


def _shard_claim(r: _Request, shard: int, from_stage: int) -> wire.ShardClaim:
    """A retrained shard: its rollback, every current slice with the non-membership of the
    shard's deleted keys, the retraining's range of entries and its final checkpoint."""
    state = r.state
    gen = state.shard_generation(shard)[0]
    shard_keys = [k for _, s, _, _, k in r.deleted if s == shard]
    slices = []
    for j in range(r.ws.config.slices):
        tree = _slice_tree(state, shard, j, r.n)
        slices.append(wire.SliceClaim(slice=r.disclose(state.slice_entry(shard, j)),
                                      non_membership=tuple(tree.non_membership_proof(k) for k in shard_keys)))
    first, first_ckpt, end_ckpt = state.retraining_span(shard, gen)
    assert first_ckpt is not None and end_ckpt is not None  # a retrained shard has stages in its generation
    if first is None or first_ckpt < first:  # e.g. a whole shard deleted: stages without steps
        first = first_ckpt
    return wire.ShardClaim(
        shard=shard, from_stage=from_stage, generation=gen,
        rollback=r.disclose(r.plan.rollback[shard]), slices=tuple(slices),
        retraining_start=first, retraining_end=end_ckpt + 1, final_checkpoint=r.disclose(end_ckpt),
    )


def _subject_files(ws: TranscriptSource, model_after: ModelBody) -> tuple[tuple[bytes, bytes], ...]:
    """One subject per constituent of the model after the request, in shard order: the
    checkpoint file's content digest (its name in the store) and the SHA-256 of its bytes, what
    any in-toto tool hashes; the model digest is in the predicate (model_after)."""
    out = []
    for d in model_after.shards:
        with open(os.path.join(ws.store, f"{d.hex()}.safetensors"), "rb") as f:
            out.append((d, hashlib.sha256(f.read()).digest()))
    return tuple(out)


def transcript_of(ws: TranscriptSource, n: int) -> Transcript:
    """The deletion transcript (not yet signed) of finished request ``n``."""
    r = _Request(ws, n)
    model_after_idx = int(ws._state.meta("model_index") or -1)
    model_after = ModelBody.parse(ws.log.entry(model_after_idx))
    return Transcript(
        subject_digest=None,
        subject_files=_subject_files(ws, model_after),
        origin=ws.log.origin,
        request=n,
        deletion=r.disclose(r.deletion_index),
        count=len(r.deleted),
        records=_record_claims(r),
        shards=tuple(_shard_claim(r, shard, from_stage) for shard, from_stage in sorted(r.plan.from_stage.items())),
        model_before=r.disclose(r.plan.model_before),
        model_after=r.disclose(model_after_idx),
        held_out=_held_out(ws, n, r.size_after),
        head_before=r.head_before,
        head_after=r.head_after.note,
        consistency=ws.log.consistency_proof(r.size_before, r.size_after),
    )


def build_transcript(ws: TranscriptSource, n: int) -> dict[str, Any]:
    """The in-toto Statement (not yet signed) for finished request ``n``."""
    return transcript_of(ws, n).to_json()


def _held_out(ws: TranscriptSource, n: int, size_after: int) -> wire.HeldOut | None:
    """The held-out part of request ``n`` (specs/07, ``held_out``): its test and audit records,
    each proven in the committed tree of its split, and one absence proof of all their keys in
    every current slice of every shard after the request. None when the request has none."""
    state = ws._state
    rows = state.deleted_held_out(n)
    if not rows:
        return None
    trees = {role: SortedTree.build(state.split_records(role)) for role in sorted({r for r, _, _ in rows})}
    keys = [k for _, _, k in rows]
    block = CommitBlock(ws.config.shards, ws.config.slices)
    items = []
    for s in range(block.shards):
        for j in range(block.slices):
            idx = state.slice_entry(s, j, before=size_after)
            tree = _slice_tree(state, s, j, n)
            items.append(wire.HeldOutSlice(slice=_disclose(ws, idx, size_after), absence=tree.absence_proof(keys)))
    return wire.HeldOut(
        records=tuple(wire.HeldOutRecord(commitment=c, key=k, split=role, membership=trees[role].membership_proof(k))
                      for role, c, k in rows),
        audit=_disclose(ws, block.audit, size_after),
        slices=tuple(items),
    )
