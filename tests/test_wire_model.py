"""The core wire model (verifiable_mu._wire_*): every type reads strictly and writes back what it
read. Round trips (``X.from_json(x.to_json()) == x``) under hypothesis and on the members of an
honest bundle (byte for byte), and one negative test per strict rejection (type + message)."""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import pytest
from conftest_verifier import honest, members_of
from hypothesis import given, settings
from hypothesis import strategies as st

from verifiable_mu._canonical import canonical_json
from verifiable_mu._dsse import Envelope
from verifiable_mu._errors import InvalidBundle, MalformedInput, UnsupportedVersion
from verifiable_mu._json import JsonBudget, parse_json_strict
from verifiable_mu._log import LogEntry
from verifiable_mu._multiproof import MultiProof
from verifiable_mu._proofs import ConsistencyProof
from verifiable_mu._range import RangeProof
from verifiable_mu._sorted_tree import SortedTree
from verifiable_mu._wire_bundle import (
    ABSENCE,
    LOG,
    MANIFEST,
    OPENINGS,
    Absence,
    CommitBlock,
    LogDoc,
    Manifest,
    Openings,
    transcript_member,
)
from verifiable_mu._wire_entries import (
    AuditBody,
    CheckpointBody,
    ConfigBody,
    DatasetBody,
    DeletionBody,
    ModelBody,
    SliceBody,
    StepBody,
)
from verifiable_mu._wire_transcript import Transcript

H32 = st.binary(min_size=32, max_size=32)
U32 = st.integers(0, 2**32 - 1)
DEC = st.integers(0, 2**63 - 1)
INDEX = st.integers(0, 2**40)
SMALL = st.integers(0, 1 << 16)


def _round_trip(body: Any) -> None:
    d = json.loads(json.dumps(body.to_json()))  # through JSON text, as on the wire
    assert type(body).from_json(d, index=body.index) == body
    assert canonical_json(type(body).from_json(d, index=body.index).to_json()) == canonical_json(d)


@settings(max_examples=60, deadline=None)
@given(st.builds(SliceBody, index=INDEX, shard=U32, slice=U32, generation=U32, root=H32, size=DEC))
def test_slice_body_round_trip(b: SliceBody) -> None:
    _round_trip(b)


@settings(max_examples=60, deadline=None)
@given(st.builds(DatasetBody, index=INDEX, version=U32, root=H32, slices=U32))
def test_dataset_body_round_trip(b: DatasetBody) -> None:
    _round_trip(b)


@settings(max_examples=60, deadline=None)
@given(st.one_of(
    st.builds(AuditBody, index=INDEX, root=H32, size=DEC),
    st.builds(AuditBody, index=INDEX, root=H32, size=DEC, test_root=H32, test_size=DEC),
))
def test_audit_body_round_trip(b: AuditBody) -> None:
    _round_trip(b)


@settings(max_examples=60, deadline=None)
@given(st.builds(CheckpointBody, index=INDEX, shard=U32, generation=U32, stage=U32, step=DEC, digest=H32))
def test_checkpoint_body_round_trip(b: CheckpointBody) -> None:
    _round_trip(b)


_HINT = st.tuples(st.integers(0, (1 << 16) - 1), st.integers(-1, (1 << 40) - 1), st.integers(-(1 << 31), (1 << 31) - 1))


@settings(max_examples=60, deadline=None)
@given(st.builds(
    StepBody, index=INDEX, shard=U32, generation=U32, stage=U32, epoch=U32, step=DEC, seed=DEC,
    lr=st.text(max_size=64), batch=st.none() | st.lists(H32, max_size=6).map(tuple),
    hints=st.none() | st.lists(_HINT, max_size=6).map(tuple),
))
def test_step_body_round_trip(b: StepBody) -> None:
    _round_trip(b)


