"""Steps 10-11 of specs/09-verification.md: commitments (the commit block) and deletion-claims
(the shards' slice lineage)."""

from __future__ import annotations

from typing import Any

from verifiable_mu._errors import VerificationFailed
from verifiable_mu._merkle import EMPTY_ROOT
from verifiable_mu._records import record_key
from verifiable_mu._seeds import assigned_slices, derive_slices, shard_size
from verifiable_mu._sorted_tree import SliceDescriptor, SortedTree, dataset_root
from verifiable_mu._wire_bundle import CommitBlock

from ._entries import AuditBody, CheckpointBody, ConfigBody, DatasetBody, DeletionBody, SliceBody, StepBody, Transcript
from ._errors import CommitBlockInvalid, DeletionClaimFailed, SegmentMissing
from ._state import Verification, need_entry


def step_10(v: Verification) -> None:
    e0 = need_entry(v, 0, "commit block")
    cfg = v.config = v.body(ConfigBody.parse, e0)
    S, R = cfg.shards, cfg.slices
    block = CommitBlock(shards=S, slices=R)
    descriptors = []
    for s in range(S):
        for r in range(R):
            sb = v.body(SliceBody.parse, need_entry(v, block.slice(s, r), "commit block"))
            if (sb.shard, sb.slice, sb.generation) != (s, r, 0):
                raise CommitBlockInvalid(f"log entry {sb.index} is slice ({sb.shard}, {sb.slice}) generation "
                                         f"{sb.generation}, expected ({s}, {r}) generation 0")
            if sb.size == 0 and sb.root != EMPTY_ROOT:
                raise CommitBlockInvalid(f"slice ({s}, {r}) is empty but its root is not the empty root")
            v.slices0[(s, r)] = sb
            descriptors.append(SliceDescriptor(shard=s, slice=r, size=sb.size, root=sb.root))
    n_train = sum(d.size for d in descriptors)
    if n_train != cfg.n_train:
        raise CommitBlockInvalid(f"the slices hold {n_train} records, the config says {cfg.n_train}")
    ds = v.body(DatasetBody.parse, need_entry(v, block.dataset, "commit block"))
    if ds.version != 0 or ds.slices != S * R:
        raise CommitBlockInvalid(f"data-set entry {ds.index} is version {ds.version} with {ds.slices} slices")
    if dataset_root(descriptors) != ds.root:
        raise CommitBlockInvalid("the data-set root is not the root over the logged slice descriptors")
    v.audit = v.body(AuditBody.parse, need_entry(v, block.audit, "commit block"))
    for s in range(S):
        c = v.body(CheckpointBody.parse, need_entry(v, block.checkpoint(s), "commit block"))
        if (c.shard, c.generation, c.stage, c.step) != (s, 0, 0, 0):
            raise CommitBlockInvalid(f"log entry {c.index} is not the initial checkpoint of shard {s}")


def records_of(v: Verification, root: bytes) -> tuple[tuple[bytes, ...], tuple[bytes, ...]] | None:
    """The keys and commitments (key order) of the slice tree ``root``: from the bundle's
    slice-records member (step 3 rebuilt its root), or derived from the openings (step 11)."""
    b = v.bundle
    assert b is not None
    keys, commits = b.slice_keys.get(root), b.slice_records.get(root)
    if keys is not None and commits is not None:
        return keys, commits
    return v.derived_slices.get(root)


