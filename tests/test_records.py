"""Record encoding, keys, commitments and openings (specs/01-records.md)."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from verifiable_mu._canonical import canonical_json, parse_json_strict
from verifiable_mu._errors import CommitmentMismatch, MalformedInput, MalformedRecord, UnsupportedVersion
from verifiable_mu._records import (
    DTYPE_CODES,
    ENCODING_VERSION,
    MAX_ID_BYTES,
    SALT_SIZE,
    RecordOpening,
    commit_record,
    commit_records,
    encode_record,
    new_salt_array,
    new_salts,
    record_key,
)
from verifiable_mu._tags import TAG_RECORD_COMMITMENT, TAG_RECORD_KEY

SPEC = Path(__file__).resolve().parents[1] / "specs" / "01-records.md"
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- an obviously correct reference, written from specs/01-records.md section 3 -------------

_REF_CODES = {"float32": 1, "float64": 2, "int32": 3, "int64": 4, "uint8": 5}
_REF_FMT = {"float32": "<f", "float64": "<d", "int32": "<i", "int64": "<q", "uint8": "<B"}


def ref_encode(record_id: str, features: np.ndarray, label: int) -> bytes:
    """Field by field with struct.pack, one element at a time (slow, for finite values)."""
    idb = record_id.encode("utf-8")
    out = struct.pack(">B", 1)
    out += struct.pack(">H", len(idb)) + idb
    out += struct.pack(">B", _REF_CODES[features.dtype.name])
    out += struct.pack(">B", features.ndim)
    for dim in features.shape:
        out += struct.pack(">I", dim)
    for value in features.reshape(-1).tolist():  # reshape(-1) walks C order
        out += struct.pack(_REF_FMT[features.dtype.name], value)
    out += struct.pack(">q", label)
    return out


def ref_commit(record_id: str, features: np.ndarray, label: int, salt: bytes) -> bytes:
    return hashlib.sha256(TAG_RECORD_COMMITMENT + salt + ref_encode(record_id, features, label)).digest()


# --- strategies ----------------------------------------------------------------------------

def _utf8_len_ok(s: str) -> bool:
    return 1 <= len(s.encode("utf-8")) <= MAX_ID_BYTES


ids_st = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12),  # incl. multi-byte
    st.text("0123456789abc", min_size=1, max_size=4),  # short ASCII ids, many equal lengths
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=60, max_size=120),  # up to 480 bytes
).filter(_utf8_len_ok)
labels_st = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, -1, 1, -(2**63), 2**63 - 1, -(2**31), 2**31]),
)
dtype_st = st.builds(
    lambda name, order: np.dtype(name).newbyteorder(order),
    st.sampled_from(sorted(DTYPE_CODES)),
    st.sampled_from(["<", ">"]),
)
salt_st = st.binary(min_size=SALT_SIZE, max_size=SALT_SIZE)


@st.composite
def raw_array(draw: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An array of arbitrary bit patterns (NaN payloads, -0.0, infinities), either byte order,
    sometimes Fortran-ordered or a non-contiguous view."""
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = draw(st.binary(min_size=size, max_size=size))
    a = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    layout = draw(st.sampled_from(["c", "fortran", "strided"]))
    if layout == "fortran":
        a = np.asfortranarray(a)
    elif layout == "strided":
        wide = np.zeros(shape[:-1] + (2 * shape[-1],) if shape else (2,), dtype=dtype)
        if shape:
            wide[..., ::2] = a
            a = wide[..., ::2]
    return a


@st.composite
def batches(draw: Any) -> tuple[list[str], np.ndarray, Any, Any]:
    n = draw(st.integers(0, 12))
    row_shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    dtype = draw(dtype_st)
    features = draw(raw_array((n, *row_shape), dtype))
    ids = draw(st.lists(ids_st, min_size=n, max_size=n))
    labels: Any = draw(st.lists(labels_st, min_size=n, max_size=n))
    label_form = draw(st.sampled_from(["list", "int64", "small"]))
    if label_form == "int64":
        labels = np.array(labels, dtype=np.int64)
    elif label_form == "small":
        labels = np.array([x % 100 for x in labels], dtype=draw(st.sampled_from(["int8", "uint16", ">i4", "uint64"])))
    salts: Any = draw(st.lists(salt_st, min_size=n, max_size=n))
    if draw(st.booleans()):
        salts = np.frombuffer(b"".join(salts), dtype=np.uint8).reshape(n, SALT_SIZE)
    return ids, features, labels, salts


# --- batch == one by one -------------------------------------------------------------------


