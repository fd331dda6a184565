"""Slice trees sorted by record key, with membership and non-membership proofs.

A slice of a shard is committed to as an RFC 9162 Merkle tree (see :mod:`._merkle`) whose
leaves are the slice's records, sorted by their 32-byte key, without duplicates
(specs/03-slice-trees.md). The leaf data of a record is::

    TAG_RECORD_LEAF || key (32 bytes) || commitment (32 bytes)

so its leaf hash is ``SHA-256(0x00 || TAG_RECORD_LEAF || key || commitment)``.

Because the leaves are sorted, absence can be proven: a key ``k`` is absent when two leaves at
adjacent positions ``i`` and ``i + 1`` have keys ``< k`` and ``> k``, or when the first leaf's
key is ``> k``, or the last leaf's key is ``< k``, or the tree is empty.

The data set is committed to by a second RFC 9162 tree over *slice descriptors*
``(shard, slice, size, root)``, sorted shard-major; its leaf data is::

    TAG_SLICE_LEAF || u32be(shard) || u32be(slice) || u64be(size) || root

Building is done on contiguous byte buffers (numpy sorts the keys; :mod:`hashlib` hashes in
tight loops, about 2n SHA-256 calls), so a tree of 10^6 records takes a few seconds and holds
about 125 MiB (peak about 210 MiB while building).
"""

from __future__ import annotations

import hashlib
import struct
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

from ._canonical import hex32, parse_json_strict
from ._errors import (
    InclusionProofFailed,
    MalformedProof,
    MalformedRecord,
    NonMembershipProofFailed,
    VerificationFailed,
)
from ._merkle import EMPTY_ROOT, HASH_SIZE, MerkleTree, inclusion_path, leaf_hash, root_of
from ._multiproof import MultiProof, multi_path
from ._proofs import InclusionProof, _check_fields, parse_count
from ._tags import TAG_RECORD_LEAF, TAG_SLICE_LEAF

__all__ = [
    "KEY_SIZE",
    "record_leaf_data",
    "record_leaf_hash",
    "SortedTree",
    "MembershipProof",
    "NonMembershipProof",
    "AbsenceProof",
    "verify_membership",
    "verify_non_membership",
    "SliceDescriptor",
    "SliceInclusionProof",
    "slice_leaf_data",
    "dataset_root",
    "dataset_inclusion_proof",
    "verify_slice_inclusion",
]

KEY_SIZE = 32
_REC = 2 * KEY_SIZE  # one record in the contiguous buffer: key || commitment
_U32 = 2**32
_CHUNK = 65536  # records (or digests) handled per join, to bound temporary memory
_MAX_COUNT = 2**63 - 1
_sha256 = hashlib.sha256
_LEAF_PREFIX = b"\x00" + TAG_RECORD_LEAF  # RFC 9162 leaf prefix, then the record-leaf tag
_NODE = b"\x01"


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


# --- the sorted tree ------------------------------------------------------------------------