def _derive_original_slices(v: Verification) -> None:
    """Generation-0 slices the bundle need not list: a shard's records that its disclosed original
    steps use and the bundle opens (key = hash of the id, commitment = hash of the opening) or
    deletes (key and commitment from the transcript), put in their slices by rank (:func:`verifiable_mu._seeds.derive_slices`); kept only where the rebuilt
    root is the committed one."""
    cfg, b = v.config, v.bundle
    assert cfg is not None and b is not None
    # Keys of the records the bundle opens for training, and of the deleted records (their keys
    # and commitments are the transcripts' own: a damaged deleted opening is step 16's finding).
    key_of = {o.commitment(): record_key(o.id) for o in b.openings.training}
    key_of.update((r.commitment, r.key) for t in v.transcripts for r in t.records)
    used: dict[int, set[bytes]] = {}
    for e in v.entries.values():
        if e.kind == "step":
            st = v.body(StepBody.parse, e)
            if st.generation == 0 and st.batch is not None:  # format 2: the bundle lists the slices instead
                used.setdefault(st.shard, set()).update(st.batch)
    for s, commits in used.items():
        if not 0 <= s < cfg.shards:
            continue
        pairs = [(key_of[c], c) for c in commits if c in key_of]
        sizes = [v.slices0[(s, j)].size for j in range(cfg.slices)]
        for j, tree in enumerate(derive_slices(cfg.seed, pairs, sizes)):
            if tree.root == v.slices0[(s, j)].root:
                v.derived_slices[tree.root] = (tuple(k for k, _ in tree), tuple(c for _, c in tree))


def _slice_pairs(v: Verification, sb: SliceBody, what: str) -> list[tuple[bytes, bytes]]:
    """The ``(key, commitment)`` records of the slice entry ``sb`` (:func:`records_of`)."""
    got = records_of(v, sb.root)
    if got is None:
        raise SegmentMissing(f"{what}: the bundle does not disclose the records of slice ({sb.shard}, {sb.slice}) "
                             f"(root {sb.root.hex()[:16]}...)")
    return list(zip(*got, strict=True))


def _check_assignment(v: Verification, shard: int, what: str) -> None:
    """The generation-0 slices of ``shard`` hold exactly what the committed assignment
    (``sha256-rank-v1``, specs/06 section 1) gives the shard: as many records as its ranks, each in
    the slice its position in rank order fixes."""
    cfg = v.config
    assert cfg is not None
    where: dict[bytes, int] = {}
    for j in range(cfg.slices):
        for k, _ in _slice_pairs(v, v.slices0[(shard, j)], what):
            where[k] = j
    want_n = shard_size(cfg.n_train, cfg.shards, shard)
    if len(where) != want_n:
        raise DeletionClaimFailed(f"{what}: shard {shard}'s committed slices hold {len(where)} records, the assignment "
                                  f"gives it {want_n} of {cfg.n_train}")
    for k, j in assigned_slices(cfg.seed, list(where), cfg.slices).items():
        if where[k] != j:
            raise DeletionClaimFailed(f"{what}: record key {k.hex()[:16]}... is committed in slice {where[k]} of shard "
                                      f"{shard}, the committed assignment (sha256-rank-v1) puts it in slice {j}")


def step_11(v: Verification) -> None:
    """Deletion claims against each shard's slice lineage: the commit block's generation-0 slice
    entries, then every request's re-commit block (deletion entry, the new slice entries, the
    data-set entry). A slice claim is accepted only if it is the lineage's current entry."""
    cfg = v.config
    assert cfg is not None
    _derive_original_slices(v)
    cur: dict[tuple[int, int], SliceBody] = dict(v.slices0)  # the current slice entry of every (shard, slice)
    gens: dict[int, int] = dict.fromkeys(range(cfg.shards), 0)
    assigned: set[int] = set()
    deleted_keys: set[bytes] = set()
    held_out_keys: set[bytes] = set()
    for t in v.transcripts:
        d = v.body(DeletionBody.parse, t.deletion.entry)
        by_shard = _check_records(v, t, d, cur, assigned)
        _check_recommit_block(v, t, d, by_shard, cur, gens)
        _check_shard_claims(v, t, by_shard, cur)
        if t.held_out is not None:
            _check_held_out(v, t, cur, deleted_keys | held_out_keys)
            held_out_keys |= {h.key for h in t.held_out.records}
        deleted_keys |= {r.key for r in t.records}
    v.slices_now = cur
    _check_absent_everywhere(v, deleted_keys)