@SETTINGS
@given(batches())
def test_commit_records_equals_commit_record(batch: tuple[list[str], np.ndarray, Any, Any]) -> None:
    ids, features, labels, salts = batch
    salt_list = [bytes(s) for s in salts]
    expected = [
        commit_record(ids[i], np.asarray(features[i]), labels[i], salt_list[i]) for i in range(len(ids))
    ]
    got = commit_records(ids, features, labels, salts)
    assert got == expected
    assert all(type(c) is bytes and len(c) == 32 for c in got)


@SETTINGS
@given(
    st.data(),
    dtype_st,
    hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=3),
    ids_st,
    labels_st,
    salt_st,
)
def test_encode_record_matches_reference(
    data: Any, dtype: np.dtype, shape: tuple[int, ...], record_id: str, label: int, salt: bytes
) -> None:
    features = data.draw(hnp.arrays(dtype, shape, elements=hnp.from_dtype(dtype, allow_nan=False)))
    assert encode_record(record_id, features, label) == ref_encode(record_id, features, label)
    assert commit_record(record_id, features, label, salt) == ref_commit(record_id, features, label, salt)


def test_mixed_id_lengths_in_one_batch() -> None:
    # Interleaved lengths (groups that are not runs), runs, multi-byte ids, and a group large
    # enough that gathering its ids takes more than one chunk.
    n = 10_000
    ids = ["é" * 127 if i % 2 else "x" * 255 + str(i % 10) for i in range(n)]  # 254 and 256 bytes
    ids[:6] = ["a", "bb", "bb", "東", "ccc", "a"]
    rng = np.random.default_rng(7)
    features = rng.standard_normal((n, 3)).astype(np.float32)
    labels = rng.integers(-(2**63), 2**63 - 1, size=n, dtype=np.int64)
    salts = new_salt_array(n)
    got = commit_records(ids, features, labels, salts)
    for i in list(range(12)) + list(range(n - 5, n)) + list(rng.integers(0, n, 40)):
        assert got[i] == commit_record(ids[i], features[i], int(labels[i]), salts[i].tobytes()), i


def test_interleaved_ascii_id_lengths() -> None:
    ids = ["ab", "abc", "d", "ef", "ghi", "j", "kl"] * 3
    x = np.arange(len(ids) * 2, dtype=np.float64).reshape(-1, 2)
    labels = list(range(-10, -10 + len(ids)))
    salts = new_salts(len(ids))
    expected = [commit_record(ids[k], x[k], labels[k], salts[k]) for k in range(len(ids))]
    assert commit_records(ids, x, labels, salts) == expected


def test_commit_records_empty_batch() -> None:
    assert commit_records([], np.zeros((0, 4), np.float32), [], []) == []


def test_float_bit_patterns_are_kept() -> None:
    # A NaN payload and -0.0 are encoded bit for bit, little-endian.
    bits = np.array([0x7FC00001, 0x80000000, 0x7F800000, 0xFF800001], dtype="<u4")
    features = bits.view("<f4")
    enc = encode_record("n", features, 0)
    assert enc[1 + 2 + 1 + 2 + 4 : -8] == bits.tobytes()
    assert encode_record("n", features.astype(">f4"), 0) == enc
    z = encode_record("n", np.array([0.0], np.float32), 0)
    assert encode_record("n", np.array([-0.0], np.float32), 0) != z


# --- hiding and binding ----------------------------------------------------------------------


def _base() -> tuple[str, np.ndarray, int, bytes]:
    return "rec-1", np.arange(64, dtype=np.float32).reshape(8, 8), 3, bytes(range(32))


def test_commitment_is_tagged_sha256_of_salt_and_encoding() -> None:
    i, f, label, salt = _base()
    expected = hashlib.sha256(TAG_RECORD_COMMITMENT + salt + encode_record(i, f, label)).digest()
    assert commit_record(i, f, label, salt) == expected
    assert record_key(i) == hashlib.sha256(TAG_RECORD_KEY + i.encode()).digest()


def test_same_record_different_salts_different_commitments() -> None:
    i, f, label, _ = _base()
    s1, s2 = new_salts(2)
    assert s1 != s2 and len(s1) == len(s2) == SALT_SIZE
    assert commit_record(i, f, label, s1) != commit_record(i, f, label, s2)
    arr = new_salt_array(3)
    assert arr.shape == (3, SALT_SIZE) and arr.dtype == np.uint8 and arr.flags.writeable
    assert len({arr[k].tobytes() for k in range(3)}) == 3


