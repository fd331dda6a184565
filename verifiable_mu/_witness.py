"""Witness cosignatures of tlog checkpoints (c2sp.org/tlog-cosignature, ``cosignature/v1``, Ed25519).

A witness that has checked a log's checkpoint to be consistent with every checkpoint of that log
it saw before adds one signature line to the signed note:

* **key ID**: ``SHA-256(name || 0x0A || 0x04 || 32-byte public key)[:4]`` (algorithm byte 0x04,
  so the same name can never pass as the log's own 0x01 key);
* **signature**: ``u64be(timestamp) || Ed25519(message)`` with ``message =
  "cosignature/v1\\n" || "time " || decimal timestamp || "\\n" || note body`` (the whole
  checkpoint text, extension lines included, signature lines excluded). The ``cosignature/v1``
  header is the standard's domain separation;
* **verifier key**: ``<name>+<hex8 key ID>+<base64(0x04 || public key)>``.

:func:`verify_cosignatures` opens the note with the log's key first (the witness lines are then
the note's unverified lines) and counts the given witnesses that cosigned. A line that names a
given witness (name and key ID) but does not verify refuses the whole note, like a bad line from
the log's own key (specs/04-log.md section 5; fail closed).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ._errors import MalformedKey, MalformedNote, SignatureFailed, UnsupportedVersion
from ._note import (
    MAX_NOTE_BYTES,
    MAX_SIGNATURES,
    NoteSignature,
    NoteVerifier,
    ed25519_verifies,
    is_valid_key_name,
    open_note,
)

__all__ = ["ALG_COSIGNATURE_V1", "COSIGNATURE_V1", "Cosignature", "WitnessKey", "WitnessSigner", "add_cosignature",
           "cosigned_message", "strip_cosignatures", "verify_cosignatures"]

#: Signature type byte of an Ed25519 cosignature/v1 key (c2sp.org/signed-note).
ALG_COSIGNATURE_V1 = 0x04
#: The header line every cosignature/v1 message starts with.
COSIGNATURE_V1 = b"cosignature/v1\n"
_MAX_TIMESTAMP = 2**63 - 1


def _witness_key_id(name: str, public_key: bytes) -> int:
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([ALG_COSIGNATURE_V1]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def cosigned_message(text: str, timestamp: int) -> bytes:
    """The message a cosignature/v1 signs for the note body ``text`` at ``timestamp``."""
    if type(timestamp) is not int or not 0 <= timestamp <= _MAX_TIMESTAMP:
        raise MalformedNote("a cosignature timestamp is an integer in [0, 2^63 - 1]")
    return COSIGNATURE_V1 + b"time %d\n" % timestamp + text.encode("utf-8")


@dataclass(frozen=True, slots=True, kw_only=True)
class WitnessKey:
    """A witness the verifier trusts: its name and Ed25519 public key."""

    name: str
    key_id: int
    public_bytes: bytes = field(repr=False)

    @classmethod
    def from_public_bytes(cls, *, name: str, public_bytes: bytes) -> WitnessKey:
        if not is_valid_key_name(name):
            raise MalformedKey(f"invalid witness name {name!r}: must be non-empty, without spaces or '+'")
        if len(public_bytes) != 32:
            raise MalformedKey("an Ed25519 witness key is 32 bytes")
        return cls(name=name, key_id=_witness_key_id(name, public_bytes), public_bytes=bytes(public_bytes))

    @classmethod
    def from_vkey(cls, vkey: str) -> WitnessKey:
        """Parse ``<name>+<hex8 key ID>+<base64(0x04 || public key)>``."""
        if not isinstance(vkey, str):
            raise MalformedKey("witness key must be a string")
        name, _, rest = vkey.strip().partition("+")
        hex8, _, key64 = rest.partition("+")
        if len(hex8) != 8 or any(c not in "0123456789abcdef" for c in hex8):
            raise MalformedKey("witness key ID must be 8 lower-case hex digits")
        try:
            raw = base64.b64decode(key64.encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError) as e:
            raise MalformedKey("witness key is not valid base64") from e
        if not raw or base64.b64encode(raw).decode("ascii") != key64:
            raise MalformedKey("witness key is not canonical base64")
        if raw[0] != ALG_COSIGNATURE_V1:
            raise UnsupportedVersion(f"witness key algorithm 0x{raw[0]:02x} is not supported (only Ed25519 "
                                     "cosignature/v1, 0x04)")
        key = cls.from_public_bytes(name=name, public_bytes=raw[1:])
        if key.key_id != int(hex8, 16):
            raise MalformedKey(f"witness key ID {hex8} does not match the key")
        return key

    @property
    def vkey(self) -> str:
        raw = bytes([ALG_COSIGNATURE_V1]) + self.public_bytes
        return f"{self.name}+{self.key_id:08x}+{base64.b64encode(raw).decode('ascii')}"

    def verify(self, text: str, signature: bytes) -> int | None:
        """The timestamp of a valid cosignature (``u64be(ts) || sig``) of ``text``, else None."""
        if len(signature) != 72:
            return None
        ts = int.from_bytes(signature[:8], "big")
        key = Ed25519PublicKey.from_public_bytes(self.public_bytes)
        if ts > _MAX_TIMESTAMP or not ed25519_verifies(key, cosigned_message(text, ts), signature[8:]):
            return None
        return ts


@dataclass(frozen=True, slots=True, kw_only=True)
class WitnessSigner:
    """A witness's signing key (for tests and tools; a real witness runs its own service)."""

    name: str
    private_key: Ed25519PrivateKey = field(repr=False, compare=False)

    @classmethod
    def generate(cls, *, name: str) -> WitnessSigner:
        if not is_valid_key_name(name):
            raise MalformedKey(f"invalid witness name {name!r}")
        return cls(name=name, private_key=Ed25519PrivateKey.generate())

    @property
    def key(self) -> WitnessKey:
        pub = self.private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return WitnessKey.from_public_bytes(name=self.name, public_bytes=pub)


