"""Bundle writer, range proofs and sampling (specs/08-bundle.md, verifiable_mu/_range.py, _sampling.py)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from collections import Counter

import pytest
from conftest_verifier import honest_fixture  # noqa: F401  (session fixture)

from verifiable_mu._errors import (
    InclusionProofFailed,
    MalformedInput,
    MalformedProof,
    UnsupportedVersion,
)
from verifiable_mu._merkle import MerkleTree, leaf_hash
from verifiable_mu._range import RangeProof, range_path, root_from_range
from verifiable_mu._sampling import (
    SeedStream,
    challenge_seed,
    escape_probability,
    fiat_shamir_seed,
    grinding_note,
    head_body,
    lineage_seed,
    sample_segments,
    single_escape,
    split_population,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- range proofs -------------------------------------------------------------------------------


def _tree(n: int) -> tuple[MerkleTree, list[bytes]]:
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]
    return MerkleTree(leaves), leaves


def test_range_proof_all_ranges_up_to_40() -> None:
    for n in range(1, 41):
        t, leaves = _tree(n)
        root = t.root()
        for a in range(n):
            for b in range(a + 1, n + 1):
                path = range_path(t.mth, a, b, n)
                assert len(path) <= 2 * max(1, n.bit_length())
                assert root_from_range(leaves[a:b], a, n, path) == root
                RangeProof(start=a, end=b, tree_size=n, path=tuple(path)).verify(leaves=leaves[a:b], root=root)


def test_range_proof_single_leaf_is_inclusion_path_reordered() -> None:
    t, leaves = _tree(13)
    for i in range(13):
        assert sorted(range_path(t.mth, i, i + 1, 13)) == sorted(t.inclusion_path(i))


def test_range_proof_must_be_consumed_exactly() -> None:
    t, leaves = _tree(20)
    path = range_path(t.mth, 3, 9, 20)
    with pytest.raises(InclusionProofFailed, match="left over"):
        root_from_range(leaves[3:9], 3, 20, path + [path[0]])
    with pytest.raises(InclusionProofFailed, match="too short"):
        root_from_range(leaves[3:9], 3, 20, path[:-1])


def test_range_proof_rejects_wrong_leaves_and_position() -> None:
    t, leaves = _tree(20)
    p = RangeProof(start=3, end=9, tree_size=20, path=tuple(range_path(t.mth, 3, 9, 20)))
    bad = list(leaves[3:9])
    bad[2] = leaves[0]
    with pytest.raises(InclusionProofFailed, match="do not lead to the root"):
        p.verify(leaves=bad, root=t.root())
    with pytest.raises(InclusionProofFailed, match="covers 6 leaves"):
        p.verify(leaves=leaves[3:8], root=t.root())
    shifted = RangeProof(start=4, end=10, tree_size=20, path=p.path)
    with pytest.raises(InclusionProofFailed, match=r"range proof has 2 hash\(es\) left over for leaves \[4, 10\) of 20"):
        shifted.verify(leaves=leaves[3:9], root=t.root())


def test_range_proof_json_round_trip_and_strictness() -> None:
    t, _ = _tree(9)
    p = RangeProof(start=2, end=5, tree_size=9, path=tuple(range_path(t.mth, 2, 5, 9)))
    assert RangeProof.from_json(json.loads(json.dumps(p.to_json()))) == p
    d = p.to_json()
    with pytest.raises(UnsupportedVersion, match="version"):
        RangeProof.from_json({**d, "version": 2})
    with pytest.raises(MalformedProof, match="fields"):
        RangeProof.from_json({**d, "alg": "sha1"})
    with pytest.raises(MalformedProof, match="empty or outside"):
        RangeProof.from_json({**d, "start": "5", "end": "5"})
    with pytest.raises(MalformedProof, match="outside"):
        RangeProof.from_json({**d, "end": "10"})
    with pytest.raises(MalformedProof, match="hex"):
        RangeProof.from_json({**d, "path": ["zz" * 32]})
    with pytest.raises(MalformedProof, match="at most"):
        RangeProof.from_json({**d, "path": ["00" * 32] * 129})


# --- sampling -------------------------------------------------------------------------------


_D1, _D2 = b"\x01" * 32, b"\x02" * 32
_BODY = head_body("o", 3, b"\x03" * 32)


@pytest.mark.parametrize(("text", "fragment"), [
    ("zz" * 16, "--challenge must be hex"),
    ("ab" * 15, "--challenge must be 16 to 64 bytes (32 to 128 hex digits)"),
    ("ab" * 65, "--challenge must be 16 to 64 bytes (32 to 128 hex digits)"),
])
def test_a_command_line_challenge_is_hex_of_16_to_64_bytes(text: str, fragment: str) -> None:
    """Both CLIs read --challenge through one function (verifiable_mu._sampling.challenge_from_hex)."""
    from verifiable_mu._sampling import challenge_from_hex

    with pytest.raises(MalformedInput) as ei:
        challenge_from_hex(text)
    assert fragment in str(ei.value)
    assert challenge_from_hex("AB" * 16) == b"\xab" * 16 and len(challenge_from_hex("ab" * 64)) == 64


def test_challenge_seed_bounds() -> None:
    with pytest.raises(MalformedInput, match="16 to 64 bytes"):
        challenge_seed(b"short", [_D1], _BODY)
    with pytest.raises(MalformedInput, match="16 to 64 bytes"):
        challenge_seed(b"x" * 65, [_D1], _BODY)
    with pytest.raises(MalformedInput, match="32 bytes"):
        challenge_seed(b"a" * 16, [b"short"], _BODY)
    with pytest.raises(MalformedInput, match="32-byte root"):
        head_body("o", 3, b"\x03" * 31)
    assert challenge_seed(b"a" * 16, [_D1], _BODY) != challenge_seed(b"a" * 17, [_D1], _BODY)


@pytest.mark.parametrize("seed", [fiat_shamir_seed, lambda d, b: challenge_seed(b"c" * 16, d, b)])
def test_seeds_bind_requests_and_head_body(seed) -> None:
    """Both seeds change with the request prefix, the deletion entries and the head's body."""
    base = seed([_D1, _D2], _BODY)
    assert base != seed([_D2, _D1], _BODY)
    assert base != seed([_D1], _BODY)  # a shorter request prefix draws another sample
    assert base != seed([_D1, _D2], head_body("o", 4, b"\x03" * 32))
    assert base != seed([_D1, _D2], head_body("o", 3, b"\x04" * 32))
    assert base != seed([_D1, _D2], head_body("p", 3, b"\x03" * 32))
    assert base != fiat_shamir_seed([_D1, _D2], _BODY) or seed is fiat_shamir_seed