def test_every_single_change_changes_the_commitment() -> None:
    i, f, label, salt = _base()
    one_feature = f.copy()
    one_feature[3, 5] = np.nextafter(one_feature[3, 5], np.float32(1e9))
    flipped_salt = bytes([salt[0] ^ 1]) + salt[1:]
    variants = {
        "base": commit_record(i, f, label, salt),
        "id": commit_record("rec-2", f, label, salt),
        "id-prefix": commit_record("rec-", f, label, salt),
        "feature": commit_record(i, one_feature, label, salt),
        "label": commit_record(i, f, label + 1, salt),
        "label-negative": commit_record(i, f, -label, salt),
        "dtype-same-bytes": commit_record(i, f.view(np.int32), label, salt),
        "shape-same-bytes": commit_record(i, f.reshape(64), label, salt),
        "shape-4x16": commit_record(i, f.reshape(4, 16), label, salt),
        "salt": commit_record(i, f, label, flipped_salt),
    }
    assert len(set(variants.values())) == len(variants)
    # The encodings differ too (binding is about the encoding, not only the salt).
    assert encode_record(i, f, label) != encode_record(i, f.reshape(64), label)
    assert f.tobytes() == f.reshape(64).tobytes() == f.view(np.int32).tobytes()


def test_record_key_depends_only_on_the_id() -> None:
    i, f, label, _ = _base()
    key = record_key(i)
    assert len(key) == 32
    other = RecordOpening(id=i, features=np.zeros(3, np.uint8), label=-5, salt=bytes(32))
    assert other.key() == key
    assert record_key("rec-2") != key
    assert record_key("é") != record_key("e\u0301")  # no Unicode normalisation: bytes are bytes
    assert key != commit_record(i, f, label, bytes(32))


@pytest.mark.parametrize(
    ("big", "little"),
    [(">f4", "<f4"), (">f8", "<f8"), (">i4", "<i4"), (">i8", "<i8")],
)
def test_big_endian_features_encode_like_little_endian(big: str, little: str) -> None:
    values = np.array([[1, -2, 3], [40000, -(2**30), 7]])
    fb = values.astype(big)
    fl = values.astype(little)
    assert fb.dtype.byteorder == ">" and fb.tobytes() != fl.tobytes()
    assert encode_record("x", fb, 1) == encode_record("x", fl, 1) == ref_encode("x", fl, 1)
    salts = [bytes(32), bytes([1]) * 32]
    assert commit_records(["x", "y"], fb, [1, 2], salts) == commit_records(["x", "y"], fl, [1, 2], salts)
    assert RecordOpening(id="x", features=fb, label=1, salt=bytes(32)) == RecordOpening(
        id="x", features=fl, label=1, salt=bytes(32)
    )


# --- openings ----------------------------------------------------------------------------------


def _opening() -> RecordOpening:
    i, f, label, salt = _base()
    return RecordOpening(id=i, features=f, label=label, salt=salt)


def test_opening_round_trip_and_check() -> None:
    o = _opening()
    d = o.to_json()
    assert d == {
        "type": "vmu.record-opening",
        "version": 1,
        "id": "rec-1",
        "dtype": "float32",
        "shape": [8, 8],
        "features": d["features"],
        "label": "3",
        "salt": bytes(range(32)).hex(),
    }
    back = RecordOpening.from_json(parse_json_strict(canonical_json(d)))
    assert back == o and hash(back) == hash(o)
    assert back.to_json() == d
    assert back.features.dtype == np.float32 and back.features.shape == (8, 8)
    assert np.array_equal(back.features, o.features)
    assert back.label == 3 and type(back.label) is int
    assert back.commitment() == commit_record(*_base())
    back.check(commit_record(*_base()))
    assert back.key() == record_key("rec-1")


def test_opening_check_rejects_wrong_commitment() -> None:
    o = _opening()
    good = o.commitment()
    wrong = bytes([good[0] ^ 0x80]) + good[1:]
    with pytest.raises(CommitmentMismatch, match="does not match its commitment"):
        o.check(wrong)
    other_salt = RecordOpening(id=o.id, features=o.features, label=o.label, salt=bytes(32))
    with pytest.raises(CommitmentMismatch, match="'rec-1' does not match"):
        other_salt.check(good)
    assert other_salt != o


def test_opening_keeps_a_private_read_only_copy() -> None:
    f = np.arange(4, dtype=np.int64)
    o = RecordOpening(id="r", features=f, label=1, salt=bytearray(32))
    assert f.flags.writeable  # the caller's array is left alone
    before = o.commitment()
    f[0] = 99
    assert o.commitment() == before
    assert not o.features.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        o.features[0] = 1
    assert type(o.salt) is bytes


def _valid_json() -> dict[str, Any]:
    return RecordOpening(
        id="a", features=np.array([[0, 1, 2], [253, 254, 255]], np.uint8), label=-7, salt=bytes(range(32))
    ).to_json()