@dataclass(frozen=True, slots=True, kw_only=True)
class Cosignature:
    name: str
    key_id: int
    timestamp: int


def _split(note: bytes) -> tuple[bytes, bytes]:
    text = bytes(note)
    cut = text.rfind(b"\n\n")
    if cut < 0:
        raise MalformedNote("note has no blank line before its signatures")
    return text[: cut + 1], text[cut + 2 :]


def add_cosignature(note: bytes, witness: WitnessSigner, timestamp: int) -> bytes:
    """``note`` with ``witness``'s cosignature/v1 line appended (the witness's checks are its own)."""
    text, block = _split(note)
    sig = timestamp.to_bytes(8, "big") + witness.private_key.sign(cosigned_message(text.decode("utf-8"), timestamp))
    line = NoteSignature(name=witness.name, key_id=witness.key.key_id, signature=sig).line
    out = text + b"\n" + block + line.encode("utf-8")
    if len(out) > MAX_NOTE_BYTES or block.count(b"\n") + 1 > MAX_SIGNATURES:
        raise MalformedNote("the cosigned note would exceed the note size or signature limits")
    return out


def strip_cosignatures(note: bytes, log: NoteVerifier) -> bytes:
    """``note`` with only the signature lines of the log's own key (what the log signed and
    published before witnesses cosigned it)."""
    text, block = _split(note)
    keep = []
    for line in block.decode("utf-8").splitlines(keepends=True):
        name, _, b64 = line[2:].partition(" ")
        try:
            kid = int.from_bytes(base64.b64decode(b64.strip())[:4], "big")
        except ValueError:
            continue
        if (name, kid) == (log.name, log.key_id):
            keep.append(line)
    return text + b"\n" + "".join(keep).encode("utf-8")


def verify_cosignatures(note: bytes, log: NoteVerifier, witnesses: Sequence[WitnessKey]) -> list[Cosignature]:
    """Open ``note`` with the log's key, then return the valid cosignatures of ``witnesses`` (one
    per witness, note order). Raises :class:`SignatureFailed` if the log's signature fails or a
    line naming a given witness does not verify."""
    opened = open_note(note, [log])
    by_id = {(w.name, w.key_id): w for w in witnesses}
    out: dict[tuple[str, int], Cosignature] = {}
    for sig in opened.unverified:
        w = by_id.get((sig.name, sig.key_id))
        if w is None:
            continue
        ts = w.verify(opened.text, sig.signature)
        if ts is None:
            raise SignatureFailed(f"invalid cosignature for witness {w.name}+{w.key_id:08x}")
        out.setdefault((w.name, w.key_id), Cosignature(name=w.name, key_id=w.key_id, timestamp=ts))
    return list(out.values())
