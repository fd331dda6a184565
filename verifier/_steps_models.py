"""Steps 15-16 of specs/09-verification.md: models, openings."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from verifiable_mu._canonical import canonical_json
from verifiable_mu._errors import MalformedInput, VerificationFailed
from verifiable_mu._records import RecordOpening, record_key
from verifiable_mu._sorted_tree import SortedTree, record_leaf_hash
from verifiable_mu._tags import TAG_MODEL, TAG_REQUEST, tagged_hash

from ._bounds import check_model_fits, checkpoint_is_finite
from ._entries import CheckpointBody, DeletionBody, Disclosure, ModelBody, StepBody
from ._errors import ModelMismatch, OpeningMismatch
from ._state import Verification
from ._steps_schedule import batch_of


def _model_digest(shards: Sequence[bytes]) -> bytes:
    return tagged_hash(TAG_MODEL, b"".join(shards))


def step_15(v: Verification) -> None:
    cfg, b = v.config, v.bundle
    assert cfg is not None and b is not None
    finals: dict[int, bytes] = {lin.shard: lin.final.digest for lin in v.lineages if lin.generation == 0}
    prev: Disclosure | None = None
    file_sha256: dict[bytes, bytes] = {}
    for t in v.transcripts:
        w = f"request {t.request}"
        mb, ma = v.body(ModelBody.parse, t.model_before.entry), v.body(ModelBody.parse, t.model_after.entry)
        if prev is None:
            if mb.reason != "train" or list(mb.shards) != [finals[s] for s in range(cfg.shards)]:
                raise ModelMismatch(f"{w}: model_before is not the model the original training ended with")
        elif prev.entry.index != t.model_before.entry.index:
            raise ModelMismatch(f"{w}: model_before (entry {t.model_before.entry.index}) is not the previous request's "
                                f"model_after (entry {prev.entry.index})")
        for sc in t.shards:
            finals[sc.shard] = v.body(CheckpointBody.parse, sc.final_checkpoint.entry).digest
        if ma.reason != "forget" or ma.request != t.request:
            raise ModelMismatch(f"{w}: model_after is not the model logged for this request")
        if list(ma.shards) != [finals[s] for s in range(cfg.shards)]:
            raise ModelMismatch(f"{w}: model_after's constituents are not the ends of the shards' current lineages")
        for m in (mb, ma):
            if m.digest != _model_digest(m.shards):
                raise ModelMismatch(f"{w}: model entry {m.index} has a digest that is not the hash of its constituents")
        if t.subject_digest is not None:  # an older transcript: one subject, the model digest
            if t.subject_digest != ma.digest:
                raise ModelMismatch(f"{w}: the statement's subject is not the model_after digest")
        else:
            if [d for d, _ in t.subject_files] != list(ma.shards):
                raise ModelMismatch(f"{w}: the statement's subjects are not the checkpoint files of model_after's "
                                    "constituents, in shard order")
            for s, (d, file_sha) in enumerate(t.subject_files):
                if d not in b.checkpoints:  # the bundle holds the final model's files; earlier ones by name only
                    continue
                if d not in file_sha256:  # a shard no later request touched is in every transcript: hash once
                    file_sha256[d] = hashlib.sha256(b.checkpoints[d]).digest()
                if file_sha256[d] != file_sha:
                    raise ModelMismatch(f"{w}: subject {s} gives SHA-256 {file_sha.hex()[:16]}... for "
                                        f"checkpoints/{d.hex()}.safetensors, the bundle's file hashes to "
                                        f"{file_sha256[d].hex()[:16]}...")
        prev = t.model_after
    assert prev is not None
    for s, d in enumerate(v.body(ModelBody.parse, prev.entry).shards):
        if d not in b.checkpoints:
            raise ModelMismatch(f"the bundle lacks the weights of shard {s} of the final model ({d.hex()[:16]}...)")
    # The config's model, sized by its signed fields, must be the one the checkpoint files hold,
    # checked here, before steps 18-19 build any model (specs/09, "Resource bounds").
    check_model_fits(cfg.model, b.checkpoints)
    final_shards = v.body(ModelBody.parse, prev.entry).shards
    v.nonfinite_shards = [s for s, d in enumerate(final_shards) if not checkpoint_is_finite(b.checkpoints[d])]
    if v.nonfinite_shards:
        v.warnings.append(
            f"NON-FINITE MODEL: the final constituent(s) of shard(s) {', '.join(map(str, v.nonfinite_shards))} hold NaN "
            "or infinite weights; the deletion may be carried out as logged, but the model is unusable (training "
            "diverged; the prover refuses to commit such a stage, so this log was not written by it as released)"
        )


def step_16(v: Verification) -> None:
    b = v.bundle
    assert b is not None and v.audit is not None
    op = b.openings
    seen: dict[bytes, RecordOpening] = {}
    for part, lst in (("deleted", op.deleted), ("audit", op.audit), ("training", op.training)):
        for o in lst:
            c = o.commitment()
            if c in seen:
                raise OpeningMismatch(f"record {o.id!r} is disclosed twice ({part})")
            seen[c] = o
    deleted = {o.commitment(): o for o in op.deleted}
    claimed: dict[bytes, tuple[Any, Any]] = {r.commitment: (t, r) for t in v.transcripts for r in t.records}
    claimed.update((h.commitment, (t, h)) for t in v.transcripts for h in t.held_out_records())
    if set(deleted) != set(claimed):
        missing = set(claimed) - set(deleted)
        raise OpeningMismatch(
            f"the deleted-record openings do not match the deleted commitments "
            f"({len(missing)} missing, {len(set(deleted) - set(claimed))} unexpected)"
        )
    for c, (t, r) in claimed.items():
        if record_key(deleted[c].id) != r.key:
            raise OpeningMismatch(f"request {t.request}: opening {deleted[c].id!r} does not have the record's key")
    for t in v.transcripts:
        ids = sorted(deleted[c].id for c in [r.commitment for r in t.records]
                     + [h.commitment for h in t.held_out_records()])
        want = tagged_hash(TAG_REQUEST, canonical_json({"n": str(t.request), "ids": ids}))
        if v.body(DeletionBody.parse, t.deletion.entry).request_digest != want:
            raise OpeningMismatch(f"request {t.request}: the deletion entry's request digest does not match the ids opened")
    held_audit = {h.membership.index: (h.key, h.commitment)
                  for t in v.transcripts for h in t.held_out_records() if h.split == "audit"}
    if op.audit_proof is not None:
        # A sampled audit set: the openings, in position order, are proven in the committed audit
        # tree by one multiproof; step 17 checks that these are the positions the challenge selects.
        if op.audit_proof.tree_size != v.audit.size:
            raise OpeningMismatch(f"the audit proof is for a tree of {op.audit_proof.tree_size} records, the "
                                  f"committed audit set has {v.audit.size}")
        # A held-out audit record deleted by a bundled request is opened among the deleted records;
        # its leaf (from the transcript, proven in step 11) stands at its own position.
        opened = iter(op.audit)
        leaves = []
        for pos in op.audit_proof.positions:
            if pos in held_audit:
                leaves.append(record_leaf_hash(*held_audit[pos]))
                continue
            nxt = next(opened, None)
            if nxt is None:
                raise OpeningMismatch(f"the audit proof proves {len(op.audit_proof.positions)} positions, the bundle "
                                      f"opens {len(op.audit)} audit records and deletes "
                                      f"{sum(p in held_audit for p in op.audit_proof.positions)} of them")
            leaves.append(record_leaf_hash(record_key(nxt.id), nxt.commitment()))
        if next(opened, None) is not None:
            raise OpeningMismatch(f"the bundle opens more audit records ({len(op.audit)}) than the audit proof proves")
        try:
            op.audit_proof.verify(leaves=leaves, root=v.audit.root)
        except VerificationFailed as e:
            raise OpeningMismatch(f"the {len(leaves)} audit openings are not in the committed audit set at the "
                                  f"positions proven: {e}") from e
    else:
        pairs = [(record_key(o.id), o.commitment()) for o in op.audit] + list(held_audit.values())
        try:
            tree = SortedTree.build(pairs)
        except MalformedInput as e:
            raise OpeningMismatch(f"the audit openings and the deleted audit records overlap: {e}") from e
        if (tree.root, len(tree)) != (v.audit.root, v.audit.size):
            raise OpeningMismatch(f"the {len(op.audit)} audit openings and {len(held_audit)} deleted audit record(s) do "
                                  f"not rebuild the committed audit set ({v.audit.size} records)")
    # No other record is disclosed (specs/08 section 4): every training opening is in the batch of
    # a disclosed step, whose replay or batch check needs it.
    used: set[bytes] = set()
    for entry in v.entries.values():
        if entry.kind == "step":
            used.update(batch_of(v, v.body(StepBody.parse, entry), "openings"))
    extra = [o for o in op.training if o.commitment() not in used]
    if extra:
        raise OpeningMismatch(f"the bundle opens training record {extra[0].id!r} (and {len(extra) - 1} more), which no "
                              "disclosed step uses: a bundle discloses no record that a check does not need")
    v.openings = seen


