"""C2SP signed notes and tlog checkpoints (signed tree heads), Ed25519 only.

Formats (specs/04-log.md repeats them normatively):

* **signed note** (c2sp.org/signed-note, Go ``golang.org/x/mod/sumdb/note``): a UTF-8 text
  ending in ``"\\n"``, a blank line, then one or more signature lines
  ``"\\u2014 <key name> <base64(key ID[4] || signature)>\\n"``.
* **key ID** (Ed25519): the first 4 bytes of ``SHA-256(name || 0x0A || 0x01 || public key)``.
* **verifier key** ``<name>+<hex8 key ID>+<base64(0x01 || 32-byte public key)>`` and **signer key**
  ``PRIVATE+KEY+<name>+<hex8 key ID>+<base64(0x01 || 32-byte seed)>`` -- the strings Go's
  ``note.NewVerifier`` / ``note.NewSigner`` accept.
* **checkpoint** (c2sp.org/tlog-checkpoint): note text ``<origin>\\n<size>\\n<base64 root>\\n``
  followed by optional extension lines. verifiable-mu defines one extension line,
  ``timestamp <unix seconds>``, which if present is the first extension line.

:func:`open_note` follows the C2SP rules and the Go implementation, with these exact decisions:

1. An empty verifier list is refused (:class:`SignatureFailed`): a note is never "opened" without
   a trusted key (fail closed). Two verifiers with the same name and key ID but different keys
   are refused (:class:`MalformedKey`, "ambiguous").
2. Syntax (any violation is :class:`MalformedNote`): the note is at most :data:`MAX_NOTE_BYTES`
   bytes of valid UTF-8 without control characters other than newline; it is split at its last
   blank line; the signature block is non-empty, ends in a newline, and every line in it is a
   well-formed signature line (em dash, space, valid key name, space, *canonical* standard base64
   of at least 5 bytes); at most :data:`MAX_SIGNATURES` (100, as Go) signature lines.
3. A signature whose (name, key ID) pair matches no trusted key is ignored (kept in
   ``Note.unverified``), even if it shares the name *or* the key ID with a trusted key.
4. A signature whose (name, key ID) matches a trusted key must verify; otherwise the whole note is
   refused with :class:`SignatureFailed` -- even when another trusted key did sign. (Go skips a
   second signature line for the same key; here every distinct line from a trusted key is
   checked, and byte-identical repeated lines are counted once.)
5. At least one trusted key must have signed, else :class:`SignatureFailed`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from ._errors import MalformedKey, MalformedNote, SignatureFailed, UnsupportedVersion

__all__ = [
    "ALG_ED25519",
    "MAX_SIGNATURES",
    "MAX_NOTE_BYTES",
    "key_id",
    "ed25519_verifies",
    "is_valid_key_name",
    "NoteSigner",
    "NoteVerifier",
    "NoteSignature",
    "Note",
    "sign_note",
    "open_note",
    "Checkpoint",
    "sign_checkpoint",
    "open_checkpoint",
]

#: Signature type byte for Ed25519 (C2SP signed-note).
ALG_ED25519 = 0x01
#: Most signature lines a note may carry (Go's sumdb/note limit).
MAX_SIGNATURES = 100
#: Largest note accepted by :func:`open_note` (not a Go limit; bounds work on untrusted input).
MAX_NOTE_BYTES = 1 << 20

_SIG_PREFIX = "\u2014 "  # EM DASH, SPACE
_HEX8 = re.compile(r"[0-9a-f]{8}")
_MAX_COUNT = 2**63 - 1
_DECIMAL = re.compile(r"(?:0|[1-9][0-9]*)")
_TIMESTAMP_PREFIX = "timestamp "


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


def _check_text(text: str, what: str) -> None:
    for c in text:
        if ord(c) < 0x20 and c != "\n":
            raise MalformedNote(f"{what} contains a control character (U+{ord(c):04X})")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise MalformedNote(f"{what} is not valid UTF-8") from e


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


# --- notes ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NoteSignature:
    """One signature line: key name, key ID and the signature bytes (without the key ID)."""

    name: str
    key_id: int
    signature: bytes

    @property
    def line(self) -> str:
        b64 = base64.b64encode(self.key_id.to_bytes(4, "big") + self.signature).decode("ascii")
        return f"{_SIG_PREFIX}{self.name} {b64}\n"


@dataclass(frozen=True, slots=True, kw_only=True)
class Note:
    """An opened note: its text and which signatures were verified.

    ``signatures`` holds one entry per trusted key that signed (in note order); ``unverified``
    holds the distinct signature lines from keys that were not trusted (ignored).
    """

    text: str
    signatures: tuple[NoteSignature, ...]
    unverified: tuple[NoteSignature, ...] = ()


def sign_note(text: str, signers: Sequence[NoteSigner]) -> bytes:
    """Sign ``text`` (which must end in a newline) with every signer, in order."""
    if not isinstance(text, str):
        raise MalformedNote("note text must be a string")
    if not text.endswith("\n"):
        raise MalformedNote("note text must end with a newline")
    _check_text(text, "note text")
    if isinstance(signers, NoteSigner):
        raise MalformedKey("sign_note takes a sequence of signers, not a single signer")
    if not signers:
        raise MalformedKey("at least one signer is required")
    msg = text.encode("utf-8")
    seen: set[tuple[str, int]] = set()
    lines = []
    for s in signers:
        if not isinstance(s, NoteSigner):
            raise MalformedKey(f"expected a NoteSigner, got {type(s).__name__}")
        if (s.name, s.key_id) in seen:
            raise MalformedKey(f"signer {s.name}+{s.key_id:08x} is given twice")
        seen.add((s.name, s.key_id))
        lines.append(NoteSignature(name=s.name, key_id=s.key_id, signature=s.sign(msg)).line)
    out = msg + b"\n" + "".join(lines).encode("utf-8")
    if len(lines) > MAX_SIGNATURES or len(out) > MAX_NOTE_BYTES:
        raise MalformedNote("signed note would exceed the note size or signature limits")
    return out


def _verifier_map(verifiers: Sequence[NoteVerifier]) -> dict[tuple[str, int], NoteVerifier]:
    if isinstance(verifiers, NoteVerifier):
        raise MalformedKey("open_note takes a sequence of verifiers, not a single verifier")
    known: dict[tuple[str, int], NoteVerifier] = {}
    for v in verifiers:
        if not isinstance(v, NoteVerifier):
            raise MalformedKey(f"expected a NoteVerifier, got {type(v).__name__}")
        k = (v.name, v.key_id)
        if k in known and known[k].public_bytes != v.public_bytes:
            raise MalformedKey(f"ambiguous key {v.name}+{v.key_id:08x}: two different keys share name and ID")
        known[k] = v
    if not known:
        raise SignatureFailed("no trusted verifier keys were given; a note cannot be opened without one")
    return known


def open_note(note: bytes, verifiers: Sequence[NoteVerifier]) -> Note:
    """Parse ``note`` and check its signatures against ``verifiers`` (see the module docstring)."""
    known = _verifier_map(verifiers)
    if not isinstance(note, (bytes, bytearray)):
        raise MalformedNote("a signed note must be bytes")
    if len(note) > MAX_NOTE_BYTES:
        raise MalformedNote(f"note is too large ({len(note)} bytes > {MAX_NOTE_BYTES})")
    try:
        msg = bytes(note).decode("utf-8")
    except UnicodeDecodeError as e:
        raise MalformedNote("note is not valid UTF-8") from e
    _check_text(msg, "note")
    split = msg.rfind("\n\n")
    if split < 0:
        raise MalformedNote("note has no blank line before its signatures")
    text, block = msg[: split + 1], msg[split + 2 :]
    if not block:
        raise MalformedNote("note has no signature lines")
    if not block.endswith("\n"):
        raise MalformedNote("note signature block must end with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise MalformedNote(f"note has {len(lines)} signature lines (at most {MAX_SIGNATURES})")
    text_bytes = text.encode("utf-8")
    verified: dict[tuple[str, int], NoteSignature] = {}
    unverified: list[NoteSignature] = []
    seen_lines: set[str] = set()
    for n, line in enumerate(lines, 1):
        if not line.startswith(_SIG_PREFIX):
            raise MalformedNote(f"signature line {n} does not start with an em dash and a space")
        name, sep, b64 = line[len(_SIG_PREFIX) :].partition(" ")
        if not sep or not is_valid_key_name(name):
            raise MalformedNote(f"signature line {n} has an invalid key name {name!r}")
        if not b64:
            raise MalformedNote(f"signature line {n} has an empty signature")
        raw = _b64_strict(b64, f"signature line {n}", MalformedNote)
        if len(raw) < 5:
            raise MalformedNote(f"signature line {n} is shorter than a key ID and a signature")
        if line in seen_lines:
            continue  # byte-identical repeated line: counted once
        seen_lines.add(line)
        sig = NoteSignature(name=name, key_id=int.from_bytes(raw[:4], "big"), signature=raw[4:])
        v = known.get((sig.name, sig.key_id))
        if v is None:
            unverified.append(sig)
            continue
        if not v.verify(text_bytes, sig.signature):
            raise SignatureFailed(f"invalid signature for key {sig.name}+{sig.key_id:08x}")
        verified.setdefault((sig.name, sig.key_id), sig)
    if not verified:
        raise SignatureFailed("note has no valid signature from a trusted key")
    return Note(text=text, signatures=tuple(verified.values()), unverified=tuple(unverified))


# --- checkpoints ----------------------------------------------------------------------------


def _parse_decimal(value: str, what: str) -> int:
    if not _DECIMAL.fullmatch(value):
        if value.isascii() and value.isdigit():
            raise MalformedNote(f"checkpoint {what} must not have leading zeros")
        raise MalformedNote(f"checkpoint {what} must be a decimal number")
    n = int(value)
    if n > _MAX_COUNT:
        raise MalformedNote(f"checkpoint {what} is too large")
    return n


def _check_line(value: str, what: str) -> None:
    if not value:
        raise MalformedNote(f"checkpoint {what} must not be empty")
    for c in value:
        if ord(c) < 0x20 or ord(c) == 0x7F:
            raise MalformedNote(f"checkpoint {what} contains a control character or newline")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise MalformedNote(f"checkpoint {what} is not valid UTF-8") from e


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint:
    """A tlog checkpoint body: origin, tree size, root hash, optional ``timestamp`` extension.

    ``extensions`` holds other extension lines; they exist only when a caller explicitly allowed
    unknown extensions while parsing (or built one on purpose) and are written after the timestamp.
    """

    origin: str
    size: int
    root_hash: bytes
    timestamp: int | None = None
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.origin, str):
            raise MalformedNote("checkpoint origin must be a string")
        _check_line(self.origin, "origin")
        if not isinstance(self.size, int) or isinstance(self.size, bool) or not 0 <= self.size <= _MAX_COUNT:
            raise MalformedNote("checkpoint size must be an integer in [0, 2^63-1]")
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != 32:
            raise MalformedNote("checkpoint root hash must be 32 bytes")
        if self.timestamp is not None and (
            not isinstance(self.timestamp, int)
            or isinstance(self.timestamp, bool)
            or not 0 <= self.timestamp <= _MAX_COUNT
        ):
            raise MalformedNote("checkpoint timestamp must be an integer in [0, 2^63-1] or None")
        if not isinstance(self.extensions, tuple):
            raise MalformedNote("checkpoint extensions must be a tuple of lines")
        for ext in self.extensions:
            if not isinstance(ext, str):
                raise MalformedNote("checkpoint extension lines must be strings")
            _check_line(ext, "extension line")
            if ext.startswith(_TIMESTAMP_PREFIX):
                raise MalformedNote("the timestamp extension goes in the timestamp field")

    def to_text(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root_hash).decode("ascii")]
        if self.timestamp is not None:
            lines.append(f"{_TIMESTAMP_PREFIX}{self.timestamp}")
        lines.extend(self.extensions)
        return "\n".join(lines) + "\n"

    @classmethod
    def from_text(cls, text: str, *, allow_unknown_extensions: bool = False) -> Checkpoint:
        """Parse a checkpoint note text strictly."""
        if not isinstance(text, str):
            raise MalformedNote("checkpoint text must be a string")
        if not text.endswith("\n"):
            raise MalformedNote("checkpoint text must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise MalformedNote(f"checkpoint has {len(lines)} lines; origin, size and root hash are required")
        origin, size_s, root_s, *rest = lines
        _check_line(origin, "origin")
        size = _parse_decimal(size_s, "size")
        root = _b64_strict(root_s, "checkpoint root hash", MalformedNote)
        if len(root) != 32:
            raise MalformedNote(f"checkpoint root hash must be 32 bytes, got {len(root)}")
        timestamp: int | None = None
        extensions: list[str] = []
        for i, line in enumerate(rest):
            _check_line(line, "extension line")
            if line.startswith(_TIMESTAMP_PREFIX):
                if i != 0:
                    raise MalformedNote("the timestamp extension line must directly follow the root hash, once")
                timestamp = _parse_decimal(line[len(_TIMESTAMP_PREFIX) :], "timestamp")
            elif not allow_unknown_extensions:
                raise MalformedNote(f"checkpoint has an unknown extension line {line[:40]!r}")
            else:
                extensions.append(line)
        return cls(origin=origin, size=size, root_hash=root, timestamp=timestamp, extensions=tuple(extensions))


def sign_checkpoint(cp: Checkpoint, signer: NoteSigner) -> bytes:
    """The signed note of ``cp`` by ``signer``."""
    if not isinstance(cp, Checkpoint):
        raise MalformedNote(f"expected a Checkpoint, got {type(cp).__name__}")
    return sign_note(cp.to_text(), [signer])


def open_checkpoint(
    note: bytes,
    verifiers: Sequence[NoteVerifier],
    *,
    origin: str,
    allow_unknown_extensions: bool = False,
) -> Checkpoint:
    """Verify the signed note, then parse its text as a checkpoint of log ``origin``.

    The signature is checked first (note text is ignored unless signed by a trusted key); a
    checkpoint for another origin is refused with :class:`SignatureFailed`.
    """
    if not isinstance(origin, str) or not origin:
        raise MalformedNote("the expected origin must be a non-empty string")
    opened = open_note(note, verifiers)
    cp = Checkpoint.from_text(opened.text, allow_unknown_extensions=allow_unknown_extensions)
    if cp.origin != origin:
        raise SignatureFailed(f"checkpoint is for origin {cp.origin!r}, expected {origin!r}")
    return cp
