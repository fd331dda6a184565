"""Record leaves of sorted slice trees, and their membership, non-membership and absence proofs.

Part of :mod:`verifiable_mu._sorted_tree`, which re-exports every name here; a verifier needs only
this module to check a proof against a slice root (specs/03-slice-trees.md). The leaf data of a
record is ``TAG_RECORD_LEAF || key (32 bytes) || commitment (32 bytes)``. Because the leaves are
sorted, absence can be proven: a key ``k`` is absent when two leaves at adjacent positions ``i``
and ``i + 1`` have keys ``< k`` and ``> k``, or when the first leaf's key is ``> k``, or the last
leaf's key is ``< k``, or the tree is empty.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ._canonical import hex32, parse_json_strict
from ._errors import (
    InclusionProofFailed,
    MalformedProof,
    MalformedRecord,
    NonMembershipProofFailed,
    VerificationFailed,
)
from ._merkle import EMPTY_ROOT, HASH_SIZE, leaf_hash
from ._multiproof import MultiProof
from ._proofs import InclusionProof, _check_fields, parse_count
from ._tags import TAG_RECORD_LEAF

__all__ = [
    "KEY_SIZE",
    "record_leaf_data",
    "record_leaf_hash",
    "MembershipProof",
    "NonMembershipProof",
    "AbsenceProof",
    "verify_membership",
    "verify_non_membership",
]

KEY_SIZE = 32
_MAX_COUNT = 2**63 - 1


# --- helpers --------------------------------------------------------------------------------


def _b32(value: Any, what: str, exc: type[Exception]) -> bytes:
    """``value`` as 32 immutable bytes, or raise ``exc``."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise exc(f"{what} must be {HASH_SIZE} bytes, not {type(value).__name__}")
    b = bytes(value)
    if len(b) != HASH_SIZE:
        raise exc(f"{what} must be {HASH_SIZE} bytes, got {len(b)}")
    return b


def _hex32(value: Any, what: str) -> bytes:
    b = hex32(value, what=what, exc=MalformedProof)
    # bytes.fromhex skips whitespace, so a 64-character string with spaces gives fewer bytes.
    if len(b) != HASH_SIZE:
        raise MalformedProof(f"{what} must be 64 lower-case hex characters")
    return b


def _load(doc: Any, what: str) -> Any:
    """Accept a parsed JSON value, or JSON text/bytes parsed strictly."""
    if isinstance(doc, (str, bytes, bytearray)):
        return parse_json_strict(bytes(doc) if not isinstance(doc, str) else doc, what=what, exc=MalformedProof)
    return doc


def record_leaf_data(key: bytes, commitment: bytes) -> bytes:
    """``TAG_RECORD_LEAF || key || commitment``: the RFC 9162 leaf data of a record."""
    return TAG_RECORD_LEAF + _b32(key, "record key", MalformedRecord) + _b32(commitment, "commitment", MalformedRecord)


def record_leaf_hash(key: bytes, commitment: bytes) -> bytes:
    """``SHA-256(0x00 || TAG_RECORD_LEAF || key || commitment)``."""
    return leaf_hash(record_leaf_data(key, commitment))