@settings(max_examples=60, deadline=None)
@given(st.builds(DeletionBody, index=INDEX, request=DEC, request_digest=H32,
                 commitments=st.lists(H32, max_size=6).map(tuple), shards=st.lists(U32, max_size=6).map(tuple)))
def test_deletion_body_round_trip(b: DeletionBody) -> None:
    _round_trip(b)


@settings(max_examples=60, deadline=None)
@given(st.builds(ModelBody, index=INDEX, reason=st.text(max_size=32), shards=st.lists(H32, max_size=6).map(tuple),
                 digest=H32, request=st.none() | DEC))
def test_model_body_round_trip(b: ModelBody) -> None:
    _round_trip(b)


def _honest_config() -> dict[str, Any]:
    log = json.loads(members_of(honest().bundle)[LOG])
    entry = log["runs"][0]["entries"][0]
    assert entry["kind"] == "config"
    return entry["body"]


@settings(max_examples=40, deadline=None)
@given(shards=st.integers(1, 1 << 16), slices=st.integers(1, 1 << 16), epochs=st.integers(1, 1 << 20),
       seed=DEC, n_train=st.integers(0, 2**40), checkpoint_every=st.integers(0, 2**40))
def test_config_body_round_trip(shards: int, slices: int, epochs: int, seed: int, n_train: int,
                                checkpoint_every: int) -> None:
    d = dict(_honest_config(), shards=shards, slices=slices, epochs=epochs, seed=str(seed), n_train=n_train,
             checkpoint_every=checkpoint_every)
    b = ConfigBody.from_json(d)
    assert b.to_json() == d
    _round_trip(b)


_NAMES = st.sampled_from(["keys/signing-key.pub.pem", "heads/final.note", "log/entries.json", "records/openings.json",
                          "slices/absence.json", "checkpoints/" + "ab" * 32 + ".safetensors"])


@settings(max_examples=60, deadline=None)
@given(
    origin=st.text(min_size=1, max_size=256),
    transcripts=st.lists(st.integers(1, 999_999), min_size=1, max_size=5, unique=True),
    challenge=st.none() | st.binary(min_size=16, max_size=64),
    replay=st.integers(0, 1_000_000),
    sample=st.lists(DEC, max_size=5),
    original=st.dictionaries(U32, st.lists(DEC, min_size=1, max_size=4).map(tuple), min_size=1, max_size=4),
    members=st.dictionaries(_NAMES, H32),
    generator=st.text(max_size=200),
    created=st.none() | st.integers(0, 2**40),
)
def test_manifest_round_trip(origin: str, transcripts: list[int], challenge: bytes | None, replay: int,
                             sample: list[int], original: dict[int, tuple[int, ...]], members: dict[str, bytes],
                             generator: str, created: int | None) -> None:
    m = Manifest(origin=origin, transcripts=tuple(map(transcript_member, transcripts)),
                 challenge_mode="fiat-shamir" if challenge is None else "interactive", challenge=challenge,
                 replay=replay, sample=tuple(sample), original=original, members=members, generator=generator,
                 created=created, disclosure=None if created is None else {"deleted": 1})
    assert Manifest.from_json(json.loads(json.dumps(m.to_json()))) == m


def test_commit_block_layout() -> None:
    """The one layout of the commit block (specs/06 section 5): config, S x R slices, dataset,
    audit, S initial checkpoints -- checked against the honest log's entry kinds."""
    b = CommitBlock(3, 2)
    assert (b.config, b.slice(0, 0), b.slice(2, 1), b.dataset, b.audit, b.checkpoint(0), b.checkpoint(2), b.end) == \
        (0, 1, 6, 7, 8, 9, 11, 12)
    cfg = _honest_config()
    block = CommitBlock(cfg["shards"], cfg["slices"])
    entries = json.loads(members_of(honest().bundle)[LOG])["runs"][0]["entries"]
    kinds = [e["kind"] for e in entries[: block.end]]
    assert kinds[block.config] == "config" and kinds[block.dataset] == "dataset" and kinds[block.audit] == "audit"
    assert {kinds[block.slice(s, r)] for s in range(block.shards) for r in range(block.slices)} == {"slice"}
    assert {kinds[block.checkpoint(s)] for s in range(block.shards)} == {"checkpoint"}


