"""Cheating provers against the slice lineage and the committed batches (issue 10, items 1, 2, 6).

Each cheater holds the signing key and uses the prover's own code: it edits its workspace
(SQLite, log) the way a dishonest owner can, runs the prover's ``forget`` or re-signs a
rewritten log (``conftest_verifier.forge``/``cheat``), and bundles the result. Every bundle's
signatures and Merkle proofs are valid; the verifier must still reject it, with the step named,
whatever the verifier's challenge.

(1) relabelled slices: at deletion time, two extra generation-0 slice entries move record X from
    slice 0 to slice R-1, so the rollback goes only to the end of stage R-1 (trained on X);
(6) a copy of X under a new id: an unused record joins a re-committed slice that held no deleted
    record, and the retraining trains on it;
(2) training in another shard: X (of shard A) is trained in shard B's original batches, X is
    deleted, B keeps it;
(+) the deleted key kept in another shard's committed slice.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from conftest_verifier import SLICES, bundle_for, cheat, forge, honest, lineage_map, members_of, rezip, trained_copy

from verifiable_mu._sorted_tree import SliceDescriptor, SortedTree, dataset_root
from verifier import VerifyOptions, verify

CHALLENGES = [bytes([i]) * 16 for i in (1, 2, 3)]


def _verify_all(ws_dir: str, *, step: int, error: str, match: str, replay: int = 2,
                extra: dict[str, bytes] | None = None) -> None:
    """Bundles for several verifier challenges (and Fiat-Shamir): each is rejected at ``step``
    with ``error``, and every step before it passed. ``extra``: members the cheater adds to each
    bundle (the manifest is unsigned; its digests are recomputed)."""
    import re

    for ch in [*CHALLENGES, None]:
        data, _ = bundle_for(ws_dir, challenge=ch, replay=replay)
        if extra:
            data = rezip({**members_of(data), **extra})
        v = verify(data, VerifyOptions(challenge=ch, residual=False))
        assert v.exit_code == 1 and v.failed_step == step, (ch, v.failed_step, repr(v.failure))
        assert type(v.failure).__name__ == error, repr(v.failure)
        assert re.search(match, str(v.failure)), str(v.failure)
        assert all(r.status == "pass" for r in v.results if r.step < step), [(r.step, r.status) for r in v.results]


def _pairs(db: Any, shard: int, slc: int) -> list[tuple[bytes, bytes]]:
    return sorted(db.execute("SELECT key, commitment FROM p_records WHERE role='train' AND shard=? AND slice=?",
                             (shard, slc)).fetchall())


@contextmanager
def _cheater_workspace(name: str) -> Iterator[tuple[str, Any, Any, tuple[str, int, bytes, bytes]]]:
    """A trained, not yet forgotten copy of the honest workspace, open; with record X, the first
    record of a slice 0: (id, shard, key, commitment)."""
    from prover import Workspace

    ws_dir = trained_copy(honest(), name)
    with Workspace.open(ws_dir) as ws:
        ws.progress = False
        db = ws._db()
        x = db.execute("SELECT id, shard, key, commitment FROM p_records WHERE role='train' AND slice=0 "
                       "ORDER BY row LIMIT 1").fetchone()
        yield ws_dir, ws, db, x


def test_cheater_relabelled_slices_rejected_by_lineage() -> None:
    """Issue 10 item 1: two extra generation-0 slice entries, appended at deletion time, claim X
    was in slice R-1 all along; the prover's forget then rolls back only to stage R-1 (which trained
    on X). The transcript's old_slice is not the current entry of the shard's slice lineage."""
    with _cheater_workspace("relabel") as (ws_dir, ws, db, (rid, shard, key, c)):
        moved = {SLICES - 1: [*_pairs(db, shard, SLICES - 1), (key, c)], 0: [p for p in _pairs(db, shard, 0) if p[0] != key]}
        with ws.log.transaction():
            for slc, prs in moved.items():
                tree = SortedTree.build(sorted(prs))
                idx = ws.log.append("slice", {"shard": shard, "slice": slc, "generation": 0, "root": tree.root.hex(),
                                              "size": str(len(tree))})
                db.execute("UPDATE p_slices SET root=?, size=?, log_index=? WHERE shard=? AND slice=? AND generation=0",
                           (tree.root, len(tree), idx, shard, slc))
            db.execute("UPDATE p_records SET slice=? WHERE id=?", (SLICES - 1, rid))
        rep = ws.forget([rid], workers=1)
        assert rep.slices_retrained == 1  # only stage R: the rollback kept stages 1..R-1, trained on X
    _verify_all(ws_dir, step=11, error="DeletionClaimFailed", match="not the current entry of slice")


def test_cheater_copy_under_new_id_rejected_by_slice_content() -> None:
    """Issue 10 item 6: at deletion time an unused record (standing for a copy of X under a new
    id) joins slice R-1 of X's shard; forget re-commits slice R-1 with it and the retraining trains
    on it. Slice R-1 held no deleted record, so its content must not change."""
    with _cheater_workspace("copy") as (ws_dir, ws, db, (rid, shard, _, _)):
        committed = _pairs(db, shard, SLICES - 1)  # slice R-1 as the commit block logs it
        (row,) = db.execute("SELECT row FROM p_records WHERE role='test' ORDER BY row LIMIT 1").fetchone()
        db.execute("UPDATE p_records SET role='train', shard=?, slice=? WHERE row=?", (shard, SLICES - 1, row))
        db.commit()
        ws.forget([rid], workers=1)
    # The cheater discloses the committed slice R-1 too (its own writer rebuilds slices from the
    # edited tables and would leave it out): the verifier has everything it asks for.
    root = SortedTree.build(committed).root.hex()
    extra = {f"slices/{root}.records": b"".join(k + c for k, c in committed)}
    _verify_all(ws_dir, step=11, error="DeletionClaimFailed", match=r"re-committed slice 2 .* minus exactly the 0",
                extra=extra)


def _x_of_request_1(ctx: Any) -> tuple[str, int]:
    d1 = next(i for i, (k, b) in enumerate(ctx.entries) if k == "deletion" and b["request"] == "1")
    c = ctx.entries[d1][1]["commitments"][0]
    shard = next(s for (s,) in [ctx.ws._db().execute("SELECT shard FROM p_records WHERE commitment=?",
                                                    (bytes.fromhex(c),)).fetchone()])
    return c, shard


def test_cheater_trains_deleted_record_in_another_shard() -> None:
    """Issue 10 item 2: X (shard A) replaces a record in one batch of shard B's original training,
    and B is trained on exactly what is logged (every checkpoint replays). Deleting X retrains A
    only; B keeps X. Every disclosed original batch is checked against its shard's committed
    order (step 14): rejected whenever the segment's steps are in the bundle -- with every segment
    disclosed, whatever the challenge; with a small sample, exactly when it is drawn (the sampled
    replay's escape probability, stated per forged segment)."""
    state: dict[str, Any] = {}
    keep: list[str] = []

    def mutate(ctx: Any) -> None:
        x, a = _x_of_request_1(ctx)
        b = (a + 1) % 3
        step = next(i for i, (k, e) in enumerate(ctx.entries)
                    if k == "step" and e["shard"] == b and e["generation"] == 0 and e["stage"] == 2)
        ctx.entries[step][1]["batch"] = x + ctx.entries[step][1]["batch"][64:]
        end = next(i for i in sorted(lineage_map(ctx)) if i > step and ctx.entries[i][1]["shard"] == b)
        assert end in cheat(ctx, {end: {}})  # B honestly trained on the logged batch, X included
        state["forged"] = end

    forge(honest(), mutate, keep=keep, replay=1)
    ws_dir = keep[0]
    _verify_all(ws_dir, step=14, error="BatchNotCommitted", match="committed batch", replay=10_000)
    # A small sample: rejected exactly when the forged segment is drawn, at step 14.
    seen = set()
    for i in range(40):
        ch = (300 + i).to_bytes(16, "big")
        data, sampled = bundle_for(ws_dir, challenge=ch, replay=2)
        hit = state["forged"] in sampled
        if hit in seen:
            continue
        v = verify(data, VerifyOptions(challenge=ch, residual=False, replay=0))
        assert (v.exit_code, v.failed_step) == ((1, 14) if hit else (0, None)), (hit, repr(v.failure))
        seen.add(hit)
        if len(seen) == 2:
            break
    assert seen == {True, False}


def test_cheater_deleted_key_kept_in_another_shards_slice() -> None:
    """X (deleted by request 1, shard A) is also committed in a slice of shard B (in place of one
    of B's records, so every size still adds up; the data-set roots are recomputed). Retraining A
    cannot remove it from B. Every deleted key must be proven absent from every shard's current
    slices: rejected at step 11 whatever the challenge."""
    keep: list[str] = []

    def mutate(ctx: Any) -> None:
        x, a = _x_of_request_1(ctx)
        db = ctx.ws._db()
        (key,) = db.execute("SELECT key FROM p_records WHERE commitment=?", (bytes.fromhex(x),)).fetchone()
        b = (a + 1) % 3
        i = next(i for i, (k, e) in enumerate(ctx.entries) if k == "slice" and (e["shard"], e["slice"]) == (b, 1))
        prs = _pairs(db, b, 1)[1:] + [(key, bytes.fromhex(x))]
        tree = SortedTree.build(sorted(prs))
        ctx.entries[i][1]["root"] = tree.root.hex()
        cur: dict[tuple[int, int], dict[str, Any]] = {}
        for k, e in ctx.entries:
            if k == "slice":
                cur[(e["shard"], e["slice"])] = e
            elif k == "dataset":
                e["root"] = dataset_root([SliceDescriptor(shard=s, slice=r, size=int(z["size"]),
                                                          root=bytes.fromhex(z["root"]))
                                          for (s, r), z in sorted(cur.items())]).hex()

    forge(honest(), mutate, keep=keep, replay=1)
    _verify_all(keep[0], step=11, error="DeletionClaimFailed", match="absent from slice|still in slice")


# --- the shared core pieces the checks rest on -------------------------------------------------


def _tree(n: int, seed: int = 7) -> tuple[SortedTree, list[bytes]]:
    import random

    rnd = random.Random(seed)
    keys = sorted({rnd.randbytes(32) for _ in range(n)})
    return SortedTree.build((k, bytes([1]) * 32) for k in keys), keys


def test_absence_proof_round_trip_and_edges() -> None:
    from verifiable_mu._sorted_tree import AbsenceProof

    for n in (0, 1, 2, 5, 64, 100):
        tree, keys = _tree(n, seed=n)
        probe = [b"\x00" * 32, b"\xff" * 32] + [bytes([k[0]]) + k[1:31] + bytes([k[31] ^ 1]) for k in keys[:5]]
        probe = [p for p in probe if p not in keys]
        proof = AbsenceProof.from_json(tree.absence_proof(probe).to_json())
        proof.verify(root=tree.root, size=n, keys=probe)
        assert len(proof.records) <= 2 * len(probe)


def test_absence_proof_rejects() -> None:
    import dataclasses

    import pytest

    from verifiable_mu._errors import NonMembershipProofFailed
    from verifiable_mu._sorted_tree import AbsenceProof

    tree, keys = _tree(50)
    with pytest.raises(NonMembershipProofFailed, match="is in the tree"):
        tree.absence_proof([keys[10]])
    gap = keys[10][:31] + bytes([keys[10][31] ^ 1])  # a key next to keys[10]
    gap = gap if gap not in keys else keys[10][:30] + b"\x00\x00"
    proof = tree.absence_proof([gap])
    with pytest.raises(NonMembershipProofFailed, match="not 49"):
        proof.verify(root=tree.root, size=49, keys=[gap])
    # A present key asked about: the proof's neighbours cannot bracket it.
    with pytest.raises(NonMembershipProofFailed, match="not adjacent|is in the tree"):
        proof.verify(root=tree.root, size=50, keys=[keys[30]])
    # Records two apart (one left out): not adjacent.
    wide = tree.absence_proof([gap, keys[12][:31] + bytes([keys[12][31] ^ 1])])
    ps = wide.proof.positions if wide.proof else ()
    keep = [i for i in range(len(ps)) if ps[i] != ps[1]]
    thin = AbsenceProof(tree_size=50, records=tuple(wide.records[i] for i in keep),
                        proof=tree.multi_proof([ps[i] for i in keep]))
    with pytest.raises(NonMembershipProofFailed, match="not adjacent"):
        thin.verify(root=tree.root, size=50, keys=[gap])
    # Records that are not the tree's at those positions.
    bad = dataclasses.replace(proof, records=((proof.records[0][0], b"\x02" * 32), *proof.records[1:]))
    with pytest.raises(NonMembershipProofFailed, match="not in the tree"):
        bad.verify(root=tree.root, size=50, keys=[gap])


def test_assignment_within_a_shard_matches_the_prover() -> None:
    """The verifier's per-shard rebuild of sha256-rank-v1 (its own keys only) agrees with the
    prover's global assignment, for every shard."""
    import random

    from prover._sisa import assign
    from verifiable_mu._seeds import assigned_slices, derive_slices, shard_size

    rnd = random.Random(3)
    keys = [rnd.randbytes(32) for _ in range(203)]
    S, R, seed = 5, 4, 99
    shard, slc = assign(keys, seed=seed, shards=S, slices=R)
    for s in range(S):
        mine = [k for k, x in zip(keys, shard, strict=True) if x == s]
        assert len(mine) == shard_size(len(keys), S, s)
        want = {k: int(j) for k, x, j in zip(keys, shard, slc, strict=True) if x == s}
        assert assigned_slices(seed, mine, R) == want
        trees = [SortedTree.build((k, k) for k in mine if want[k] == j) for j in range(R)]
        got = derive_slices(seed, [(k, k) for k in mine], [len(t) for t in trees])
        assert [t.root for t in got] == [t.root for t in trees]
        # one record of the last slice missing: the earlier slices still rebuild, the last cannot
        last = next(k for k in mine if want[k] == R - 1)
        got = derive_slices(seed, [(k, k) for k in mine if k != last], [len(t) for t in trees])
        assert [t.root for t in got[: R - 1]] == [t.root for t in trees[: R - 1]]
        assert len(got) == R - 1