def _with(**changes: Any) -> dict[str, Any]:
    d = _valid_json()
    for k, v in changes.items():
        if v is _DELETE:
            del d[k]
        else:
            d[k] = v
    return d


_DELETE = object()

MALFORMED_OPENINGS = [
    ("not-an-object", ["vmu.record-opening"], MalformedRecord, "must be an object of type"),
    ("wrong-type", _with(type="vmu.record"), MalformedRecord, "must be an object of type 'vmu.record-opening'"),
    ("no-type", _with(type=_DELETE), MalformedRecord, "must be an object of type"),
    ("version-2", _with(version=2), UnsupportedVersion, "version 2 is not supported"),
    ("version-0", _with(version=0), UnsupportedVersion, "version 0 is not supported"),
    ("version-string", _with(version="1"), UnsupportedVersion, "version '1' is not supported"),
    ("version-bool", _with(version=True), UnsupportedVersion, "version True is not supported"),
    ("version-float", _with(version=1.0), UnsupportedVersion, "version 1.0 is not supported"),
    ("version-missing", _with(version=_DELETE), UnsupportedVersion, "version None is not supported"),
    ("extra-field", _with(alg="sha512"), MalformedRecord, "fields must be exactly"),
    ("missing-salt", _with(salt=_DELETE), MalformedRecord, "fields must be exactly"),
    ("missing-label", _with(label=_DELETE), MalformedRecord, "fields must be exactly"),
    ("bad-base64", _with(features="AAEC/f7!"), MalformedRecord, "record features is not valid base64"),
    ("urlsafe-base64", _with(features="AAEC_f7_"), MalformedRecord, "record features is not valid base64"),
    ("base64-no-padding", _with(features="AAECAw"), MalformedRecord, "record features is not valid base64"),
    ("base64-noncanonical", _with(features="AAEC/f7/AB==", shape=[7]), MalformedRecord, "not canonical"),
    ("features-not-string", _with(features=[0, 1]), MalformedRecord, "must be a base64 string, not list"),
    ("features-too-short", _with(features="AAEC/f4="), MalformedRecord, "do not match their dtype and shape"),
    ("features-too-long", _with(shape=[5]), MalformedRecord, "do not match their dtype and shape"),
    ("features-vs-dtype", _with(dtype="int32"), MalformedRecord, "do not match their dtype and shape"),
    ("shape-product-wraps", _with(shape=[65536] * 4, features=""), MalformedRecord, "do not match their dtype"),
    ("salt-bad-hex", _with(salt="zz" * 32), MalformedRecord, "record salt is not valid hex"),
    ("salt-upper-case", _with(salt="AB" * 32), MalformedRecord, "record salt must be lower-case hex"),
    ("salt-short", _with(salt="ab" * 31), MalformedRecord, "record salt must be 64 lower-case hex"),
    ("salt-long", _with(salt="ab" * 33), MalformedRecord, "record salt must be 64 lower-case hex"),
    ("salt-not-string", _with(salt=0), MalformedRecord, "record salt must be 64 lower-case hex"),
    ("id-not-string", _with(id=5), MalformedRecord, "record id must be a string, not int"),
    ("id-null", _with(id=None), MalformedRecord, "record id must be a string, not NoneType"),
    ("id-empty", _with(id=""), MalformedRecord, "1..256 UTF-8 bytes, got 0"),
    ("id-257-bytes", _with(id="x" * 257), MalformedRecord, "1..256 UTF-8 bytes, got 257"),
    ("id-258-utf8-bytes", _with(id="é" * 129), MalformedRecord, "1..256 UTF-8 bytes, got 258"),
    ("id-lone-surrogate", _with(id="\ud800"), MalformedRecord, "lone surrogate"),
    ("label-int", _with(label=-7), MalformedRecord, "label must be a canonical decimal string"),
    ("label-float-string", _with(label="1.0"), MalformedRecord, "label must be a canonical decimal string"),
    ("label-plus", _with(label="+1"), MalformedRecord, "label must be a canonical decimal string"),
    ("label-leading-zero", _with(label="007"), MalformedRecord, "label must be a canonical decimal string"),
    ("label-minus-zero", _with(label="-0"), MalformedRecord, "label must be a canonical decimal string"),
    ("label-double-minus", _with(label="--1"), MalformedRecord, "label must be a canonical decimal string"),
    ("label-space", _with(label=" 1"), MalformedRecord, "label must be a canonical decimal string"),
    ("label-newline", _with(label="1\n"), MalformedRecord, "label must be a canonical decimal string"),
    ("label-empty", _with(label=""), MalformedRecord, "label must be a canonical decimal string"),
    ("label-arabic-digits", _with(label="\u0663"), MalformedRecord, "label must be a canonical decimal string"),
    ("label-huge", _with(label="1" * 5000), MalformedRecord, "label must be a canonical decimal string"),
    ("label-above-int64", _with(label=str(2**63)), MalformedRecord, "does not fit in a signed 64-bit"),
    ("label-below-int64", _with(label=str(-(2**63) - 1)), MalformedRecord, "does not fit in a signed 64-bit"),
    ("dtype-float16", _with(dtype="float16"), MalformedRecord, "dtype 'float16' is not supported"),
    ("dtype-bool", _with(dtype="bool"), MalformedRecord, "dtype 'bool' is not supported"),
    ("dtype-list", _with(dtype=["uint8"]), MalformedRecord, r"dtype \['uint8'\] is not supported"),
    ("dtype-code", _with(dtype=5), MalformedRecord, "dtype 5 is not supported"),
    ("shape-9-dims", _with(shape=[1] * 9), MalformedRecord, "at most 8 non-negative integers"),
    ("shape-negative", _with(shape=[-2, -3]), MalformedRecord, "at most 8 non-negative integers"),
    ("shape-2^32", _with(shape=[2**32, 0]), MalformedRecord, "at most 8 non-negative integers"),
    ("shape-bool", _with(shape=[True, 6]), MalformedRecord, "at most 8 non-negative integers"),
    ("shape-float", _with(shape=[2.0, 3]), MalformedRecord, "at most 8 non-negative integers"),
    ("shape-string", _with(shape="2,3"), MalformedRecord, "at most 8 non-negative integers"),
]