# --- the honest bundle's members, byte for byte ---------------------------------------------------


_GOLDEN_HONEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "bundle_honest.vmu")


@pytest.mark.parametrize("source", ["honest", "golden"])
def test_honest_members_round_trip_byte_for_byte(source: str) -> None:
    """What the prover wrote (now, and when the golden bundle was made) reads back and writes
    again to the same bytes (the JSON members are RFC 8785; the manifest is the prover's
    indented JSON): the wire model is the format the goldens pin."""
    if source == "golden":
        with open(_GOLDEN_HONEST, "rb") as f:
            members = members_of(f.read())
    else:
        members = members_of(honest().bundle)
    for name, cls in ((LOG, LogDoc), (OPENINGS, Openings), (ABSENCE, Absence)):
        obj = cls.from_json(parse_json_strict(members[name]))
        assert canonical_json(obj.to_json()) == members[name], name
        assert cls.from_json(obj.to_json()) == obj
    m = Manifest.from_json(parse_json_strict(members[MANIFEST]))
    assert json.dumps(m.to_json(), indent=1, sort_keys=True).encode() == members[MANIFEST]
    assert Manifest.from_json(m.to_json()) == m


@pytest.mark.parametrize("source", ["honest", "golden"])
def test_honest_transcripts_round_trip_byte_for_byte(source: str) -> None:
    if source == "golden":
        with open(_GOLDEN_HONEST, "rb") as f:
            members = members_of(f.read())
    else:
        members = members_of(honest().bundle)
    names = [n for n in sorted(members) if n.startswith("transcripts/")]
    assert names
    for name in names:
        payload = Envelope.from_json(json.loads(members[name])).payload
        t = Transcript.from_json(json.loads(payload), payload=payload, what=name)
        assert canonical_json(t.to_json()) == payload
        assert Transcript.from_json(t.to_json()) == t
        for _, disclosure in t.disclosures():
            e = disclosure.entry
            if e.kind in ("slice", "checkpoint", "deletion", "model"):
                body = {"slice": SliceBody, "checkpoint": CheckpointBody, "deletion": DeletionBody,
                        "model": ModelBody}[e.kind].parse(e)
                assert body.to_json() == e.body


# --- strict rejections -------------------------------------------------------------------------------

_SLICE = {"shard": 0, "slice": 1, "generation": 0, "root": "ab" * 32, "size": "3"}
_STEP = {"shard": 0, "generation": 0, "stage": 1, "epoch": 0, "step": "1", "seed": "2", "lr": "0.1"}


