"""Keys of signed notes: key names, key IDs, and the Ed25519 note signer and verifier.

Part of :mod:`verifiable_mu._note` (which describes the formats and re-exports every name here).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import unicodedata
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from ._errors import MalformedKey, UnsupportedVersion

__all__ = ["ALG_ED25519", "key_id", "ed25519_verifies", "is_valid_key_name", "NoteSigner", "NoteVerifier"]

#: Signature type byte for Ed25519 (C2SP signed-note).
ALG_ED25519 = 0x01
_HEX8 = re.compile(r"[0-9a-f]{8}")


# --- helpers --------------------------------------------------------------------------------


def _go_is_space(c: str) -> bool:
    # Go's unicode.IsSpace: Latin-1 spaces plus categories Zs, Zl, Zp.
    return c in "\t\n\v\f\r \x85\xa0" or unicodedata.category(c) in ("Zs", "Zl", "Zp")


def is_valid_key_name(name: object) -> bool:
    """A key name is non-empty UTF-8 with no Unicode space, no ``+`` and no control character."""
    if not isinstance(name, str) or not name:
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return not any(c == "+" or _go_is_space(c) or ord(c) < 0x20 or ord(c) == 0x7F for c in name)


def key_id(name: str, public_key: bytes) -> int:
    """The Ed25519 key ID: big-endian uint32 of ``SHA-256(name || 0x0A || 0x01 || pubkey)[:4]``."""
    if len(public_key) != 32:
        raise MalformedKey("an Ed25519 public key is 32 bytes")
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([ALG_ED25519]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def _b64_strict(text: str, what: str, exc: type[Exception]) -> bytes:
    """Standard padded base64 that must also be the canonical encoding of what it decodes to."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as e:
        raise exc(f"{what} is not valid base64") from e
    if base64.b64encode(raw).decode("ascii") != text:
        raise exc(f"{what} is not canonical base64")
    return raw


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def ed25519_verifies(key: Ed25519PublicKey, message: bytes, signature: bytes) -> bool:
    """True iff ``signature`` (64 bytes) is a valid Ed25519 signature of ``message`` by ``key``."""
    if len(signature) != 64:
        return False
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


