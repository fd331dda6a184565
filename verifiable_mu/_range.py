"""Compact Merkle range proofs: a contiguous run of leaves ``[start, end)`` against an RFC 9162 root.

A proof bundle discloses whole runs of log entries (the steps of a retraining, the commit block
at the start of the log). Proving each entry with its own inclusion proof would cost
``O((end - start) log n)`` hashes; a range proof costs at most ``2 log2(n)``.

Definition (specs/08-bundle.md, section "Range proofs"): walk the RFC 9162 tree of ``n`` leaves
top-down, splitting a subtree ``[lo, hi)`` at ``lo + k`` where ``k`` is the largest power of two
smaller than ``hi - lo``. A subtree disjoint from ``[start, end)`` contributes its hash to the
proof and is not entered; a subtree inside the range is computed from the disclosed leaves; any
other subtree is split. The proof is the list of contributed hashes in left-to-right order.

To verify, the same walk recomputes the root from the disclosed leaf hashes, taking hashes from
the proof in order; the proof must be consumed exactly (no hash left over, none missing), and the
result must equal the expected root.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ._errors import InclusionProofFailed, MalformedProof, UnsupportedVersion
from ._merkle import HASH_SIZE, node_hash
from ._proofs import parse_count

__all__ = ["RangeProof", "range_path", "root_from_range"]

#: A range proof has at most two hashes per tree level (one on each side of the range).
MAX_RANGE_PATH = 128
_MAX_COUNT = 2**63 - 1


def _split(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


def range_path(mth: Callable[[int, int], bytes], start: int, end: int, tree_size: int) -> list[bytes]:
    """The range proof of leaves ``[start, end)`` in the tree of ``tree_size`` leaves.

    ``mth(lo, hi)`` returns the Merkle tree hash of leaves ``[lo, hi)`` (see :mod:`._merkle`).
    """
    if not 0 <= start < end <= tree_size:
        raise MalformedProof(f"range [{start}, {end}) is empty or outside a tree of size {tree_size}")
    out: list[bytes] = []

    def walk(lo: int, hi: int) -> None:
        if end <= lo or start >= hi:
            out.append(mth(lo, hi))
            return
        if start <= lo and hi <= end:
            return
        k = _split(hi - lo)
        walk(lo, lo + k)
        walk(lo + k, hi)

    walk(0, tree_size)
    return out


def root_from_range(leaves: Sequence[bytes], start: int, tree_size: int, path: Sequence[bytes]) -> bytes:
    """Recompute the root from the leaf hashes of ``[start, start + len(leaves))`` and ``path``.

    Raises :class:`InclusionProofFailed` when the path is too short or too long for the range.
    """
    end = start + len(leaves)
    if not 0 <= start < end <= tree_size:
        raise MalformedProof(f"range [{start}, {end}) is empty or outside a tree of size {tree_size}")
    for i, h in enumerate(path):
        if not isinstance(h, bytes) or len(h) != HASH_SIZE:
            raise MalformedProof(f"range proof element {i} is not a {HASH_SIZE}-byte hash")
    pos = 0

    def walk(lo: int, hi: int) -> bytes:
        nonlocal pos
        if end <= lo or start >= hi:
            if pos >= len(path):
                raise InclusionProofFailed(f"range proof is too short for leaves [{start}, {end}) of {tree_size}")
            h = path[pos]
            pos += 1
            return h
        if hi - lo == 1:
            return leaves[lo - start]
        k = _split(hi - lo)
        left = walk(lo, lo + k)
        return node_hash(left, walk(lo + k, hi))

    root = walk(0, tree_size)
    if pos != len(path):
        raise InclusionProofFailed(
            f"range proof has {len(path) - pos} hash(es) left over for leaves [{start}, {end}) of {tree_size}"
        )
    return root


@dataclass(frozen=True, slots=True, kw_only=True)
class RangeProof:
    """Proof that a run of ``end - start`` leaves sits at ``[start, end)`` in a tree of ``tree_size``."""

    start: int
    end: int
    tree_size: int
    path: tuple[bytes, ...]

    TYPE = "vmu.range"

    def __post_init__(self) -> None:
        for v in (self.start, self.end, self.tree_size):
            if type(v) is not int or not 0 <= v <= _MAX_COUNT:
                raise MalformedProof("range proof bounds must be integers in [0, 2^63)")
        if not self.start < self.end <= self.tree_size:
            raise MalformedProof(f"range [{self.start}, {self.end}) is empty or outside a tree of size {self.tree_size}")
        if not isinstance(self.path, tuple) or len(self.path) > MAX_RANGE_PATH:
            raise MalformedProof(f"range proof path must be a tuple of at most {MAX_RANGE_PATH} hashes")
        for i, h in enumerate(self.path):
            if not isinstance(h, bytes) or len(h) != HASH_SIZE:
                raise MalformedProof(f"range proof element {i} is not a {HASH_SIZE}-byte hash")

    def verify(self, *, leaves: Sequence[bytes], root: bytes) -> None:
        """Raise :class:`InclusionProofFailed` unless ``leaves`` are ``[start, end)`` of the tree ``root``."""
        if len(leaves) != self.end - self.start:
            raise InclusionProofFailed(
                f"range proof covers {self.end - self.start} leaves, {len(leaves)} were disclosed"
            )
        got = root_from_range(leaves, self.start, self.tree_size, self.path)
        if got != root:
            raise InclusionProofFailed(
                f"leaves [{self.start}, {self.end}) and their range proof do not lead to the root "
                f"of the tree of size {self.tree_size}"
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "version": 1,
            "start": str(self.start),
            "end": str(self.end),
            "tree_size": str(self.tree_size),
            "path": [h.hex() for h in self.path],
        }

    @classmethod
    def from_json(cls, d: Any) -> RangeProof:
        if not isinstance(d, dict):
            raise MalformedProof("range proof must be a JSON object")
        if d.get("type") != cls.TYPE:
            raise MalformedProof(f"expected a proof of type {cls.TYPE!r}, got {d.get('type')!r}")
        if type(d.get("version")) is not int or d["version"] != 1:
            raise UnsupportedVersion(f"range proof version {d.get('version')!r} is not supported (only 1)")
        fields = {"type", "version", "start", "end", "tree_size", "path"}
        if set(d) != fields:
            raise MalformedProof(f"range proof fields must be exactly {sorted(fields)}")
        path = d["path"]
        if not isinstance(path, list) or len(path) > MAX_RANGE_PATH:
            raise MalformedProof(f"range proof path must be a list of at most {MAX_RANGE_PATH} hashes")
        hashes = []
        for i, h in enumerate(path):
            if not isinstance(h, str) or len(h) != 2 * HASH_SIZE or h != h.lower():
                raise MalformedProof(f"range proof element {i} must be 64 lower-case hex characters")
            try:
                hashes.append(bytes.fromhex(h))
            except ValueError as e:
                raise MalformedProof(f"range proof element {i} is not hex") from e
            if len(hashes[-1]) != HASH_SIZE:
                raise MalformedProof(f"range proof element {i} must be 64 lower-case hex characters")
        return cls(
            start=parse_count(d["start"], "start"),
            end=parse_count(d["end"], "end"),
            tree_size=parse_count(d["tree_size"], "tree_size"),
            path=tuple(hashes),
        )