@pytest.mark.parametrize("cls, body, exc, fragment", [
    (SliceBody, [1], InvalidBundle, "must be a JSON object"),
    (SliceBody, {k: v for k, v in _SLICE.items() if k != "size"}, InvalidBundle, "lacks field(s): size"),
    (SliceBody, dict(_SLICE, extra=1), InvalidBundle, "unknown field(s): extra"),
    (SliceBody, dict(_SLICE, shard="0"), InvalidBundle, "shard must be an integer"),
    (SliceBody, dict(_SLICE, shard=True), InvalidBundle, "shard must be an integer"),
    (SliceBody, dict(_SLICE, shard=2**32), InvalidBundle, "shard must be an integer in"),
    (SliceBody, dict(_SLICE, size="03"), InvalidBundle, "size must be a decimal string"),
    (SliceBody, dict(_SLICE, size=str(2**63)), InvalidBundle, "size must be a decimal string"),
    (SliceBody, dict(_SLICE, root="AB" * 32), InvalidBundle, "lower-case hex"),
    (AuditBody, {"root": "ab" * 32, "size": "1", "test_root": "ab" * 32}, InvalidBundle, "come together"),
    (StepBody, dict(_STEP, batch="ab"), InvalidBundle, "batch must be concatenated"),
    (StepBody, dict(_STEP, hints=[[0, 0]]), InvalidBundle, "each hint must be"),
    (StepBody, dict(_STEP, hints=[[0, 0, 2**31]]), InvalidBundle, "each hint must be"),
    (StepBody, dict(_STEP, lr="x" * 65), InvalidBundle, "lr must be a string of at most 64"),
    (DeletionBody, {"request": "1", "request_digest": "ab" * 32, "commitments": [], "shards": [-1]},
     InvalidBundle, "shards must be a list of shard numbers"),
    (DeletionBody, {"request": "1", "request_digest": "ab" * 32, "commitments": "ab", "shards": []},
     InvalidBundle, "commitments must be a list of hex digests"),
    (ModelBody, {"reason": "r" * 33, "shards": [], "digest": "ab" * 32}, InvalidBundle, "reason must be a string"),
])
def test_entry_body_rejects(cls: Any, body: Any, exc: type[Exception], fragment: str) -> None:
    with pytest.raises(exc, match=_re(fragment)):
        cls.from_json(body, index=5)


def _re(fragment: str) -> str:
    import re

    return re.escape(fragment)


@pytest.mark.parametrize("change, exc, fragment", [
    ({"format": 3}, UnsupportedVersion, "log format '3' is not supported"),
    ({"format": True}, UnsupportedVersion, "log format 'True' is not supported"),
    ({"assignment": "other"}, UnsupportedVersion, "assignment 'other' is not supported"),
    ({"seed": 5}, InvalidBundle, "seed must be a decimal string"),
    ({"data_digest": 1}, InvalidBundle, "data_digest must be a string"),
    ({"model": []}, InvalidBundle, "model must be a JSON object"),
])
def test_config_body_rejects(change: dict[str, Any], exc: type[Exception], fragment: str) -> None:
    with pytest.raises(exc, match=_re(fragment)):
        ConfigBody.from_json(dict(_honest_config(), **change))


def test_config_body_rejects_unsupported_platform_and_arithmetic() -> None:
    cfg = copy.deepcopy(_honest_config())
    cfg["platform"]["dtype"] = "float64"
    with pytest.raises(UnsupportedVersion, match="only deterministic float32 training"):
        ConfigBody.from_json(cfg)
    cfg = copy.deepcopy(_honest_config())
    cfg["hyper"]["arithmetic"] = "bfloat16"
    with pytest.raises(UnsupportedVersion, match="with arithmetic 'bfloat16' is not supported"):
        ConfigBody.from_json(cfg)


def test_parse_rejects_an_entry_of_another_kind() -> None:
    """An entry of another kind than the claim names is a false claim about signed content
    (EntryKindMismatch, a VerificationFailed: exit 1 in the verifier), the same class whichever
    side imports it."""
    from verifiable_mu._errors import VerificationFailed
    from verifier._entries import SliceBody as VerifierSliceBody
    from verifier._errors import EntryKindMismatch

    assert VerifierSliceBody is SliceBody and issubclass(EntryKindMismatch, VerificationFailed)
    e = LogEntry(index=4, kind="checkpoint", body=dict(_SLICE), leaf_hash=bytes(32))
    with pytest.raises(EntryKindMismatch, match="log entry 4 is of kind 'checkpoint', the claim says 'slice'"):
        SliceBody.parse(e)
    ok = SliceBody.parse(LogEntry(index=4, kind="slice", body=dict(_SLICE), leaf_hash=bytes(32)))
    assert ok.index == 4 and ok.size == 3


def _manifest() -> dict[str, Any]:
    return json.loads(members_of(honest().bundle)[MANIFEST])