# --- keys -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NoteVerifier:
    """A trusted Ed25519 note key: name, key ID and public key."""

    name: str
    key_id: int
    public_key: Ed25519PublicKey = field(repr=False, compare=False)
    public_bytes: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not is_valid_key_name(self.name):
            raise MalformedKey(f"invalid key name {self.name!r}: must be non-empty, without spaces or '+'")
        if _raw_public(self.public_key) != self.public_bytes:
            raise MalformedKey("verifier public key and public bytes disagree")
        if key_id(self.name, self.public_bytes) != self.key_id:
            raise MalformedKey(f"key ID {self.key_id:08x} does not match key {self.name!r}")

    @classmethod
    def from_public_key(cls, *, name: str, key: Ed25519PublicKey) -> NoteVerifier:
        if not isinstance(key, Ed25519PublicKey):
            raise MalformedKey(f"expected an Ed25519 public key, got {type(key).__name__}")
        if not is_valid_key_name(name):
            raise MalformedKey(f"invalid key name {name!r}: must be non-empty, without spaces or '+'")
        raw = _raw_public(key)
        return cls(name=name, key_id=key_id(name, raw), public_key=key, public_bytes=raw)

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteVerifier:
        """Parse ``<name>+<hex8 key ID>+<base64(0x01 || public key)>``."""
        if not isinstance(vkey, str):
            raise MalformedKey("verifier key must be a string")
        name, _, rest = vkey.partition("+")
        hex8, _, key64 = rest.partition("+")
        if not is_valid_key_name(name):
            raise MalformedKey(f"verifier key has an invalid key name {name!r}")
        if not _HEX8.fullmatch(hex8):
            raise MalformedKey("verifier key ID must be 8 lower-case hex digits")
        raw = _b64_strict(key64, "verifier key", MalformedKey)
        if not raw:
            raise MalformedKey("verifier key is empty")
        if raw[0] != ALG_ED25519:
            raise UnsupportedVersion(f"verifier key algorithm 0x{raw[0]:02x} is not supported (only Ed25519, 0x01)")
        if len(raw) != 33:
            raise MalformedKey(f"Ed25519 verifier key must be 32 bytes, got {len(raw) - 1}")
        pub = raw[1:]
        if key_id(name, pub) != int(hex8, 16):
            raise MalformedKey(f"verifier key ID {hex8} does not match the key")
        try:
            key = Ed25519PublicKey.from_public_bytes(pub)
        except ValueError as e:  # pragma: no cover - every 32-byte string is accepted by cryptography
            raise MalformedKey(f"verifier key is not an Ed25519 public key: {e}") from e
        return cls(name=name, key_id=int(hex8, 16), public_key=key, public_bytes=pub)

    @property
    def vkey(self) -> str:
        raw = bytes([ALG_ED25519]) + self.public_bytes
        return f"{self.name}+{self.key_id:08x}+{base64.b64encode(raw).decode('ascii')}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        """True iff ``signature`` is a valid Ed25519 signature of ``message`` by this key."""
        return ed25519_verifies(self.public_key, message, signature)


@dataclass(frozen=True, slots=True, kw_only=True)
class NoteSigner:
    """An Ed25519 note signing key. ``repr`` never shows the private key."""

    name: str
    key_id: int
    private_key: Ed25519PrivateKey = field(repr=False, compare=False)

    def __post_init__(self) -> None:
        if not is_valid_key_name(self.name):
            raise MalformedKey(f"invalid key name {self.name!r}: must be non-empty, without spaces or '+'")
        if not isinstance(self.private_key, Ed25519PrivateKey):
            raise MalformedKey(f"expected an Ed25519 private key, got {type(self.private_key).__name__}")
        if key_id(self.name, _raw_public(self.private_key.public_key())) != self.key_id:
            raise MalformedKey(f"key ID {self.key_id:08x} does not match key {self.name!r}")

    @classmethod
    def from_private_key(cls, *, name: str, key: Ed25519PrivateKey) -> NoteSigner:
        if not isinstance(key, Ed25519PrivateKey):
            raise MalformedKey(f"expected an Ed25519 private key, got {type(key).__name__}")
        if not is_valid_key_name(name):
            raise MalformedKey(f"invalid key name {name!r}: must be non-empty, without spaces or '+'")
        return cls(name=name, key_id=key_id(name, _raw_public(key.public_key())), private_key=key)

    @classmethod
    def generate(cls, *, name: str) -> NoteSigner:
        """A fresh random key."""
        return cls.from_private_key(name=name, key=Ed25519PrivateKey.generate())

    @classmethod
    def from_skey(cls, skey: str) -> NoteSigner:
        """Parse ``PRIVATE+KEY+<name>+<hex8 key ID>+<base64(0x01 || 32-byte seed)>``."""
        if not isinstance(skey, str):
            raise MalformedKey("signer key must be a string")
        p1, _, rest = skey.partition("+")
        p2, _, rest = rest.partition("+")
        name, _, rest = rest.partition("+")
        hex8, _, key64 = rest.partition("+")
        if p1 != "PRIVATE" or p2 != "KEY":
            raise MalformedKey("signer key must start with PRIVATE+KEY+")
        if not is_valid_key_name(name):
            raise MalformedKey(f"signer key has an invalid key name {name!r}")
        if not _HEX8.fullmatch(hex8):
            raise MalformedKey("signer key ID must be 8 lower-case hex digits")
        raw = _b64_strict(key64, "signer key", MalformedKey)
        if not raw:
            raise MalformedKey("signer key is empty")
        if raw[0] != ALG_ED25519:
            raise UnsupportedVersion(f"signer key algorithm 0x{raw[0]:02x} is not supported (only Ed25519, 0x01)")
        if len(raw) != 33:
            raise MalformedKey(f"Ed25519 signer key seed must be 32 bytes, got {len(raw) - 1}")
        key = Ed25519PrivateKey.from_private_bytes(raw[1:])
        if key_id(name, _raw_public(key.public_key())) != int(hex8, 16):
            raise MalformedKey(f"signer key ID {hex8} does not match the key")
        return cls(name=name, key_id=int(hex8, 16), private_key=key)

    @property
    def skey(self) -> str:
        """The private key string (handle as a secret)."""
        seed = self.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        raw = bytes([ALG_ED25519]) + seed
        return f"PRIVATE+KEY+{self.name}+{self.key_id:08x}+{base64.b64encode(raw).decode('ascii')}"

    @property
    def verifier(self) -> NoteVerifier:
        return NoteVerifier.from_public_key(name=self.name, key=self.private_key.public_key())

    @property
    def vkey(self) -> str:
        return self.verifier.vkey

    def sign(self, message: bytes) -> bytes:
        """The raw 64-byte Ed25519 signature of ``message``."""
        return self.private_key.sign(message)
