"""A large audit set travels as a challenge-selected sample with one multiproof (steps 16 and 17),
so a bundle does not grow with the data set."""

from __future__ import annotations

import json
import os
import zipfile

import pytest

from prover import Workspace, WorkspaceConfig
from prover._bundle import write_bundle
from verifiable_mu._sampling import AUDIT_DISCLOSE_MAX, sample_audit
from verifier import VerifyOptions, verify


def test_sample_audit_is_uniform_without_replacement_and_deterministic() -> None:
    seed = bytes(range(32))
    a = sample_audit(seed, 10_000, 512)
    assert a == sample_audit(seed, 10_000, 512) and len(set(a)) == 512 and a == sorted(a)
    assert a[0] >= 0 and a[-1] < 10_000
    assert sample_audit(seed, 100, 512) == list(range(100))
    assert sample_audit(bytes(32), 10_000, 512) != a
    # every position is equally likely: over many seeds the mean position is near the middle
    means = [sum(sample_audit(bytes([i]) * 32, 1000, 50)) / 50 for i in range(40)]
    assert 400 < sum(means) / len(means) < 600


@pytest.fixture(scope="module")
def sampled_bundle(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("audit")
    cfg = WorkspaceConfig(shards=3, slices=3, epochs=4, workers=1, seed=3, audit_fraction=0.45, test_fraction=0.05)
    ws = Workspace.create(str(root / "ws"), data="digits", config=cfg)
    ws.progress = False
    ws.train()
    rid = ws.log.connection.execute("SELECT id FROM p_records WHERE role='train' LIMIT 1").fetchone()[0]
    ws.forget([rid])
    n_audit = ws.log.connection.execute("SELECT COUNT(*) FROM p_records WHERE role='audit'").fetchone()[0]
    assert n_audit > AUDIT_DISCLOSE_MAX
    path = str(root / "b.vmu")
    write_bundle(ws, path)
    ws.close()
    return path


def _rewrite(src: str, dst: str, fn) -> None:  # type: ignore[no-untyped-def]
    import hashlib

    with zipfile.ZipFile(src) as z:
        members = {i.filename: z.read(i.filename) for i in z.infolist()}
    doc = json.loads(members["records/openings.json"])
    fn(doc)
    members["records/openings.json"] = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    man = json.loads(members["manifest.json"])
    man["members"]["records/openings.json"] = hashlib.sha256(members["records/openings.json"]).hexdigest()
    members["manifest.json"] = json.dumps(man, indent=1, sort_keys=True).encode()
    with zipfile.ZipFile(dst, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


def test_step_16_17_sampled_audit_set_is_accepted(sampled_bundle: str) -> None:
    with zipfile.ZipFile(sampled_bundle) as z:
        doc = json.loads(z.read("records/openings.json"))
    assert len(doc["audit"]) == len(doc["audit_proof"]["positions"]) == AUDIT_DISCLOSE_MAX
    # one multiproof is far shorter than 512 inclusion proofs of the same tree
    size = int(doc["audit_proof"]["tree_size"])
    assert len(doc["audit_proof"]["path"]) < AUDIT_DISCLOSE_MAX * (size - 1).bit_length() / 2
    v = verify(sampled_bundle, VerifyOptions(residual=False))
    assert v.exit_code == 0, v.failure


def test_step_16_audit_opening_not_in_the_audit_set_is_rejected(sampled_bundle: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    def swap(doc: dict) -> None:  # an opening moved to another proof's position
        doc["audit"][0], doc["audit"][1] = doc["audit"][1], doc["audit"][0]

    bad = os.path.join(str(tmp_path), "swapped.vmu")
    _rewrite(sampled_bundle, bad, swap)
    v = verify(bad, VerifyOptions(residual=False))
    assert v.exit_code == 1 and v.failed_step == 16 and "not in the committed audit set" in str(v.failure)


def test_step_17_audit_sample_not_selected_by_the_challenge_is_rejected(sampled_bundle: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from verifiable_mu._records import record_key
    from verifiable_mu._sorted_tree import SortedTree

    ws = Workspace.open(os.path.join(os.path.dirname(sampled_bundle), "ws"))
    try:
        rows = ws.log.connection.execute("SELECT id, commitment FROM p_records WHERE role='audit'").fetchall()
    finally:
        ws.close()
    tree = SortedTree.build((record_key(i), c) for i, c in rows)

    def drop(doc: dict) -> None:  # the owner leaves out an audit record it does not like, and proves the rest
        del doc["audit"][5]
        positions = [int(p) for p in doc["audit_proof"]["positions"]]
        del positions[5]
        doc["audit_proof"] = tree.multi_proof(positions).to_json()

    bad = os.path.join(str(tmp_path), "dropped.vmu")
    _rewrite(sampled_bundle, bad, drop)
    v = verify(bad, VerifyOptions(residual=False))
    assert v.exit_code == 1 and v.failed_step == 17 and "audit-set sample is not the one" in str(v.failure)


def test_step_03_audit_proofs_must_match_openings(sampled_bundle: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    def short(doc: dict) -> None:
        doc["audit_proof"]["positions"].pop()

    bad = os.path.join(str(tmp_path), "short.vmu")
    _rewrite(sampled_bundle, bad, short)
    v = verify(bad, VerifyOptions(residual=False))
    assert v.exit_code == 2 and "a position for every audit opening" in str(v.failure)


def test_step_16_audit_opening_dropped_from_a_sampled_set_is_rejected(sampled_bundle: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An audit record left out of a sampled audit set with no deletion request for it: its position
    is still proven, so one leaf is missing (a deleted audit record's leaf would come from its
    transcript, specs/08 section 4)."""

    def drop(doc: dict) -> None:
        doc["audit"].pop(0)

    bad = os.path.join(str(tmp_path), "dropped.vmu")
    _rewrite(sampled_bundle, bad, drop)
    v = verify(bad, VerifyOptions(residual=False))
    assert v.exit_code == 1 and v.failed_step == 16
    assert f"opens {AUDIT_DISCLOSE_MAX - 1} audit records and deletes 0 of them" in str(v.failure)


def test_step_16_audit_proof_for_another_tree_size_is_rejected(sampled_bundle: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    def grow(doc: dict) -> None:
        doc["audit_proof"]["tree_size"] = str(int(doc["audit_proof"]["tree_size"]) + 1)

    bad = os.path.join(str(tmp_path), "grown.vmu")
    _rewrite(sampled_bundle, bad, grow)
    v = verify(bad, VerifyOptions(residual=False))
    assert v.exit_code == 1 and v.failed_step == 16 and "committed audit set has" in str(v.failure)