@pytest.mark.parametrize(
    ("doc", "exc", "match"), [c[1:] for c in MALFORMED_OPENINGS], ids=[c[0] for c in MALFORMED_OPENINGS]
)
def test_malformed_openings_are_rejected(doc: Any, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match) as info:
        RecordOpening.from_json(copy.deepcopy(doc))
    assert isinstance(info.value, MalformedInput)


def test_valid_opening_json_is_accepted() -> None:
    # The documents above differ from this one in one field each, so they fail for that reason.
    o = RecordOpening.from_json(_valid_json())
    assert o.to_json() == _valid_json()
    assert RecordOpening.from_json(_with(shape=[6])).features.shape == (6,)
    scalar = RecordOpening.from_json(_with(shape=[], features="Kg==", dtype="uint8"))
    assert scalar.features.shape == () and int(scalar.features) == 42
    empty = RecordOpening.from_json(_with(shape=[0, 5], features=""))
    assert empty.features.shape == (0, 5)


# --- bad direct inputs ---------------------------------------------------------------------------

_F = np.zeros((2, 2), np.float32)
_S = bytes(32)

BAD_RECORDS = [
    ("id-int", 5, _F, 1, _S, "record id must be a string, not int"),
    ("id-bytes", b"a", _F, 1, _S, "record id must be a string, not bytes"),
    ("id-empty", "", _F, 1, _S, "1..256 UTF-8 bytes, got 0"),
    ("id-too-long", "é" * 129, _F, 1, _S, "1..256 UTF-8 bytes, got 258"),
    ("id-surrogate", "a\udc80", _F, 1, _S, "lone surrogate"),
    ("features-list", "a", [[0.0, 1.0]], 1, _S, "features must be a numpy array, not list"),
    ("features-scalar", "a", np.float32(1.0), 1, _S, "features must be a numpy array, not float32"),
    ("features-float16", "a", _F.astype(np.float16), 1, _S, "dtype float16 is not supported"),
    ("features-bool", "a", _F.astype(bool), 1, _S, "dtype bool is not supported"),
    ("features-uint64", "a", _F.astype(np.uint64), 1, _S, "dtype uint64 is not supported"),
    ("features-object", "a", _F.astype(object), 1, _S, "dtype object is not supported"),
    ("features-9-dims", "a", np.zeros((1,) * 9, np.uint8), 1, _S, "features have 9 dims"),
    ("features-huge-dim", "a", np.empty((0, 2**32), np.uint8), 1, _S, "dimension sizes must be at most"),
    ("label-bool", "a", _F, True, _S, "label must be an integer, not bool"),
    ("label-numpy-bool", "a", _F, np.bool_(False), _S, "label must be an integer, not bool"),
    ("label-float", "a", _F, 1.0, _S, "label must be an integer, not float"),
    ("label-string", "a", _F, "1", _S, "label must be an integer, not str"),
    ("label-2^63", "a", _F, 2**63, _S, "does not fit in a signed 64-bit"),
    ("label-uint64", "a", _F, np.uint64(2**63), _S, "does not fit in a signed 64-bit"),
    ("label--2^63-1", "a", _F, -(2**63) - 1, _S, "does not fit in a signed 64-bit"),
    ("salt-31", "a", _F, 1, bytes(31), "salt must be 32 bytes"),
    ("salt-33", "a", _F, 1, bytes(33), "salt must be 32 bytes"),
    ("salt-str", "a", _F, 1, "0" * 32, "salt must be 32 bytes"),
    ("salt-none", "a", _F, 1, None, "salt must be 32 bytes"),
]


