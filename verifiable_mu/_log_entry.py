"""Log entries, as a verifier sees them: encoding, leaf hashes and the disclosed-entry JSON form.

Part of :mod:`verifiable_mu._log`, which re-exports every name here; none of it needs a log. The
Merkle leaf of entry ``(kind, body)`` is (specs/04-log.md)::

    leaf data = TAG_LOG_ENTRY || ASCII(kind) || 0x00 || RFC8785(body)
    leaf hash = SHA-256(0x00 || leaf data)                       (RFC 9162 leaf hash)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ._canonical import canonical_json
from ._errors import MalformedInput, UnsupportedVersion
from ._merkle import leaf_hash
from ._tags import TAG_LOG_ENTRY

__all__ = [
    "SCHEMA_VERSION",
    "KIND_PATTERN",
    "entry_leaf_data",
    "entry_leaf_hash",
    "LogEntry",
    "SignedTreeHead",
]

#: Version of the SQLite layout; a database stating another version is refused.
SCHEMA_VERSION = 1
#: Entry kinds: lower-case ASCII, 1 to 64 characters.
KIND_PATTERN = r"[a-z][a-z0-9_.-]{0,63}"
_KIND = re.compile(KIND_PATTERN)
_MAX_INDEX = 2**63 - 1


# --- entry encoding (needs no log) --------------------------------------------------------------


def _encode(kind: Any, body: Any) -> tuple[bytes, bytes]:
    """Validate an entry; return ``(leaf data, canonical body)``."""
    if not isinstance(kind, str) or not _KIND.fullmatch(kind):
        raise MalformedInput(f"log entry kind {kind!r} must match {KIND_PATTERN}")
    if not isinstance(body, dict):
        raise MalformedInput(f"log entry body of kind {kind!r} must be a JSON object (dict)")
    try:
        cbody = canonical_json(body)
    except MalformedInput as e:
        raise MalformedInput(f"log entry body of kind {kind!r}: {e}") from e
    return TAG_LOG_ENTRY + kind.encode("ascii") + b"\x00" + cbody, cbody


def entry_leaf_data(kind: str, body: dict[str, Any]) -> bytes:
    """``TAG_LOG_ENTRY || ASCII(kind) || 0x00 || RFC8785(body)``."""
    return _encode(kind, body)[0]


def entry_leaf_hash(kind: str, body: dict[str, Any]) -> bytes:
    """The RFC 9162 leaf hash of a log entry: ``SHA-256(0x00 || entry_leaf_data(kind, body))``."""
    return leaf_hash(_encode(kind, body)[0])


@dataclass(frozen=True, slots=True, kw_only=True)
class LogEntry:
    """One log entry. ``body`` is the parsed canonical JSON; treat it as read-only.

    ``leaf_hash`` is as stored by the log; a verifier that receives an entry should recompute it
    (:attr:`leaf_data`, :func:`entry_leaf_hash`, or :meth:`from_json`, which always recomputes).
    """

    index: int
    kind: str
    body: dict[str, Any]
    leaf_hash: bytes

    TYPE = "vmu.log-entry"

    @property
    def leaf_data(self) -> bytes:
        return entry_leaf_data(self.kind, self.body)

    def to_json(self) -> dict[str, Any]:
        """``{"type": "vmu.log-entry", "version": 1, "index": "<decimal>", "kind": ..., "body": {...}}``."""
        return {"type": self.TYPE, "version": 1, "index": str(self.index), "kind": self.kind, "body": self.body}

    @classmethod
    def from_json(cls, d: Any) -> LogEntry:
        """Parse a disclosed entry; the leaf hash is recomputed from kind and body."""
        if not isinstance(d, dict):
            raise MalformedInput("log entry must be a JSON object")
        if d.get("type") != cls.TYPE:
            raise MalformedInput(f"expected a {cls.TYPE!r} object, got type {d.get('type')!r}")
        if "version" not in d or d["version"] != 1 or isinstance(d["version"], bool):
            raise UnsupportedVersion(f"log entry version {d.get('version')!r} is not supported (only 1)")
        fields = {"type", "version", "index", "kind", "body"}
        if set(d) != fields:
            extra, missing = sorted(set(d) - fields), sorted(fields - set(d))
            raise MalformedInput(f"log entry has unknown field(s) {extra} or lacks field(s) {missing}")
        idx = d["index"]
        if not isinstance(idx, str) or not re.fullmatch(r"0|[1-9][0-9]{0,18}", idx) or int(idx) > _MAX_INDEX:
            raise MalformedInput("log entry index must be a decimal string without leading zeros")
        return cls(index=int(idx), kind=d["kind"], body=d["body"], leaf_hash=entry_leaf_hash(d["kind"], d["body"]))


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedTreeHead:
    """A stored signed checkpoint: what it commits to and the exact signed note bytes."""

    size: int
    root_hash: bytes
    timestamp: int | None
    note: bytes
