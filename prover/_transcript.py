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

from verifiable_mu._dsse import PREDICATE_DELETION, make_statement
from verifiable_mu._log import TransparencyLog
from verifiable_mu._sorted_tree import SortedTree

__all__ = ["build_transcript", "TRANSCRIPT_VERSION", "TranscriptSource"]


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


TRANSCRIPT_VERSION = 1


def _slice_tree(db: Any, shard: int, slc: int, after: int) -> SortedTree:
    """The sorted tree of slice (shard, slc) as it stood once request ``after`` was done: its
    training records that no request up to ``after`` deleted (``after = n - 1``: before request n)."""
    rows = db.execute(
        "SELECT key, commitment FROM p_records WHERE role='train' AND shard=? AND slice=? "
        "AND (deleted_by IS NULL OR deleted_by>?)",
        (shard, slc, after),
    ).fetchall()
    return SortedTree.build((k, c) for k, c in rows)


def _disclose(ws: TranscriptSource, index: int, tree_size: int) -> dict[str, Any]:
    e = ws.log.entry(index)
    return {"entry": e.to_json(), "inclusion": ws.log.inclusion_proof(index, tree_size).to_json()}


def build_transcript(ws: TranscriptSource, n: int) -> dict[str, Any]:
    """The in-toto Statement (not yet signed) for finished request ``n``."""
    db = ws.log.connection
    row = db.execute(
        "SELECT ids, deletion_index, size_before, head_before, plan FROM p_requests WHERE n=?", (n,)
    ).fetchone()
    ids_json, del_idx, size_before, head_before, evidence_json = row
    evidence = json.loads(evidence_json)
    plan = {int(k): int(v) for k, v in evidence["plan"].items()}
    head_after = ws.log.latest_tree_head()
    assert head_after is not None
    size_after = head_after.size
    slices = ws.config.slices

    deleted = db.execute(
        "SELECT id, shard, slice, commitment, key FROM p_records WHERE deleted_by=? AND role='train' ORDER BY key", (n,)
    ).fetchall()
    records = []
    for _rid, shard, slc, commitment, key in deleted:
        # The slice tree this record was in: the live records of that slice before this request.
        old_tree = _slice_tree(db, shard, slc, n - 1)
        hexc = commitment.hex()
        records.append(
            {
                "commitment": hexc,
                "key": key.hex(),
                "shard": shard,
                "slice": slc,
                "old_slice": _disclose(ws, evidence["old_slice"][hexc], size_after),
                "membership": old_tree.membership_proof(key).to_json(),
                "first_use": _disclose(ws, evidence["first_use"][hexc], size_after),
            }
        )

    shards = []
    for shard, from_stage in sorted(plan.items()):
        gen = db.execute("SELECT generation FROM p_shards WHERE shard=?", (shard,)).fetchone()[0]
        shard_keys = [k for _, s, _, _, k in deleted if s == shard]
        slice_items = []
        for r in range(slices):
            idx = db.execute(
                "SELECT log_index FROM p_slices WHERE shard=? AND slice=? ORDER BY generation DESC LIMIT 1", (shard, r)
            ).fetchone()[0]
            tree = _slice_tree(db, shard, r, n)
            slice_items.append(
                {
                    "slice": _disclose(ws, idx, size_after),
                    "non_membership": [tree.non_membership_proof(k).to_json() for k in shard_keys],
                }
            )
        first, first_ckpt, end_ckpt = db.execute(
            "SELECT MIN(first_step_index), MIN(ckpt_index), MAX(ckpt_index) FROM p_stage WHERE shard=? AND generation=?",
            (shard, gen),
        ).fetchone()
        if first is None or first_ckpt < first:  # e.g. a whole shard deleted: stages without steps
            first = first_ckpt
        shards.append(
            {
                "shard": shard,
                "from_stage": from_stage,
                "generation": gen,
                "rollback": _disclose(ws, evidence["rollback"][str(shard)], size_after),
                "slices": slice_items,
                "retraining": {"start": str(first), "end": str(end_ckpt + 1)},
                "final_checkpoint": _disclose(ws, end_ckpt, size_after),
            }
        )

    held_out = _held_out(ws, n, size_after)
    model_after_idx = int(ws._meta("model_index") or -1)
    model_after = ws.log.entry(model_after_idx)
    predicate = {
        "version": TRANSCRIPT_VERSION,
        "origin": ws.log.origin,
        "request": {"n": str(n), "deletion": _disclose(ws, del_idx, size_after), "count": len(deleted)},
        "records": records,
        "shards": shards,
        **({"held_out": held_out} if held_out is not None else {}),
        "model_before": _disclose(ws, evidence["model_before"], size_after),
        "model_after": _disclose(ws, model_after_idx, size_after),
        "log": {
            "head_before": head_before.decode("utf-8"),
            "head_after": head_after.note.decode("utf-8"),
            "consistency": ws.log.consistency_proof(size_before, size_after).to_json(),
        },
    }
    # One subject per constituent of the model after the request, in shard order: the checkpoint
    # file's path in the store and the SHA-256 of its bytes, what any in-toto tool hashes; the
    # model digest is in the predicate (model_after).
    subjects = []
    for d in model_after.body["shards"]:
        with open(os.path.join(ws.store, f"{d}.safetensors"), "rb") as f:
            subjects.append((f"checkpoints/{d}.safetensors", {"sha256": hashlib.sha256(f.read()).hexdigest()}))
    return make_statement(
        subjects=subjects,
        predicate_type=PREDICATE_DELETION,
        predicate=predicate,
    )


def _held_out(ws: TranscriptSource, n: int, size_after: int) -> dict[str, Any] | None:
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
    shards, slices = ws.config.shards, ws.config.slices
    items = []
    for s in range(shards):
        for r in range(slices):
            idx = db.execute(
                "SELECT log_index FROM p_slices WHERE shard=? AND slice=? AND log_index<? "
                "ORDER BY generation DESC LIMIT 1",
                (s, r, size_after),
            ).fetchone()[0]
            tree = _slice_tree(db, s, r, n)
            items.append({"slice": _disclose(ws, idx, size_after), "absence": tree.absence_proof(keys).to_json()})
    return {
        "records": [
            {"commitment": c.hex(), "key": k.hex(), "split": role, "membership": trees[role].membership_proof(k).to_json()}
            for role, c, k in rows
        ],
        "audit": _disclose(ws, 2 + shards * slices, size_after),
        "slices": items,
    }
