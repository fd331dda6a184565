"""The data-set commitment: an RFC 9162 tree over the slice descriptors ``(shard, slice, size, root)``.

Part of :mod:`verifiable_mu._sorted_tree`, which re-exports every name here (specs/03-slice-trees.md).
The descriptors are sorted shard-major; the leaf data of one is::

    TAG_SLICE_LEAF || u32be(shard) || u32be(slice) || u64be(size) || root
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ._errors import InclusionProofFailed, MalformedProof, NonMembershipProofFailed
from ._merkle import EMPTY_ROOT, HASH_SIZE, MerkleTree, leaf_hash, root_of
from ._proofs import InclusionProof, _check_fields, parse_count
from ._sorted_proofs import _MAX_COUNT, MembershipProof, NonMembershipProof, _b32, _hex32, _load
from ._tags import TAG_SLICE_LEAF

__all__ = [
    "SliceDescriptor",
    "SliceInclusionProof",
    "slice_leaf_data",
    "dataset_root",
    "dataset_inclusion_proof",
    "verify_slice_inclusion",
]

_U32 = 2**32


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
