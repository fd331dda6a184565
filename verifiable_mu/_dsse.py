"""DSSE v1 envelopes around in-toto Statement v1 (specs/05-dsse.md).

A signature is ``Ed25519(PAE(payloadType, payload))`` where PAE is DSSE's pre-authentication
encoding, so the payload type is signed together with the payload and a signature made for one
kind of document can never be passed off as a signature over another.

The JSON envelope is read as a *strict profile* of DSSE: every envelope this module writes is a
valid DSSE envelope (securesystemslib and other DSSE tools verify it), but it accepts less than
DSSE allows, on purpose:

* base64 must be the standard alphabet with padding, in its one canonical form (DSSE also allows
  URL-safe base64). One encoding per value keeps the bytes of a proof bundle, and so its digest,
  unique.
* Unknown fields are refused (DSSE says consumers ignore them). Envelope fields are not signed:
  anything extra would be unauthenticated data riding inside a signed-looking object, and a later
  reader could mistake it for signed content. Refusing it keeps bundles to their documented form.
* ``keyid`` must be present (DSSE treats unset as empty) and at most 16 signatures are read.

The keyid is only used to pick which trusted key to try (DSSE's "narrow the selection of keys"):
a signature is counted for a trusted key only if it verifies under that key. A signature whose
keyid names a trusted key but does not verify makes the whole envelope fail (fail closed); one
whose keyid is empty is tried against every trusted key; one naming an unknown key is ignored.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ._canonical import b64encode, canonical_json, hex32, parse_json_strict
from ._errors import MalformedEnvelope, MalformedInput, SignatureFailed, UnsupportedVersion
from ._keys import SigningKey, VerifyingKey

__all__ = [
    "IN_TOTO_PAYLOAD_TYPE",
    "STATEMENT_TYPE",
    "PREDICATE_DELETION",
    "MAX_SIGNATURES",
    "MAX_ENVELOPE_BYTES",
    "pae",
    "EnvelopeSignature",
    "Envelope",
    "sign_envelope",
    "verify_envelope",
    "make_statement",
    "sign_statement",
    "verify_statement",
]

IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
#: The predicateType of a deletion transcript (specs/07), written by the prover, required by the verifier.
PREDICATE_DELETION = "https://verifiable-mu.dev/deletion-transcript/v1"

MAX_SIGNATURES = 16
MAX_ENVELOPE_BYTES = 64 * 1024 * 1024
_MAX_PAYLOAD_TYPE = 1024  # UTF-8 bytes
_MAX_KEYID = 256  # characters
_MAX_SIG = 1024  # decoded bytes; other algorithms' signatures may ride along and be ignored
_MAX_SUBJECTS = 4096
_MAX_NAME = 4096
_MAX_PREDICATE_TYPE = 1024

_ENVELOPE_FIELDS = frozenset({"payload", "payloadType", "signatures"})
_SIGNATURE_FIELDS = frozenset({"keyid", "sig"})
_STATEMENT_FIELDS = frozenset({"_type", "subject", "predicateType", "predicate"})
_SUBJECT_FIELDS = frozenset({"name", "digest"})


# --- PAE ----------------------------------------------------------------------------------------


def _type_bytes(payload_type: Any) -> bytes:
    if not isinstance(payload_type, str):
        raise MalformedEnvelope(f"payloadType must be a string, not {type(payload_type).__name__}")
    try:
        b = payload_type.encode("utf-8")
    except UnicodeEncodeError as e:
        raise MalformedEnvelope(f"payloadType is not valid Unicode text: {e}") from e
    if not b:
        raise MalformedEnvelope("payloadType must not be empty")
    if len(b) > _MAX_PAYLOAD_TYPE:
        raise MalformedEnvelope(f"payloadType is {len(b)} bytes long (at most {_MAX_PAYLOAD_TYPE})")
    return b


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding:
    ``"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`` with LEN the ASCII decimal byte length
    (no leading zeros) and ``type`` encoded as UTF-8."""
    t = _type_bytes(payload_type)
    if not isinstance(payload, (bytes, bytearray)):
        raise MalformedEnvelope(f"payload must be bytes, not {type(payload).__name__}")
    return b"DSSEv1 %d %b %d %b" % (len(t), t, len(payload), bytes(payload))


# --- strict base64 ------------------------------------------------------------------------------


def _b64_strict(text: Any, what: str) -> bytes:
    """Standard base64 with padding, in canonical form only (unused bits zero)."""
    if not isinstance(text, str):
        raise MalformedEnvelope(f"{what} must be a base64 string, not {type(text).__name__}")
    if not text.isascii():
        raise MalformedEnvelope(f"{what} is not valid base64: non-ASCII characters")
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError) as e:
        raise MalformedEnvelope(f"{what} is not valid base64: {e}") from e
    if b64encode(data) != text:
        raise MalformedEnvelope(f"{what} is not canonical standard base64 (non-zero padding bits)")
    return data


