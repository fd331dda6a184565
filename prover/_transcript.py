"""Deletion transcripts: the in-toto statement the prover signs for one request.

The format is specified in specs/07-deletion-transcript.md. Every claim in it points into the
transparency log with an inclusion proof against the signed tree head *after* the request, and
the heads before and after are linked by a consistency proof.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Protocol

from verifiable_mu import _wire_transcript as wire
from verifiable_mu._log import TransparencyLog
from verifiable_mu._sorted_tree import SortedTree
from verifiable_mu._wire_bundle import CommitBlock
from verifiable_mu._wire_entries import ModelBody
from verifiable_mu._wire_transcript import TRANSCRIPT_VERSION, Disclosure, Transcript

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
    def _meta(self, key: str) -> str | None: ...



def _slice_tree(db: Any, shard: int, slc: int, after: int) -> SortedTree:
    """The sorted tree of slice (shard, slc) as it stood once request ``after`` was done: its
    training records that no request up to ``after`` deleted (``after = n - 1``: before request n)."""
    rows = db.execute(
        "SELECT key, commitment FROM p_records WHERE role='train' AND shard=? AND slice=? "
        "AND (deleted_by IS NULL OR deleted_by>?)",
        (shard, slc, after),
    ).fetchall()
    return SortedTree.build((k, c) for k, c in rows)


def _disclose(ws: TranscriptSource, index: int, tree_size: int) -> Disclosure:
    return Disclosure(entry=ws.log.entry(index), inclusion=ws.log.inclusion_proof(index, tree_size))


class _Request:
    """Finished request ``n`` as the workspace recorded it, and the tree size after it."""

    def __init__(self, ws: TranscriptSource, n: int) -> None:
        self.ws, self.n, self.db = ws, n, ws.log.connection
        _ids, self.deletion_index, self.size_before, self.head_before, evidence_json = self.db.execute(
            "SELECT ids, deletion_index, size_before, head_before, plan FROM p_requests WHERE n=?", (n,)
        ).fetchone()
        self.evidence: dict[str, Any] = json.loads(evidence_json)
        self.plan = {int(k): int(v) for k, v in self.evidence["plan"].items()}
        head_after = ws.log.latest_tree_head()
        assert head_after is not None
        self.head_after = head_after
        self.size_after = head_after.size
        #: (id, shard, slice, commitment, key) of the training records the request deleted, by key
        self.deleted: list[tuple[str, int, int, bytes, bytes]] = self.db.execute(
            "SELECT id, shard, slice, commitment, key FROM p_records WHERE deleted_by=? AND role='train' ORDER BY key",
            (n,),
        ).fetchall()

    def disclose(self, index: int) -> Disclosure:
        return _disclose(self.ws, index, self.size_after)


def _record_claims(r: _Request) -> tuple[wire.RecordClaim, ...]:
    """One claim per deleted training record: its old slice (the live records of that slice
    before this request), its membership there, and its first use."""
    out = []
    for _rid, shard, slc, commitment, key in r.deleted:
        old_tree = _slice_tree(r.db, shard, slc, r.n - 1)
        hexc = commitment.hex()
        out.append(wire.RecordClaim(
            commitment=commitment, key=key, shard=shard, slice=slc,
            old_slice=r.disclose(r.evidence["old_slice"][hexc]),
            membership=old_tree.membership_proof(key),
            first_use=r.disclose(r.evidence["first_use"][hexc]),
        ))
    return tuple(out)


def _shard_claim(r: _Request, shard: int, from_stage: int) -> wire.ShardClaim:
    """A retrained shard: its rollback, every current slice with the non-membership of the
    shard's deleted keys, the retraining's range of entries and its final checkpoint."""
    db = r.db
    gen = db.execute("SELECT generation FROM p_shards WHERE shard=?", (shard,)).fetchone()[0]
    shard_keys = [k for _, s, _, _, k in r.deleted if s == shard]
    slices = []
    for j in range(r.ws.config.slices):
        idx = db.execute(
            "SELECT log_index FROM p_slices WHERE shard=? AND slice=? ORDER BY generation DESC LIMIT 1", (shard, j)
        ).fetchone()[0]
        tree = _slice_tree(db, shard, j, r.n)
        slices.append(wire.SliceClaim(slice=r.disclose(idx),
                                 non_membership=tuple(tree.non_membership_proof(k) for k in shard_keys)))
    first, first_ckpt, end_ckpt = db.execute(
        "SELECT MIN(first_step_index), MIN(ckpt_index), MAX(ckpt_index) FROM p_stage WHERE shard=? AND generation=?",
        (shard, gen),
    ).fetchone()
    if first is None or first_ckpt < first:  # e.g. a whole shard deleted: stages without steps
        first = first_ckpt
    return wire.ShardClaim(
        shard=shard, from_stage=from_stage, generation=gen,
        rollback=r.disclose(r.evidence["rollback"][str(shard)]), slices=tuple(slices),
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
    model_after_idx = int(ws._meta("model_index") or -1)
    model_after = ModelBody.parse(ws.log.entry(model_after_idx))
    return Transcript(
        subject_digest=None,
        subject_files=_subject_files(ws, model_after),
        origin=ws.log.origin,
        request=n,
        deletion=r.disclose(r.deletion_index),
        count=len(r.deleted),
        records=_record_claims(r),
        shards=tuple(_shard_claim(r, shard, from_stage) for shard, from_stage in sorted(r.plan.items())),
        model_before=r.disclose(r.evidence["model_before"]),
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
    db = ws.log.connection
    rows = db.execute(
        "SELECT role, commitment, key FROM p_records WHERE deleted_by=? AND role IN ('test', 'audit') ORDER BY key",
        (n,),
    ).fetchall()
    if not rows:
        return None
    trees = {
        role: SortedTree.build(
            (k, c) for k, c in db.execute("SELECT key, commitment FROM p_records WHERE role=?", (role,)).fetchall()
        )
        for role in sorted({r for r, _, _ in rows})
    }
    keys = [k for _, _, k in rows]
    block = CommitBlock(ws.config.shards, ws.config.slices)
    items = []
    for s in range(block.shards):
        for j in range(block.slices):
            idx = db.execute(
                "SELECT log_index FROM p_slices WHERE shard=? AND slice=? AND log_index<? "
                "ORDER BY generation DESC LIMIT 1",
                (s, j, size_after),
            ).fetchone()[0]
            tree = _slice_tree(db, s, j, n)
            items.append(wire.HeldOutSlice(slice=_disclose(ws, idx, size_after), absence=tree.absence_proof(keys)))
    return wire.HeldOut(
        records=tuple(wire.HeldOutRecord(commitment=c, key=k, split=role, membership=trees[role].membership_proof(k))
                      for role, c, k in rows),
        audit=_disclose(ws, block.audit, size_after),
        slices=tuple(items),
    )
