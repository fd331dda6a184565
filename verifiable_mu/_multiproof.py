"""Merkle multiproofs: several leaves at arbitrary positions against one RFC 9162 root.

A bundle proves a sample of 512 audit records in the committed audit tree. One inclusion proof
per record repeats the upper levels of the tree 512 times; a multiproof sends each needed hash
once.

Definition (specs/02-merkle.md, "Multiproofs"): walk the RFC 9162 tree of ``n`` leaves top-down,
splitting a subtree ``[lo, hi)`` at ``lo + k`` where ``k`` is the largest power of two smaller than
``hi - lo``. A subtree holding none of the proven positions contributes its hash to the proof and
is not entered; a single proven leaf is computed from its disclosed leaf hash; any other subtree
is split. The proof is the list of contributed hashes in left-to-right order. To verify, the same
walk recomputes the root from the proven leaf hashes (in position order), taking hashes from the
proof in order; the proof must be consumed exactly, and the result must equal the expected root.
A multiproof of one position holds exactly the hashes of its RFC 9162 inclusion path (in
left-to-right rather than leaf-to-root order).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ._canonical import hex32
from ._errors import InclusionProofFailed, MalformedProof, UnsupportedVersion
from ._merkle import HASH_SIZE, node_hash
from ._proofs import parse_count

__all__ = ["MultiProof", "multi_path", "root_from_multi"]

_MAX_COUNT = 2**63 - 1
#: At most this many positions in one proof (bounds the work an untrusted proof can cause).
MAX_POSITIONS = 1 << 20


def _split(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


def _check_positions(positions: Sequence[int], tree_size: int) -> None:
    if not 0 < len(positions) <= MAX_POSITIONS:
        raise MalformedProof(f"a multiproof proves 1 to {MAX_POSITIONS} positions, not {len(positions)}")
    last = -1
    for p in positions:
        if type(p) is not int or not last < p < tree_size:
            raise MalformedProof(f"multiproof positions must be strictly ascending and inside a tree of size {tree_size}")
        last = p


def multi_path(mth: Callable[[int, int], bytes], positions: Sequence[int], tree_size: int) -> list[bytes]:
    """The multiproof path of leaves at ``positions`` (strictly ascending) in a tree of
    ``tree_size`` leaves; ``mth(lo, hi)`` returns the Merkle tree hash of leaves ``[lo, hi)``."""
    _check_positions(positions, tree_size)
    out: list[bytes] = []

    def walk(lo: int, hi: int, a: int, b: int) -> None:
        if a == b:
            out.append(mth(lo, hi))
            return
        if hi - lo == 1:
            return
        k = lo + _split(hi - lo)
        m = bisect_left(positions, k, a, b)
        walk(lo, k, a, m)
        walk(k, hi, m, b)

    walk(0, tree_size, 0, len(positions))
    return out


def root_from_multi(leaves: Sequence[bytes], positions: Sequence[int], tree_size: int, path: Sequence[bytes]) -> bytes:
    """Recompute the root from the leaf hashes at ``positions`` and ``path``.

    Raises :class:`InclusionProofFailed` when the path is too short or too long.
    """
    _check_positions(positions, tree_size)
    if len(leaves) != len(positions):
        raise MalformedProof(f"{len(leaves)} leaves for {len(positions)} positions")
    for i, h in enumerate([*leaves, *path]):
        if not isinstance(h, bytes) or len(h) != HASH_SIZE:
            raise MalformedProof(f"multiproof hash {i} is not a {HASH_SIZE}-byte hash")
    pos = 0

    def walk(lo: int, hi: int, a: int, b: int) -> bytes:
        nonlocal pos
        if a == b:
            if pos >= len(path):
                raise InclusionProofFailed(f"multiproof is too short for {len(positions)} positions of {tree_size}")
            h = path[pos]
            pos += 1
            return h
        if hi - lo == 1:
            return leaves[a]
        k = lo + _split(hi - lo)
        m = bisect_left(positions, k, a, b)
        left = walk(lo, k, a, m)
        return node_hash(left, walk(k, hi, m, b))

    root = walk(0, tree_size, 0, len(positions))
    if pos != len(path):
        raise InclusionProofFailed(f"multiproof has {len(path) - pos} hash(es) left over")
    return root


@dataclass(frozen=True, slots=True, kw_only=True)
class MultiProof:
    """Proof that leaf hashes sit at ``positions`` of a tree of ``tree_size`` leaves."""

    positions: tuple[int, ...]
    tree_size: int
    path: tuple[bytes, ...]

    TYPE = "vmu.multi-inclusion"

    def __post_init__(self) -> None:
        if type(self.tree_size) is not int or not 0 < self.tree_size <= _MAX_COUNT:
            raise MalformedProof("multiproof tree size must be an integer in [1, 2^63)")
        if not isinstance(self.positions, tuple):
            raise MalformedProof("multiproof positions must be a tuple")
        _check_positions(self.positions, self.tree_size)
        if not isinstance(self.path, tuple) or len(self.path) > 64 * len(self.positions):
            raise MalformedProof("multiproof path must be a tuple of at most 64 hashes a position")
        for i, h in enumerate(self.path):
            if not isinstance(h, bytes) or len(h) != HASH_SIZE:
                raise MalformedProof(f"multiproof path element {i} is not a {HASH_SIZE}-byte hash")

    def verify(self, *, leaves: Sequence[bytes], root: bytes) -> None:
        """Raise :class:`InclusionProofFailed` unless ``leaves`` (in position order) and this
        proof rebuild ``root``."""
        got = root_from_multi(leaves, self.positions, self.tree_size, self.path)
        if got != root:
            raise InclusionProofFailed(
                f"the {len(self.positions)} leaves do not lead to the expected root of a tree of size {self.tree_size}"
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "version": 1,
            "tree_size": str(self.tree_size),
            "positions": [str(p) for p in self.positions],
            "path": [h.hex() for h in self.path],
        }

    @classmethod
    def from_json(cls, d: Any) -> MultiProof:
        if not isinstance(d, dict):
            raise MalformedProof(f"{cls.TYPE} proof must be a JSON object")
        if d.get("type") != cls.TYPE:
            raise MalformedProof(f"expected a proof of type {cls.TYPE!r}, got {str(d.get('type'))[:40]!r}")
        if type(d.get("version")) is not int or d["version"] != 1:
            raise UnsupportedVersion(f"{cls.TYPE} proof version {d.get('version')!r} is not supported (only 1)")
        fields = {"type", "version", "tree_size", "positions", "path"}
        if set(d) != fields:
            raise MalformedProof(f"{cls.TYPE} proof must have exactly the fields {', '.join(sorted(fields))}")
        ps, path = d["positions"], d["path"]
        if not isinstance(ps, list) or not 0 < len(ps) <= MAX_POSITIONS:
            raise MalformedProof(f"{cls.TYPE} positions must be a list of 1 to {MAX_POSITIONS} decimal strings")
        if not isinstance(path, list) or len(path) > 64 * len(ps):
            raise MalformedProof(f"{cls.TYPE} path must be a list of at most 64 hashes a position")
        return cls(
            tree_size=parse_count(d["tree_size"], "tree_size"),
            positions=tuple(parse_count(p, f"position {i}") for i, p in enumerate(ps)),
            path=tuple(hex32(h, what=f"{cls.TYPE} path element {i}", exc=MalformedProof) for i, h in enumerate(path)),
        )