class SortedTree:
    """An immutable RFC 9162 tree over records sorted by key (no duplicate keys).

    Storage is contiguous: ``_records`` holds ``key || commitment`` for every leaf in order,
    and ``_levels[l]`` holds the 32-byte nodes of level ``l`` (level 0 = leaf hashes), where
    node ``j`` of level ``l`` is the Merkle tree hash of leaves ``[j*2^l, min((j+1)*2^l, n))``.
    """

    __slots__ = ("_n", "_records", "_levels")

    def __init__(self, *, _records: bytes, _levels: tuple[bytes, ...]) -> None:
        # Private: use SortedTree.build or SortedTree.from_buffers.
        self._records = _records
        self._levels = _levels
        self._n = len(_records) // _REC

    # construction ------------------------------------------------------------------------

    @classmethod
    def build(cls, pairs: Iterable[tuple[bytes, bytes]]) -> SortedTree:
        """Build the tree of ``(key, commitment)`` pairs (any order; keys must be distinct)."""
        items = pairs if isinstance(pairs, (list, tuple)) else list(pairs)
        # All checks and the flattening run in C (map/join), not per record in Python.
        try:
            if items and set(map(len, items)) != {2}:
                raise MalformedRecord("records must be (key, commitment) pairs")
            if items and set(map(len, chain.from_iterable(items))) != {KEY_SIZE}:
                raise MalformedRecord(f"every record key and commitment must be {KEY_SIZE} bytes")
            # Joined in chunks: bytes.join keeps an 80-byte buffer descriptor per item.
            flat = bytearray(_REC * len(items))
            for s in range(0, len(items), _CHUNK):
                sub = items[s : s + _CHUNK]
                chunk = b"".join(chain.from_iterable(sub))
                if len(chunk) != _REC * len(sub):  # e.g. a memoryview whose items are not bytes
                    raise MalformedRecord(f"every record key and commitment must be {KEY_SIZE} bytes")
                flat[_REC * s : _REC * s + len(chunk)] = chunk
        except TypeError as e:
            raise MalformedRecord(f"records must be pairs of bytes (key, commitment): {e}") from e
        holder = [flat]
        del flat
        return cls._from_records(holder)

    @classmethod
    def from_buffers(cls, keys: bytes, commitments: bytes) -> SortedTree:
        """Build from ``n`` concatenated 32-byte keys and ``n`` concatenated commitments.

        Record ``i`` is ``(keys[32i:32i+32], commitments[32i:32i+32])``; any order.
        """
        k = np.frombuffer(bytes(keys), dtype=np.uint8)
        c = np.frombuffer(bytes(commitments), dtype=np.uint8)
        if len(k) % KEY_SIZE or len(k) != len(c):
            raise MalformedRecord("key and commitment buffers must both hold n 32-byte values")
        rec = np.empty((len(k) // KEY_SIZE, _REC), dtype=np.uint8)
        rec[:, :KEY_SIZE] = k.reshape(-1, KEY_SIZE)
        rec[:, KEY_SIZE:] = c.reshape(-1, KEY_SIZE)
        del k, c
        return cls._from_records([rec])

    @classmethod
    def _from_records(cls, holder: list[Any]) -> SortedTree:
        """Sort, check and hash ``n`` records given as ``key || commitment`` (64 bytes each).

        The buffer comes in a one-element list that is emptied, so it can be freed early.
        """
        rec = np.frombuffer(holder.pop(), dtype=np.uint8).reshape(-1, _REC)
        n = len(rec)
        if n == 0:
            return cls(_records=b"", _levels=(b"",))
        keys = np.ascontiguousarray(rec[:, :KEY_SIZE])
        # Equal-length fixed-width byte strings: numpy orders them bytewise (memcmp);
        # _check_strictly_ascending verifies the order and does not rely on that.
        order = np.argsort(keys.view(f"S{KEY_SIZE}").ravel(), kind="stable")
        del keys
        # Leaf messages 0x00 || TAG_RECORD_LEAF || key || commitment, built in one array.
        pre = len(_LEAF_PREFIX)
        msg = np.empty((n, pre + _REC), dtype=np.uint8)
        msg[:, :pre] = np.frombuffer(_LEAF_PREFIX, dtype=np.uint8)
        np.take(rec, order, axis=0, out=msg[:, pre:])
        del rec, order
        if n > 1:
            _check_strictly_ascending(msg[:, pre : pre + KEY_SIZE])
        levels = [_hash_rows(msg)]
        records = msg[:, pre:].tobytes()
        del msg
        while len(levels[-1]) > HASH_SIZE:
            level = levels[-1]
            m = len(level) // HASH_SIZE
            half = m // 2
            nodes = np.empty((half, 1 + 2 * HASH_SIZE), dtype=np.uint8)
            nodes[:, 0] = _NODE[0]
            nodes[:, 1:] = np.frombuffer(level, dtype=np.uint8, count=half * 2 * HASH_SIZE).reshape(half, -1)
            nxt = _hash_rows(nodes)
            if m % 2:
                nxt += level[-HASH_SIZE:]  # an odd last node is carried up unchanged
            levels.append(nxt)
        return cls(_records=records, _levels=tuple(levels))

    # queries ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return f"SortedTree(size={self._n}, root={self.root.hex()})"

    @property
    def root(self) -> bytes:
        """The RFC 9162 root (``EMPTY_ROOT`` for an empty tree)."""
        top = self._levels[-1]
        return top if top else EMPTY_ROOT

    def key_at(self, index: int) -> bytes:
        o = self._offset(index)
        return self._records[o : o + KEY_SIZE]

    def commitment_at(self, index: int) -> bytes:
        o = self._offset(index)
        return self._records[o + KEY_SIZE : o + _REC]

    def leaf_hash_at(self, index: int) -> bytes:
        self._offset(index)
        return self._levels[0][index * HASH_SIZE : (index + 1) * HASH_SIZE]

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        r = self._records
        for o in range(0, self._n * _REC, _REC):
            yield r[o : o + KEY_SIZE], r[o + KEY_SIZE : o + _REC]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, (bytes, bytearray)) and len(key) == KEY_SIZE and self.index_of(bytes(key)) is not None

    def index_of(self, key: bytes) -> int | None:
        """The index of ``key``, or ``None`` when it is absent."""
        key = _b32(key, "record key", MalformedRecord)
        i = self._lower_bound(key)
        return i if i < self._n and self.key_at(i) == key else None

    def membership_proof(self, key: bytes) -> MembershipProof:
        """Proof that ``key`` is in the tree; :class:`InclusionProofFailed` if it is not."""
        i = self.index_of(key)
        if i is None:
            raise InclusionProofFailed(f"key {bytes(key).hex()} is not in the tree, so its membership cannot be proven")
        return self._member(i)

    def non_membership_proof(self, key: bytes) -> NonMembershipProof:
        """Proof that ``key`` is absent; :class:`NonMembershipProofFailed` if it is present."""
        key = _b32(key, "record key", MalformedRecord)
        i = self._lower_bound(key)
        if i < self._n and self.key_at(i) == key:
            raise NonMembershipProofFailed(
                f"key {key.hex()} is in the tree at index {i}, so its absence cannot be proven"
            )
        return NonMembershipProof(
            key=key,
            tree_size=self._n,
            left=self._member(i - 1) if i > 0 else None,
            right=self._member(i) if i < self._n else None,
        )

    def absence_proof(self, keys: Iterable[bytes]) -> AbsenceProof:
        """One proof that every key of ``keys`` is absent (:class:`AbsenceProof`);
        :class:`NonMembershipProofFailed` if one is present."""
        positions: set[int] = set()
        for key in keys:
            key = _b32(key, "record key", MalformedRecord)
            i = self._lower_bound(key)
            if i < self._n and self.key_at(i) == key:
                raise NonMembershipProofFailed(f"key {key.hex()} is in the tree at index {i}, so its absence cannot be proven")
            positions |= {j for j in (i - 1, i) if 0 <= j < self._n}
        ps = tuple(sorted(positions))
        return AbsenceProof(
            tree_size=self._n,
            records=tuple((self.key_at(i), self.commitment_at(i)) for i in ps),
            proof=self.multi_proof(ps) if ps else None,
        )

    def inclusion_proof(self, index: int) -> InclusionProof:
        """Inclusion proof of the leaf at ``index``."""
        self._offset(index)
        return InclusionProof(index=index, tree_size=self._n, path=tuple(inclusion_path(self._mth, index, self._n)))

    def multi_proof(self, positions: Sequence[int]) -> MultiProof:
        """One multiproof of the leaves at ``positions`` (strictly ascending)."""
        ps = tuple(positions)
        return MultiProof(positions=ps, tree_size=self._n, path=tuple(multi_path(self._mth, ps, self._n)))

    # internals ----------------------------------------------------------------------------

    def _offset(self, index: int) -> int:
        if type(index) is not int or not 0 <= index < self._n:
            raise MalformedProof(f"leaf index {index!r} is outside a tree of size {self._n}")
        return index * _REC

    def _lower_bound(self, key: bytes) -> int:
        """The first index whose key is >= ``key``."""
        r = self._records
        lo, hi = 0, self._n
        while lo < hi:
            mid = (lo + hi) >> 1
            o = mid * _REC
            if r[o : o + KEY_SIZE] < key:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def _mth(self, start: int, end: int) -> bytes:
        """Merkle tree hash of leaves ``[start, end)`` for the subtrees RFC 9162 proofs ask for."""
        lvl = (end - start - 1).bit_length()
        # Every such range is aligned to 2^lvl and either full (2^lvl leaves) or ends the tree.
        if start % (1 << lvl) or (end - start != 1 << lvl and end != self._n):  # pragma: no cover
            raise AssertionError(f"[{start}, {end}) is not a subtree of a tree of size {self._n}")
        j = start >> lvl
        return self._levels[lvl][j * HASH_SIZE : (j + 1) * HASH_SIZE]

    def _member(self, i: int) -> MembershipProof:
        return MembershipProof(key=self.key_at(i), commitment=self.commitment_at(i), inclusion=self.inclusion_proof(i))


def _hash_rows(a: np.ndarray) -> bytes:
    """Concatenated SHA-256 digests of the rows of a C-contiguous 2-D uint8 array."""
    w = a.shape[1]
    mv = a.data.cast("B")
    total = len(mv)
    step = w * _CHUNK  # join in chunks, so at most _CHUNK digest objects exist at once
    sha = _sha256
    parts = [
        b"".join([sha(mv[i : i + w]).digest() for i in range(s, min(s + step, total), w)])
        for s in range(0, total, step)
    ]
    return b"".join(parts)


def _check_strictly_ascending(k: np.ndarray) -> None:
    """Raise :class:`MalformedRecord` unless the rows of ``k`` are strictly ascending bytewise."""
    a, b = k[:-1], k[1:]
    diff = a != b
    differs = diff.any(axis=1)
    if not differs.all():
        i = int(np.argmin(differs))
        raise MalformedRecord(f"duplicate record key {bytes(k[i]).hex()}")
    first = diff.argmax(axis=1)
    rows = np.arange(len(first))
    if not (b[rows, first] > a[rows, first]).all():  # pragma: no cover - guards numpy's ordering
        raise AssertionError("record keys were not sorted bytewise")


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


# --- the data-set commitment over slice roots -----------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SliceDescriptor:
    """One slice of one shard: its number of records and its sorted-tree root."""

    shard: int
    slice: int
    size: int
    root: bytes

    TYPE = "vmu.slice"

    def __post_init__(self) -> None:
        for name, limit in (("shard", _U32 - 1), ("slice", _U32 - 1), ("size", _MAX_COUNT)):
            v = getattr(self, name)
            if type(v) is not int or not 0 <= v <= limit:
                raise MalformedProof(f"slice descriptor {name} must be an integer in [0, {limit}]")
        if not isinstance(self.root, bytes) or len(self.root) != HASH_SIZE:
            raise MalformedProof(f"slice descriptor root must be {HASH_SIZE} bytes")
        if self.size == 0 and self.root != EMPTY_ROOT:
            raise MalformedProof("slice descriptor of size 0 must have the empty root")

    @property
    def position(self) -> tuple[int, int]:
        return (self.shard, self.slice)

    def leaf_data(self) -> bytes:
        return slice_leaf_data(self)

    def leaf_hash(self) -> bytes:
        return leaf_hash(slice_leaf_data(self))

    def verify_membership(self, proof: MembershipProof, *, key: bytes | None = None) -> None:
        """Raise unless ``proof`` shows a record is in this slice (root and size both match)."""
        if proof.tree_size != self.size:
            raise InclusionProofFailed(
                f"membership proof is for a tree of size {proof.tree_size}, "
                f"but slice ({self.shard}, {self.slice}) has {self.size} records"
            )
        proof.verify(root=self.root, key=key)

    def verify_non_membership(self, proof: NonMembershipProof, *, key: bytes) -> None:
        """Raise unless ``proof`` shows ``key`` is absent from this slice (root and size both match)."""
        if proof.tree_size != self.size:
            raise NonMembershipProofFailed(
                f"non-membership proof is for a tree of size {proof.tree_size}, "
                f"but slice ({self.shard}, {self.slice}) has {self.size} records"
            )
        proof.verify(root=self.root, key=key)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "version": 1,
            "shard": str(self.shard),
            "slice": str(self.slice),
            "size": str(self.size),
            "root": self.root.hex(),
        }

    @classmethod
    def from_json(cls, d: Any) -> SliceDescriptor:
        d = _load(d, "slice descriptor")
        _check_fields(d, cls.TYPE, {"type", "version", "shard", "slice", "size", "root"})
        return cls(
            shard=parse_count(d["shard"], "shard"),
            slice=parse_count(d["slice"], "slice"),
            size=parse_count(d["size"], "size"),
            root=_hex32(d["root"], "slice descriptor root"),
        )