@pytest.mark.parametrize(
    ("case", "record_id", "features", "label", "salt", "match"),
    BAD_RECORDS,
    ids=[c[0] for c in BAD_RECORDS],
)
def test_bad_records_are_rejected_everywhere(case: str, record_id: Any, features: Any, label: Any, salt: Any,
                                             match: str) -> None:
    with pytest.raises(MalformedRecord, match=match):
        commit_record(record_id, features, label, salt)
    if not match.startswith("salt"):
        with pytest.raises(MalformedRecord, match=match):
            encode_record(record_id, features, label)
    with pytest.raises(MalformedRecord, match=match):
        RecordOpening(id=record_id, features=features, label=label, salt=salt)
    # The batch path refuses the same record (its messages are about the batch).
    batch = np.asarray(features)[None] if isinstance(features, np.ndarray) else features
    field = {"id": "record id", "features": "features", "label": "label", "salt": "salt"}[case.split("-")[0]]
    with pytest.raises(MalformedRecord, match=field):  # the batch path's message names the bad field
        commit_records([record_id], batch, [label], [salt])


def test_record_id_error_in_record_key() -> None:
    with pytest.raises(MalformedRecord, match="1..256 UTF-8 bytes, got 0"):
        record_key("")
    with pytest.raises(MalformedRecord, match="must be a string, not int"):
        record_key(1)  # type: ignore[arg-type]
    with pytest.raises(MalformedRecord, match="lone surrogate"):
        record_key("\ud800")
    assert len(record_key("x" * MAX_ID_BYTES)) == 32


_X = np.zeros((2, 3), np.float32)
_SALTS = [bytes(32), bytes([1]) * 32]

BAD_BATCHES: list[tuple[str, Any, Any, Any, Any, str]] = [
    ("ids-one-string", "ab", _X, [1, 2], _SALTS, "not a single string"),
    ("ids-not-sized", iter(["a", "b"]), _X, [1, 2], _SALTS, "sequences with one entry per record"),
    ("ids-int", ["a", 2], _X, [1, 2], _SALTS, "record ids must be strings"),
    ("ids-bytes", [b"a", b"b"], _X, [1, 2], _SALTS, "record ids must be strings"),
    ("ids-empty", ["a", ""], _X, [1, 2], _SALTS, "record ids must be 1..256 UTF-8 bytes"),
    ("ids-too-long", ["a", "€" * 86], _X, [1, 2], _SALTS, "record ids must be 1..256 UTF-8 bytes"),
    ("ids-surrogate", ["a", "\ud800"], _X, [1, 2], _SALTS, "lone surrogate"),
    ("features-list", ["a", "b"], _X.tolist(), [1, 2], _SALTS, "features must be an array with one row per id"),
    ("features-0d", ["a", "b"], np.float32(1), [1, 2], _SALTS, "features must be an array with one row per id"),
    ("features-rows", ["a", "b"], _X[:1], [1, 2], _SALTS, "features must be an array with one row per id"),
    ("features-float16", ["a", "b"], _X.astype(np.float16), [1, 2], _SALTS, "dtype float16 is not supported"),
    ("features-9-dim-rows", ["a", "b"], np.zeros((2,) + (1,) * 9), [1, 2], _SALTS, "features have 9 dims"),
    ("labels-short", ["a", "b"], _X, [1], _SALTS, "must have the same length"),
    ("labels-scalar", ["a", "b"], _X, 1, _SALTS, "sequences with one entry per record"),
    ("labels-float", ["a", "b"], _X, [1.0, 2.0], _SALTS, "labels must be integers"),
    ("labels-float-array", ["a", "b"], _X, np.array([1.0, 2.0]), _SALTS, "labels must be integers"),
    ("labels-bool-array", ["a", "b"], _X, np.array([True, False]), _SALTS, "labels must be integers"),
    ("labels-bool-in-list", ["a", "b"], _X, [1, True], _SALTS, "label must be an integer, not bool"),
    ("labels-str", ["a", "b"], _X, ["1", "2"], _SALTS, "labels must be integers"),
    ("labels-2d", ["a", "b"], _X, np.array([[1], [2]]), _SALTS, "one integer per record"),
    ("labels-2^63", ["a", "b"], _X, [1, 2**63], _SALTS, "fit in a signed 64-bit"),
    ("labels-uint64-max", ["a", "b"], _X, np.array([1, 2**64 - 1], np.uint64), _SALTS, "does not fit in a signed"),
    ("labels-2^64", ["a", "b"], _X, [1, 2**64], _SALTS, "labels must be integers that fit"),
    ("labels-below", ["a", "b"], _X, [1, -(2**63) - 1], _SALTS, "labels must be integers that fit"),
    ("salts-short-list", ["a", "b"], _X, [1, 2], _SALTS[:1], "must have the same length"),
    ("salts-31-bytes", ["a", "b"], _X, [1, 2], [bytes(32), bytes(31)], "every salt must be 32 bytes"),
    ("salts-str", ["a", "b"], _X, [1, 2], ["0" * 32, "1" * 32], "salts must be bytes"),
    ("salts-int", ["a", "b"], _X, [1, 2], [1, 2], "salts must be bytes"),
    ("salts-array-shape", ["a", "b"], _X, [1, 2], np.zeros((2, 31), np.uint8), r"uint8 array of shape \(2, 32\)"),
    ("salts-array-dtype", ["a", "b"], _X, [1, 2], np.zeros((2, 32), np.int8), r"uint8 array of shape \(2, 32\)"),
    ("salts-array-rows", ["a", "b"], _X, [1, 2], np.zeros((3, 32), np.uint8), "must have the same length"),
]