@pytest.mark.parametrize("change, exc, fragment", [
    ({"type": "other"}, InvalidBundle, "must have type 'vmu.bundle'"),
    ({"version": 2}, UnsupportedVersion, "version 2 is not supported"),
    ({"extra": 1}, InvalidBundle, "unknown field(s): extra"),
    ({"origin": ""}, InvalidBundle, "manifest origin must be a non-empty string"),
    ({"transcripts": []}, InvalidBundle, "transcripts must be a non-empty list"),
    ({"transcripts": ["transcripts/1.dsse.json"]}, InvalidBundle, "transcript name 'transcripts/1.dsse.json'"),
    ({"transcripts": [transcript_member(1)] * 2}, InvalidBundle, "lists a transcript twice"),
    ({"challenge": {"mode": "fiat-shamir", "challenge": "00" * 16}}, InvalidBundle, "must not carry a challenge"),
    ({"challenge": {"mode": "interactive", "challenge": "0"}}, InvalidBundle, "32 to 128 lower-case hex"),
    ({"challenge": {"mode": "oracle"}}, UnsupportedVersion, "challenge mode 'oracle' is not supported"),
    ({"replay": -1}, InvalidBundle, "manifest replay must be an integer"),
    ({"sample": ["01"]}, InvalidBundle, "manifest sample index must be a decimal string"),
    ({"original": []}, InvalidBundle, "original must be a non-empty list"),
    ({"original": [{"shard": 0, "checkpoints": ["1"]}] * 2}, InvalidBundle, "original lineage of shard 0 twice"),
    ({"members": {"../x": "ab" * 32}}, InvalidBundle, "invalid member name '../x'"),
    ({"members": {"log/entries.json": "xy"}}, InvalidBundle, "manifest digest of log/entries.json"),
    ({"generator": 3}, InvalidBundle, "generator must be a string"),
])
def test_manifest_rejects(change: dict[str, Any], exc: type[Exception], fragment: str) -> None:
    with pytest.raises(exc, match=_re(fragment)):
        Manifest.from_json(dict(_manifest(), **change))


def _log() -> dict[str, Any]:
    return json.loads(members_of(honest().bundle)[LOG])


def test_log_doc_rejects() -> None:
    with pytest.raises(InvalidBundle, match="runs must be a non-empty list"):
        LogDoc.from_json(dict(_log(), runs=[]))
    d = _log()
    with pytest.raises(InvalidBundle, match="must not overlap"):
        LogDoc.from_json(dict(d, runs=[d["runs"][0], d["runs"][0]]))
    with pytest.raises(InvalidBundle, match="known must be a list of at most 64"):
        LogDoc.from_json(dict(d, known=[d["consistency"][0]] * 65))
    run = copy.deepcopy(d["runs"][0])
    run["entries"] = run["entries"][1:]
    with pytest.raises(InvalidBundle, match="entries, as its proof states"):
        LogDoc.from_json(dict(d, runs=[run]))
    with pytest.raises(UnsupportedVersion, match="version 7 is not supported"):
        LogDoc.from_json(dict(d, version=7))


def test_openings_and_absence_reject() -> None:
    o = json.loads(members_of(honest().bundle)[OPENINGS])
    with pytest.raises(InvalidBundle, match="deleted must be a list"):
        Openings.from_json(dict(o, deleted={}))
    with pytest.raises(InvalidBundle, match=_re("openings.json deleted[0]")):
        Openings.from_json(dict(o, deleted=[{}]))
    with pytest.raises(InvalidBundle, match="must have type 'vmu.bundle-openings'"):
        Openings.from_json(dict(o, type="vmu.bundle-log"))
    tree = SortedTree.build([(bytes([i]) * 32, bytes([i + 1]) * 32) for i in (2, 4, 6)])
    proof = tree.absence_proof([bytes([3]) * 32])
    a = Absence({tree.root: proof}).to_json()
    assert Absence.from_json(a) == Absence({tree.root: proof})
    with pytest.raises(InvalidBundle, match="is listed twice"):
        Absence.from_json(dict(a, slices=[a["slices"][0]] * 2))
    with pytest.raises(InvalidBundle, match="exactly root and proof"):
        Absence.from_json(dict(a, slices=[dict(a["slices"][0], extra=1)]))


