"""Serialisable RFC 9162 proofs (immutable, validated at parse time).

JSON form (specs/02-merkle.md)::

    {"type": "vmu.inclusion", "version": 1, "index": "5", "tree_size": "8", "path": ["<hex>", ...]}
    {"type": "vmu.consistency", "version": 1, "old_size": "3", "new_size": "8", "path": [...]}

Sizes and indices travel as decimal strings (RFC 8785 JSON cannot carry integers above 2^53).
There is deliberately no field for the hash algorithm or the leaf/node prefixes: they are fixed
to SHA-256 and 0x00/0x01, and a document that names any other field is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._canonical import hex32
from ._errors import MalformedProof, UnsupportedVersion
from ._merkle import HASH_SIZE, verify_consistency, verify_inclusion

__all__ = ["InclusionProof", "ConsistencyProof", "parse_count"]

_MAX_PATH = 64  # a tree of 2^64 leaves has a 64-element path; anything longer is malformed
_MAX_COUNT = 2**63 - 1


def parse_count(value: Any, what: str) -> int:
    """Parse a non-negative counter that travels as a canonical decimal string."""
    if not isinstance(value, str) or not value.isascii() or not value.isdigit():
        raise MalformedProof(f"{what} must be a decimal string")
    if len(value) > 19:  # checked before int(): very long digit strings make int() raise ValueError
        raise MalformedProof(f"{what} is too large")
    if len(value) > 1 and value[0] == "0":
        raise MalformedProof(f"{what} must not have leading zeros")
    n = int(value)
    if n > _MAX_COUNT:
        raise MalformedProof(f"{what} is too large")
    return n


def _check_fields(d: Any, kind: str, fields: set[str]) -> None:
    if not isinstance(d, dict):
        raise MalformedProof(f"{kind} proof must be a JSON object")
    if d.get("type") != kind:
        raise MalformedProof(f"expected a proof of type {kind!r}, got {d.get('type')!r}")
    if type(d.get("version")) is not int or d["version"] != 1:  # 1.0 and True are not 1
        raise UnsupportedVersion(f"{kind} proof version {d.get('version')!r} is not supported (only 1)")
    extra = set(d) - fields
    if extra:
        raise MalformedProof(f"{kind} proof has unknown field(s): {', '.join(sorted(extra))}")
    missing = fields - set(d)
    if missing:
        raise MalformedProof(f"{kind} proof lacks field(s): {', '.join(sorted(missing))}")


def _parse_path(value: Any, kind: str) -> tuple[bytes, ...]:
    if not isinstance(value, list):
        raise MalformedProof(f"{kind} proof path must be a list")
    if len(value) > _MAX_PATH:
        raise MalformedProof(f"{kind} proof path has {len(value)} elements (at most {_MAX_PATH})")
    return tuple(hex32(h, what=f"{kind} path element {i}", exc=MalformedProof) for i, h in enumerate(value))


def _check_path_bytes(path: tuple[bytes, ...]) -> None:
    if not isinstance(path, tuple):
        raise MalformedProof("proof path must be a tuple of hashes")
    for i, h in enumerate(path):
        if not isinstance(h, bytes) or len(h) != HASH_SIZE:
            raise MalformedProof(f"path element {i} is not a {HASH_SIZE}-byte hash")


def _check_ints(*values: Any) -> None:
    for v in values:
        if type(v) is not int or not 0 <= v <= _MAX_COUNT:
            raise MalformedProof("proof indices and sizes must be integers in [0, 2^63)")


@dataclass(frozen=True, slots=True, kw_only=True)
class InclusionProof:
    """Proof that a leaf hash is at ``index`` in a tree of ``tree_size`` leaves."""

    index: int
    tree_size: int
    path: tuple[bytes, ...]

    TYPE = "vmu.inclusion"

    def __post_init__(self) -> None:
        _check_ints(self.index, self.tree_size)
        if not 0 <= self.index < self.tree_size:
            raise MalformedProof(f"leaf index {self.index} is outside a tree of size {self.tree_size}")
        _check_path_bytes(self.path)

    def verify(self, *, leaf: bytes, root: bytes) -> None:
        """Raise :class:`InclusionProofFailed` unless this proof leads ``leaf`` to ``root``."""
        verify_inclusion(leaf=leaf, index=self.index, tree_size=self.tree_size, path=self.path, root=root)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "version": 1,
            "index": str(self.index),
            "tree_size": str(self.tree_size),
            "path": [h.hex() for h in self.path],
        }

    @classmethod
    def from_json(cls, d: Any) -> InclusionProof:
        _check_fields(d, cls.TYPE, {"type", "version", "index", "tree_size", "path"})
        return cls(
            index=parse_count(d["index"], "index"),
            tree_size=parse_count(d["tree_size"], "tree_size"),
            path=_parse_path(d["path"], cls.TYPE),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsistencyProof:
    """Proof that the tree of ``old_size`` leaves is a prefix of the tree of ``new_size``."""

    old_size: int
    new_size: int
    path: tuple[bytes, ...]

    TYPE = "vmu.consistency"

    def __post_init__(self) -> None:
        _check_ints(self.old_size, self.new_size)
        if not 0 <= self.old_size <= self.new_size:
            raise MalformedProof(f"cannot prove consistency from size {self.old_size} to {self.new_size}")
        _check_path_bytes(self.path)

    def verify(self, *, old_root: bytes, new_root: bytes) -> None:
        """Raise :class:`ConsistencyProofFailed` unless this proof links the two roots."""
        verify_consistency(
            old_size=self.old_size, new_size=self.new_size, old_root=old_root, new_root=new_root, path=self.path
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "version": 1,
            "old_size": str(self.old_size),
            "new_size": str(self.new_size),
            "path": [h.hex() for h in self.path],
        }

    @classmethod
    def from_json(cls, d: Any) -> ConsistencyProof:
        _check_fields(d, cls.TYPE, {"type", "version", "old_size", "new_size", "path"})
        return cls(
            old_size=parse_count(d["old_size"], "old_size"),
            new_size=parse_count(d["new_size"], "new_size"),
            path=_parse_path(d["path"], cls.TYPE),
        )