@pytest.mark.parametrize(
    ("ids", "features", "labels", "salts", "match"),
    [c[1:] for c in BAD_BATCHES],
    ids=[c[0] for c in BAD_BATCHES],
)
def test_bad_batches_are_rejected(ids: Any, features: Any, labels: Any, salts: Any, match: str) -> None:
    with pytest.raises(MalformedRecord, match=match):
        commit_records(ids, features, labels, salts)


def test_batch_with_extreme_labels_matches_single() -> None:
    labels = [-(2**63), 2**63 - 1, 0, -1]
    ids = ["a", "b", "c", "d"]
    x = np.arange(8, dtype=np.int32).reshape(4, 2)
    salts = new_salts(4)
    expected = [commit_record(ids[k], x[k], labels[k], salts[k]) for k in range(4)]
    assert commit_records(ids, x, labels, salts) == expected
    assert commit_records(ids, x, np.array(labels, dtype=np.int64), salts) == expected
    assert commit_records(ids, x, np.array([0, 2**63 - 1, 5, 6], dtype=np.uint64), salts)[1] == expected[1]


# --- worked examples in the spec -------------------------------------------------------------

_BLOCK = re.compile(r"^```vector name=(?P<name>[\w-]+)\n(?P<body>.*?)^```$", re.M | re.S)


def _spec_vectors() -> dict[str, str]:
    text = SPEC.read_text(encoding="utf-8")
    vectors: dict[str, str] = {}
    for m in _BLOCK.finditer(text):
        assert m["name"] not in vectors, f"duplicate vector {m['name']}"
        vectors[m["name"]] = m["body"]
    return vectors


def _hex(body: str) -> bytes:
    return bytes.fromhex("".join(body.split()))


SPEC_RECORDS = ["record-1", "record-2", "record-3"]


def test_spec_has_the_worked_examples() -> None:
    names = set(_spec_vectors())
    for r in SPEC_RECORDS:
        for part in ("input", "encoding", "key", "commitment", "opening"):
            assert f"{r}-{part}" in names
    assert "record-2-fields" in names


@pytest.mark.parametrize("name", SPEC_RECORDS)
def test_spec_worked_example(name: str) -> None:
    v = _spec_vectors()
    inp = json.loads(v[f"{name}-input"])
    assert set(inp) == {"id", "dtype", "shape", "features", "label", "salt"}
    features = np.array(inp["features"], dtype=inp["dtype"]).reshape(inp["shape"])
    assert np.array(inp["features"], dtype=np.float64).tolist() == features.reshape(-1).astype(np.float64).tolist()
    label = int(inp["label"])
    salt = bytes.fromhex(inp["salt"])
    encoding = _hex(v[f"{name}-encoding"])
    key = _hex(v[f"{name}-key"])
    commitment = _hex(v[f"{name}-commitment"])

    assert encode_record(inp["id"], features, label) == encoding
    assert ref_encode(inp["id"], features, label) == encoding
    assert encoding[0] == ENCODING_VERSION
    assert record_key(inp["id"]) == key
    assert hashlib.sha256(TAG_RECORD_KEY + inp["id"].encode()).digest() == key
    assert commit_record(inp["id"], features, label, salt) == commitment
    assert hashlib.sha256(TAG_RECORD_COMMITMENT + salt + encoding).digest() == commitment
    assert commit_records([inp["id"]], features[None], [label], [salt]) == [commitment]
    assert commit_records([inp["id"]], features.astype(features.dtype.newbyteorder(">"))[None], [label], [salt]) == [
        commitment
    ]

    opening_text = v[f"{name}-opening"].strip("\n")
    assert "\n" not in opening_text
    opening = RecordOpening.from_json(parse_json_strict(opening_text))
    opening.check(commitment)
    assert opening.key() == key
    assert canonical_json(opening.to_json()).decode() == opening_text
    mine = RecordOpening(id=inp["id"], features=features, label=label, salt=salt)
    assert canonical_json(mine.to_json()).decode() == opening_text
    assert mine == opening


