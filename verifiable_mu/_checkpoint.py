"""Checkpoints (c2sp.org/tlog-checkpoint): the signed tree heads of a transparency log.

Part of :mod:`verifiable_mu._note`, which re-exports every name here. A checkpoint is the note
text ``<origin>\\n<size>\\n<base64 root>\\n`` followed by optional extension lines; verifiable-mu
defines one, ``timestamp <unix seconds>``, which if present is the first extension line.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ._errors import MalformedNote, SignatureFailed
from ._note_keys import NoteSigner, NoteVerifier, _b64_strict
from ._signed_note import open_note, sign_note

__all__ = ["Checkpoint", "sign_checkpoint", "open_checkpoint"]

_MAX_COUNT = 2**63 - 1
_DECIMAL = re.compile(r"(?:0|[1-9][0-9]*)")
_TIMESTAMP_PREFIX = "timestamp "


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