def test_split_population_complete_deletion_lineage() -> None:
    """Shard 1 was retrained after a rollback to entry 20: its original segments up to entry 20 and
    its retraining are complete; its later original segments and every other shard are sampled."""
    from verifiable_mu._sampling import SegmentRef

    def seg(shard: int, gen: int, end: int) -> SegmentRef:
        return SegmentRef(shard=shard, generation=gen, stage=1, start_index=end - 1, end_index=end, start_step=0, end_step=1)

    pop = [seg(0, 0, 10), seg(1, 0, 11), seg(1, 0, 20), seg(1, 0, 30), seg(0, 0, 31), seg(1, 1, 40), seg(1, 2, 50)]
    complete, rest = split_population(pop, {1: 20})
    assert [r.end_index for r in complete] == [11, 20, 40, 50]
    assert [r.end_index for r in rest] == [10, 30, 31]
    assert split_population(pop, {}) == ([], pop)


def test_single_segment_escape_and_grinding_note() -> None:
    assert single_escape(10, 3) == pytest.approx(0.7)
    assert single_escape(10, 12) == 0.0 and single_escape(0, 3) == 0.0
    note = grinding_note(10, 3)
    assert "SAMPLED BY THE OWNER" in note and "0.7" in note and "one signature" in note
    assert "not checked at all" in grinding_note(10, 0) and "left nothing out" in grinding_note(10, 10)