def _statement() -> tuple[dict[str, Any], bytes]:
    members = members_of(honest().bundle)
    payload = Envelope.from_json(json.loads(members[transcript_member(1)])).payload
    return json.loads(payload), payload


def test_transcript_rejects() -> None:
    stmt, _ = _statement()
    bad = copy.deepcopy(stmt)
    bad["predicate"]["version"] = 2
    with pytest.raises(UnsupportedVersion, match="transcript version '2' is not supported"):
        Transcript.from_json(bad)
    bad = copy.deepcopy(stmt)
    bad["predicate"]["records"] = []
    with pytest.raises(InvalidBundle, match="records must be a non-empty list"):
        Transcript.from_json(bad)
    bad = copy.deepcopy(stmt)
    bad["subject"][0]["name"] = "model.bin"
    with pytest.raises(InvalidBundle, match="is not named checkpoints/<64 hex>.safetensors"):
        Transcript.from_json(bad)
    bad = copy.deepcopy(stmt)
    bad["predicate"]["model_after"]["inclusion"] = bad["predicate"]["model_before"]["inclusion"]
    with pytest.raises(InvalidBundle, match="model_after: inclusion proof is for index"):
        Transcript.from_json(bad)
    bad = copy.deepcopy(stmt)
    bad["predicate"]["shards"][0]["from_stage"] = 0
    with pytest.raises(InvalidBundle, match=_re("shards[0]: from_stage must be an integer in [1,")):
        Transcript.from_json(bad)


# --- the one strict JSON parser ------------------------------------------------------------------


def test_json_memory_bound_and_budget() -> None:
    doc = b"[" + b",".join([b"{}"] * 1000) + b"]"
    with pytest.raises(MalformedInput, match="would take about 0 MiB of memory to parse"):
        parse_json_strict(doc, max_memory=1000)
    budget = JsonBudget(10**9)
    assert parse_json_strict(doc, budget=budget) == [{}] * 1000
    assert budget.left < 10**9
    with pytest.raises(InvalidBundle, match="left for this bundle"):
        parse_json_strict(doc, exc=InvalidBundle, max_memory=10**9, budget=JsonBudget(1000))


# --- the proofs the bundle carries -----------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**40), st.integers(1, 2**20), st.integers(0, 2**20), st.lists(H32, max_size=40).map(tuple))
def test_range_proof_round_trip(start: int, length: int, extra: int, path: tuple[bytes, ...]) -> None:
    p = RangeProof(start=start, end=start + length, tree_size=start + length + extra, path=path)
    assert RangeProof.from_json(json.loads(json.dumps(p.to_json()))) == p


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 2**40).flatmap(lambda n: st.tuples(
    st.just(n), st.lists(st.integers(0, n - 1), min_size=1, max_size=8, unique=True).map(lambda x: tuple(sorted(x))))),
    st.lists(H32, max_size=8).map(tuple))
def test_multiproof_round_trip(size_positions: tuple[int, tuple[int, ...]], path: tuple[bytes, ...]) -> None:
    size, positions = size_positions
    p = MultiProof(positions=positions, tree_size=size, path=path)
    assert MultiProof.from_json(json.loads(json.dumps(p.to_json()))) == p


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**40), st.integers(0, 2**40), st.lists(H32, max_size=40).map(tuple))
def test_consistency_proof_round_trip(old: int, extra: int, path: tuple[bytes, ...]) -> None:
    p = ConsistencyProof(old_size=old, new_size=old + extra, path=path)
    assert ConsistencyProof.from_json(json.loads(json.dumps(p.to_json()))) == p
