"""Deletion requests for held-out records (test or audit split: never trained on), issue 12.

Such a record is deleted without retraining: the transcript's ``held_out`` part proves it a
committed record of its split and absent from every current slice of every shard (specs/07);
the verifier checks that at step 11, accounts for a deleted audit record's leaf at step 16 and
leaves it out of step 19 (specs/09). The cheating provers below hold the signing key.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from conftest_verifier import Honest, forge, honest, members_of, resign_members, rezip, trained_copy

from verifier import VerifyOptions, verify
from verifier._errors import DeletionClaimFailed, OpeningMismatch, ResidualTraceFound


def _ids(ws: Any, role: str, n: int = 1) -> list[str]:
    rows = ws._db().execute("SELECT id FROM p_records WHERE role=? AND deleted_by IS NULL ORDER BY row LIMIT ?",
                            (role, n)).fetchall()
    return [r[0] for r in rows]


_CACHE: dict[str, Honest] = {}


def held_out() -> Honest:
    """The honest trained workspace after request 1 (one trained and one audit record: a mixed
    request) and request 2 (one test record only: no retraining), with its bundle."""
    if "h" in _CACHE:
        return _CACHE["h"]
    from prover import Workspace
    from prover._bundle import write_bundle

    h = honest()
    ws_dir = trained_copy(h, "held-out")
    with Workspace.open(ws_dir) as ws:
        ws.progress = False
        first = [_ids(ws, "train")[0], _ids(ws, "audit")[0]]
        ws.forget(first, workers=1)
        second = _ids(ws, "test")
        ws.forget(second, workers=1)
        path = os.path.join(os.path.dirname(ws_dir), "held-out.vmu")
        write_bundle(ws, path)
    with open(path, "rb") as f:
        data = f.read()
    out = Honest(root=h.root, ws_dir=ws_dir, bundle_path=path, bundle=data, key=h.key,
                 pub_pem=os.path.join(ws_dir, "signing-key.pub.pem"), first_ids=first, second_ids=second)
    _CACHE["h"] = out
    return out


def _pred(members: dict[str, bytes], which: str) -> dict[str, Any]:
    import base64

    return json.loads(base64.b64decode(json.loads(members[which])["payload"]))["predicate"]  # type: ignore[no-any-return]


def test_held_out_records_mixed_and_test_only_requests_verify() -> None:
    h = held_out()
    m = members_of(h.bundle)
    p1, p2 = _pred(m, "transcripts/000001.dsse.json"), _pred(m, "transcripts/000002.dsse.json")
    assert [r["split"] for r in p1["held_out"]["records"]] == ["audit"] and len(p1["records"]) == 1
    assert [r["split"] for r in p2["held_out"]["records"]] == ["test"] and p2["records"] == [] and p2["shards"] == []
    assert len(p2["held_out"]["slices"]) == 9  # every current slice of every shard (3 x 3)
    res = verify(h.bundle, VerifyOptions(replay=1))
    assert res.failure is None, res.failure
    # Step 19: the deleted audit record is no audit record any more, and no deleted record either.
    audit_size = int(json.loads(members_of(h.bundle)["log/entries.json"])["runs"][0]["entries"][2 + 9]["body"]["size"])
    assert res.residual_report is not None
    assert res.residual_report["n"]["audit"] == audit_size - 1
    assert res.residual_report["n"]["deleted"] == 1


def test_held_out_record_leaves_the_evaluation_split() -> None:
    from prover import Workspace

    h = held_out()
    with Workspace.open(h.ws_dir) as ws:
        rows = set(ws.split_rows("test").tolist())
        row = ws._db().execute("SELECT row FROM p_records WHERE id=?", (h.second_ids[0],)).fetchone()[0]
        assert row not in rows
        assert ws._db().execute("SELECT deleted_by FROM p_records WHERE id=?", (h.second_ids[0],)).fetchone()[0] == 2


def test_cli_forget_test_split_id_bundle_and_verify(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from prover.cli import main as vmu_main
    from verifier.cli import main as verify_main

    ws_dir = trained_copy(honest(), "cli-held-out")
    from prover import Workspace

    with Workspace.open(ws_dir) as ws:
        tid = _ids(ws, "test")[0]
    assert vmu_main(["forget", ws_dir, "--ids", tid]) == 0
    out = str(tmp_path / "b.vmu")
    assert vmu_main(["bundle", ws_dir, "--out", out]) == 0
    capsys.readouterr()
    assert verify_main([out, "--replay", "1", "--no-residual", "--trust-key",
                        os.path.join(ws_dir, "signing-key.pub.pem")]) == 0
    assert "ACCEPTED" in capsys.readouterr().out
    # Step 19 has nothing to test when no trained record was deleted: inconclusive, never a pass.
    res = verify(out, VerifyOptions(replay=1))
    assert res.failure is None and res.inconclusive is not None and "nothing to test" in res.inconclusive
    res = verify(out, VerifyOptions(replay=1, require_residual=True))
    assert isinstance(res.failure, ResidualTraceFound) and res.failed_step == 19
    assert "only held-out" in str(res.failure)


# --- cheating provers ------------------------------------------------------------------------


def _slice_trees(ws_dir: str) -> dict[tuple[int, int], Any]:
    """The current slice trees of the held-out workspace (after its last request)."""
    from prover import Workspace
    from verifiable_mu._sorted_tree import SortedTree

    with Workspace.open(ws_dir) as ws:
        db = ws._db()
        return {
            (s, r): SortedTree.build(db.execute(
                "SELECT key, commitment FROM p_records WHERE role='train' AND shard=? AND slice=? AND deleted_by IS NULL",
                (s, r)).fetchall())
            for s in range(ws.config.shards) for r in range(ws.config.slices)
        }


def _claim_held_out(commitment: bytes, key: bytes, *, split: str, skip_present: bool) -> bytes:
    """A cheating prover rewrites request 2 (one test record) to delete ``commitment`` instead and
    claims it held out: the deletion entry names it, the transcript's absence proofs are made for
    its key wherever they can be (``skip_present``: the slice holding it keeps the honest proof)."""
    trees = _slice_trees(held_out().ws_dir)

    def claim(pred: dict[str, Any]) -> None:
        rec = pred["held_out"]["records"][0]
        rec.update(commitment=commitment.hex(), key=key.hex(), split=split)
        rec["membership"].update(key=key.hex(), commitment=commitment.hex())
        for (s, r), item in zip(sorted(trees), pred["held_out"]["slices"], strict=True):
            if not (skip_present and key in trees[(s, r)]):
                item["absence"] = trees[(s, r)].absence_proof([key]).to_json()

    return _forge_request(2, [commitment.hex()], claim)


def test_step_11_trained_record_claimed_held_out_is_rejected() -> None:
    """The owner claims a live training record was never trained on (so that nothing is retrained).
    Its absence from the slice that holds it cannot be proven: every other slice's proof is valid,
    that one is not."""
    from prover import Workspace

    with Workspace.open(held_out().ws_dir) as ws:
        c, k, s, r = ws._db().execute("SELECT commitment, key, shard, slice FROM p_records WHERE role='train' "
                                      "AND deleted_by IS NULL ORDER BY row LIMIT 1").fetchone()
    res = verify(_claim_held_out(c, k, split="test", skip_present=True), VerifyOptions(replay=0, residual=False))
    assert isinstance(res.failure, DeletionClaimFailed) and res.failed_step == 11
    assert f"are not proven absent from training slice ({s}, {r})" in str(res.failure)


def test_step_11_held_out_claim_for_a_record_not_in_the_committed_split_is_rejected() -> None:
    """A held-out claim for a record no committed split holds (an id the data set never had): its
    absence from every slice is genuine, but no membership proof in the test tree exists."""
    import hashlib

    from verifiable_mu._records import record_key

    res = verify(_claim_held_out(hashlib.sha256(b"not a record").digest(), record_key("not-in-dataset"),
                                 split="test", skip_present=False), VerifyOptions(replay=0, residual=False))
    assert isinstance(res.failure, DeletionClaimFailed) and res.failed_step == 11
    assert "is not a committed record of the test split" in str(res.failure)


def _resigned(edit: Any) -> bytes:
    """The held-out bundle with transcript 2's ``held_out`` edited by ``edit`` and re-signed (no log change)."""
    h = held_out()
    return rezip(resign_members(h, members_of(h.bundle), lambda pred: edit(pred["held_out"]),
                                which="transcripts/000002.dsse.json"))


