"""Check a deletion transcript with the core's verification functions alone (no prover code).

This is the test suite's own, deliberately plain reading of specs/07-deletion-transcript.md.
"""

from __future__ import annotations

from typing import Any

from verifiable_mu import (
    ConsistencyProof,
    Envelope,
    InclusionProof,
    LogEntry,
    MembershipProof,
    NonMembershipProof,
    NoteVerifier,
    VerifyingKey,
    open_checkpoint,
    verify_statement,
)
from verifiable_mu._sorted_tree import record_leaf_hash

PREDICATE = "https://verifiable-mu.dev/deletion-transcript/v1"


def _entry(d: dict[str, Any], root: bytes, size: int) -> LogEntry:
    e = LogEntry.from_json(d["entry"])
    p = InclusionProof.from_json(d["inclusion"])
    assert p.tree_size == size and p.index == e.index
    p.verify(leaf=e.leaf_hash, root=root)
    return e


def check_transcript(envelope_bytes: bytes, key: VerifyingKey, origin: str) -> dict[str, Any]:
    """Raise on any failed check; return the verified predicate."""
    env = Envelope.from_bytes(envelope_bytes)
    st = verify_statement(env, [key], predicate_type=PREDICATE)
    pred = st["predicate"]
    assert pred["version"] == 1 and pred["origin"] == origin
    nv = NoteVerifier.from_public_key(name=origin, key=key.public_key)
    before = open_checkpoint(pred["log"]["head_before"].encode(), [nv], origin=origin)
    after = open_checkpoint(pred["log"]["head_after"].encode(), [nv], origin=origin)
    cons = ConsistencyProof.from_json(pred["log"]["consistency"])
    assert (cons.old_size, cons.new_size) == (before.size, after.size)
    cons.verify(old_root=before.root_hash, new_root=after.root_hash)
    root, size = after.root_hash, after.size

    deletion = _entry(pred["request"]["deletion"], root, size)
    assert deletion.kind == "deletion" and deletion.index >= before.size
    deleted = set(deletion.body["commitments"])
    assert len(deleted) == len(pred["records"]) == pred["request"]["count"]

    by_shard: dict[int, list[bytes]] = {}
    for rec in pred["records"]:
        c = rec["commitment"]
        assert c in deleted
        key_b = bytes.fromhex(rec["key"])
        old_slice = _entry(rec["old_slice"], root, size)
        assert old_slice.kind == "slice"
        assert (old_slice.body["shard"], old_slice.body["slice"]) == (rec["shard"], rec["slice"])
        assert old_slice.index < before.size
        mp = MembershipProof.from_json(rec["membership"])
        assert mp.key == key_b and mp.commitment.hex() == c
        mp.verify(root=bytes.fromhex(old_slice.body["root"]))
        assert mp.leaf_hash() == record_leaf_hash(key_b, bytes.fromhex(c))
        first = _entry(rec["first_use"], root, size)
        assert first.kind == "step" and first.body["shard"] == rec["shard"]
        assert first.body["stage"] == rec["slice"] + 1
        batch = first.body.get("batch")  # format 1; a format-2 batch follows from the committed order
        assert batch is None or c in [batch[i : i + 64] for i in range(0, len(batch), 64)]
        by_shard.setdefault(rec["shard"], []).append(key_b)
        rec["_first_use_index"] = first.index

    assert sorted(by_shard) == [s["shard"] for s in pred["shards"]]
    for sh in pred["shards"]:
        shard = sh["shard"]
        rollback = _entry(sh["rollback"], root, size)
        assert rollback.kind == "checkpoint" and rollback.body["shard"] == shard
        assert rollback.body["stage"] == sh["from_stage"] - 1
        for rec in pred["records"]:
            if rec["shard"] == shard:
                # the ordering rule: rolled back to a point before the record was first used
                assert rollback.index < rec["_first_use_index"]
                assert rollback.body["stage"] <= rec["slice"]
        for item in sh["slices"]:
            se = _entry(item["slice"], root, size)
            assert se.kind == "slice" and se.body["shard"] == shard
            if se.body["slice"] >= sh["from_stage"] - 1:
                assert se.body["generation"] == sh["generation"] and se.index >= before.size
            nm = [NonMembershipProof.from_json(p) for p in item["non_membership"]]
            assert len(nm) == len(by_shard[shard])
            for proof, k in zip(nm, by_shard[shard], strict=True):
                proof.verify(root=bytes.fromhex(se.body["root"]), key=k)
        assert sorted(i["slice"]["entry"]["body"]["slice"] for i in sh["slices"]) == list(range(len(sh["slices"])))
        final = _entry(sh["final_checkpoint"], root, size)
        assert final.kind == "checkpoint" and final.body["generation"] == sh["generation"]
        start, end = int(sh["retraining"]["start"]), int(sh["retraining"]["end"])
        assert before.size <= start < end <= size and final.index == end - 1

    m_before = _entry(pred["model_before"], root, size)
    m_after = _entry(pred["model_after"], root, size)
    assert m_before.kind == m_after.kind == "model"
    assert m_before.index < before.size <= m_after.index
    # one subject per constituent of model_after, in shard order: the checkpoint file and its SHA-256
    assert [x["name"] for x in st["subject"]] == [f"checkpoints/{d}.safetensors" for d in m_after.body["shards"]]
    assert all(len(x["digest"]["sha256"]) == 64 for x in st["subject"])
    for sh in pred["shards"]:
        final = LogEntry.from_json(sh["final_checkpoint"]["entry"])
        assert m_after.body["shards"][sh["shard"]] == final.body["digest"]
    for s, (a, b) in enumerate(zip(m_before.body["shards"], m_after.body["shards"], strict=True)):
        if s not in by_shard:
            assert a == b
    return pred
