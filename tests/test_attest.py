"""``vmu-verify --attest OUT --signing-key KEY``: a DSSE-signed in-toto Verification Summary
Attestation (SLSA VSA v1) of the verdict (specs/09-verification.md, "Signed verdict").

The round trip is checked with independent code: the in-toto-attestation package parses and
validates the statement (and the VSA v1 protobuf schema types its fields), securesystemslib
verifies the DSSE signature. Bundles are the golden ones (tests/golden/): no training here.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from in_toto_attestation.predicates.vsa.v1 import vsa_pb2
from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
from in_toto_attestation.v1.statement import Statement
from securesystemslib import exceptions as sslib_exceptions
from securesystemslib.dsse import Envelope as SslibEnvelope
from securesystemslib.signer import SSlibKey

from verifiable_mu import __version__
from verifiable_mu._canonical import canonical_json
from verifiable_mu._keys import SigningKey, VerifyingKey
from verifier._attest import EXTENSION, PREDICATE_VSA, VERIFIER_ID, resource_uri
from verifier._policy import POLICIES, policy_descriptor, policy_document
from verifier.cli import main

GOLDEN = Path(__file__).resolve().parent / "golden"
HONEST = GOLDEN / "bundle_honest.vmu"
REJECTED = GOLDEN / "bundle_batch_not_committed.vmu"  # step 14, BatchNotCommitted, exit 1
UNUSABLE = GOLDEN / "bundle_unsupported_version.vmu"  # step 2, exit 2


def sslib_key(vk: VerifyingKey) -> SSlibKey:
    return SSlibKey(keyid=vk.key_id, keytype="ed25519", scheme="ed25519", keyval={"public": vk.raw.hex()})


@pytest.fixture
def key(tmp_path: Path) -> tuple[SigningKey, str]:
    sk = SigningKey.generate()
    path = str(tmp_path / "verifier-key.pem")
    sk.save(path)
    return sk, path


def attest(bundle: Path, out: Path, key_path: str, *extra: str) -> int:
    return main([str(bundle), "--no-residual", "--quiet", "--attest", str(out), "--signing-key", key_path, *extra])


def statement_of(env: dict[str, Any]) -> dict[str, Any]:
    return json.loads(base64.b64decode(env["payload"]))


def in_toto_validate(st: dict[str, Any]) -> vsa_pb2.VerificationSummary:  # type: ignore[name-defined]
    """Validate with in-toto-attestation 0.9.3: the Statement wrapper's validate() (type, subjects
    with digests, predicate type, predicate) and the VSA v1 protobuf schema for the predicate's
    fields. 0.9.3 has no VSA validator, and its proto departs from the SLSA VSA v1 spec in two
    places: it lacks ``verifier.version`` (so unknown fields are ignored there; the tests check the
    field sets by name) and types ``verifiedLevels`` as one string where the spec has an array
    (in-toto/attestation#425, "the .MD is authoritative"): that field is checked here by hand."""
    subjects = [ResourceDescriptor(name=s["name"], digest=s["digest"]).pb for s in st["subject"]]
    stmt = Statement(subjects, st["predicateType"], st["predicate"])
    stmt.validate()
    for s in stmt.pb.subject:
        ResourceDescriptor.copy_from_pb(s).validate()
    levels = st["predicate"]["verifiedLevels"]
    assert isinstance(levels, list) and levels and all(isinstance(x, str) for x in levels)
    pred = {k: v for k, v in st["predicate"].items() if k != "verifiedLevels"}
    return json_format.ParseDict(pred, vsa_pb2.VerificationSummary(), ignore_unknown_fields=True)


def test_vsa_round_trip_in_toto_and_securesystemslib(key, tmp_path) -> None:
    sk, path = key
    out = tmp_path / "verdict.vsa.json"
    before = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    assert attest(HONEST, out, path) == 0
    env = json.loads(out.read_bytes())
    assert env["payloadType"] == "application/vnd.in-toto+json"
    # securesystemslib verifies the DSSE signature under the verifier's public key
    accepted = SslibEnvelope.from_dict(dict(env)).verify([sslib_key(sk.public_key)], 1)
    assert set(accepted) == {sk.key_id}
    st = statement_of(env)
    pb = in_toto_validate(st)
    # the subject is the bundle file: its name and the SHA-256 of its bytes
    digest = hashlib.sha256(HONEST.read_bytes()).hexdigest()
    assert st["subject"] == [{"name": HONEST.name, "digest": {"sha256": digest}}]
    assert st["predicateType"] == PREDICATE_VSA == "https://slsa.dev/verification_summary/v1"
    assert pb.verifier.id == VERIFIER_ID and pb.verification_result == "PASSED"
    assert pb.resource_uri == resource_uri(digest)
    raw = base64.urlsafe_b64decode(pb.resource_uri.removeprefix("ni:///sha-256;") + "=")
    assert raw.hex() == digest  # RFC 6920 names the same bytes
    t = pb.time_verified.ToDatetime(tzinfo=dt.timezone.utc)
    assert before <= t <= dt.datetime.now(dt.timezone.utc)
    assert st["predicate"]["timeVerified"].endswith("Z")
    assert st["predicate"]["verifier"]["version"] == {"vmu-verify": __version__}
    doc = policy_document("default")
    assert pb.policy.uri == doc["uri"] and dict(pb.policy.digest) == {
        "sha256": hashlib.sha256(canonical_json(doc)).hexdigest()}
    assert st["predicate"]["verifiedLevels"] == ["VMU_UNLEARNING_VERIFIED_DEFAULT"]  # no SLSA_ level: no track claimed
    assert set(st["predicate"]) == {"verifier", "timeVerified", "resourceUri", "policy", "verificationResult",
                                    "verifiedLevels", EXTENSION}
    ext = st["predicate"][EXTENSION]
    assert ext["verdict"] == "accepted" and ext["exitCode"] == 0 and ext["policy"] == "default"
    assert [c["step"] for c in ext["checks"]] == list(range(1, 20))
    assert all(c["status"] == "pass" for c in ext["checks"][:18]) and ext["checks"][18]["status"] == "skipped"
    assert any("NO RESIDUAL TESTS" in w for w in ext["warnings"])
    # the payload is RFC 8785 canonical JSON (one byte form per statement)
    assert base64.b64decode(env["payload"]) == canonical_json(st)


def test_vsa_tampered_payload_fails_securesystemslib(key, tmp_path) -> None:
    sk, path = key
    out = tmp_path / "v.json"
    assert attest(REJECTED, out, path) == 1
    env = json.loads(out.read_bytes())
    st = statement_of(env)
    st["predicate"]["verificationResult"] = "PASSED"
    env["payload"] = base64.b64encode(canonical_json(st)).decode()
    with pytest.raises(sslib_exceptions.VerificationError, match="Accepted signatures do not match threshold"):
        SslibEnvelope.from_dict(env).verify([sslib_key(sk.public_key)], 1)


def test_vsa_does_not_verify_under_another_key(key, tmp_path) -> None:
    _, path = key
    out = tmp_path / "v.json"
    assert attest(HONEST, out, path) == 0
    other = SigningKey.generate().public_key
    with pytest.raises(sslib_exceptions.VerificationError, match="Accepted signatures do not match threshold"):
        SslibEnvelope.from_dict(json.loads(out.read_bytes())).verify([sslib_key(other)], 1)


def test_vsa_for_rejected_bundle_is_failed(key, tmp_path) -> None:
    sk, path = key
    out = tmp_path / "v.json"
    assert attest(REJECTED, out, path) == 1
    env = json.loads(out.read_bytes())
    SslibEnvelope.from_dict(dict(env)).verify([sslib_key(sk.public_key)], 1)
    st = statement_of(env)
    pb = in_toto_validate(st)
    assert pb.verification_result == "FAILED" and st["predicate"]["verifiedLevels"] == ["FAILED"]
    ext = st["predicate"][EXTENSION]
    assert ext["verdict"] == "rejected" and ext["exitCode"] == 1
    assert ext["failure"]["step"] == 14 and ext["failure"]["error"] == "BatchNotCommitted"
    assert "does not train on its committed batch" in ext["failure"]["message"]
    assert {c["step"]: c["status"] for c in ext["checks"]}[14] == "fail"
    assert st["subject"][0]["digest"]["sha256"] == hashlib.sha256(REJECTED.read_bytes()).hexdigest()


def test_no_vsa_for_unusable_input(key, tmp_path, capsys) -> None:
    _, path = key
    out = tmp_path / "v.json"
    assert attest(UNUSABLE, out, path) == 2
    assert not out.exists() and os.listdir(tmp_path) == ["verifier-key.pem"]
    assert "version 2 is not supported" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["public-key", "missing", "group-readable", "not-pem"])