def _check_records(v: Verification, t: Transcript, d: DeletionBody, cur: dict[tuple[int, int], SliceBody],
                   assigned: set[int]) -> dict[int, list[Any]]:
    """The request's deletion entry names exactly its records and shards; each record was in the
    current entry of its slice, where the committed assignment puts it. Returns the records by shard."""
    cfg = v.config
    assert cfg is not None
    S, R = cfg.shards, cfg.slices
    w = f"request {t.request}"
    if d.request != t.request:
        raise DeletionClaimFailed(f"{w}: the deletion entry is for request {d.request}")
    commits = sorted([r.commitment for r in t.records] + [h.commitment for h in t.held_out_records()])
    if len(set(commits)) != len(commits) or list(d.commitments) != commits:
        raise DeletionClaimFailed(f"{w}: the transcript's records are not the commitments of its deletion entry")
    if t.count != len(t.records):
        raise DeletionClaimFailed(f"{w}: count {t.count} differs from the {len(t.records)} records listed")
    shards = sorted(sc.shard for sc in t.shards)
    if len(set(shards)) != len(shards) or shards != sorted({r.shard for r in t.records}) or list(d.shards) != shards:
        raise DeletionClaimFailed(f"{w}: retrained shards {shards} are not the shards of the deleted records")
    by_shard: dict[int, list[Any]] = {}
    for r in t.records:
        if r.shard >= S or r.slice >= R:
            raise DeletionClaimFailed(f"{w}: record {r.commitment.hex()[:16]} claims shard {r.shard} slice {r.slice}")
        if (r.membership.key, r.membership.commitment) != (r.key, r.commitment):
            raise DeletionClaimFailed(f"{w}: the membership proof of {r.commitment.hex()[:16]} is for another record")
        old = v.body(SliceBody.parse, r.old_slice.entry)
        now = cur[(r.shard, r.slice)]
        if old.index != now.index:
            raise DeletionClaimFailed(
                f"{w}: record {r.commitment.hex()[:16]} points at slice entry {old.index}, which is not the current "
                f"entry of slice ({r.shard}, {r.slice}) in the shard's lineage (entry {now.index})")
        try:
            SliceDescriptor(shard=old.shard, slice=old.slice, size=old.size, root=old.root).verify_membership(
                r.membership, key=r.key)
        except VerificationFailed as e:
            raise DeletionClaimFailed(f"{w}: record {r.commitment.hex()[:16]} was not in its slice: {e}") from e
        if r.shard not in assigned:  # the record's slice follows from the committed assignment
            _check_assignment(v, r.shard, w)
            assigned.add(r.shard)
        by_shard.setdefault(r.shard, []).append(r)
    return by_shard


def _check_recommit_block(v: Verification, t: Transcript, d: DeletionBody, by_shard: dict[int, list[Any]],
                          cur: dict[tuple[int, int], SliceBody], gens: dict[int, int]) -> None:
    """The re-commit block: right after the deletion entry, for each retrained shard in order, one
    slice entry of the new generation per slice from_stage-1..R-1, then the data-set entry.
    Advances ``cur`` and ``gens`` to the lineage after the request."""
    cfg = v.config
    assert cfg is not None
    S, R = cfg.shards, cfg.slices
    w = f"request {t.request}"
    pos = d.index + 1
    for sc in sorted(t.shards, key=lambda x: x.shard):
        ws = f"{w} shard {sc.shard}"
        recs = by_shard[sc.shard]
        if sc.from_stage != min(r.slice for r in recs) + 1:
            raise DeletionClaimFailed(f"{ws}: retraining starts at stage {sc.from_stage}, the first deleted slice "
                                      f"is used from stage {min(r.slice for r in recs) + 1}")
        if sc.generation != gens[sc.shard] + 1:
            raise DeletionClaimFailed(f"{ws}: retraining is generation {sc.generation}, the shard's lineage is at "
                                      f"generation {gens[sc.shard]}")
        for j in range(sc.from_stage - 1, R):
            cur[(sc.shard, j)] = _recommitted_slice(v, t, sc, j, pos, recs, cur[(sc.shard, j)])
            pos += 1
        gens[sc.shard] = sc.generation
    ent = need_entry(v, pos, f"{w} re-commit block")
    ds = v.body(DatasetBody.parse, ent) if ent.kind == "dataset" else None
    if ds is None or ds.version != t.request or ds.slices != S * R:
        raise DeletionClaimFailed(f"{w}: log entry {pos} ends the re-commit block but is not the data-set entry of "
                                  f"version {t.request}")
    descriptors = [SliceDescriptor(shard=s, slice=j, size=cur[(s, j)].size, root=cur[(s, j)].root)
                   for s in range(S) for j in range(R)]
    if ds.root != dataset_root(descriptors):
        raise DeletionClaimFailed(f"{w}: the data-set entry {ds.index} is not the root over the current slices")


