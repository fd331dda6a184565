"""The record members of a proof bundle (specs/08-bundle.md section 4): the openings, the
slice records and the absence proofs, chosen from a :class:`prover._bundle_plan.Plan`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from verifiable_mu._disclosure import disclosure_summary, replay_records
from verifiable_mu._multiproof import MultiProof
from verifiable_mu._records import RecordOpening
from verifiable_mu._sampling import (
    sample_audit,
)
from verifiable_mu._seeds import derive_slices
from verifiable_mu._sorted_tree import AbsenceProof, SortedTree
from verifiable_mu._wire_bundle import (
    Absence,
    Openings,
    slice_member,
)
from verifiable_mu._wire_entries import SliceBody

from . import _sisa
from ._bundle_plan import Plan, affected

__all__ = ["Opened", "absence", "derived_roots", "openings", "slice_members"]

@dataclass(slots=True)
class Opened:
    """The record openings (specs/08 section 4) and what later phases need from them."""

    openings: Openings
    disclosure: dict[str, Any]
    deleted: set[bytes]  # commitments of the deleted and held-out records of the bundled requests
    used: set[bytes]  # commitments the picked segments' steps train on
    n_train: int


def _deleted_commitments(p: Plan) -> set[bytes]:
    """The deleted records of the bundled requests, and their held-out (test or audit) records,
    opened with them: the request digest covers their ids (specs/08 section 4)."""
    out: set[bytes] = set()
    for t in p.transcripts:
        out |= {r.commitment for r in t.records}
        out |= {r.commitment for r in t.held_out_records()}
    return out


def _used_commitments(p: Plan) -> tuple[set[bytes], dict[str, set[bytes]]]:
    """The records the picked segments train on, and split by why they are opened."""
    used: set[bytes] = set()
    by_kind: dict[str, set[bytes]] = {"lineage": set(), "sampled": set()}
    complete_ends = {r.end_index for r in p.complete}
    for r in p.picked:
        kind = by_kind["lineage" if r.end_index in complete_ends else "sampled"]
        for e in p.log.entries(min(max(0, r.end_index - r.steps), r.end_index), r.end_index):
            if e.kind == "step":
                kind.update(p.ws.batch_of(e))
        used |= kind
    return used, by_kind


def _scan_records(p: Plan, needed: set[bytes]) -> tuple[dict[bytes, tuple[int, str, bytes]],
                                                       dict[bytes, tuple[int, str, bytes, bytes]], int]:
    """One pass over the committed records, keeping only what the openings need (not a table of
    every record: at 10^6 records that alone was hundreds of MB). Returns commitment -> (row, id,
    salt) of the needed and audit records, audit key -> (row, id, salt, commitment), and the
    number of training records."""
    rows: dict[bytes, tuple[int, str, bytes]] = {}
    audit_rows: dict[bytes, tuple[int, str, bytes, bytes]] = {}
    n_train = 0
    for chunk in p.state.record_chunks():
        for row, rid, role, salt, c, k in chunk:
            if role == "train":
                n_train += 1
            elif role == "audit":
                audit_rows[k] = (row, rid, salt, c)
            if c in needed:
                rows[c] = (row, rid, salt)
    for row, rid, salt, c in audit_rows.values():
        rows.setdefault(c, (row, rid, salt))
    return rows, audit_rows, n_train


def _audit_sample(p: Plan, audit_rows: dict[bytes, tuple[int, str, bytes, bytes]], audit_max: int,
                  deleted: set[bytes]) -> tuple[list[bytes], MultiProof | None]:
    """The audit set: whole when small, else the challenge-selected sample with one multiproof
    in the committed audit tree (so the bundle does not grow with the data set). An audit record
    deleted by a bundled request is opened among the deleted records, not here: its leaf is
    accounted for from the transcript (specs/08 section 4)."""
    audit_tree = SortedTree.build((k, c) for k, (_, _, _, c) in audit_rows.items())
    positions = sample_audit(p.seed, len(audit_tree), audit_max)
    if len(positions) == len(audit_tree):
        return sorted(c for _, _, _, c in audit_rows.values() if c not in deleted), None
    audit_c = []
    for pos in positions:
        c = audit_rows[audit_tree.key_at(pos)][3]
        if c not in deleted:
            audit_c.append(c)
    return audit_c, audit_tree.multi_proof(positions)


def openings(p: Plan, audit_max: int, lineage: str) -> Opened:
    """``records/openings.json``: the deleted records, the audit set, and the records the picked
    segments train on -- and no other record."""
    deleted_c = _deleted_commitments(p)
    used_c, by_kind = _used_commitments(p)
    rows, audit_rows, n_train = _scan_records(p, deleted_c | used_c)
    audit_c, audit_proof = _audit_sample(p, audit_rows, audit_max, deleted_c)
    del audit_rows
    deleted_l, training_l = sorted(deleted_c), sorted(used_c - deleted_c)
    # The features and labels of exactly the opened rows, streamed from the data file (not the
    # whole data set: Workspace.data would hold every record).
    opened_rows = np.unique(np.asarray([rows[c][0] for c in [*audit_c, *deleted_l, *training_l]], dtype=np.int64))
    X_open, y_open = _sisa._load_rows(p.ws.data_path, opened_rows)

    def opening(c: bytes) -> RecordOpening:
        row, rid, salt = rows[c]
        at = int(np.searchsorted(opened_rows, row))
        return RecordOpening(id=rid, features=X_open[at], label=int(y_open[at]), salt=salt)

    openings = Openings(deleted=tuple(map(opening, deleted_l)), audit=tuple(map(opening, audit_c)),
                        training=tuple(map(opening, training_l)), audit_proof=audit_proof)
    disclosure = disclosure_summary(len(openings.deleted), len(openings.audit), len(openings.training), n_train,
                                    replay_records(lineage, by_kind["lineage"], by_kind["sampled"], deleted_c))
    return Opened(openings=openings, disclosure=disclosure, deleted=deleted_c, used=used_c, n_train=n_train)


def derived_roots(p: Plan, opened: set[bytes]) -> set[str]:
    """The generation-0 slice roots that the opened records of each shard's disclosed original
    steps already rebuild (verifiable_mu._seeds.derive_slices; the verifier does the same). A
    format-2 log lists no batches, so the verifier cannot tell which opened records a shard
    trained on before it has the slices: there, none."""
    if int(p.config["format"]) >= 2:
        return set()
    derived: set[str] = set()
    key_of = p.state.key_of_commitment()
    b = p.block
    for s, used in p.original_used.items():
        gen0 = [p.body(b.slice(s, j), SliceBody) for j in range(b.slices)]
        pairs = [(key_of[c], c) for c in used if c in opened]
        for j, tree in enumerate(derive_slices(int(p.config["seed"]), pairs, [sb.size for sb in gen0])):
            if tree.root == gen0[j].root:
                derived.add(tree.root.hex())
    return derived


def slice_members(p: Plan, derived: set[str]) -> dict[str, bytes]:
    """``slices/<root>.records``: the (key, commitment) pairs of every slice a retraining trained
    on (all slices of every retrained shard as of its request), so the verifier recomputes each
    epoch's committed visiting order (specs/08 section 4a); and the generation-0 slices (as the
    commit block logs them) of every affected shard, and slices 0..r-1 of every shard with a
    disclosed step of original stage r, unless ``derived`` already rebuilds them. A root the
    workspace's records do not rebuild (a log rewritten behind its back) is left out: the
    verifier rejects a bundle that lacks it."""
    out: dict[str, bytes] = {}

    def add(shard: int, slc: int, n: int, root_hex: str) -> None:
        name = slice_member(root_hex)
        if name in out:
            return
        pairs = p.slice_pairs(shard, slc, n)
        if SortedTree.build(pairs).root.hex() == root_hex:
            out[name] = b"".join(k + c for k, c in pairs)

    for n, _, sh in p.shard_claims():
        for j, item in enumerate(sh.slices):
            add(sh.shard, j, n, SliceBody.parse(item.slice.entry).root.hex())
    gen0: set[tuple[int, int]] = {(s, j) for s in affected(p) for j in range(p.block.slices)}
    gen0 |= {(s, j) for s, r in p.original_stages for j in range(r)}
    for s, j in sorted(gen0):
        root_hex = p.body(p.block.slice(s, j), SliceBody).root.hex()
        if root_hex not in derived:
            add(s, j, 0, root_hex)
    return out


def absence(p: Plan, slice_members: dict[str, bytes], derived: set[str]) -> Absence:
    """Absence of every deleted key from every shard's slices as they are after the last bundled
    request (specs/08 section 4b): one proof per slice whose records the bundle does not
    disclose anyway."""
    b = p.block
    final_slices: dict[tuple[int, int], str] = {
        (s, j): p.body(b.slice(s, j), SliceBody).root.hex() for s in range(b.shards) for j in range(b.slices)
    }
    for _, _, sh in p.shard_claims():
        for j, item in enumerate(sh.slices):
            final_slices[(sh.shard, j)] = SliceBody.parse(item.slice.entry).root.hex()
    deleted_keys = sorted(r.key for t in p.transcripts for r in t.records)
    proofs: dict[bytes, AbsenceProof] = {}
    if not deleted_keys:  # requests of held-out records only: no trained key to prove absent
        return Absence(proofs)
    for (s, j), root_hex in sorted(final_slices.items()):
        if slice_member(root_hex) in slice_members or root_hex in derived or bytes.fromhex(root_hex) in proofs:
            continue
        tree = SortedTree.build(p.slice_pairs(s, j, p.requests[-1]))
        if tree.root.hex() == root_hex:  # else left out: the verifier rejects the bundle
            proofs[tree.root] = tree.absence_proof(deleted_keys)
    return Absence(proofs)


