"""Serialised RFC 9162 proofs (verifiable_mu._proofs): JSON round trips and strict parsing."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verifiable_mu._canonical import canonical_json, parse_json_strict
from verifiable_mu._errors import (
    ConsistencyProofFailed,
    InclusionProofFailed,
    MalformedInput,
    MalformedProof,
    UnsupportedVersion,
)
from verifiable_mu._merkle import MerkleTree, leaf_hash
from verifiable_mu._proofs import ConsistencyProof, InclusionProof, parse_count

HASHES = [leaf_hash(b"entry-%d" % i) for i in range(100)]
TREE = MerkleTree(HASHES)


def _inclusion(i: int = 5, n: int = 100) -> InclusionProof:
    return InclusionProof(index=i, tree_size=n, path=tuple(TREE.inclusion_path(i, n)))


def _consistency(m: int = 37, n: int = 100) -> ConsistencyProof:
    return ConsistencyProof(old_size=m, new_size=n, path=tuple(TREE.consistency_path(m, n)))


# --- round trips ----------------------------------------------------------------------------


def test_inclusion_json_form() -> None:
    d = InclusionProof(index=5, tree_size=8, path=tuple(MerkleTree(HASHES[:8]).inclusion_path(5))).to_json()
    assert list(d) == ["type", "version", "index", "tree_size", "path"]
    assert d["type"] == "vmu.inclusion" and d["version"] == 1
    assert d["index"] == "5" and d["tree_size"] == "8"
    assert all(isinstance(h, str) and len(h) == 64 and h == h.lower() for h in d["path"])


def test_consistency_json_form() -> None:
    d = _consistency(3, 8).to_json()
    assert list(d) == ["type", "version", "old_size", "new_size", "path"]
    assert d["type"] == "vmu.consistency" and d["old_size"] == "3" and d["new_size"] == "8"


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 100), data=st.data())
def test_inclusion_round_trip_through_canonical_json(n: int, data: st.DataObject) -> None:
    i = data.draw(st.integers(0, n - 1))
    p = _inclusion(i, n)
    text = canonical_json(p.to_json())
    q = InclusionProof.from_json(parse_json_strict(text, exc=MalformedProof))
    assert q == p
    q.verify(leaf=HASHES[i], root=TREE.root(n))


@settings(max_examples=100, deadline=None)
@given(n=st.integers(0, 100), data=st.data())
def test_consistency_round_trip_through_canonical_json(n: int, data: st.DataObject) -> None:
    m = data.draw(st.integers(0, n))
    p = _consistency(m, n)
    q = ConsistencyProof.from_json(json.loads(canonical_json(p.to_json())))
    assert q == p
    q.verify(old_root=TREE.root(m), new_root=TREE.root(n))


def test_proof_objects_are_immutable_and_hashable() -> None:
    p = _inclusion()
    with pytest.raises(AttributeError, match="cannot assign to field 'index'"):
        p.index = 3  # type: ignore[misc]
    assert hash(p) == hash(InclusionProof.from_json(p.to_json()))


def test_verify_methods_reject_false_claims() -> None:
    with pytest.raises(InclusionProofFailed, match="does not lead to the expected root"):
        _inclusion(5).verify(leaf=HASHES[6], root=TREE.root())
    with pytest.raises(ConsistencyProofFailed, match="does not reproduce the new root"):
        _consistency(37, 100).verify(old_root=TREE.root(37), new_root=TREE.root(99))


# --- strict parsing -------------------------------------------------------------------------


def _mutated(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    d = copy.deepcopy(base)
    for k, v in changes.items():
        if v is _DELETE:
            del d[k]
        else:
            d[k] = v
    return d


_DELETE = object()
GOOD_INCLUSION = _inclusion().to_json()
GOOD_CONSISTENCY = _consistency().to_json()
H = "ab" * 32


@pytest.mark.parametrize(
    ("changes", "exc", "fragment"),
    [
        ({"type": "vmu.consistency"}, MalformedProof, "expected a proof of type 'vmu.inclusion'"),
        ({"type": _DELETE}, MalformedProof, "expected a proof of type 'vmu.inclusion', got None"),
        ({"version": 2}, UnsupportedVersion, "version 2 is not supported"),
        ({"version": "1"}, UnsupportedVersion, "version '1' is not supported"),
        ({"version": 1.0}, UnsupportedVersion, "version 1.0 is not supported"),
        ({"version": True}, UnsupportedVersion, "version True is not supported"),
        ({"version": _DELETE}, UnsupportedVersion, "version None is not supported"),
        ({"hash_alg": "sha1"}, MalformedProof, "unknown field\\(s\\): hash_alg"),
        ({"algorithm": "sha256"}, MalformedProof, "unknown field\\(s\\): algorithm"),
        ({"leaf_prefix": "00"}, MalformedProof, "unknown field\\(s\\): leaf_prefix"),
        ({"security": False}, MalformedProof, "unknown field\\(s\\): security"),
        ({"index": _DELETE}, MalformedProof, "lacks field\\(s\\): index"),
        ({"path": _DELETE}, MalformedProof, "lacks field\\(s\\): path"),
        ({"index": 5}, MalformedProof, "index must be a decimal string"),
        ({"index": "05"}, MalformedProof, "index must not have leading zeros"),
        ({"index": "-1"}, MalformedProof, "index must be a decimal string"),
        ({"index": "+5"}, MalformedProof, "index must be a decimal string"),
        ({"index": " 5"}, MalformedProof, "index must be a decimal string"),
        ({"index": "5.0"}, MalformedProof, "index must be a decimal string"),
        ({"index": "1e3"}, MalformedProof, "index must be a decimal string"),
        ({"index": ""}, MalformedProof, "index must be a decimal string"),
        ({"index": "\u0665"}, MalformedProof, "index must be a decimal string"),  # Arabic-Indic 5
        ({"tree_size": "9223372036854775808"}, MalformedProof, "tree_size is too large"),
        ({"tree_size": "9" * 30}, MalformedProof, "tree_size is too large"),
        ({"tree_size": "9" * 5000}, MalformedProof, "tree_size is too large"),
        ({"index": "100"}, MalformedProof, "leaf index 100 is outside a tree of size 100"),
        ({"tree_size": "0"}, MalformedProof, "leaf index 5 is outside a tree of size 0"),
        ({"path": "00" * 32}, MalformedProof, "path must be a list"),
        ({"path": [H] * 65}, MalformedProof, "has 65 elements \\(at most 64\\)"),
        ({"path": [H.upper()]}, MalformedProof, "path element 0 must be lower-case hex"),
        ({"path": ["zz" * 32]}, MalformedProof, "path element 0 is not valid hex"),
        ({"path": [H[:-2]]}, MalformedProof, "path element 0 must be 64 lower-case hex characters"),
        ({"path": [H + "ab"]}, MalformedProof, "path element 0 must be 64 lower-case hex characters"),
        ({"path": [1]}, MalformedProof, "path element 0 must be 64 lower-case hex characters"),
        ({"path": [" " * 64]}, MalformedProof, "not valid hex"),
        ({"path": ["ab " * 21 + " "]}, MalformedProof, "not valid hex"),  # fromhex skips spaces
    ],
)
def test_malformed_inclusion_json(changes: dict[str, Any], exc: type[Exception], fragment: str) -> None:
    with pytest.raises(exc, match=fragment):
        InclusionProof.from_json(_mutated(GOOD_INCLUSION, **changes))


@pytest.mark.parametrize(
    ("changes", "exc", "fragment"),
    [
        ({"type": "vmu.inclusion"}, MalformedProof, "expected a proof of type 'vmu.consistency'"),
        ({"version": 0}, UnsupportedVersion, "version 0 is not supported"),
        ({"hash_alg": "sha1"}, MalformedProof, "unknown field\\(s\\): hash_alg"),
        ({"node_prefix": "01"}, MalformedProof, "unknown field\\(s\\): node_prefix"),
        ({"old_size": "101"}, MalformedProof, "cannot prove consistency from size 101 to 100"),
        ({"old_size": "-3"}, MalformedProof, "old_size must be a decimal string"),
        ({"new_size": "0100"}, MalformedProof, "new_size must not have leading zeros"),
        ({"new_size": "18446744073709551616"}, MalformedProof, "new_size is too large"),
        ({"new_size": None}, MalformedProof, "new_size must be a decimal string"),
        ({"path": [H, "00" * 31]}, MalformedProof, "path element 1 must be 64 lower-case hex characters"),
        ({"path": {"0": H}}, MalformedProof, "path must be a list"),
    ],
)
def test_malformed_consistency_json(changes: dict[str, Any], exc: type[Exception], fragment: str) -> None:
    with pytest.raises(exc, match=fragment):
        ConsistencyProof.from_json(_mutated(GOOD_CONSISTENCY, **changes))


@pytest.mark.parametrize("doc", [None, [], "proof", 5, ["type", "vmu.inclusion"]])
def test_non_object_json_is_malformed(doc: Any) -> None:
    with pytest.raises(MalformedProof, match="must be a JSON object"):
        InclusionProof.from_json(doc)
    with pytest.raises(MalformedProof, match="must be a JSON object"):
        ConsistencyProof.from_json(doc)


def test_strict_json_text_rejects_duplicate_keys_and_nan() -> None:
    text = canonical_json(GOOD_INCLUSION).decode()
    dup = text[:-1] + ',"index":"6"}'
    with pytest.raises(MalformedProof, match="duplicate key 'index'"):
        InclusionProof.from_json(parse_json_strict(dup, exc=MalformedProof))
    with pytest.raises(MalformedProof, match="non-finite number NaN"):
        parse_json_strict('{"version": NaN}', exc=MalformedProof)


def test_every_malformed_error_is_a_malformed_input() -> None:
    assert issubclass(MalformedProof, MalformedInput) and issubclass(UnsupportedVersion, MalformedInput)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"index": -1, "tree_size": 3}, "integers in \\[0, 2\\^63\\)"),
        ({"index": True, "tree_size": 3}, "integers in \\[0, 2\\^63\\)"),
        ({"index": "0", "tree_size": 3}, "integers in \\[0, 2\\^63\\)"),
        ({"index": 0, "tree_size": 2**63}, "integers in \\[0, 2\\^63\\)"),
        ({"index": 3, "tree_size": 3}, "leaf index 3 is outside a tree of size 3"),
        ({"index": 0, "tree_size": 3, "path": [b"\x00" * 32]}, "path must be a tuple"),
        ({"index": 0, "tree_size": 3, "path": (b"\x00" * 32, bytearray(32))}, "path element 1 is not a 32-byte"),
    ],
)
def test_inclusion_constructor_validates(kwargs: dict[str, Any], fragment: str) -> None:
    kwargs.setdefault("path", ())
    with pytest.raises(MalformedProof, match=fragment):
        InclusionProof(**kwargs)


def test_consistency_constructor_validates() -> None:
    with pytest.raises(MalformedProof, match="cannot prove consistency from size 4 to 3"):
        ConsistencyProof(old_size=4, new_size=3, path=())
    with pytest.raises(MalformedProof, match="integers in \\[0, 2\\^63\\)"):
        ConsistencyProof(old_size=1.0, new_size=3, path=())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", 0), ("7", 7), ("9223372036854775807", 2**63 - 1)],
)
def test_parse_count_accepts_canonical_decimals(value: str, expected: int) -> None:
    assert parse_count(value, "n") == expected