def _recommitted_slice(v: Verification, t: Transcript, sc: Any, j: int, pos: int, recs: list[Any],
                       prev: SliceBody) -> SliceBody:
    """Log entry ``pos`` is slice ``j`` of the shard's new generation, holding its previous entry
    ``prev`` minus exactly this request's deleted records of it (a slice that held none keeps its
    records, so nothing can be added under a new id)."""
    w = f"request {t.request}"
    ws = f"{w} shard {sc.shard}"
    ent = need_entry(v, pos, f"{w} re-commit block")
    sb = v.body(SliceBody.parse, ent) if ent.kind == "slice" else None
    if sb is None or (sb.shard, sb.slice, sb.generation) != (sc.shard, j, sc.generation):
        got = f"a {ent.kind} entry" if sb is None else f"slice ({sb.shard}, {sb.slice}) generation {sb.generation}"
        raise DeletionClaimFailed(f"{w}: log entry {pos} of the re-commit block is {got}, expected slice "
                                  f"({sc.shard}, {j}) generation {sc.generation}")
    gone = {r.key for r in recs if r.slice == j}
    old_pairs = _slice_pairs(v, prev, ws)
    tree = SortedTree.build((k, c) for k, c in old_pairs if k not in gone)
    if (tree.root, len(tree)) != (sb.root, sb.size):
        raise DeletionClaimFailed(
            f"{ws}: re-committed slice {j} (entry {sb.index}, {sb.size} records) is not its previous "
            f"entry ({prev.index}, {len(old_pairs)} records) minus exactly the "
            f"{len(gone)} deleted record(s)")
    return sb


def _check_shard_claims(v: Verification, t: Transcript, by_shard: dict[int, list[Any]],
                        cur: dict[tuple[int, int], SliceBody]) -> None:
    """Each retrained shard's claim lists the current entry of each of its slices, and proves
    every deleted record of the shard absent from each."""
    cfg = v.config
    assert cfg is not None
    R = cfg.slices
    for sc in t.shards:
        ws = f"request {t.request} shard {sc.shard}"
        if len(sc.slices) != R:
            raise DeletionClaimFailed(f"{ws}: {len(sc.slices)} slices are listed, the shard has {R}")
        keys = sorted(r.key for r in by_shard[sc.shard])
        for j, x in enumerate(sc.slices):
            sb = v.body(SliceBody.parse, x.slice.entry)
            if sb.index != cur[(sc.shard, j)].index:
                raise DeletionClaimFailed(f"{ws}: slices[{j}] is slice entry {sb.index}, not the current entry of "
                                          f"slice ({sc.shard}, {j}) in the shard's lineage "
                                          f"(entry {cur[(sc.shard, j)].index})")
            if sorted(p.key for p in x.non_membership) != keys:
                raise DeletionClaimFailed(f"{ws}: slice {j} lacks a non-membership proof for some deleted record")
            desc = SliceDescriptor(shard=sb.shard, slice=sb.slice, size=sb.size, root=sb.root)
            for p in x.non_membership:
                try:
                    desc.verify_non_membership(p, key=p.key)
                except VerificationFailed as e:
                    raise DeletionClaimFailed(f"{ws}: a deleted record is still in slice {j}: {e}") from e