def test_step_11_held_out_absence_missing_one_shards_slice_is_rejected() -> None:
    _step_11(_resigned(lambda ho: ho["slices"].pop()),
             "8 absence proofs are given, every current slice of every shard needs one (3 x 3)")


def test_step_11_held_out_absence_against_a_stale_slice_entry_is_rejected() -> None:
    """An absence proof against a slice entry that is no longer current (request 1 re-committed it)."""
    h = held_out()
    p1 = _pred(members_of(h.bundle), "transcripts/000001.dsse.json")
    shard = p1["shards"][0]["shard"]
    from_stage = p1["shards"][0]["from_stage"]

    def mutate_predicate(n: int, pred: dict[str, Any], disclose: Any) -> None:
        if n == 2:
            i = shard * 3 + from_stage - 1
            gen0 = 1 + shard * 3 + from_stage - 1  # the commit block's generation-0 entry of that slice
            pred["held_out"]["slices"][i]["slice"] = disclose(gen0)

    res = verify(forge(h, mutate_predicate=mutate_predicate, replay=1, name="held-out-stale"),
                 VerifyOptions(replay=0, residual=False))
    assert isinstance(res.failure, DeletionClaimFailed) and res.failed_step == 11
    assert "not the current entry of slice" in str(res.failure)


def test_step_11_held_out_record_not_in_the_deletion_entry_is_rejected() -> None:
    """Hiding an audit record from step 19 by claiming it deleted without a logged request: the
    held-out claim must be a commitment of the request's deletion entry."""
    h = held_out()
    m = members_of(h.bundle)
    extra = _pred(m, "transcripts/000001.dsse.json")["held_out"]["records"][0]

    def add(pred: dict[str, Any]) -> None:
        pred["held_out"]["records"] = sorted([*pred["held_out"]["records"], extra], key=lambda r: r["key"])

    res = verify(rezip(resign_members(h, m, add, which="transcripts/000002.dsse.json")),
                 VerifyOptions(replay=0, residual=False))
    assert isinstance(res.failure, DeletionClaimFailed) and res.failed_step == 11
    assert "not the commitments of its deletion entry" in str(res.failure)