def test_seed_stream_uniform_and_unbiased() -> None:
    rng = SeedStream(b"\x01" * 32)
    counts = Counter(rng.below(6) for _ in range(12000))
    assert set(counts) == set(range(6))
    assert all(1800 < c < 2200 for c in counts.values())
    with pytest.raises(ValueError, match=r"below\(n\) needs n >= 1"):
        rng.below(0)


def test_sample_prefix_property() -> None:
    seed = b"\x07" * 32
    full = sample_segments(12, 8, seed)
    assert len(full) == len(set(full)) == 8
    for k in range(8):
        assert sample_segments(12, k, seed) == full[:k]
    assert sorted(sample_segments(12, 100, seed)) == list(range(12))


def test_sample_is_uniform_over_the_rest() -> None:
    hits = Counter()
    for i in range(3000):
        s = sample_segments(10, 1, i.to_bytes(32, "big"))
        hits[s[0]] += 1
    assert all(230 < c < 370 for c in hits.values())


def test_escape_probability_formula() -> None:
    assert escape_probability(0.1, 0) == 1.0
    assert abs(escape_probability(0.05, 10) - 0.95**10) < 1e-12


# --- the writer ---------------------------------------------------------------------------------


def _members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def test_bundle_layout_and_manifest(honest_fixture) -> None:  # noqa: F811
    m = _members(honest_fixture.bundle)
    man = json.loads(m["manifest.json"])
    assert man["type"] == "vmu.bundle" and man["version"] == 1
    assert man["transcripts"] == ["transcripts/000001.dsse.json", "transcripts/000002.dsse.json"]
    assert man["challenge"] == {"mode": "fiat-shamir"}
    assert set(man["members"]) == set(m) - {"manifest.json"}
    assert {"keys/signing-key.pub.pem", "heads/final.note", "log/entries.json", "records/openings.json"} <= set(m)
    from verifier import verify

    v = verify(honest_fixture.bundle)  # the manifest's sample is informative: the verifier draws its own
    assert [str(r.end_index) for r in v.sample] == man["sample"] and len(man["sample"]) == min(8, v.sampled_population)


def test_bundle_reveals_only_needed_records(honest_fixture) -> None:  # noqa: F811
    """Openings: deleted records, the audit set, and the records of the sampled segments only."""
    from verifier._bundle import read_bundle
    from verifier._checks import VerifyOptions, verify

    b = read_bundle(honest_fixture.bundle)
    deleted_ids = {o.id for o in b.openings.deleted}
    assert deleted_ids == set(honest_fixture.first_ids) | set(honest_fixture.second_ids)
    v = verify(honest_fixture.bundle, VerifyOptions())
    assert v.exit_code == 0
    used = set()
    assert v.complete and {r.shard for r in v.complete} == {t.shard for t in v.transcripts[0].shards} | {
        t.shard for t in v.transcripts[1].shards}
    from verifier._entries import StepBody
    from verifier._steps_schedule import batch_of

    for r in [*v.complete, *v.sample]:
        for i in range(r.end_index - r.steps, r.end_index):
            used |= set(batch_of(v, StepBody.parse(v.entries[i]), "test"))  # format 2: the committed batch
    training = {o.commitment() for o in b.openings.training}
    assert training == used - {o.commitment() for o in b.openings.deleted}
    assert len(b.openings.audit) == 180


def test_bundle_size_for_one_deletion_under_1_mib(honest_fixture, tmp_path) -> None:  # noqa: F811
    from prover import Workspace
    from prover._bundle import write_bundle

    with Workspace.open(honest_fixture.ws_dir) as ws:
        info = write_bundle(ws, str(tmp_path / "one.zip"), transcript=1, replay=6)
    assert info.transcripts == (1,)
    assert info.bytes_without_checkpoints < 1024 * 1024, info


