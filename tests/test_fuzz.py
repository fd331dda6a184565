"""Issue 11: a fuzz test of the verifier. One small honest bundle is signed; then random bytes of
random *bound* members are mutated (every member whose bytes a signature, a signed digest or a
proven log entry covers), the manifest's member digests are made to match again (so the
mutation reaches the checks behind step 2), and the bundle is verified.

What must hold for every mutated bundle: ``verify()`` raises nothing (no traceback); the failure
is a documented error of specs/09's failure table, raised at a step the table lists for it,
never an ``InternalError``; the exit code is 1 or 2, never 0; the report names the step. The
only exit-0 outcomes allowed are mutations that change nothing a signature binds, each by a rule
of the specs: the manifest's informative fields (``replay``, ``sample``, ``disclosure``,
``generator``, ``created``, specs/08 section 2) and its layout; the layout (whitespace) of any JSON
member, whose parsed value is what every check reads (specs/08 asks no canonical form of bundle
members; the signed statements inside DSSE payloads are bytes and stay bound); text outside the PEM block of
the public key (RFC 7468 section 2); a checkpoint file's header layout and metadata, whose
content digest covers only the tensors (specs/06 section 4: "readers accept any valid
safetensors layout"). The oracle checks that each such outcome is one of those, by decoding.

Speed: the bundle is 8 shards x 2 slices x 1 epoch of logistic regression on digits (3% audit
records), one deletion, written with no uniform draws; it is verified with ``replay=0`` (the
deletion lineage, every replay input a mutation can reach, is still replayed in full: no check
that could catch a mutation is switched off) and without step 19, the statistical residual
tests, whose inputs (openings and final checkpoints) steps 15-16 bind byte for byte before it
runs (without it, any mutation that got through steps 1-18 shows as exit 0 and fails this test).
A second fuzz plays the owner, who holds the signing key: it mutates random bytes of the
transcript's payload and signs the statement again, so each mutation gets past step 6's
signature check to the checks of signed content (1,000 bundles; never a bug, never exit 0).

Measured (``pytest tests/test_fuzz.py --durations=0`` on the shared 2-core development machine,
load average about 6): the 2,000 mutated bundles in 21-36 s, the 1,000 owner-signed ones in 24 s,
plus 3-5 s to build the bundle; the file in 49 s.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from safetensors import SafetensorError

from verifiable_mu._errors import InternalError, MalformedInput, VerificationFailed

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = 2000

#: Member kinds and how to recognise them; each is bound by a signature or a signed digest.
KINDS: dict[str, str] = {
    "manifest": r"manifest\.json",  # every field but the informative ones is checked against signed data
    "key": r"keys/signing-key\.pub\.pem",  # the key every signature is checked under
    "final-head": r"heads/final\.note",  # a signed note
    "transcript": r"transcripts/\d{6}\.dsse\.json",  # DSSE-signed
    "log-entries": r"log/entries\.json",  # range proofs to the signed final head
    "openings": r"records/openings\.json",  # record commitments in proven log entries
    "slice-records": r"slices/[0-9a-f]{64}\.records",  # slice roots in proven log entries
    "absence": r"slices/absence\.json",  # non-membership under proven slice roots
    "checkpoint": r"checkpoints/[0-9a-f]{64}\.safetensors",  # content digests in proven log entries
}
#: Manifest fields the verifier documents as informative and ignores (specs/08 section 2).
MANIFEST_IGNORED = {"replay", "sample", "disclosure", "generator", "created"}
#: Bytes of the same class: a mutation within a class keeps JSON, hex and base64 parseable more
#: often, so it reaches the checks behind the parsers.
CLASSES = (b"0123456789abcdef", b"0123456789", b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


_KEY: dict[str, str] = {}


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    from prover import Workspace, WorkspaceConfig
    from prover._bundle import write_bundle

    root = tmp_path_factory.mktemp("fuzz")
    cfg = WorkspaceConfig(shards=8, slices=2, epochs=1, model="logreg", batch_size=64, audit_fraction=0.03,
                          workers=1, device="cpu")
    with Workspace.create(str(root / "ws"), data="digits", config=cfg) as ws:
        ws.progress = False
        ws.train(workers=1)
        ws.forget([ws.split_ids("train")[0]], workers=1)
        write_bundle(ws, str(root / "b.vmu"), replay=0)
    _KEY["path"] = str(root / "ws" / "signing-key.pem")  # the owner's key, for the owner's own fuzz
    with zipfile.ZipFile(root / "b.vmu") as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def _failure_table() -> dict[str, set[int]]:
    """specs/09 "Failure kinds": error name -> the steps that may raise it."""
    text = (ROOT / "specs" / "09-verification.md").read_text(encoding="utf-8")
    section = text.split("## Failure kinds", 1)[1].split("\n## ", 1)[0]
    out: dict[str, set[int]] = {}
    for m in re.finditer(r"^\| `(\w+)` \| (\d+) \| ([^|]+)\|", section, re.M):
        steps: set[int] = set()
        for part in re.findall(r"\d+(?:-\d+)?", m[3].split("(")[0]):
            a, _, b = part.partition("-")
            steps |= set(range(int(a), int(b or a) + 1))
        out[m[1]] = steps
    return out


def _meaning(name: str, raw: bytes) -> Any:
    """What a signature binds in member ``name`` (None when it does not decode): the bytes, but
    for the three members whose specs name bytes that bind nothing (module docstring)."""
    try:
        if name == "manifest.json":
            doc = json.loads(raw)
            return json.dumps({k: v for k, v in doc.items() if k not in MANIFEST_IGNORED}, sort_keys=True)
        if name.endswith(".json"):  # JSON whitespace binds nothing: the parsed value does
            return json.dumps(json.loads(raw), sort_keys=True)
        if name.startswith("keys/"):
            from verifiable_mu._keys import VerifyingKey

            return VerifyingKey.from_pem(raw).raw
        if name.startswith("checkpoints/"):
            from safetensors.torch import load

            from verifiable_mu.training import checkpoint_digest

            t = load(raw)
            return checkpoint_digest({k: t[k] for k in sorted(t)})
    except (ValueError, SafetensorError):  # undecodable (JSON, PEM, safetensors, dtype): "changed"
        return None
    return raw


def _mutate(data: Any, raw: bytes) -> tuple[bytes, list[str]]:
    out, ops = bytearray(raw), []
    for _ in range(data.draw(st.integers(1, 3), label="ops")):
        p = data.draw(st.integers(0, len(out) - 1), label="position")
        op = data.draw(st.sampled_from(["class", "class", "flip", "set", "insert", "delete"]), label="op")
        cls = next((c for c in CLASSES if out[p] in c), None)
        if op == "class" and cls is not None:
            out[p] = data.draw(st.sampled_from([b for b in cls if b != out[p]]), label="byte")
        elif op in ("flip", "class"):
            out[p] ^= 1 << data.draw(st.integers(0, 7), label="bit")
        elif op == "set":
            out[p] = data.draw(st.integers(0, 255).filter(lambda b, p=p: b != out[p]), label="byte")
        elif op == "insert":
            out.insert(p, data.draw(st.integers(0, 255), label="byte"))
        elif len(out) > 1:
            del out[p]
        else:
            out[p] ^= 1
        ops.append(f"{op}@{p}")
    return bytes(out), ops


def _check_outcome(v: Any, table: dict[str, set[int]], what: str) -> None:
    """A rejected or unusable verdict (never a bug): a documented error at a step specs/09's table
    lists for it, with a report and diagnostics that name the step."""
    from verifier import render_text

    f = v.failure
    assert f is not None and v.failed_step is not None, what
    assert not isinstance(f, InternalError), (what, f.diagnostics())
    assert v.exit_code == (2 if isinstance(f, MalformedInput) else 1) and isinstance(f, (MalformedInput, VerificationFailed))
    # documented: the error is in specs/09's table, at a step the table lists for it
    documented = next((c.__name__ for c in type(f).__mro__ if c.__name__ in table), None)
    assert documented is not None and v.failed_step in table[documented], (what, type(f).__name__, v.failed_step, str(f))
    # the report names the step: its check line, and the verdict line
    step = next(r for r in v.results if r.step == v.failed_step)
    assert step.status == ("error" if v.exit_code == 2 else "fail") and step.detail == str(f) and str(f)
    assert f"step {v.failed_step} ({step.name}): " in render_text(v).splitlines()[-1]
    assert f.step == v.failed_step and f"step: {v.failed_step} ({step.name})" in f.diagnostics()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        for name, b in members.items():
            z.writestr(name, b)
    return buf.getvalue()


def test_fuzz_mutated_bound_members_never_accepted_never_a_traceback(small_bundle: dict[str, bytes],
                                                                     tmp_path: Path) -> None:
    from verifier import VerifyOptions, verify

    members = small_bundle
    opts = VerifyOptions(replay=0, residual=False)
    assert verify(_zip(members), opts).exit_code == 0  # the honest bundle verifies
    by_kind = {k: sorted(n for n in members if re.fullmatch(rx, n)) for k, rx in KINDS.items()}
    assert all(by_kind.values()), by_kind
    assert set().union(*by_kind.values()) == set(members)  # every member is fuzzed
    table = _failure_table()
    seen: Counter[tuple[str, int, str, int | None]] = Counter()

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(data: Any) -> None:
        kind = data.draw(st.sampled_from(sorted(KINDS)), label="kind")
        name = data.draw(st.sampled_from(by_kind[kind]), label="member")
        raw, ops = _mutate(data, members[name])
        assume(raw != members[name])  # operations that cancel out are no mutation (and not counted)
        mutated = dict(members)
        mutated[name] = raw
        if name != "manifest.json":  # the digests match again: the mutation reaches the later steps
            old, new = hashlib.sha256(members[name]).hexdigest(), hashlib.sha256(raw).hexdigest()
            mutated["manifest.json"] = members["manifest.json"].replace(old.encode(), new.encode())
        bundle = _zip(mutated)
        v = verify(bundle, opts)  # raises nothing, whatever the bytes
        f = v.failure
        seen[(kind, v.exit_code, type(f).__name__ if f else "-", v.failed_step)] += 1
        where = tmp_path / "falsifying.vmu"
        if v.exit_code == 0:
            if _meaning(name, raw) == _meaning(name, members[name]):
                return  # nothing a signature binds changed (module docstring)
            where.write_bytes(bundle)
            raise AssertionError(f"a mutated {name} ({ops}) was accepted; bundle saved as {where}")
        if isinstance(f, InternalError) or v.exit_code not in (1, 2):
            where.write_bytes(bundle)
        _check_outcome(v, table, f"{name} {ops} (bundle: {where})")

    run()
    total = sum(seen.values())
    summary = "\n".join(f"{k}: {n}" for k, n in sorted(seen.items(), key=str))
    print(f"\n{total} mutated bundles:\n{summary}")
    assert total >= EXAMPLES
    kinds = Counter(k for k, *_ in seen.elements())
    assert min(kinds.values()) >= EXAMPLES // (3 * len(KINDS)), kinds  # every kind is fuzzed often
    # the fuzz reaches past the parsers: failures at the signature, proof, claim and opening steps
    steps = {s for (_, _, _, s) in seen}
    assert {2, 3, 5, 6, 9, 11, 16} <= steps, sorted(s for s in steps if s is not None)


OWNER_EXAMPLES = 1000


def test_fuzz_owner_signed_malformed_transcripts(small_bundle: dict[str, bytes], tmp_path: Path) -> None:
    """The owner holds the signing key: random bytes of the transcript's *payload* are mutated and
    the statement is signed again, so the mutation passes step 6's signature check and reaches the
    checks of signed content (steps 6-17): malformed signed content is unusable (exit 2), false
    signed claims are rejected (exit 1), and neither is ever a bug or an acceptance."""
    import base64

    from verifiable_mu._dsse import sign_statement
    from verifiable_mu._errors import VmuError
    from verifiable_mu._keys import SigningKey
    from verifier import VerifyOptions, verify

    members, key = small_bundle, SigningKey.load(_KEY["path"])
    name = "transcripts/000001.dsse.json"
    payload = base64.b64decode(json.loads(members[name])["payload"])
    honest = json.loads(payload)
    opts = VerifyOptions(replay=0, residual=False)
    table = _failure_table()
    seen: Counter[tuple[int, str, int | None]] = Counter()

    @settings(max_examples=OWNER_EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(data: Any) -> None:
        raw, ops = _mutate(data, payload)
        try:
            stmt = json.loads(raw)
            signed = sign_statement(stmt, [key]).to_bytes()
        except (ValueError, VmuError):  # not JSON, or not a statement the signer accepts
            assume(False)
        assume(stmt != honest)  # the same statement in another layout is no mutation
        mutated = dict(members)
        mutated[name] = signed
        old, new = hashlib.sha256(members[name]).hexdigest(), hashlib.sha256(signed).hexdigest()
        mutated["manifest.json"] = members["manifest.json"].replace(old.encode(), new.encode())
        bundle = _zip(mutated)
        v = verify(bundle, opts)
        seen[(v.exit_code, type(v.failure).__name__ if v.failure else "-", v.failed_step)] += 1
        if v.exit_code == 0 or isinstance(v.failure, InternalError):
            (tmp_path / "falsifying.vmu").write_bytes(bundle)
        assert v.exit_code != 0, f"an owner-signed transcript with {ops} was accepted ({tmp_path / 'falsifying.vmu'})"
        _check_outcome(v, table, f"payload {ops}")

    run()
    total = sum(seen.values())
    print(f"\n{total} owner-signed mutated transcripts:\n" + "\n".join(f"{k}: {n}" for k, n in sorted(seen.items(), key=str)))
    assert total >= OWNER_EXAMPLES
    steps = {s for (_, _, s) in seen}
    assert {6, 7, 8, 11, 15} <= steps, sorted(s for s in steps if s is not None)  # past the signature check


def test_meaning_tells_a_bound_change_from_an_unbound_one(small_bundle: dict[str, bytes]) -> None:
    """The oracle itself: an ignored manifest field and a checkpoint's metadata change nothing
    bound; a manifest origin, a tensor byte and a key byte do."""
    m = json.loads(small_bundle["manifest.json"])
    assert _meaning("manifest.json", json.dumps({**m, "replay": 99}).encode()) == _meaning("manifest.json", small_bundle["manifest.json"])
    assert _meaning("manifest.json", json.dumps({**m, "origin": "x"}).encode()) != _meaning("manifest.json", small_bundle["manifest.json"])
    name = next(n for n in small_bundle if n.startswith("checkpoints/"))
    raw = small_bundle[name]
    meta = raw.replace(b'\\"version\\":1', b'\\"version\\":7')
    assert meta != raw and _meaning(name, meta) == _meaning(name, raw) is not None
    tensor = raw[:-1] + bytes([raw[-1] ^ 1])
    assert _meaning(name, tensor) != _meaning(name, raw)
    key = small_bundle["keys/signing-key.pub.pem"]
    at = key.index(b"\n") + 10
    assert _meaning("keys/x", key[:at] + bytes([key[at] ^ 1]) + key[at + 1:]) != _meaning("keys/x", key)


def test_fuzz_finding_unsupported_proof_version_is_step_3_and_documented() -> None:
    """Found by the fuzz test: a member's inner object of an unknown version (here a consistency
    proof in log/entries.json) is refused at step 3, where the member is parsed, and specs/09's
    failure table did not list step 3 for UnsupportedVersion."""
    from conftest_verifier import members_of, rezip

    from verifiable_mu._errors import UnsupportedVersion
    from verifier import VerifyOptions, verify

    with open(ROOT / "tests" / "golden" / "bundle_honest.vmu", "rb") as fh:
        members = members_of(fh.read())
    doc = json.loads(members["log/entries.json"])
    doc["consistency"][0]["version"] = 2
    members["log/entries.json"] = json.dumps(doc).encode()
    v = verify(rezip(members), VerifyOptions(replay=0, residual=False))
    assert isinstance(v.failure, UnsupportedVersion) and v.failed_step == 3 and v.exit_code == 2
    assert "consistency proof version 2 is not supported" in str(v.failure)
    assert 3 in _failure_table()["UnsupportedVersion"]


def test_fuzz_finding_transcript_origin_mismatch_is_step_6_and_documented(small_bundle: dict[str, bytes]) -> None:
    """Found by the owner-signed fuzz: a transcript signed for another log origin is rejected at
    step 6 with HeadMismatch, which specs/09's failure table did not list for step 6."""
    import base64

    from verifiable_mu._dsse import sign_statement
    from verifiable_mu._keys import SigningKey
    from verifier import HeadMismatch, VerifyOptions, verify

    name = "transcripts/000001.dsse.json"
    stmt = json.loads(base64.b64decode(json.loads(small_bundle[name])["payload"]))
    origin = stmt["predicate"]["origin"]
    stmt["predicate"]["origin"] = origin + "x"
    members = dict(small_bundle)
    members[name] = sign_statement(stmt, [SigningKey.load(_KEY["path"])]).to_bytes()
    members["manifest.json"] = small_bundle["manifest.json"].replace(
        hashlib.sha256(small_bundle[name]).hexdigest().encode(), hashlib.sha256(members[name]).hexdigest().encode())
    v = verify(_zip(members), VerifyOptions(replay=0, residual=False))
    assert isinstance(v.failure, HeadMismatch) and v.failed_step == 6 and v.exit_code == 1
    assert f"is for log {origin + 'x'!r}, the bundle is for {origin!r}" in str(v.failure)
    assert 6 in _failure_table()["HeadMismatch"]