# --- membership and non-membership proofs ---------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class MembershipProof:
    """A record ``(key, commitment)`` and the inclusion proof of its leaf."""

    key: bytes
    commitment: bytes
    inclusion: InclusionProof

    TYPE = "vmu.membership"

    def __post_init__(self) -> None:
        for name in ("key", "commitment"):
            v = getattr(self, name)
            if not isinstance(v, bytes) or len(v) != HASH_SIZE:
                raise MalformedProof(f"membership proof {name} must be {HASH_SIZE} bytes")
        if not isinstance(self.inclusion, InclusionProof):
            raise MalformedProof("membership proof inclusion must be an InclusionProof")

    @property
    def index(self) -> int:
        return self.inclusion.index

    @property
    def tree_size(self) -> int:
        return self.inclusion.tree_size

    def leaf_hash(self) -> bytes:
        return record_leaf_hash(self.key, self.commitment)

    def verify(self, *, root: bytes, key: bytes | None = None) -> None:
        """Raise unless the record is in the tree ``root`` (and has ``key``, when given)."""
        root = _b32(root, "root", MalformedProof)
        if key is not None and _b32(key, "key", MalformedProof) != self.key:
            raise InclusionProofFailed(f"membership proof is for key {self.key.hex()}, not {bytes(key).hex()}")
        self.inclusion.verify(leaf=self.leaf_hash(), root=root)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "version": 1,
            "key": self.key.hex(),
            "commitment": self.commitment.hex(),
            "inclusion": self.inclusion.to_json(),
        }

    @classmethod
    def from_json(cls, d: Any) -> MembershipProof:
        d = _load(d, "membership proof")
        _check_fields(d, cls.TYPE, {"type", "version", "key", "commitment", "inclusion"})
        return cls(
            key=_hex32(d["key"], "membership proof key"),
            commitment=_hex32(d["commitment"], "membership proof commitment"),
            inclusion=InclusionProof.from_json(d["inclusion"]),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class NonMembershipProof:
    """Proof that ``key`` is absent from a sorted tree of ``tree_size`` leaves.

    ``left`` is the leaf with the greatest key ``< key`` and ``right`` the leaf with the least
    key ``> key`` (either is ``None`` at an edge; both are ``None`` for the empty tree).
    """

    key: bytes
    tree_size: int
    left: MembershipProof | None
    right: MembershipProof | None

    TYPE = "vmu.non-membership"

    def __post_init__(self) -> None:
        if not isinstance(self.key, bytes) or len(self.key) != HASH_SIZE:
            raise MalformedProof(f"non-membership proof key must be {HASH_SIZE} bytes")
        if type(self.tree_size) is not int or not 0 <= self.tree_size <= _MAX_COUNT:
            raise MalformedProof("non-membership proof tree_size must be an integer in [0, 2^63)")
        if self.tree_size == 0 and (self.left is not None or self.right is not None):
            raise MalformedProof("non-membership proof for an empty tree must have no neighbours")
        if self.tree_size > 0 and self.left is None and self.right is None:
            raise MalformedProof("non-membership proof for a non-empty tree needs at least one neighbour")
        for side in ("left", "right"):
            p = getattr(self, side)
            if p is None:
                continue
            if not isinstance(p, MembershipProof):
                raise MalformedProof(f"non-membership proof {side} must be a MembershipProof or None")
            if p.tree_size != self.tree_size:
                raise MalformedProof(
                    f"non-membership proof {side} neighbour is proven in a tree of size {p.tree_size}, "
                    f"not {self.tree_size}"
                )

    def verify(self, *, root: bytes, key: bytes) -> None:
        """Raise :class:`NonMembershipProofFailed` unless ``key`` is absent from tree ``root``.

        The numbered steps are those of specs/03-slice-trees.md ("To verify a non-membership
        proof").
        """
        root = _b32(root, "root", MalformedProof)
        key = _b32(key, "key", MalformedProof)
        # 1. The proof is about the key asked for.
        if key != self.key:
            raise NonMembershipProofFailed(f"non-membership proof is for key {self.key.hex()}, not {key.hex()}")
        n, left, right = self.tree_size, self.left, self.right
        # 2. Empty tree: the root must be the empty root.
        if n == 0:
            if root != EMPTY_ROOT:
                raise NonMembershipProofFailed("proof claims an empty tree but the root is not the empty root")
            return
        # 3. Positions: adjacent neighbours, or the first / last leaf at an edge.
        if left is not None and right is not None:
            if right.index != left.index + 1:
                raise NonMembershipProofFailed(
                    f"neighbours at indices {left.index} and {right.index} are not adjacent"
                )
        elif right is not None:
            if right.index != 0:
                raise NonMembershipProofFailed(f"the only neighbour is at index {right.index}, not the first leaf (0)")
        elif left is not None and left.index != n - 1:
            raise NonMembershipProofFailed(
                f"the only neighbour is at index {left.index}, not the last leaf ({n - 1})"
            )
        # 4. Keys bracket the key strictly.
        if left is not None and not left.key < key:
            raise NonMembershipProofFailed("left neighbour's key is not less than the key")
        if right is not None and not key < right.key:
            raise NonMembershipProofFailed("right neighbour's key is not greater than the key")
        # 5. Each neighbour is really in the tree.
        for side, p in (("left", left), ("right", right)):
            if p is None:
                continue
            try:
                p.verify(root=root)
            except VerificationFailed as e:
                raise NonMembershipProofFailed(f"{side} neighbour's inclusion proof fails: {e}") from e

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "version": 1,
            "key": self.key.hex(),
            "tree_size": str(self.tree_size),
            "left": None if self.left is None else self.left.to_json(),
            "right": None if self.right is None else self.right.to_json(),
        }

    @classmethod
    def from_json(cls, d: Any) -> NonMembershipProof:
        d = _load(d, "non-membership proof")
        _check_fields(d, cls.TYPE, {"type", "version", "key", "tree_size", "left", "right"})
        return cls(
            key=_hex32(d["key"], "non-membership proof key"),
            tree_size=parse_count(d["tree_size"], "tree_size"),
            left=None if d["left"] is None else MembershipProof.from_json(_object(d["left"], "left")),
            right=None if d["right"] is None else MembershipProof.from_json(_object(d["right"], "right")),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class AbsenceProof:
    """Proof that several keys are absent from one sorted tree: the records next to each key (the
    greatest key below it and the least above it, either missing at an edge) at their positions,
    proven by one multiproof (specs/03-slice-trees.md, "Absence proofs"). About half the size of
    separate non-membership proofs for one key, and it shares the path for several."""

    tree_size: int
    records: tuple[tuple[bytes, bytes], ...]  # (key, commitment) at proof.positions, in order
    proof: MultiProof | None  # None only for the empty tree

    TYPE = "vmu.absence"

    def __post_init__(self) -> None:
        if type(self.tree_size) is not int or not 0 <= self.tree_size <= _MAX_COUNT:
            raise MalformedProof("absence proof tree_size must be an integer in [0, 2^63)")
        if (self.proof is None) != (self.tree_size == 0):
            raise MalformedProof("an absence proof has a multiproof exactly when its tree is not empty")
        n = 0 if self.proof is None else len(self.proof.positions)
        if len(self.records) != n or (self.proof is not None and self.proof.tree_size != self.tree_size):
            raise MalformedProof("an absence proof needs one record per multiproof position, in a tree of its size")
        if any(a[0] >= b[0] for a, b in zip(self.records, self.records[1:], strict=False)):
            raise MalformedProof("absence proof records must be in strictly ascending key order")

    def verify(self, *, root: bytes, size: int, keys: Iterable[bytes]) -> None:
        """Raise :class:`NonMembershipProofFailed` unless every key of ``keys`` is absent from the
        sorted tree of ``size`` records with root ``root``."""
        root = _b32(root, "root", MalformedProof)
        if self.tree_size != size:
            raise NonMembershipProofFailed(f"absence proof is for a tree of {self.tree_size} records, not {size}")
        if self.proof is None:
            if root != EMPTY_ROOT:
                raise NonMembershipProofFailed("absence proof claims an empty tree but the root is not the empty root")
            return
        try:
            self.proof.verify(leaves=[record_leaf_hash(k, c) for k, c in self.records], root=root)
        except VerificationFailed as e:
            raise NonMembershipProofFailed(f"absence proof records are not in the tree: {e}") from e
        ps, ks = self.proof.positions, [k for k, _ in self.records]
        for key in keys:
            key = _b32(key, "key", MalformedProof)
            i = bisect_left(ks, key)  # ks[i-1] < key <= ks[i]
            if i < len(ks) and ks[i] == key:
                raise NonMembershipProofFailed(f"key {key.hex()[:16]}... is in the tree at index {ps[i]}")
            below = ps[i - 1] if i > 0 else -1  # position of the greatest proven key below (or "before the first")
            above = ps[i] if i < len(ks) else self.tree_size
            if above != below + 1:
                raise NonMembershipProofFailed(f"absence proof does not show the neighbours of key {key.hex()[:16]}... "
                                               f"(positions {below} and {above} are not adjacent)")

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "version": 1,
            "tree_size": str(self.tree_size),
            "records": [(k + c).hex() for k, c in self.records],
            "proof": None if self.proof is None else self.proof.to_json(),
        }

    @classmethod
    def from_json(cls, d: Any) -> AbsenceProof:
        d = _load(d, "absence proof")
        _check_fields(d, cls.TYPE, {"type", "version", "tree_size", "records", "proof"})
        recs = d["records"]
        if not isinstance(recs, list) or len(recs) > 1 << 20:
            raise MalformedProof("absence proof records must be a list")
        out = []
        for i, r in enumerate(recs):
            if not isinstance(r, str) or len(r) != 128:
                raise MalformedProof(f"absence proof record {i} must be 128 hex characters (key || commitment)")
            out.append((_hex32(r[:64], f"absence proof record {i} key"), _hex32(r[64:], f"absence proof record {i} commitment")))
        return cls(
            tree_size=parse_count(d["tree_size"], "tree_size"),
            records=tuple(out),
            proof=None if d["proof"] is None else MultiProof.from_json(d["proof"]),
        )


def _object(v: Any, side: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise MalformedProof(f"non-membership proof {side} must be a JSON object or null")
    return v


def verify_membership(proof: MembershipProof | dict[str, Any] | str | bytes, *, root: bytes, key: bytes) -> None:
    """Parse ``proof`` (object, JSON value or JSON text) and check ``key`` is in tree ``root``."""
    p = proof if isinstance(proof, MembershipProof) else MembershipProof.from_json(proof)
    p.verify(root=root, key=key)


def verify_non_membership(
    proof: NonMembershipProof | dict[str, Any] | str | bytes, *, root: bytes, key: bytes
) -> None:
    """Parse ``proof`` (object, JSON value or JSON text) and check ``key`` is absent from ``root``."""
    p = proof if isinstance(proof, NonMembershipProof) else NonMembershipProof.from_json(proof)
    p.verify(root=root, key=key)