def test_bundle_is_reproducible_with_source_date_epoch(honest_fixture, tmp_path, monkeypatch) -> None:  # noqa: F811
    from prover import BadInput, Workspace
    from prover._bundle import write_bundle

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    with Workspace.open(honest_fixture.ws_dir) as ws:
        a = write_bundle(ws, str(tmp_path / "a.vmu"), challenge=b"\x07" * 16, replay=3)
        b = write_bundle(ws, str(tmp_path / "b.vmu"), challenge=b"\x07" * 16, replay=3)
        assert (tmp_path / "a.vmu").read_bytes() == (tmp_path / "b.vmu").read_bytes()
        assert json.loads(_members((tmp_path / "a.vmu").read_bytes())["manifest.json"])["created"] == 1700000000
        assert a.bytes_total == b.bytes_total
        monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
        with pytest.raises(BadInput, match="SOURCE_DATE_EPOCH"):
            write_bundle(ws, str(tmp_path / "c.vmu"))
    assert not (tmp_path / "c.vmu").exists()


def test_bundle_cli_and_errors(honest_fixture, tmp_path) -> None:  # noqa: F811
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = tmp_path / "cli.zip"
    r = subprocess.run(
        [sys.executable, "-m", "prover.cli", "bundle", honest_fixture.ws_dir, "--out", str(out), "--replay", "3",
         "--challenge", "ab" * 16],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "segments disclosed for replay" in r.stdout
    man = json.loads(_members(out.read_bytes())["manifest.json"])
    assert man["challenge"] == {"mode": "interactive", "challenge": "ab" * 16}
    r = subprocess.run(
        [sys.executable, "-m", "prover.cli", "bundle", honest_fixture.ws_dir, "--out", str(out), "--transcript", "7"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert r.returncode == 2 and "request 7" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "prover.cli", "bundle", honest_fixture.ws_dir, "--out", str(out), "--challenge", "zz"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert r.returncode == 2 and "hex" in r.stderr


# --- spec vectors (specs/08-bundle.md section 7) ---------------------------------------------

_VECTOR = __import__("re").compile(r"^```vector name=([A-Za-z0-9._-]+)\n(.*?)\n```$", __import__("re").S | __import__("re").M)


def _spec_vectors() -> dict[str, str]:
    with open(os.path.join(ROOT, "specs", "08-bundle.md"), encoding="utf-8") as f:
        return dict(_VECTOR.findall(f.read()))


def test_spec_08_vectors() -> None:
    v = _spec_vectors()
    assert set(v) == {"range-5-root", "range-5-1-3", "head-body", "challenge-seed", "fiat-shamir-seed", "sample",
                      "lineage-seed", "lineage-sample"}
    leaves = [leaf_hash(bytes([i])) for i in range(5)]
    t = MerkleTree(leaves)
    assert t.root().hex() == v["range-5-root"].strip()
    path = range_path(t.mth, 1, 3, 5)
    assert [h.hex() for h in path] == v["range-5-1-3"].split()
    assert root_from_range(leaves[1:3], 1, 5, path) == t.root()
    body = head_body("vmu.example/log", 7, b"\x22" * 32)
    assert body.decode() == v["head-body"] + "\n"
    d = [b"\x11" * 32]
    assert challenge_seed(bytes(range(16)), d, body).hex() == v["challenge-seed"].strip()
    fs = fiat_shamir_seed(d, body)
    assert fs.hex() == v["fiat-shamir-seed"].strip()
    assert sample_segments(10, 4, fs) == [int(x) for x in v["sample"].split()]
    ls = lineage_seed(fs)  # the sampled deletion lineage's own stream (specs/08 section 5)
    assert ls.hex() == v["lineage-seed"].strip()
    assert sample_segments(6, 3, ls) == [int(x) for x in v["lineage-sample"].split()]


def test_spec_09_steps_match_code() -> None:
    """The numbered steps of specs/09-verification.md are the verifier's STEPS, in order."""
    import re

    from verifier import STEPS

    with open(os.path.join(ROOT, "specs", "09-verification.md"), encoding="utf-8") as f:
        text = f.read()
    found = re.findall(r"^\s*(\d+)\. \*\*([a-z-]+)\*\*", text, re.MULTILINE)
    assert [(int(n), name) for n, name in found] == [(n, name) for n, name, _ in STEPS]
    from verifier._checks import __doc__ as doc

    for n, name, _ in STEPS:
        assert re.search(rf"^\s*{n}\. {re.escape(name)}\b", doc, re.MULTILINE), (n, name)
