"""RFC 9162 Merkle hash trees: hashing, inclusion and consistency proofs.

This is the project's own small implementation on :mod:`hashlib` (see specs/02-merkle.md).
The hash algorithm is fixed to SHA-256 and the leaf/node prefixes are fixed to 0x00/0x01
(RFC 9162 section 2.1.1); nothing read from outside can change them.

Proof *generation* is written against an oracle ``mth(start, end)`` that returns the Merkle
tree hash of the leaves ``[start, end)``; the in-memory :class:`MerkleTree` and the SQLite
log each provide one. Proof *verification* follows RFC 9162 sections 2.1.3.2 and 2.1.4.2
step by step and needs nothing but the proof, the root(s) and the leaf hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from ._errors import ConsistencyProofFailed, InclusionProofFailed, MalformedProof

__all__ = [
    "HASH_SIZE",
    "EMPTY_ROOT",
    "leaf_hash",
    "node_hash",
    "root_of",
    "inclusion_path",
    "consistency_path",
    "verify_inclusion",
    "verify_consistency",
    "root_from_inclusion",
    "MerkleTree",
]

HASH_SIZE = 32
_LEAF = b"\x00"
_NODE = b"\x01"
_sha256 = hashlib.sha256

#: MTH({}) = SHA-256() (RFC 9162 section 2.1.1).
EMPTY_ROOT = _sha256(b"").digest()

Oracle = Callable[[int, int], bytes]


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 || data)``."""
    return _sha256(_LEAF + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``."""
    return _sha256(_NODE + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over a list of leaf hashes, computed level by level (no recursion)."""
    n = len(leaf_hashes)
    if n == 0:
        return EMPTY_ROOT
    level = list(leaf_hashes)
    # Pairing adjacent nodes level by level and carrying an odd last node up unchanged gives
    # exactly the RFC's left-balanced tree (the left subtree is always the largest power of 2).
    while len(level) > 1:
        nxt = [_sha256(_NODE + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def inclusion_path(mth: Oracle, index: int, tree_size: int) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 section 2.1.3.1, leaf-to-root order."""
    if not 0 <= index < tree_size:
        raise MalformedProof(f"leaf index {index} is outside a tree of size {tree_size}")
    path: list[bytes] = []
    start, end, m = 0, tree_size, index
    # Walk down from the root, collecting siblings; reverse at the end.
    while end - start > 1:
        k = _split(end - start)
        if m < k:
            path.append(mth(start + k, end))
            end = start + k
        else:
            path.append(mth(start, start + k))
            start, m = start + k, m - k
    path.reverse()
    return path


def consistency_path(mth: Oracle, old_size: int, new_size: int) -> list[bytes]:
    """PROOF(m, D[n]) of RFC 9162 section 2.1.4.1."""
    if not 0 <= old_size <= new_size:
        raise MalformedProof(f"cannot prove consistency from size {old_size} to size {new_size}")
    if old_size == 0 or old_size == new_size:
        return []
    out: list[bytes] = []
    start, end, m, b = 0, new_size, old_size, True
    while True:
        n = end - start
        if m == n:
            if not b:
                out.append(mth(start, end))
            break
        k = _split(n)
        if m <= k:
            out.append(mth(start + k, end))
            end = start + k
        else:
            out.append(mth(start, start + k))
            start, m, b = start + k, m - k, False
    out.reverse()
    return out


def _check_hashes(path: Sequence[bytes], what: str) -> None:
    for i, h in enumerate(path):
        if not isinstance(h, (bytes, bytearray)) or len(h) != HASH_SIZE:
            raise MalformedProof(f"{what} element {i} is not a {HASH_SIZE}-byte hash")


def root_from_inclusion(leaf: bytes, index: int, tree_size: int, path: Sequence[bytes]) -> bytes:
    """The root an inclusion proof leads to (RFC 9162 section 2.1.3.2, steps 1-6)."""
    for v in (index, tree_size):
        if not isinstance(v, int) or isinstance(v, bool):
            raise MalformedProof("inclusion proof index and tree size must be integers")
    if not 0 <= index < tree_size:
        raise MalformedProof(f"leaf index {index} is outside a tree of size {tree_size}")
    if not isinstance(leaf, (bytes, bytearray)) or len(leaf) != HASH_SIZE:
        raise MalformedProof(f"leaf hash must be {HASH_SIZE} bytes")
    _check_hashes(path, "inclusion path")
    fn, sn = index, tree_size - 1
    r = bytes(leaf)
    for p in path:
        if sn == 0:
            raise InclusionProofFailed("inclusion path is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = _sha256(_NODE + p + r).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _sha256(_NODE + r + p).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise InclusionProofFailed("inclusion path is shorter than the tree is deep")
    return r


def verify_inclusion(*, leaf: bytes, index: int, tree_size: int, path: Sequence[bytes], root: bytes) -> None:
    """Raise unless ``path`` proves leaf hash ``leaf`` is at ``index`` in the tree ``root``."""
    if not isinstance(root, (bytes, bytearray)) or len(root) != HASH_SIZE:
        raise MalformedProof(f"root must be {HASH_SIZE} bytes")
    if root_from_inclusion(leaf, index, tree_size, path) != root:
        raise InclusionProofFailed(
            f"inclusion proof for leaf {index} of {tree_size} does not lead to the expected root"
        )


def verify_consistency(
    *, old_size: int, new_size: int, old_root: bytes, new_root: bytes, path: Sequence[bytes]
) -> None:
    """Raise unless ``path`` proves tree ``old_root`` (old_size) is a prefix of ``new_root``.

    RFC 9162 section 2.1.4.2, including the final check that the whole path was consumed
    exactly when ``sn`` reaches 0 (omitting it is a known bug in other implementations).
    """
    for v in (old_size, new_size):
        if not isinstance(v, int) or isinstance(v, bool):
            raise MalformedProof("consistency proof sizes must be integers")
    if not 0 <= old_size <= new_size:
        raise MalformedProof(f"cannot prove consistency from size {old_size} to size {new_size}")
    for r, name in ((old_root, "old root"), (new_root, "new root")):
        if not isinstance(r, (bytes, bytearray)) or len(r) != HASH_SIZE:
            raise MalformedProof(f"{name} must be {HASH_SIZE} bytes")
    _check_hashes(path, "consistency path")
    if old_size == new_size:
        if path:
            raise ConsistencyProofFailed("consistency proof between equal sizes must be empty")
        if old_root != new_root:
            raise ConsistencyProofFailed("trees of equal size have different roots")
        return
    if old_size == 0:
        if path:
            raise ConsistencyProofFailed("consistency proof from the empty tree must be empty")
        if old_root != EMPTY_ROOT:
            raise ConsistencyProofFailed("old tree of size 0 must have the empty root")
        return
    if not path:
        raise ConsistencyProofFailed("consistency proof is empty")
    proof = list(path)
    # Step 2: if old_size is an exact power of 2, prepend old_root.
    if old_size & (old_size - 1) == 0:
        proof.insert(0, bytes(old_root))
    fn, sn = old_size - 1, new_size - 1
    # Step 4: shift right until LSB(fn) is not set.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            raise ConsistencyProofFailed("consistency path is longer than the new tree needs")
        if fn & 1 or fn == sn:
            fr = _sha256(_NODE + c + fr).digest()
            sr = _sha256(_NODE + c + sr).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = _sha256(_NODE + sr + c).digest()
        fn >>= 1
        sn >>= 1
    # Step 7: the whole path must be consumed exactly when sn reaches 0.
    if sn != 0:
        raise ConsistencyProofFailed("consistency path does not cover the whole new tree")
    if fr != old_root:
        raise ConsistencyProofFailed(f"consistency proof does not reproduce the old root (size {old_size})")
    if sr != new_root:
        raise ConsistencyProofFailed(f"consistency proof does not reproduce the new root (size {new_size})")


class MerkleTree:
    """An append-only in-memory RFC 9162 tree over leaf hashes.

    Keeps every complete level, so roots of any prefix and any proof cost O(log n) hashes
    per aligned subtree, and appends are amortised O(1).
    """

    __slots__ = ("_levels",)

    def __init__(self, leaf_hashes: Sequence[bytes] = ()) -> None:
        self._levels: list[list[bytes]] = [[]]
        self.extend(leaf_hashes)

    def __len__(self) -> int:
        return len(self._levels[0])

    def append(self, leaf: bytes) -> None:
        self.extend((leaf,))

    def extend(self, leaves: Sequence[bytes]) -> None:
        levels = self._levels
        for h in leaves:
            if len(h) != HASH_SIZE:
                raise MalformedProof(f"leaf hash must be {HASH_SIZE} bytes")
            levels[0].append(bytes(h))
            lvl = 0
            while len(levels[lvl]) % 2 == 0:
                if lvl + 1 == len(levels):
                    levels.append([])
                row = levels[lvl]
                levels[lvl + 1].append(_sha256(_NODE + row[-2] + row[-1]).digest())
                lvl += 1

    def mth(self, start: int, end: int) -> bytes:
        """Merkle tree hash of leaves ``[start, end)``."""
        if not 0 <= start <= end <= len(self):
            raise MalformedProof(f"range [{start}, {end}) outside a tree of size {len(self)}")
        if start == end:
            return EMPTY_ROOT
        if start % (1 << (end - start - 1).bit_length()):
            # Only ranges that are subtrees of the RFC's left-balanced tree are supported.
            raise MalformedProof(f"range [{start}, {end}) is not an RFC 9162 subtree")
        # Decompose [start, end) into aligned perfect subtrees, left to right, then fold from
        # the right: this is how RFC 9162's recursion combines them when start is aligned as
        # it always is for the ranges the proof algorithms ask for.
        parts: list[bytes] = []
        s = start
        while s < end:
            size = s & -s if s else 1 << (end - 1).bit_length()
            while size > end - s:
                size >>= 1
            lvl = size.bit_length() - 1
            parts.append(self._levels[lvl][s >> lvl])
            s += size
        r = parts[-1]
        for p in reversed(parts[:-1]):
            r = _sha256(_NODE + p + r).digest()
        return r

    def root(self, size: int | None = None) -> bytes:
        return self.mth(0, len(self) if size is None else size)

    def inclusion_path(self, index: int, tree_size: int | None = None) -> list[bytes]:
        return inclusion_path(self.mth, index, len(self) if tree_size is None else tree_size)

    def consistency_path(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        return consistency_path(self.mth, old_size, len(self) if new_size is None else new_size)
