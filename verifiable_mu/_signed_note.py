"""Signed notes (c2sp.org/signed-note): signing a text and opening a signed note.

Part of :mod:`verifiable_mu._note`, which re-exports every name here; its docstring states the
exact rules :func:`open_note` follows.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass

from ._errors import MalformedKey, MalformedNote, SignatureFailed
from ._note_keys import NoteSigner, NoteVerifier, _b64_strict, is_valid_key_name

__all__ = ["MAX_SIGNATURES", "MAX_NOTE_BYTES", "NoteSignature", "Note", "sign_note", "open_note"]

#: Most signature lines a note may carry (Go's sumdb/note limit).
MAX_SIGNATURES = 100
#: Largest note accepted by :func:`open_note` (not a Go limit; bounds work on untrusted input).
MAX_NOTE_BYTES = 1 << 20

_SIG_PREFIX = "\u2014 "  # EM DASH, SPACE


def _check_text(text: str, what: str) -> None:
    for c in text:
        if ord(c) < 0x20 and c != "\n":
            raise MalformedNote(f"{what} contains a control character (U+{ord(c):04X})")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise MalformedNote(f"{what} is not valid UTF-8") from e


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