# --- envelope -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class EnvelopeSignature:
    """One DSSE signature: ``keyid`` (an unauthenticated hint) and the raw signature bytes."""

    keyid: str
    sig: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.keyid, str):
            raise MalformedEnvelope(f"signature keyid must be a string, not {type(self.keyid).__name__}")
        if len(self.keyid) > _MAX_KEYID:
            raise MalformedEnvelope(f"signature keyid is {len(self.keyid)} characters (at most {_MAX_KEYID})")
        if not isinstance(self.sig, bytes):
            raise MalformedEnvelope(f"signature sig must be bytes, not {type(self.sig).__name__}")
        if len(self.sig) > _MAX_SIG:
            raise MalformedEnvelope(f"signature sig is {len(self.sig)} bytes (at most {_MAX_SIG})")

    def to_json(self) -> dict[str, str]:
        return {"keyid": self.keyid, "sig": b64encode(self.sig)}

    @classmethod
    def from_json(cls, obj: Any, *, index: int = 0) -> EnvelopeSignature:
        what = f"signature {index}"
        if not isinstance(obj, dict):
            raise MalformedEnvelope(f"{what} must be a JSON object")
        extra = set(obj) - _SIGNATURE_FIELDS
        if extra:
            raise MalformedEnvelope(f"{what} has unknown field(s): {', '.join(sorted(map(str, extra)))}")
        missing = _SIGNATURE_FIELDS - set(obj)
        if missing:
            raise MalformedEnvelope(f"{what} lacks field(s): {', '.join(sorted(missing))}")
        if not isinstance(obj["keyid"], str):
            raise MalformedEnvelope(f"{what} keyid must be a string")
        return cls(keyid=obj["keyid"], sig=_b64_strict(obj["sig"], f"{what} sig"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """A DSSE v1 JSON envelope (immutable, validated on construction)."""

    payload: bytes
    payload_type: str
    signatures: tuple[EnvelopeSignature, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.payload, bytes):
            raise MalformedEnvelope(f"payload must be bytes, not {type(self.payload).__name__}")
        _type_bytes(self.payload_type)
        if not isinstance(self.signatures, tuple) or not all(
            isinstance(s, EnvelopeSignature) for s in self.signatures
        ):
            raise MalformedEnvelope("signatures must be a tuple of EnvelopeSignature")
        if not self.signatures:
            raise MalformedEnvelope("envelope has no signatures")
        if len(self.signatures) > MAX_SIGNATURES:
            raise MalformedEnvelope(
                f"envelope has {len(self.signatures)} signatures (at most {MAX_SIGNATURES})"
            )
        seen: set[str] = set()
        for s in self.signatures:
            if s.keyid and s.keyid in seen:
                raise MalformedEnvelope(f"envelope has two signatures with keyid {s.keyid[:64]!r}")
            seen.add(s.keyid)

    def to_json(self) -> dict[str, Any]:
        return {
            "payload": b64encode(self.payload),
            "payloadType": self.payload_type,
            "signatures": [s.to_json() for s in self.signatures],
        }

    def to_bytes(self) -> bytes:
        """RFC 8785 canonical JSON of :meth:`to_json`."""
        return canonical_json(self.to_json())

    @classmethod
    def from_json(cls, obj: Any) -> Envelope:
        if not isinstance(obj, dict):
            raise MalformedEnvelope("DSSE envelope must be a JSON object")
        extra = set(obj) - _ENVELOPE_FIELDS
        if extra:
            raise MalformedEnvelope(f"DSSE envelope has unknown field(s): {', '.join(sorted(map(str, extra)))}")
        missing = _ENVELOPE_FIELDS - set(obj)
        if missing:
            raise MalformedEnvelope(f"DSSE envelope lacks field(s): {', '.join(sorted(missing))}")
        payload = _b64_strict(obj["payload"], "payload")
        payload_type = obj["payloadType"]
        _type_bytes(payload_type)
        sigs = obj["signatures"]
        if not isinstance(sigs, list):
            raise MalformedEnvelope("signatures must be a JSON array")
        if len(sigs) > MAX_SIGNATURES:
            raise MalformedEnvelope(f"envelope has {len(sigs)} signatures (at most {MAX_SIGNATURES})")
        return cls(
            payload=payload,
            payload_type=payload_type,
            signatures=tuple(EnvelopeSignature.from_json(s, index=i) for i, s in enumerate(sigs)),
        )

    @classmethod
    def from_bytes(cls, data: bytes, *, max_bytes: int = MAX_ENVELOPE_BYTES) -> Envelope:
        """Parse envelope JSON (any valid JSON layout; size bounded, no duplicate keys)."""
        if not isinstance(data, (bytes, bytearray)):
            raise MalformedEnvelope(f"DSSE envelope must be bytes, not {type(data).__name__}")
        obj = parse_json_strict(
            bytes(data), what="DSSE envelope", exc=MalformedEnvelope, max_bytes=max_bytes, max_depth=3
        )
        return cls.from_json(obj)


def sign_envelope(payload: bytes, payload_type: str, keys: Sequence[SigningKey]) -> Envelope:
    """Sign ``PAE(payload_type, payload)`` with each key (1 to 16 distinct keys, in order)."""
    message = pae(payload_type, payload)
    keys = list(keys)
    if not keys:
        raise MalformedInput("sign_envelope needs at least one signing key")
    if not all(isinstance(k, SigningKey) for k in keys):
        raise MalformedInput("sign_envelope keys must be SigningKey objects")
    if len({k.key_id for k in keys}) != len(keys):
        raise MalformedInput("sign_envelope was given the same key twice")
    if len(keys) > MAX_SIGNATURES:
        raise MalformedInput(f"sign_envelope was given {len(keys)} keys (at most {MAX_SIGNATURES})")
    sigs = tuple(EnvelopeSignature(keyid=k.key_id, sig=k.sign(message)) for k in keys)
    return Envelope(payload=bytes(payload), payload_type=payload_type, signatures=sigs)


def _trust_policy(trusted: Sequence[VerifyingKey], threshold: Any) -> dict[str, VerifyingKey]:
    if isinstance(trusted, (VerifyingKey, str, bytes)):
        raise MalformedInput("trusted must be a sequence of VerifyingKey objects")
    by_id: dict[str, VerifyingKey] = {}
    for k in trusted:
        if not isinstance(k, VerifyingKey):
            raise MalformedInput(f"trusted keys must be VerifyingKey objects, not {type(k).__name__}")
        by_id[k.key_id] = k
    if not by_id:
        raise MalformedInput("trust policy has no trusted keys: nothing can be verified")
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        raise MalformedInput(f"trust policy threshold must be an integer >= 1, not {threshold!r}")
    if threshold > len(by_id):
        raise MalformedInput(
            f"trust policy threshold {threshold} exceeds the {len(by_id)} distinct trusted key(s)"
        )
    return by_id


def verify_envelope(
    env: Envelope,
    trusted: Sequence[VerifyingKey],
    *,
    threshold: int = 1,
    payload_type: str,
) -> bytes:
    """Return ``env.payload`` if at least ``threshold`` distinct trusted keys signed it as
    ``payload_type``; otherwise raise.

    Raises :class:`MalformedInput` for an unusable trust policy (no keys, threshold < 1 or above
    the number of distinct trusted keys), :class:`MalformedEnvelope` if the payload type is not
    the expected one (checked before anything else looks at the payload), and
    :class:`SignatureFailed` if a signature naming a trusted key does not verify or too few
    trusted keys signed.
    """
    if not isinstance(env, Envelope):
        raise MalformedEnvelope(f"expected an Envelope, not {type(env).__name__}")
    by_id = _trust_policy(trusted, threshold)
    _type_bytes(payload_type)
    if env.payload_type != payload_type:
        raise MalformedEnvelope(
            f"envelope payloadType is {env.payload_type[:200]!r}, expected {payload_type!r}"
        )
    message = pae(env.payload_type, env.payload)
    accepted: set[str] = set()
    for i, s in enumerate(env.signatures):
        key = by_id.get(s.keyid)
        if key is not None:
            try:
                key.verify(s.sig, message)
            except SignatureFailed as e:
                raise SignatureFailed(
                    f"signature {i} names trusted key {s.keyid[:16]} but does not verify: {e}"
                ) from e
            accepted.add(s.keyid)
        elif s.keyid == "":
            for kid, k in by_id.items():
                if kid in accepted:
                    continue
                try:
                    k.verify(s.sig, message)
                except SignatureFailed:
                    continue
                accepted.add(kid)
                break
        # A keyid naming no trusted key is another party's signature: not counted.
    if len(accepted) < threshold:
        raise SignatureFailed(
            f"only {len(accepted)} of the required {threshold} trusted key(s) signed this envelope"
        )
    return env.payload


# --- in-toto Statement v1 -----------------------------------------------------------------------


def _check_predicate_type(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise MalformedEnvelope(f"{what} must be a non-empty string")
    if len(value) > _MAX_PREDICATE_TYPE:
        raise MalformedEnvelope(f"{what} is too long ({len(value)} > {_MAX_PREDICATE_TYPE} characters)")
    return value


def _check_subject(obj: Any, i: int) -> None:
    what = f"statement subject {i}"
    if not isinstance(obj, dict):
        raise MalformedEnvelope(f"{what} must be a JSON object")
    extra = set(obj) - _SUBJECT_FIELDS
    if extra:
        raise MalformedEnvelope(f"{what} has unknown field(s): {', '.join(sorted(map(str, extra)))}")
    missing = _SUBJECT_FIELDS - set(obj)
    if missing:
        raise MalformedEnvelope(f"{what} lacks field(s): {', '.join(sorted(missing))}")
    name = obj["name"]
    if not isinstance(name, str) or not name or len(name) > _MAX_NAME:
        raise MalformedEnvelope(f"{what} name must be a non-empty string of at most {_MAX_NAME} characters")
    digest = obj["digest"]
    if not isinstance(digest, dict) or set(digest) != {"sha256"}:
        raise MalformedEnvelope(f"{what} digest must be an object with exactly one field, sha256")
    hex32(digest["sha256"], what=f"{what} sha256 digest", exc=MalformedEnvelope)


def _check_statement(obj: Any) -> None:
    if not isinstance(obj, dict):
        raise MalformedEnvelope("in-toto statement must be a JSON object")
    if "_type" not in obj:
        raise MalformedEnvelope("in-toto statement lacks field(s): _type")
    if obj["_type"] != STATEMENT_TYPE:
        raise UnsupportedVersion(
            f"statement _type {str(obj['_type'])[:200]!r} is not supported (only {STATEMENT_TYPE})"
        )
    extra = set(obj) - _STATEMENT_FIELDS
    if extra:
        raise MalformedEnvelope(f"in-toto statement has unknown field(s): {', '.join(sorted(map(str, extra)))}")
    missing = _STATEMENT_FIELDS - set(obj)
    if missing:
        raise MalformedEnvelope(f"in-toto statement lacks field(s): {', '.join(sorted(missing))}")
    subjects = obj["subject"]
    if not isinstance(subjects, list) or not subjects:
        raise MalformedEnvelope("statement subject must be a non-empty JSON array")
    if len(subjects) > _MAX_SUBJECTS:
        raise MalformedEnvelope(f"statement has {len(subjects)} subjects (at most {_MAX_SUBJECTS})")
    for i, s in enumerate(subjects):
        _check_subject(s, i)
    _check_predicate_type(obj["predicateType"], "statement predicateType")
    if not isinstance(obj["predicate"], dict):
        raise MalformedEnvelope("statement predicate must be a JSON object")


def make_statement(
    *,
    subjects: Sequence[tuple[str, dict[str, str]]],
    predicate_type: str,
    predicate: dict[str, Any],
) -> dict[str, Any]:
    """Build (and validate) an in-toto Statement v1 as a JSON-ready dict."""
    subject_list = []
    for entry in subjects:
        if not isinstance(entry, tuple) or len(entry) != 2:
            raise MalformedEnvelope("each subject must be a (name, digest) pair")
        name, digest = entry
        subject_list.append({"name": name, "digest": dict(digest) if isinstance(digest, dict) else digest})
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": subject_list,
        "predicateType": predicate_type,
        "predicate": predicate,
    }
    _check_statement(statement)
    return statement


def _statement_payload(statement: dict[str, Any]) -> bytes:
    try:
        return canonical_json(statement)
    except MalformedInput as e:
        raise MalformedEnvelope(f"in-toto statement cannot be canonicalised: {e}") from e


def sign_statement(statement: dict[str, Any], keys: Sequence[SigningKey]) -> Envelope:
    """Sign an in-toto statement: payload = RFC 8785 canonical JSON,
    payloadType = ``application/vnd.in-toto+json``."""
    _check_statement(statement)
    return sign_envelope(_statement_payload(statement), IN_TOTO_PAYLOAD_TYPE, keys)


def verify_statement(
    env: Envelope,
    trusted: Sequence[VerifyingKey],
    *,
    predicate_type: str,
    threshold: int = 1,
) -> dict[str, Any]:
    """Verify the envelope's signatures, then parse and check the statement; return it.

    The caller names the predicate type it expects; the envelope never chooses it.
    """
    _check_predicate_type(predicate_type, "expected predicate_type")
    payload = verify_envelope(env, trusted, threshold=threshold, payload_type=IN_TOTO_PAYLOAD_TYPE)
    obj = parse_json_strict(payload, what="in-toto statement payload", exc=MalformedEnvelope)
    _check_statement(obj)
    if obj["predicateType"] != predicate_type:
        raise MalformedEnvelope(
            f"statement predicateType is {obj['predicateType'][:200]!r}, expected {predicate_type!r}"
        )
    if _statement_payload(obj) != payload:
        raise MalformedEnvelope("statement payload is not in RFC 8785 canonical form")
    statement: dict[str, Any] = obj
    return statement