def slice_leaf_data(d: SliceDescriptor) -> bytes:
    """``TAG_SLICE_LEAF || u32be(shard) || u32be(slice) || u64be(size) || root``."""
    return TAG_SLICE_LEAF + struct.pack(">IIQ", d.shard, d.slice, d.size) + d.root


def _dataset_leaves(descriptors: Iterable[SliceDescriptor]) -> tuple[list[SliceDescriptor], list[bytes]]:
    ds = list(descriptors)
    for i, d in enumerate(ds):
        if not isinstance(d, SliceDescriptor):
            raise MalformedProof(f"data-set entry {i} is not a SliceDescriptor")
        if i and ds[i - 1].position >= d.position:
            raise MalformedProof(
                f"slice descriptors must be sorted by (shard, slice) without duplicates: "
                f"{ds[i - 1].position} then {d.position}"
            )
    return ds, [d.leaf_hash() for d in ds]


def dataset_root(descriptors: Iterable[SliceDescriptor]) -> bytes:
    """RFC 9162 root over the slice descriptors, which must be sorted by (shard, slice)."""
    return root_of(_dataset_leaves(descriptors)[1])


@dataclass(frozen=True, slots=True, kw_only=True)
class SliceInclusionProof:
    """A slice descriptor and the inclusion proof of its leaf in the data-set tree."""

    slice: SliceDescriptor
    inclusion: InclusionProof

    TYPE = "vmu.slice-inclusion"

    def __post_init__(self) -> None:
        if not isinstance(self.slice, SliceDescriptor):
            raise MalformedProof("slice inclusion proof slice must be a SliceDescriptor")
        if not isinstance(self.inclusion, InclusionProof):
            raise MalformedProof("slice inclusion proof inclusion must be an InclusionProof")

    def verify(self, *, dataset_root: bytes) -> None:
        """Raise :class:`InclusionProofFailed` unless the descriptor is in the data-set tree."""
        root = _b32(dataset_root, "data-set root", MalformedProof)
        self.inclusion.verify(leaf=self.slice.leaf_hash(), root=root)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.TYPE, "version": 1, "slice": self.slice.to_json(), "inclusion": self.inclusion.to_json()}

    @classmethod
    def from_json(cls, d: Any) -> SliceInclusionProof:
        d = _load(d, "slice inclusion proof")
        _check_fields(d, cls.TYPE, {"type", "version", "slice", "inclusion"})
        return cls(slice=SliceDescriptor.from_json(d["slice"]), inclusion=InclusionProof.from_json(d["inclusion"]))


def dataset_inclusion_proof(descriptors: Sequence[SliceDescriptor], shard: int, slice: int) -> SliceInclusionProof:
    """Proof that the descriptor of ``(shard, slice)`` is in the data-set tree."""
    ds, leaves = _dataset_leaves(descriptors)
    for i, d in enumerate(ds):  # noqa: B007 (i is used after the loop)
        if d.position == (shard, slice):
            break
    else:
        raise InclusionProofFailed(f"slice ({shard}, {slice}) is not in the data set")
    path = tuple(MerkleTree(leaves).inclusion_path(i))
    return SliceInclusionProof(slice=ds[i], inclusion=InclusionProof(index=i, tree_size=len(ds), path=path))


def verify_slice_inclusion(
    proof: SliceInclusionProof | dict[str, Any] | str | bytes, *, dataset_root: bytes
) -> SliceDescriptor:
    """Parse and verify ``proof``; return the slice descriptor it proves."""
    p = proof if isinstance(proof, SliceInclusionProof) else SliceInclusionProof.from_json(proof)
    p.verify(dataset_root=dataset_root)
    return p.slice