def _check_held_out(v: Verification, t: Any, cur: dict[tuple[int, int], SliceBody], earlier: set[bytes]) -> None:
    """The held-out records of request ``t`` (specs/07 ``held_out``): each is a committed record of
    the test or audit split (its membership proof against the commit block's audit entry), none
    was deleted before, and all of them are proven absent from every current slice of every shard
    after the request (``cur``: the slice lineage at this request's head), so no retraining is owed."""
    cfg = v.config
    assert cfg is not None and v.audit is not None and t.held_out is not None
    S, R = cfg.shards, cfg.slices
    w = f"request {t.request} held_out"
    ho = t.held_out
    keys = [h.key for h in ho.records]
    if any(a >= b for a, b in zip(keys, keys[1:], strict=False)):
        raise DeletionClaimFailed(f"{w}: records are not in strictly ascending key order")
    trained = {r.key for r in t.records}
    for h in ho.records:
        c = h.commitment.hex()[:16]
        if h.key in trained:
            raise DeletionClaimFailed(f"{w}: record {c} is claimed both trained and held out")
        if h.key in earlier:
            raise DeletionClaimFailed(f"{w}: record {c} was already deleted by an earlier request")
    if ho.audit.entry.index != v.audit.index:
        raise DeletionClaimFailed(f"{w}: audit is entry {ho.audit.entry.index}, not the commit block's audit entry "
                                  f"{v.audit.index}")
    if len(ho.slices) != S * R:
        raise DeletionClaimFailed(f"{w}: {len(ho.slices)} absence proofs are given, every current slice of every "
                                  f"shard needs one ({S} x {R})")
    for i, x in enumerate(ho.slices):
        s, j = divmod(i, R)
        sb = v.body(SliceBody.parse, x.slice.entry)
        if sb.index != cur[(s, j)].index:
            raise DeletionClaimFailed(f"{w}: slices[{i}] is slice entry {sb.index}, not the current entry of slice "
                                      f"({s}, {j}) after the request (entry {cur[(s, j)].index})")
        try:
            x.absence.verify(root=sb.root, size=sb.size, keys=keys)
        except VerificationFailed as e:
            raise DeletionClaimFailed(f"{w}: the records claimed held out are not proven absent from training "
                                      f"slice ({s}, {j}): {e}") from e
    # Never trained on is not enough: the record must be a committed record of its split.
    for h in ho.records:
        c = h.commitment.hex()[:16]
        if (h.membership.key, h.membership.commitment) != (h.key, h.commitment):
            raise DeletionClaimFailed(f"{w}: the membership proof of {c} is for another record")
        if h.split == "audit":
            root, size = v.audit.root, v.audit.size
        elif v.audit.test_root is None or v.audit.test_size is None:
            raise DeletionClaimFailed(f"{w}: record {c} is claimed in the test split, but this log commits no test "
                                      "split (its audit entry has no test_root)")
        else:
            root, size = v.audit.test_root, v.audit.test_size
        if h.membership.tree_size != size:
            raise DeletionClaimFailed(f"{w}: record {c} is proven in a tree of {h.membership.tree_size} records, the "
                                      f"committed {h.split} split has {size}")
        try:
            h.membership.verify(root=root, key=h.key)
        except VerificationFailed as e:
            raise DeletionClaimFailed(f"{w}: record {c} is not a committed record of the {h.split} split: {e}") from e


def _check_absent_everywhere(v: Verification, deleted: set[bytes]) -> None:
    """Every deleted key is absent from every shard's current slices after the last request, not
    only from the retrained shards': from the slice's disclosed records, or else from the bundle's
    non-membership proof against the slice's current entry. (Slices only change by re-commits,
    which remove exactly the deleted records, so absence at the end means absence since each
    deletion.)"""
    b = v.bundle
    assert b is not None
    if not deleted:  # held-out records only: step 11 proved them absent per request
        return
    for (s, j), sb in sorted(v.slices_now.items()):
        got = records_of(v, sb.root)
        if got is not None:
            kept = deleted.intersection(got[0])
            if kept:
                raise DeletionClaimFailed(f"deleted record key {min(kept).hex()[:16]}... is still in slice ({s}, {j}) "
                                          f"(entry {sb.index})")
            continue
        proof = b.absence.get(sb.root)
        if proof is None:
            raise DeletionClaimFailed(f"the bundle does not prove the deleted record keys absent from slice ({s}, {j}) "
                                      f"(entry {sb.index})")
        try:
            proof.verify(root=sb.root, size=sb.size, keys=sorted(deleted))
        except VerificationFailed as e:
            raise DeletionClaimFailed(f"the deleted record keys are not proven absent from slice ({s}, {j}): {e}") from e