def test_spec_record_2_field_breakdown() -> None:
    v = _spec_vectors()
    rows = [line.split(None, 1) for line in v["record-2-fields"].splitlines() if line.strip()]
    assert [r[0] for r in rows] == ["version", "id-length", "id", "dtype", "ndim", "dims", "features", "label"]
    fields = {r[0]: _hex(r[1]) for r in rows}
    assert b"".join(fields.values()) == _hex(v["record-2-encoding"])
    assert fields["id"].decode("utf-8") == json.loads(v["record-2-input"])["id"]
    assert struct.unpack(">H", fields["id-length"])[0] == len(fields["id"]) == 19
    assert fields["dtype"] == bytes([DTYPE_CODES["int64"]])
    assert struct.unpack(">q", fields["label"])[0] == -3


@pytest.mark.parametrize("dtype", ["float16", "bool", "complex64", "int16", "uint16", "float128", "U3", "f4,f4"])
def test_unsupported_dtypes_are_refused_by_the_fast_dtype_lookup(dtype: str) -> None:
    try:
        arr = np.zeros(2, dtype=np.dtype(dtype))
    except TypeError:
        pytest.skip(f"numpy has no {dtype} here")
    with pytest.raises(MalformedRecord, match="is not supported"):
        encode_record("a", arr, 1)


@pytest.mark.parametrize("name", sorted(DTYPE_CODES))
@pytest.mark.parametrize("order", ["<", ">", "="])
def test_fast_dtype_lookup_agrees_with_the_dtype_name(name: str, order: str) -> None:
    # the slow, obviously correct rule: the code is DTYPE_CODES[dtype.name], whatever the byte order
    arr = np.arange(3).astype(np.dtype(name).newbyteorder(order))
    enc = encode_record("a", arr, 1)
    assert enc[1 + 2 + 1] == DTYPE_CODES[arr.dtype.name]
    assert enc == encode_record("a", arr.astype(np.dtype(name).newbyteorder("<")), 1)


def test_an_openings_cached_commitment_is_the_commitment_and_survives_nothing_it_depends_on() -> None:
    import dataclasses

    f = np.arange(4, dtype=np.float32)
    o = RecordOpening(id="r", features=f, label=3, salt=bytes(range(32)))
    c = o.commitment()
    assert c == commit_record("r", f, 3, bytes(range(32))) == o.commitment()
    f[0] = 99.0  # the caller's array: the opening holds its own read-only copy
    assert o.commitment() == c
    with pytest.raises(ValueError, match="read-only"):
        o.features[0] = 1.0
    other = dataclasses.replace(o, label=4)  # a new opening computes its own
    assert other.commitment() == commit_record("r", np.arange(4, dtype=np.float32), 4, bytes(range(32))) != c
    assert o == RecordOpening(id="r", features=np.arange(4, dtype=np.float32), label=3, salt=bytes(range(32)))


_any_id = st.text(max_size=300) | st.sampled_from(["", "x" * 257, "\ud800", "é" * 129, "ok"]) | st.integers() | st.none()


@settings(max_examples=300, deadline=None)
@given(st.lists(_any_id, max_size=8))
def test_record_keys_is_record_key_of_each(ids: list) -> None:  # type: ignore[type-arg]
    """The batch key function against record_key one by one: the same keys for valid ids, the
    same error (type and message) for a batch holding an invalid one."""
    from verifiable_mu._records import record_keys

    try:
        want: list[bytes] | str = [record_key(i) for i in ids]
    except MalformedRecord as e:
        want = str(e)
    if isinstance(want, str):
        with pytest.raises(MalformedRecord) as got:
            record_keys(ids)
        assert str(got.value) == want
    else:
        assert record_keys(ids) == want
