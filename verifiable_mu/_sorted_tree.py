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

The code is in three parts: the record leaves and the proofs (:mod:`verifiable_mu._sorted_proofs`),
the data-set tree over slice descriptors (:mod:`verifiable_mu._dataset_tree`), and here the sorted
tree itself. Every name is re-exported from this module.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain
from typing import Any

import numpy as np

from ._dataset_tree import (
    SliceDescriptor,
    SliceInclusionProof,
    dataset_inclusion_proof,
    dataset_root,
    slice_leaf_data,
    verify_slice_inclusion,
)
from ._errors import InclusionProofFailed, MalformedProof, MalformedRecord, NonMembershipProofFailed
from ._merkle import EMPTY_ROOT, HASH_SIZE, inclusion_path
from ._multiproof import MultiProof, multi_path
from ._proofs import InclusionProof
from ._sorted_proofs import (
    KEY_SIZE,
    AbsenceProof,
    MembershipProof,
    NonMembershipProof,
    _b32,
    record_leaf_data,
    record_leaf_hash,
    verify_membership,
    verify_non_membership,
)
from ._tags import TAG_RECORD_LEAF

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

_REC = 2 * KEY_SIZE  # one record in the contiguous buffer: key || commitment
_CHUNK = 65536  # records (or digests) handled per join, to bound temporary memory
_sha256 = hashlib.sha256
_LEAF_PREFIX = b"\x00" + TAG_RECORD_LEAF  # RFC 9162 leaf prefix, then the record-leaf tag
_NODE = b"\x01"


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