def test_step_16_audit_record_dropped_without_deletion_claim_is_rejected() -> None:
    """An owner who leaves an inconvenient audit record out of the openings (so that step 19 never
    sees it) without a deletion request for it: the openings no longer rebuild the audit root."""
    h = honest()
    m = members_of(h.bundle)
    op = json.loads(m["records/openings.json"])
    assert "audit_proof" not in op and len(op["audit"]) > 1
    op["audit"] = op["audit"][1:]
    m["records/openings.json"] = json.dumps(op).encode()
    res = verify(rezip(m), VerifyOptions(replay=0, residual=False))
    assert isinstance(res.failure, OpeningMismatch) and res.failed_step == 16
    assert "do not rebuild the committed audit set" in str(res.failure)


def test_step_16_deleted_audit_record_still_opened_as_audit_is_rejected() -> None:
    """A deleted audit record left among the audit openings as well (so step 19 would still count it)."""
    h = held_out()
    m = members_of(h.bundle)
    op = json.loads(m["records/openings.json"])
    c = _pred(m, "transcripts/000001.dsse.json")["held_out"]["records"][0]["commitment"]
    from verifiable_mu._records import RecordOpening

    again = next(o for o in op["deleted"] if RecordOpening.from_json(o).commitment().hex() == c)
    op["audit"] = [*op["audit"], again]
    m["records/openings.json"] = json.dumps(op).encode()
    res = verify(rezip(m), VerifyOptions(replay=0, residual=False))
    assert isinstance(res.failure, OpeningMismatch) and res.failed_step == 16
    assert "is disclosed twice" in str(res.failure)


