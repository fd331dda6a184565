"""Merkle multiproofs against the obviously correct slow versions: the root of all leaves, and
one RFC 9162 inclusion proof per position."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verifiable_mu import MalformedInput
from verifiable_mu._errors import InclusionProofFailed, UnsupportedVersion
from verifiable_mu._merkle import MerkleTree, inclusion_path, leaf_hash, root_of
from verifiable_mu._multiproof import MultiProof, multi_path, root_from_multi


def _leaves(n: int) -> list[bytes]:
    return [leaf_hash(hashlib.sha256(i.to_bytes(4, "big")).digest()) for i in range(n)]


def _mth(leaves: list[bytes]):  # noqa: ANN202
    return lambda lo, hi: root_of(leaves[lo:hi])


@st.composite
def _tree_and_positions(draw):  # noqa: ANN001, ANN202
    n = draw(st.integers(1, 160))
    ps = sorted(draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=n)))
    return n, ps


@settings(max_examples=300, deadline=None)
@given(_tree_and_positions())
def test_multiproof_rebuilds_the_root_and_is_no_longer_than_separate_proofs(tp) -> None:  # noqa: ANN001
    n, ps = tp
    leaves = _leaves(n)
    path = multi_path(_mth(leaves), ps, n)
    assert root_from_multi([leaves[p] for p in ps], ps, n, path) == root_of(leaves)
    separate = sum(len(inclusion_path(_mth(leaves), p, n)) for p in ps)
    assert len(path) <= separate
    if len(ps) == 1:  # one position: the hashes of its inclusion path, in left-to-right order
        assert sorted(path) == sorted(inclusion_path(_mth(leaves), ps[0], n))
    proof = MultiProof(positions=tuple(ps), tree_size=n, path=tuple(path))
    assert MultiProof.from_json(proof.to_json()) == proof
    proof.verify(leaves=[leaves[p] for p in ps], root=MerkleTree(leaves).root())


@settings(max_examples=200, deadline=None)
@given(_tree_and_positions(), st.data())
def test_any_changed_leaf_hash_or_position_fails(tp, data) -> None:  # noqa: ANN001
    n, ps = tp
    leaves = _leaves(n)
    root = root_of(leaves)
    path = tuple(multi_path(_mth(leaves), ps, n))
    proven = [leaves[p] for p in ps]
    i = data.draw(st.integers(0, len(ps) - 1))
    bad = list(proven)
    bad[i] = hashlib.sha256(bad[i]).digest()
    with pytest.raises(InclusionProofFailed, match=f"the {len(ps)} leaves do not lead to the expected root of a tree of size {n}$"):
        MultiProof(positions=tuple(ps), tree_size=n, path=path).verify(leaves=bad, root=root)
    if path:
        j = data.draw(st.integers(0, len(path) - 1))
        changed = list(path)
        changed[j] = bytes(32)
        with pytest.raises(InclusionProofFailed, match=f"the {len(ps)} leaves do not lead to the expected root of a tree of size {n}$"):
            MultiProof(positions=tuple(ps), tree_size=n, path=tuple(changed)).verify(leaves=proven, root=root)
    others = [q for q in range(n) if q not in ps]
    if others:  # the same leaves claimed at another position
        q = data.draw(st.sampled_from(others))
        moved = sorted([*ps[:i], *ps[i + 1 :], q])
        with pytest.raises(InclusionProofFailed, match="do not lead to the expected root|is too short|left over"):
            MultiProof(positions=tuple(moved), tree_size=n, path=path).verify(leaves=proven, root=root)


def test_path_must_be_consumed_exactly() -> None:
    leaves = _leaves(37)
    ps = [3, 4, 20]
    path = multi_path(_mth(leaves), ps, 37)
    with pytest.raises(InclusionProofFailed, match="too short"):
        root_from_multi([leaves[p] for p in ps], ps, 37, path[:-1])
    with pytest.raises(InclusionProofFailed, match="left over"):
        root_from_multi([leaves[p] for p in ps], ps, 37, [*path, bytes(32)])


@pytest.mark.parametrize(
    ("positions", "size", "fragment"),
    [((), 5, "1 to"), ((2, 2), 5, "strictly ascending"), ((3, 1), 5, "strictly ascending"), ((5,), 5, "inside a tree"),
     ((-1,), 5, "strictly ascending")],
)
def test_bad_positions(positions: tuple, size: int, fragment: str) -> None:
    with pytest.raises(MalformedInput, match=fragment):
        MultiProof(positions=positions, tree_size=size, path=())


@pytest.mark.parametrize(
    ("mutate", "exc", "fragment"),
    [
        (lambda d: d.update(version=2), UnsupportedVersion, "not supported"),
        (lambda d: d.update(version=True), UnsupportedVersion, "not supported"),
        (lambda d: d.update(type="vmu.inclusion"), MalformedInput, "expected a proof of type"),
        (lambda d: d.update(hash="sha1"), MalformedInput, "exactly the fields"),
        (lambda d: d.update(positions=["01"]), MalformedInput, "leading zeros"),
        (lambda d: d.update(positions=[]), MalformedInput, "1 to"),
        (lambda d: d.update(path=["ab"]), MalformedInput, "hex"),
        (lambda d: d.update(path=["00" * 32] * 200), MalformedInput, "at most 64 hashes"),
        (lambda d: d.update(tree_size="0"), MalformedInput, "tree size"),
    ],
)
def test_json_is_strict(mutate, exc, fragment) -> None:  # noqa: ANN001
    leaves = _leaves(9)
    d = MultiProof(positions=(1, 7), tree_size=9, path=tuple(multi_path(_mth(leaves), [1, 7], 9))).to_json()
    mutate(d)
    with pytest.raises(exc, match=fragment):
        MultiProof.from_json(d)