def test_bad_signing_key_exit_2_one_line(key, tmp_path, capsys, case) -> None:
    sk, path = key
    bad = tmp_path / "bad.pem"
    if case == "public-key":
        bad.write_bytes(sk.public_key.to_pem())
        bad.chmod(0o600)
        frag = "not a PEM private key"
    elif case == "missing":
        frag = "cannot read --signing-key"
    elif case == "group-readable":
        bad.write_bytes(sk.to_pem())
        bad.chmod(0o640)
        frag = "chmod 600"
    else:
        bad.write_bytes(b"not a key\n")
        bad.chmod(0o600)
        frag = "not a PEM private key"
    out = tmp_path / "v.json"
    assert attest(HONEST, out, str(bad)) == 2
    err = capsys.readouterr().err
    assert frag in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize("case", ["no-folder", "is-folder", "key-without-out", "stdout"])
def test_unusable_attest_arguments_exit_2(key, tmp_path, capsys, monkeypatch, case) -> None:
    _, path = key
    if case == "key-without-out":
        rc = main([str(HONEST), "--no-residual", "--signing-key", path])
        frag = "--attest and --signing-key go together"
    elif case == "stdout":
        monkeypatch.chdir(tmp_path)
        rc = main([str(HONEST), "--no-residual", "--attest", "-", "--signing-key", path])
        frag = "--attest needs a file name"
    else:
        out = tmp_path / "nope" / "v.json" if case == "no-folder" else tmp_path
        rc = attest(HONEST, out, path)
        frag = "cannot write --attest"
    assert rc == 2
    err = capsys.readouterr().err
    assert frag in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert sorted(os.listdir(tmp_path)) == ["verifier-key.pem"]  # nothing written, not even a temporary file


def test_failed_write_leaves_nothing(key, tmp_path, capsys, monkeypatch) -> None:
    """The folder is checked up front; a write that fails anyway (disk full, folder gone) leaves no
    half-written file: atomic_write removes its temporary file."""
    _, path = key
    out = tmp_path / "v.json"
    real = os.replace

    def full_disk(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    rc = attest(HONEST, out, path)
    monkeypatch.setattr(os, "replace", real)
    assert rc == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "No space left on device" in err
    assert sorted(os.listdir(tmp_path)) == ["verifier-key.pem"]


def test_policy_digests_are_the_ones_specs_09_publishes() -> None:
    """A VSA consumer compares predicate.policy.digest with the published digest of the policy it
    requires: the code's policy documents must hash to the digests specs/09 lists."""
    import re

    text = (Path(__file__).resolve().parents[1] / "specs" / "09-verification.md").read_text(encoding="utf-8")
    published = dict(re.findall(r"^\| `(\w+)` \| `([0-9a-f]{64})` \|$", text, re.M))
    assert published == {n: policy_descriptor(n)["digest"]["sha256"] for n in POLICIES}
    assert policy_descriptor("agency")["uri"] == policy_document("agency")["uri"]