def test_bundle_sampled_audit_set_accounts_for_a_deleted_audit_record() -> None:
    """With a sampled audit set (more than the disclosure limit; here a limit of 8), a deleted audit
    record at a sampled position is proven from its transcript leaf, not opened."""
    from prover import Workspace
    from prover._bundle import write_bundle

    h = held_out()
    out = os.path.join(os.path.dirname(h.ws_dir), "sampled.vmu")
    with Workspace.open(h.ws_dir) as ws:
        write_bundle(ws, out, audit_max=ws._db().execute("SELECT COUNT(*) FROM p_records WHERE role='audit'").fetchone()[0] - 1)
    with open(out, "rb") as f:
        data = f.read()
    op = json.loads(members_of(data)["records/openings.json"])
    assert "audit_proof" in op and len(op["audit_proof"]["positions"]) == len(op["audit"]) + 1
    # Step 16 accepts the openings; step 17 then rejects the sample, which is not the verifier's
    # (it discloses every audit record of a set this small).
    res = verify(data, VerifyOptions(replay=0, residual=False))
    assert res.failed_step == 17 and "audit-set sample" in str(res.failure), res.failure


def test_sampled_audit_set_with_a_deleted_audit_record_verifies_sampled_or_not(tmp_path: Any) -> None:
    """More audit records than AUDIT_DISCLOSE_MAX: the audit set is sampled by the challenge. A
    deleted audit record at a sampled position is proven by its transcript leaf; at an unsampled
    one it plays no part. Both bundles verify, with the verifier's own sample (step 17)."""
    from prover import Workspace, WorkspaceConfig
    from prover._bundle import write_bundle
    from verifiable_mu._sampling import AUDIT_DISCLOSE_MAX

    cfg = WorkspaceConfig(shards=3, slices=3, epochs=4, workers=1, seed=3, audit_fraction=0.45, test_fraction=0.05)
    seen: dict[bool, bool] = {}
    with Workspace.create(str(tmp_path / "ws"), data="digits", config=cfg) as ws:
        ws.progress = False
        ws.train()
        assert len(ws.split_rows("audit")) > AUDIT_DISCLOSE_MAX
        ws.forget(_ids(ws, "audit"))
        for i in range(1, 40):
            ch = bytes([i]) * 16
            path = str(tmp_path / f"b{i}.vmu")
            write_bundle(ws, path, challenge=ch, replay=1)
            with open(path, "rb") as f:
                data = f.read()
            op = json.loads(members_of(data)["records/openings.json"])
            sampled = len(op["audit_proof"]["positions"]) == len(op["audit"]) + 1
            if sampled in seen:
                continue
            res = verify(data, VerifyOptions(challenge=ch, replay=1, residual=False))
            assert res.failure is None, (sampled, res.failure)
            seen[sampled] = True
            if len(seen) == 2:
                break
    assert seen == {True: True, False: True}


def _forge_request(n: int, commitments: list[str] | None, mutate_predicate: Any, *, drop_test_root: bool = False) -> bytes:
    """The held-out workspace with request ``n``'s deletion entry listing ``commitments`` (None:
    unchanged), its predicate edited by ``mutate_predicate(pred)`` and everything re-signed;
    ``drop_test_root``: the commit block's audit entry without the committed test split."""
    h = held_out()

    def mutate(ctx: Any) -> None:
        if commitments is not None:
            i = next(i for i, (k, b) in enumerate(ctx.entries) if k == "deletion" and b["request"] == str(n))
            ctx.entries[i][1]["commitments"] = sorted(commitments)
            db = ctx.ws._db()
            for c in commitments:  # a commitment the data set never had: opened as a spare test record
                if db.execute("SELECT 1 FROM p_records WHERE commitment=?", (bytes.fromhex(c),)).fetchone() is None:
                    with ctx.ws.log.transaction():
                        db.execute("UPDATE p_records SET commitment=? WHERE id=?", (bytes.fromhex(c), _ids(ctx.ws, "test")[0]))
        if drop_test_root:
            audit = next(b for k, b in ctx.entries if k == "audit")
            del audit["test_root"], audit["test_size"]

    def mp(m: int, pred: dict[str, Any], disclose: Any) -> None:
        if m == n:
            mutate_predicate(pred)

    return forge(h, mutate, mutate_predicate=mp, replay=1, name=f"held-out-{n}")


def _step_11(data: bytes, fragment: str) -> None:
    res = verify(data, VerifyOptions(replay=0, residual=False))
    assert isinstance(res.failure, DeletionClaimFailed) and res.failed_step == 11, res.failure
    assert fragment in str(res.failure)


