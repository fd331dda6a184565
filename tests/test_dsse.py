"""DSSE envelopes and in-toto statements: spec vectors, interop with securesystemslib, rejections."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from securesystemslib import exceptions as sslib_exceptions
from securesystemslib.dsse import Envelope as SslibEnvelope
from securesystemslib.signer import CryptoSigner, SSlibKey

from verifiable_mu._canonical import canonical_json
from verifiable_mu._dsse import (
    IN_TOTO_PAYLOAD_TYPE,
    MAX_SIGNATURES,
    STATEMENT_TYPE,
    Envelope,
    EnvelopeSignature,
    make_statement,
    pae,
    sign_envelope,
    sign_statement,
    verify_envelope,
    verify_statement,
)
from verifiable_mu._errors import (
    MalformedEnvelope,
    MalformedInput,
    SignatureFailed,
    UnsupportedVersion,
)
from verifiable_mu._keys import SigningKey, VerifyingKey

SPEC = Path(__file__).resolve().parent.parent / "specs" / "05-dsse.md"
PT = "https://example.com/vmu-test-predicate/v1"
OTHER_PT = "https://example.com/vmu-test-predicate/v2"
TYPE = "application/vnd.example.test+json"

K1 = SigningKey.from_seed(bytes([1]) * 32)
K2 = SigningKey.from_seed(bytes([2]) * 32)
K3 = SigningKey.from_seed(bytes([3]) * 32)


def spec_vectors() -> dict[str, bytes]:
    text = SPEC.read_text(encoding="utf-8")
    found = re.findall(r"^```vector name=([A-Za-z0-9_.-]+)\n(.*?)\n```$", text, flags=re.S | re.M)
    out: dict[str, bytes] = {}
    for name, body in found:
        assert name not in out, f"duplicate vector {name}"
        out[name] = body.encode("utf-8")
    return out


def sslib_key(vk: VerifyingKey, keyid: str | None = None) -> SSlibKey:
    return SSlibKey(
        keyid=vk.key_id if keyid is None else keyid,
        keytype="ed25519",
        scheme="ed25519",
        keyval={"public": vk.raw.hex()},
    )


def example_statement(pt: str = PT) -> dict[str, Any]:
    return make_statement(
        subjects=[("model.safetensors", {"sha256": "ab" * 32})],
        predicate_type=pt,
        predicate={"note": "worked example", "shard": "0"},
    )


def env_json(**changes: Any) -> dict[str, Any]:
    d = sign_envelope(b"hello", TYPE, [K1]).to_json()
    d.update(changes)
    return d


# --- PAE ----------------------------------------------------------------------------------


def test_pae_dsse_protocol_vector() -> None:
    # secure-systems-lab/dsse protocol.md, "Test Vectors".
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    assert spec_vectors()["pae-hello-world"] == pae("http://example.com/HelloWorld", b"hello world")


def test_pae_lengths_are_utf8_bytes_without_leading_zeros() -> None:
    assert pae("\u00e9", b"") == b"DSSEv1 2 \xc3\xa9 0 "
    assert pae("t", b"x" * 100) == b"DSSEv1 1 t 100 " + b"x" * 100


def test_pae_rejects_bad_type() -> None:
    with pytest.raises(MalformedEnvelope, match="payloadType must not be empty"):
        pae("", b"x")
    with pytest.raises(MalformedEnvelope, match="payloadType must be a string"):
        pae(b"t", b"x")  # type: ignore[arg-type]
    with pytest.raises(MalformedEnvelope, match="not valid Unicode"):
        pae("\ud800", b"x")
    with pytest.raises(MalformedEnvelope, match="payload must be bytes"):
        pae("t", "x")  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40),
    st.binary(max_size=200),
)
def test_pae_matches_securesystemslib(payload_type: str, body: bytes) -> None:
    assert pae(payload_type, body) == SslibEnvelope(body, payload_type, {}).pae()


# --- spec worked example ------------------------------------------------------------------


def test_spec_vectors_byte_for_byte() -> None:
    v = spec_vectors()
    assert {"seed", "public-key", "public-key-pem", "key-id", "statement", "pae-statement",
            "signature", "envelope"} <= set(v)
    sk = SigningKey.from_seed(bytes.fromhex(v["seed"].decode()))
    assert sk.public_key.raw.hex().encode() == v["public-key"]
    assert sk.public_key.to_pem().rstrip(b"\n") == v["public-key-pem"]
    assert sk.key_id.encode() == v["key-id"]
    assert hashlib.sha256(b"vmu:ed25519-key-id:v1\x00" + sk.public_key.raw).hexdigest().encode() == v["key-id"]
    statement = example_statement()
    assert canonical_json(statement) == v["statement"]
    assert pae(IN_TOTO_PAYLOAD_TYPE, v["statement"]) == v["pae-statement"]
    assert sk.sign(v["pae-statement"]).hex().encode() == v["signature"]
    env = sign_statement(statement, [sk])
    assert env.to_bytes() == v["envelope"]
    # ... and the spec's envelope verifies, with ours and with securesystemslib.
    parsed = Envelope.from_bytes(v["envelope"])
    assert parsed == env
    assert verify_statement(parsed, [sk.public_key], predicate_type=PT) == statement
    SslibEnvelope.from_dict(json.loads(v["envelope"])).verify([sslib_key(sk.public_key)], 1)


# --- interoperability with securesystemslib -----------------------------------------------


def test_our_envelope_verifies_with_securesystemslib() -> None:
    env = sign_statement(example_statement(), [K1, K2])
    accepted = SslibEnvelope.from_dict(copy.deepcopy(env.to_json())).verify(
        [sslib_key(K1.public_key), sslib_key(K2.public_key)], 2
    )
    assert set(accepted) == {K1.key_id, K2.key_id}


def test_mutated_payload_fails_with_securesystemslib_and_ours() -> None:
    env = sign_statement(example_statement(), [K1])
    d = env.to_json()
    payload = json.loads(env.payload)
    payload["predicate"]["shard"] = "1"
    d["payload"] = base64.b64encode(canonical_json(payload)).decode()
    with pytest.raises(sslib_exceptions.VerificationError, match="Accepted signatures do not match threshold"):
        SslibEnvelope.from_dict(copy.deepcopy(d)).verify([sslib_key(K1.public_key)], 1)
    with pytest.raises(SignatureFailed, match="names trusted key .* but does not verify"):
        verify_statement(Envelope.from_json(d), [K1.public_key], predicate_type=PT)


def test_securesystemslib_envelope_verifies_with_ours() -> None:
    payload = canonical_json(example_statement())
    senv = SslibEnvelope(payload, IN_TOTO_PAYLOAD_TYPE, {})
    senv.sign(CryptoSigner(K1.private_key, sslib_key(K1.public_key)))
    ours = Envelope.from_json(senv.to_dict())
    assert verify_statement(ours, [K1.public_key], predicate_type=PT) == example_statement()
    assert verify_envelope(ours, [K1.public_key], payload_type=IN_TOTO_PAYLOAD_TYPE) == payload


def test_securesystemslib_signature_with_foreign_keyid() -> None:
    senv = SslibEnvelope(b"data", TYPE, {})
    senv.sign(CryptoSigner(K1.private_key, sslib_key(K1.public_key, keyid="someone-elses-id")))
    env = Envelope.from_json(senv.to_dict())
    # A keyid that names no trusted key is not counted (only a hint; never trusted by itself) ...
    with pytest.raises(SignatureFailed, match="only 0 of the required 1"):
        verify_envelope(env, [K1.public_key], payload_type=TYPE)
    # ... while an empty keyid is tried against every trusted key.
    senv2 = SslibEnvelope(b"data", TYPE, {})
    senv2.sign(CryptoSigner(K1.private_key, sslib_key(K1.public_key, keyid="")))
    assert verify_envelope(Envelope.from_json(senv2.to_dict()), [K2.public_key, K1.public_key],
                           payload_type=TYPE) == b"data"


# --- envelope round trips -----------------------------------------------------------------


def test_envelope_round_trip_and_any_json_layout() -> None:
    env = sign_envelope(b"\x00\xffbinary", TYPE, [K1, K2])
    assert Envelope.from_bytes(env.to_bytes()) == env
    pretty = json.dumps(env.to_json(), indent=2, sort_keys=False).encode()
    assert Envelope.from_bytes(pretty) == env
    assert env.to_bytes() == canonical_json(env.to_json())
    assert [s.keyid for s in env.signatures] == [K1.key_id, K2.key_id]
    assert verify_envelope(env, [K2.public_key, K1.public_key], threshold=2, payload_type=TYPE) == b"\x00\xffbinary"


# --- envelope parse rejections ------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"payload": "aGVsbG8"}, "payload is not valid base64"),  # missing padding
        ({"payload": "aGVs bG8="}, "payload is not valid base64"),
        ({"payload": "aGVsbG8_"}, "payload is not valid base64"),  # URL-safe alphabet
        ({"payload": "aGVsbG9="}, "payload is not canonical standard base64"),  # non-zero pad bits
        ({"payload": "\u00e9AAA"}, "payload is not valid base64: non-ASCII"),
        ({"payload": 5}, "payload must be a base64 string, not int"),
        ({"payloadType": 7}, "payloadType must be a string"),
        ({"payloadType": ""}, "payloadType must not be empty"),
        ({"payloadType": "x" * 1025}, "payloadType is 1025 bytes long"),
        ({"signatures": {}}, "signatures must be a JSON array"),
        ({"signatures": []}, "envelope has no signatures"),
        ({"signatures": [{"keyid": "", "sig": ""}] * (MAX_SIGNATURES + 1)}, "17 signatures \\(at most 16\\)"),
        ({"signatures": ["sig"]}, "signature 0 must be a JSON object"),
        ({"signatures": [{"sig": "AAAA"}]}, "signature 0 lacks field\\(s\\): keyid"),
        ({"signatures": [{"keyid": "a"}]}, "signature 0 lacks field\\(s\\): sig"),
        ({"signatures": [{"keyid": "a", "sig": "AAAA", "extra": 1}]}, "signature 0 has unknown field\\(s\\): extra"),
        ({"signatures": [{"keyid": 3, "sig": "AAAA"}]}, "signature 0 keyid must be a string"),
        ({"signatures": [{"keyid": "a" * 257, "sig": "AAAA"}]}, "keyid is 257 characters"),
        ({"signatures": [{"keyid": "a", "sig": "A"}]}, "signature 0 sig is not valid base64"),
        ({"signatures": [{"keyid": "a", "sig": "AA" * 700}]}, "sig is 1050 bytes \\(at most 1024\\)"),
        ({"signatures": [{"keyid": "a", "sig": "AAAA"}, {"keyid": "a", "sig": "AAAA"}]},
         "two signatures with keyid 'a'"),
        ({"extra": "x"}, "DSSE envelope has unknown field\\(s\\): extra"),
    ],
)
def test_envelope_from_json_rejections(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(MalformedEnvelope, match=match):
        Envelope.from_json(env_json(**changes))


@pytest.mark.parametrize("field", ["payload", "payloadType", "signatures"])
def test_envelope_missing_field(field: str) -> None:
    d = env_json()
    del d[field]
    with pytest.raises(MalformedEnvelope, match=f"lacks field\\(s\\): {field}"):
        Envelope.from_json(d)


def test_envelope_from_json_not_object() -> None:
    with pytest.raises(MalformedEnvelope, match="must be a JSON object"):
        Envelope.from_json([])


def test_envelope_from_bytes_rejections() -> None:
    good = sign_envelope(b"x", TYPE, [K1]).to_bytes()
    with pytest.raises(MalformedEnvelope, match="DSSE envelope is not valid JSON"):
        Envelope.from_bytes(b"{not json")
    with pytest.raises(MalformedEnvelope, match="DSSE envelope is not valid JSON: duplicate key 'payload'"):
        Envelope.from_bytes(b'{"payload":"","payload":"","payloadType":"t","signatures":[]}')
    with pytest.raises(MalformedEnvelope, match="DSSE envelope is too large"):
        Envelope.from_bytes(good, max_bytes=len(good) - 1)
    with pytest.raises(MalformedEnvelope, match="nested deeper than 3 levels"):
        Envelope.from_bytes(b'{"payload":[[[[]]]]}')
    with pytest.raises(MalformedEnvelope, match="must be bytes, not str"):
        Envelope.from_bytes(good.decode())  # type: ignore[arg-type]
    with pytest.raises(MalformedEnvelope, match="DSSE envelope is not valid JSON"):
        Envelope.from_bytes(b'{"payload":"","payloadType":"t","signatures":[{"keyid":"","sig":NaN}]}')


def test_envelope_constructor_validates() -> None:
    with pytest.raises(MalformedEnvelope, match="signatures must be a tuple of EnvelopeSignature"):
        Envelope(payload=b"", payload_type="t", signatures=[EnvelopeSignature(keyid="", sig=b"")])  # type: ignore[arg-type]
    with pytest.raises(MalformedEnvelope, match="payload must be bytes"):
        Envelope(payload="x", payload_type="t", signatures=(EnvelopeSignature(keyid="", sig=b""),))  # type: ignore[arg-type]
    with pytest.raises(MalformedEnvelope, match="sig must be bytes"):
        EnvelopeSignature(keyid="", sig="AAAA")  # type: ignore[arg-type]


# --- signing rejections -------------------------------------------------------------------


def test_sign_envelope_rejections() -> None:
    with pytest.raises(MalformedInput, match="needs at least one signing key"):
        sign_envelope(b"x", TYPE, [])
    with pytest.raises(MalformedInput, match="the same key twice"):
        sign_envelope(b"x", TYPE, [K1, SigningKey.from_seed(bytes([1]) * 32)])
    with pytest.raises(MalformedInput, match="17 keys \\(at most 16\\)"):
        sign_envelope(b"x", TYPE, [SigningKey.generate() for _ in range(17)])
    with pytest.raises(MalformedInput, match="must be SigningKey objects"):
        sign_envelope(b"x", TYPE, [K1.public_key])  # type: ignore[list-item]
    with pytest.raises(MalformedEnvelope, match="payloadType must not be empty"):
        sign_envelope(b"x", "", [K1])


# --- verification: trust policy -----------------------------------------------------------


def test_trust_policy_rejections() -> None:
    env = sign_envelope(b"x", TYPE, [K1])
    with pytest.raises(MalformedInput, match="trust policy has no trusted keys"):
        verify_envelope(env, [], payload_type=TYPE)
    with pytest.raises(MalformedInput, match="threshold must be an integer >= 1, not 0"):
        verify_envelope(env, [K1.public_key], threshold=0, payload_type=TYPE)
    with pytest.raises(MalformedInput, match="threshold must be an integer >= 1, not -1"):
        verify_envelope(env, [K1.public_key], threshold=-1, payload_type=TYPE)
    with pytest.raises(MalformedInput, match="threshold must be an integer >= 1, not True"):
        verify_envelope(env, [K1.public_key], threshold=True, payload_type=TYPE)
    with pytest.raises(MalformedInput, match="threshold 2 exceeds the 1 distinct trusted key"):
        verify_envelope(env, [K1.public_key], threshold=2, payload_type=TYPE)
    # The same key listed twice is one key: it cannot meet a threshold of two.
    with pytest.raises(MalformedInput, match="threshold 2 exceeds the 1 distinct trusted key"):
        verify_envelope(env, [K1.public_key, VerifyingKey.from_bytes(K1.public_key.raw)],
                        threshold=2, payload_type=TYPE)
    with pytest.raises(MalformedInput, match="sequence of VerifyingKey"):
        verify_envelope(env, K1.public_key, payload_type=TYPE)  # type: ignore[arg-type]
    with pytest.raises(MalformedInput, match="must be VerifyingKey objects, not SigningKey"):
        verify_envelope(env, [K1], payload_type=TYPE)  # type: ignore[list-item]


# --- verification: signatures -------------------------------------------------------------


def test_wrong_key() -> None:
    env = sign_envelope(b"x", TYPE, [K1])
    with pytest.raises(SignatureFailed, match="only 0 of the required 1 trusted key\\(s\\) signed"):
        verify_envelope(env, [K2.public_key], payload_type=TYPE)


def test_mutated_payload_sig_and_type() -> None:
    env = sign_envelope(b"payload", TYPE, [K1])
    mutated_payload = Envelope(payload=b"pAyload", payload_type=TYPE, signatures=env.signatures)
    with pytest.raises(SignatureFailed, match="signature 0 names trusted key .* but does not verify"):
        verify_envelope(mutated_payload, [K1.public_key], payload_type=TYPE)
    sig = bytearray(env.signatures[0].sig)
    sig[10] ^= 0x40
    mutated_sig = Envelope(payload=env.payload, payload_type=TYPE,
                           signatures=(EnvelopeSignature(keyid=K1.key_id, sig=bytes(sig)),))
    with pytest.raises(SignatureFailed, match="does not verify"):
        verify_envelope(mutated_sig, [K1.public_key], payload_type=TYPE)
    short_sig = Envelope(payload=env.payload, payload_type=TYPE,
                         signatures=(EnvelopeSignature(keyid=K1.key_id, sig=bytes(sig[:32])),))
    with pytest.raises(SignatureFailed, match="signature is 32 bytes"):
        verify_envelope(short_sig, [K1.public_key], payload_type=TYPE)
    mutated_type = Envelope(payload=env.payload, payload_type=TYPE + "x", signatures=env.signatures)
    # Verifier expecting the original type: the mismatch is caught before any signature check.
    with pytest.raises(MalformedEnvelope, match="envelope payloadType is .*, expected"):
        verify_envelope(mutated_type, [K1.public_key], payload_type=TYPE)
    # Verifier expecting the new type: the signature covers the type, so it fails.
    with pytest.raises(SignatureFailed, match="does not verify"):
        verify_envelope(mutated_type, [K1.public_key], payload_type=TYPE + "x")


def test_payload_type_checked_before_signatures() -> None:
    env = sign_envelope(b"x", "application/other", [K2])  # untrusted signer AND wrong type
    with pytest.raises(MalformedEnvelope, match="expected 'application/vnd.example.test\\+json'"):
        verify_envelope(env, [K1.public_key], payload_type=TYPE)


def test_threshold_counts_distinct_trusted_keys() -> None:
    env = sign_envelope(b"x", TYPE, [K1, K3])
    trusted = [K1.public_key, K2.public_key]
    assert verify_envelope(env, trusted, threshold=1, payload_type=TYPE) == b"x"  # K3 ignored
    with pytest.raises(SignatureFailed, match="only 1 of the required 2"):
        verify_envelope(env, trusted, threshold=2, payload_type=TYPE)
    env2 = sign_envelope(b"x", TYPE, [K1, K2, K3])
    assert verify_envelope(env2, trusted, threshold=2, payload_type=TYPE) == b"x"


def test_bad_signature_by_trusted_key_fails_even_if_threshold_met() -> None:
    env = sign_envelope(b"x", TYPE, [K1, K2])
    bad = EnvelopeSignature(keyid=K2.key_id, sig=bytes(64))
    tampered = Envelope(payload=b"x", payload_type=TYPE, signatures=(env.signatures[0], bad))
    with pytest.raises(SignatureFailed, match="signature 1 names trusted key"):
        verify_envelope(tampered, [K1.public_key, K2.public_key], threshold=1, payload_type=TYPE)


def test_empty_keyid_signature_does_not_count_twice() -> None:
    env = sign_envelope(b"x", TYPE, [K1])
    anon = EnvelopeSignature(keyid="", sig=env.signatures[0].sig)
    twice = Envelope(payload=b"x", payload_type=TYPE, signatures=(env.signatures[0], anon))
    with pytest.raises(SignatureFailed, match="only 1 of the required 2"):
        verify_envelope(twice, [K1.public_key, K2.public_key], threshold=2, payload_type=TYPE)
    # An empty-keyid signature that verifies under no trusted key is ignored, not an error.
    junk = Envelope(payload=b"x", payload_type=TYPE,
                    signatures=(env.signatures[0], EnvelopeSignature(keyid="", sig=bytes(64))))
    assert verify_envelope(junk, [K1.public_key], payload_type=TYPE) == b"x"


def test_verify_envelope_requires_envelope() -> None:
    with pytest.raises(MalformedEnvelope, match="expected an Envelope, not dict"):
        verify_envelope({}, [K1.public_key], payload_type=TYPE)  # type: ignore[arg-type]


# --- statements ---------------------------------------------------------------------------


def test_statement_round_trip() -> None:
    statement = example_statement()
    assert statement["_type"] == STATEMENT_TYPE == "https://in-toto.io/Statement/v1"
    env = sign_statement(statement, [K1])
    assert env.payload_type == IN_TOTO_PAYLOAD_TYPE == "application/vnd.in-toto+json"
    assert env.payload == canonical_json(statement)
    assert verify_statement(env, [K1.public_key], predicate_type=PT) == statement


def _signed_raw(payload: bytes, payload_type: str = IN_TOTO_PAYLOAD_TYPE) -> Envelope:
    """A validly signed envelope around arbitrary bytes (to reach the statement checks)."""
    return sign_envelope(payload, payload_type, [K1])


def _stmt(**changes: Any) -> dict[str, Any]:
    s = example_statement()
    s.update(changes)
    return s


@pytest.mark.parametrize(
    "statement, exc, match",
    [
        (_stmt(_type="https://in-toto.io/Statement/v0.1"), UnsupportedVersion,
         "statement _type 'https://in-toto.io/Statement/v0.1' is not supported"),
        ({k: v for k, v in _stmt().items() if k != "_type"}, MalformedEnvelope, "lacks field\\(s\\): _type"),
        ({k: v for k, v in _stmt().items() if k != "predicate"}, MalformedEnvelope, "lacks field\\(s\\): predicate"),
        (_stmt(extra=1), MalformedEnvelope, "in-toto statement has unknown field\\(s\\): extra"),
        (_stmt(subject=[]), MalformedEnvelope, "subject must be a non-empty JSON array"),
        (_stmt(subject={"name": "a"}), MalformedEnvelope, "subject must be a non-empty JSON array"),
        (_stmt(subject=["a"]), MalformedEnvelope, "subject 0 must be a JSON object"),
        (_stmt(subject=[{"name": "a"}]), MalformedEnvelope, "subject 0 lacks field\\(s\\): digest"),
        (_stmt(subject=[{"name": "a", "digest": {"sha256": "ab" * 32}, "uri": "x"}]), MalformedEnvelope,
         "subject 0 has unknown field\\(s\\): uri"),
        (_stmt(subject=[{"name": "", "digest": {"sha256": "ab" * 32}}]), MalformedEnvelope,
         "subject 0 name must be a non-empty string"),
        (_stmt(subject=[{"name": "a", "digest": {"sha512": "ab" * 64}}]), MalformedEnvelope,
         "digest must be an object with exactly one field, sha256"),
        (_stmt(subject=[{"name": "a", "digest": {"sha256": "ab" * 32, "sha512": "ab" * 64}}]), MalformedEnvelope,
         "exactly one field, sha256"),
        (_stmt(subject=[{"name": "a", "digest": {"sha256": "AB" * 32}}]), MalformedEnvelope,
         "sha256 digest must be lower-case hex"),
        (_stmt(subject=[{"name": "a", "digest": {"sha256": "ab" * 31}}]), MalformedEnvelope,
         "sha256 digest must be 64 lower-case hex characters"),
        (_stmt(subject=[{"name": "a", "digest": {"sha256": "zz" * 32}}]), MalformedEnvelope,
         "sha256 digest is not valid hex"),
        (_stmt(predicateType=""), MalformedEnvelope, "statement predicateType must be a non-empty string"),
        (_stmt(predicate=[1]), MalformedEnvelope, "statement predicate must be a JSON object"),
    ],
)
def test_statement_rejections(statement: dict[str, Any], exc: type[Exception], match: str) -> None:
    # Signed validly by a trusted key, so only the statement checks can reject it ...
    with pytest.raises(exc, match=match):
        verify_statement(_signed_raw(canonical_json(statement)), [K1.public_key], predicate_type=PT)
    # ... and the producer refuses to sign it in the first place.
    with pytest.raises(exc, match=match):
        sign_statement(statement, [K1])


def test_wrong_predicate_type() -> None:
    env = sign_statement(example_statement(OTHER_PT), [K1])
    with pytest.raises(MalformedEnvelope, match="predicateType is '.*/v2', expected '.*/v1'"):
        verify_statement(env, [K1.public_key], predicate_type=PT)
    with pytest.raises(MalformedEnvelope, match="expected predicate_type must be a non-empty string"):
        verify_statement(env, [K1.public_key], predicate_type="")


def test_statement_payload_not_json() -> None:
    with pytest.raises(MalformedEnvelope, match="in-toto statement payload is not valid JSON"):
        verify_statement(_signed_raw(b"\x00not json"), [K1.public_key], predicate_type=PT)
    with pytest.raises(MalformedEnvelope, match="in-toto statement must be a JSON object"):
        verify_statement(_signed_raw(b"[1,2]"), [K1.public_key], predicate_type=PT)
    dup = b'{"_type":"https://in-toto.io/Statement/v1","_type":"x"}'
    with pytest.raises(MalformedEnvelope, match="duplicate key '_type'"):
        verify_statement(_signed_raw(dup), [K1.public_key], predicate_type=PT)


def test_statement_payload_not_canonical() -> None:
    payload = json.dumps(example_statement(), indent=1).encode()
    with pytest.raises(MalformedEnvelope, match="not in RFC 8785 canonical form"):
        verify_statement(_signed_raw(payload), [K1.public_key], predicate_type=PT)


def test_statement_in_wrong_payload_type() -> None:
    env = _signed_raw(canonical_json(example_statement()), payload_type="application/json")
    with pytest.raises(MalformedEnvelope, match="payloadType is 'application/json', expected 'application/vnd.in-toto\\+json'"):
        verify_statement(env, [K1.public_key], predicate_type=PT)


def test_statement_signature_checked_before_payload_is_parsed() -> None:
    env = sign_envelope(b"\x00not json", IN_TOTO_PAYLOAD_TYPE, [K2])
    with pytest.raises(SignatureFailed, match="only 0 of the required 1"):
        verify_statement(env, [K1.public_key], predicate_type=PT)


def test_statement_not_canonicalisable() -> None:
    with pytest.raises(MalformedEnvelope, match="cannot be canonicalised"):
        sign_statement(_stmt(predicate={"n": 2**60}), [K1])


def test_make_statement_rejects_bad_subject_pairs() -> None:
    with pytest.raises(MalformedEnvelope, match="each subject must be a \\(name, digest\\) pair"):
        make_statement(subjects=["model"], predicate_type=PT, predicate={})  # type: ignore[list-item]
    with pytest.raises(MalformedEnvelope, match="subject must be a non-empty JSON array"):
        make_statement(subjects=[], predicate_type=PT, predicate={})