def _preds() -> tuple[dict[str, Any], dict[str, Any]]:
    m = members_of(held_out().bundle)
    return _pred(m, "transcripts/000001.dsse.json"), _pred(m, "transcripts/000002.dsse.json")


def test_step_11_held_out_record_deleted_by_an_earlier_request_is_rejected() -> None:
    """Request 1's deleted audit record claimed again as held out by request 2 (a request honoured
    twice, or a count inflated): it is absent from every slice, but it is no longer a live record."""
    p1, _ = _preds()
    rec = p1["held_out"]["records"][0]

    def claim(pred: dict[str, Any]) -> None:
        pred["held_out"]["records"] = [rec]

    _step_11(_forge_request(2, [rec["commitment"]], claim), "was already deleted by an earlier request")


def test_step_11_held_out_records_out_of_key_order_are_rejected() -> None:
    p1, p2 = _preds()
    both = sorted([p1["held_out"]["records"][0], p2["held_out"]["records"][0]], key=lambda r: r["key"], reverse=True)

    def claim(pred: dict[str, Any]) -> None:
        pred["held_out"]["records"] = both

    _step_11(_forge_request(2, [r["commitment"] for r in both], claim), "not in strictly ascending key order")


def test_step_11_record_claimed_both_trained_and_held_out_is_rejected() -> None:
    """The trained record of request 1 listed again as held out under another commitment."""
    p1, _ = _preds()
    trained, ho = p1["records"][0], p1["held_out"]["records"][0]
    fake = {**ho, "commitment": "ab" * 32, "key": trained["key"]}

    def claim(pred: dict[str, Any]) -> None:
        pred["held_out"]["records"] = sorted([ho, fake], key=lambda r: r["key"])

    _step_11(_forge_request(1, [trained["commitment"], ho["commitment"], fake["commitment"]], claim),
             "is claimed both trained and held out")


def test_step_11_held_out_membership_for_another_record_is_rejected() -> None:
    _, p2 = _preds()
    rec = p2["held_out"]["records"][0]

    def swap(pred: dict[str, Any]) -> None:
        pred["held_out"]["records"][0]["membership"]["commitment"] = "cd" * 32

    _step_11(_forge_request(2, [rec["commitment"]], swap), "is for another record")


def test_step_11_held_out_test_record_of_a_log_without_a_committed_test_split_is_rejected() -> None:
    """A log written before the test split was committed (audit entry without test_root) cannot
    have test records deleted: nothing binds them."""
    _step_11(_forge_request(2, None, lambda pred: None, drop_test_root=True), "this log commits no test split")


def test_step_11_held_out_record_in_the_wrong_split_is_rejected() -> None:
    """The test record of request 2 claimed as an audit record (to have it counted out of step 19's
    audit set): its proof is for the test tree, of another size."""
    _step_11(_resigned(lambda ho: ho["records"][0].update(split="audit")), "the committed audit split has")


def test_step_11_held_out_audit_disclosure_of_another_entry_is_rejected() -> None:
    _step_11(_resigned(lambda ho: ho.update(audit=ho["slices"][0]["slice"])), "not the commit block's audit entry")


@pytest.mark.parametrize(("edit", "fragment"), [
    (lambda ho: ho["records"][0].update(split="train"), "split must be 'test' or 'audit'"),
    (lambda ho: ho.update(records=[]), "records must be a non-empty list"),
    (lambda ho: ho.update(extra=1), "unknown field"),
])
def test_step_06_malformed_held_out_is_unusable(edit: Any, fragment: str) -> None:
    from verifiable_mu._errors import InvalidBundle

    res = verify(_resigned(edit), VerifyOptions(replay=0, residual=False))
    assert isinstance(res.failure, InvalidBundle) and res.failed_step == 6 and res.exit_code == 2
    assert fragment in str(res.failure)


def test_log_without_a_committed_test_split_still_verifies() -> None:
    """Logs written before the test split was committed (an audit entry of `root` and `size` only)
    keep verifying: the new fields are optional (specs/06 section 5)."""

    def old_audit_entry(ctx: Any) -> None:
        audit = next(b for k, b in ctx.entries if k == "audit")
        del audit["test_root"], audit["test_size"]

    res = verify(forge(honest(), old_audit_entry, replay=1, name="old-audit"), VerifyOptions(replay=1, residual=False))
    assert res.failure is None, res.failure
