"""Canonical record encoding, record keys and hiding commitments (specs/01-records.md).

A training record is ``(id, features, label)``:

* ``id`` -- a UTF-8 string of 1..256 bytes, unique within a data set;
* ``features`` -- a numpy array of one of the dtypes in :data:`DTYPE_CODES`, at most 8 dims;
* ``label`` -- a signed 64-bit integer.

Encoding, version 1 (all integers big-endian)::

    u8   version = 1
    u16  len(id)           || id (UTF-8)
    u8   dtype code        (see DTYPE_CODES)
    u8   ndim              || u32 dim_1 ... u32 dim_ndim
    ...  features, C order, little-endian element bytes
    i64  label

Commitment: ``SHA-256(TAG_RECORD_COMMITMENT || salt || encoding)`` with a fresh 32-byte salt.
Record key (sorts the slice trees, makes non-membership provable):
``SHA-256(TAG_RECORD_KEY || id)``.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from ._canonical import b64decode, b64encode, hex32
from ._errors import CommitmentMismatch, MalformedRecord, UnsupportedVersion
from ._tags import TAG_RECORD_COMMITMENT, TAG_RECORD_KEY

__all__ = [
    "ENCODING_VERSION",
    "DTYPE_CODES",
    "SALT_SIZE",
    "MAX_ID_BYTES",
    "encode_record",
    "record_key",
    "record_keys",
    "commit_record",
    "commit_records",
    "new_salts",
    "new_salt_array",
    "RecordOpening",
]

ENCODING_VERSION = 1
SALT_SIZE = 32
MAX_ID_BYTES = 256
MAX_NDIM = 8
MAX_FEATURE_BYTES = 64 * 1024 * 1024
_CHUNK_BYTES = 1 << 20  # commit_records encodes about this many bytes at a time

#: dtype name -> one-byte code. Element bytes are always little-endian.
DTYPE_CODES: dict[str, int] = {"float32": 1, "float64": 2, "int32": 3, "int64": 4, "uint8": 5}
_CODE_DTYPES = {v: k for k, v in DTYPE_CODES.items()}
#: numpy dtype (either byte order) -> its code: a dict lookup instead of ``dtype.name``, which
#: numpy computes in Python on every access (the verifier encodes every opened record).
_NP_CODES: dict[np.dtype[Any], int] = {
    np.dtype(n).newbyteorder(o): c for n, c in DTYPE_CODES.items() for o in ("<", ">")
}

_COMMIT_PREFIX = hashlib.sha256(TAG_RECORD_COMMITMENT)
_KEY_PREFIX = hashlib.sha256(TAG_RECORD_KEY)
_I64 = struct.Struct(">q")
_MAX_DIM = 2**32 - 1
_INT64_MAX = 2**63 - 1
#: A label in an opening: canonical decimal, no "+", no leading zeros, no "-0".
_LABEL_RE = re.compile(r"-?(0|[1-9][0-9]{0,18})")


def _id_bytes(record_id: str) -> bytes:
    if not isinstance(record_id, str):
        raise MalformedRecord(f"record id must be a string, not {type(record_id).__name__}")
    try:
        b = record_id.encode("utf-8")
    except UnicodeEncodeError as e:
        raise MalformedRecord("record id is not valid Unicode (it contains a lone surrogate)") from e
    if not 1 <= len(b) <= MAX_ID_BYTES:
        raise MalformedRecord(f"record id must be 1..{MAX_ID_BYTES} UTF-8 bytes, got {len(b)}")
    return b


def _features_le(features: Any) -> tuple[int, tuple[int, ...], np.ndarray]:
    if not isinstance(features, np.ndarray):
        raise MalformedRecord(f"features must be a numpy array, not {type(features).__name__}")
    code = _NP_CODES.get(features.dtype)
    if code is None:
        name = features.dtype.name
        raise MalformedRecord(f"features dtype {name} is not supported (use one of {', '.join(DTYPE_CODES)})")
    if features.ndim > MAX_NDIM:
        raise MalformedRecord(f"features have {features.ndim} dims (at most {MAX_NDIM})")
    if any(d > _MAX_DIM for d in features.shape):
        raise MalformedRecord(f"features dimension sizes must be at most {_MAX_DIM}")
    if features.nbytes > MAX_FEATURE_BYTES:
        raise MalformedRecord("features are too large")
    le = np.ascontiguousarray(features, dtype=features.dtype.newbyteorder("<"))
    return code, tuple(int(d) for d in features.shape), le


def _label_bytes(label: Any) -> bytes:
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
        raise MalformedRecord(f"label must be an integer, not {type(label).__name__}")
    try:
        return _I64.pack(int(label))
    except struct.error as e:
        raise MalformedRecord("label does not fit in a signed 64-bit integer") from e


def _header(id_b: bytes, code: int, shape: tuple[int, ...]) -> bytes:
    return (
        bytes((ENCODING_VERSION,))
        + struct.pack(">H", len(id_b))
        + id_b
        + bytes((code, len(shape)))
        + b"".join(struct.pack(">I", d) for d in shape)
    )


def encode_record(record_id: str, features: np.ndarray, label: int) -> bytes:
    """The canonical version-1 byte encoding of a record."""
    id_b = _id_bytes(record_id)
    code, shape, le = _features_le(features)
    return _header(id_b, code, shape) + le.tobytes() + _label_bytes(label)


def record_key(record_id: str) -> bytes:
    """The 32-byte key that orders a record in its slice tree."""
    h = _KEY_PREFIX.copy()
    h.update(_id_bytes(record_id))
    return h.digest()


def record_keys(record_ids: Sequence[str]) -> list[bytes]:
    """:func:`record_key` of each id (a test checks it), validated as a whole: any id that is
    not a string of 1..MAX_ID_BYTES UTF-8 bytes sends the batch to the one-by-one path, which
    raises its error."""
    try:
        encoded = [i.encode("utf-8") for i in record_ids if type(i) is str]
    except UnicodeEncodeError:
        encoded = []
    if len(encoded) != len(record_ids) or (encoded and not 1 <= min(map(len, encoded)) <= max(map(len, encoded)) <= MAX_ID_BYTES):
        return [record_key(i) for i in record_ids]
    prefix = _KEY_PREFIX
    out = []
    for b in encoded:
        h = prefix.copy()
        h.update(b)
        out.append(h.digest())
    return out


def _check_salt(salt: Any) -> bytes:
    if not isinstance(salt, (bytes, bytearray)) or len(salt) != SALT_SIZE:
        raise MalformedRecord(f"salt must be {SALT_SIZE} bytes")
    return bytes(salt)


def commit_record(record_id: str, features: np.ndarray, label: int, salt: bytes) -> bytes:
    """``SHA-256(TAG_RECORD_COMMITMENT || salt || encode_record(...))``."""
    h = _COMMIT_PREFIX.copy()
    h.update(_check_salt(salt))
    h.update(encode_record(record_id, features, label))
    return h.digest()


def new_salts(n: int) -> list[bytes]:
    """``n`` fresh 32-byte salts from the OS CSPRNG."""
    blob = os.urandom(SALT_SIZE * n)
    return [blob[i : i + SALT_SIZE] for i in range(0, len(blob), SALT_SIZE)]


def new_salt_array(n: int) -> np.ndarray:
    """``n`` fresh salts as one ``(n, 32)`` uint8 array (one CSPRNG call)."""
    return np.frombuffer(os.urandom(SALT_SIZE * n), dtype=np.uint8).reshape(n, SALT_SIZE).copy()


def commit_records(
    ids: Sequence[str],
    features: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    salts: Sequence[bytes] | np.ndarray,
) -> list[bytes]:
    """Commitments of many records whose features are the rows of one array.

    Equal, byte for byte, to calling :func:`commit_record` on each row (a test checks it); it
    is faster because records whose ids have the same length are encoded together with numpy,
    a chunk of rows at a time into one reused buffer, and only the SHA-256 calls remain per
    record. Inputs are validated as a whole and refused with :class:`MalformedRecord`.
    """
    n = _check_lengths(ids, features, labels, salts)
    if n == 0:
        return []
    code, _, _ = _features_le(np.asarray(features[0]))
    row_shape = features.shape[1:]
    le_all = np.ascontiguousarray(features, dtype=features.dtype.newbyteorder("<")).reshape(n, -1).view(np.uint8)
    labels_be = _labels_be(labels, n)
    salt_arr = _salt_array(salts, n)
    id_u8, id_starts, id_lens = _id_blob(ids, n)
    if id_lens.min() < 1 or id_lens.max() > MAX_ID_BYTES:
        raise MalformedRecord(f"record ids must be 1..{MAX_ID_BYTES} UTF-8 bytes")
    dims = bytes((code, len(row_shape))) + b"".join(struct.pack(">I", int(d)) for d in row_shape)
    cols = _Columns(salts=salt_arr, id_u8=id_u8, id_starts=id_starts, dims=dims, features=le_all, labels=labels_be)
    out: list[bytes] | None = None
    for id_len, rows in _groups_by_length(id_lens):
        digests = _commit_group(cols, id_len, rows)
        if len(digests) == n:
            return digests
        if out is None:
            out = [b""] * n
        if isinstance(rows, slice):
            out[rows] = digests
        else:
            for i, d in zip(rows.tolist(), digests, strict=True):
                out[i] = d
    assert out is not None
    return out


def _check_lengths(
    ids: Sequence[str], features: np.ndarray, labels: Sequence[int] | np.ndarray, salts: Sequence[bytes] | np.ndarray
) -> int:
    """The number of records, once ids, features, labels and salts are sequences of that length."""
    if isinstance(ids, (str, bytes)):
        raise MalformedRecord("ids must be a sequence of strings, not a single string")
    try:
        n = len(ids)
        lengths_differ = len(labels) != n or len(salts) != n
    except TypeError as e:
        raise MalformedRecord("ids, labels and salts must be sequences with one entry per record") from e
    if not isinstance(features, np.ndarray) or features.ndim < 1 or features.shape[0] != n:
        raise MalformedRecord("features must be an array with one row per id")
    if lengths_differ:
        raise MalformedRecord("ids, features, labels and salts must have the same length")
    return n


def _labels_be(labels: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    """The labels as ``(n, 8)`` uint8: each a big-endian signed 64-bit integer."""
    try:
        label_arr = np.asarray(labels)
    except (TypeError, ValueError, OverflowError) as e:
        raise MalformedRecord("labels must be integers") from e
    if label_arr.dtype.kind not in "iu":
        raise MalformedRecord("labels must be integers that fit in a signed 64-bit integer")
    if label_arr.shape != (n,):
        raise MalformedRecord("labels must be one integer per record")
    if label_arr.dtype.kind == "u" and int(label_arr.max()) > _INT64_MAX:
        raise MalformedRecord("label does not fit in a signed 64-bit integer")
    if not isinstance(labels, np.ndarray) and any(isinstance(x, (bool, np.bool_)) for x in labels):
        raise MalformedRecord("label must be an integer, not bool")
    return label_arr.astype(">i8").view(np.uint8).reshape(n, 8)


class _Columns(NamedTuple):
    """Every record's encoded fields, as :func:`commit_records` lays them out (uint8 arrays)."""

    salts: np.ndarray  # (n, SALT_SIZE)
    id_u8: np.ndarray  # all ids' UTF-8 bytes back to back
    id_starts: np.ndarray  # each id's start in id_u8
    dims: bytes  # dtype code, ndim and dimensions: the same for every record
    features: np.ndarray  # (n, feature bytes), little-endian
    labels: np.ndarray  # (n, 8), big-endian


_TAG_U8 = np.frombuffer(TAG_RECORD_COMMITMENT, dtype=np.uint8)


def _commit_group(cols: _Columns, id_len: int, rows: slice | np.ndarray) -> list[bytes]:
    """The commitments of one group of records whose ids are ``id_len`` bytes long, in ``rows`` order.

    Row layout: tag | salt | version | u16 id_len | id | dtype,ndim,dims | features | label.
    ``rows`` is a slice where the group is a run of consecutive records (nothing needs to be
    gathered), else an index array. The group is encoded chunk by chunk into one small reused
    buffer: it stays in cache, and the constant columns are written only once.
    """
    tag_len, fbytes = len(TAG_RECORD_COMMITMENT), cols.features.shape[1]
    width = tag_len + SALT_SIZE + 1 + 2 + id_len + len(cols.dims) + fbytes + 8
    m = rows.stop - rows.start if isinstance(rows, slice) else len(rows)
    chunk = max(1, min(m, _CHUNK_BYTES // width))
    buf = np.empty((chunk, width), dtype=np.uint8)
    buf[:, :tag_len] = _TAG_U8
    p_salt = tag_len
    p_head = p_salt + SALT_SIZE
    buf[:, p_head] = ENCODING_VERSION
    buf[:, p_head + 1 : p_head + 3] = np.frombuffer(struct.pack(">H", id_len), dtype=np.uint8)
    p_id = p_head + 3
    p_dims = p_id + id_len
    buf[:, p_dims : p_dims + len(cols.dims)] = np.frombuffer(cols.dims, dtype=np.uint8)
    p_feat = p_dims + len(cols.dims)
    p_label = p_feat + fbytes
    mv = buf.reshape(-1).data
    id_cols = np.arange(id_len, dtype=np.int64)
    sha256 = hashlib.sha256
    digests: list[bytes] = []
    for c in range(0, m, chunk):
        k = min(chunk, m - c)
        if isinstance(rows, slice):
            sel: slice | np.ndarray = slice(rows.start + c, rows.start + c + k)
            first = int(cols.id_starts[rows.start + c])
            id_rows = cols.id_u8[first : first + k * id_len].reshape(k, id_len)
        else:
            sel = rows[c : c + k]
            id_rows = cols.id_u8[cols.id_starts[sel][:, None] + id_cols]
        b = buf[:k]
        b[:, p_salt:p_head] = cols.salts[sel]
        b[:, p_id:p_dims] = id_rows
        b[:, p_feat:p_label] = cols.features[sel]
        b[:, p_label:] = cols.labels[sel]
        digests += [sha256(mv[o : o + width]).digest() for o in range(0, k * width, width)]
    return digests


def _id_blob(ids: Sequence[str], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All ids' UTF-8 bytes back to back (as uint8), each id's start in it, and its length."""
    try:
        joined = "".join(ids)
        blob = joined.encode("utf-8")
    except TypeError as e:
        raise MalformedRecord("record ids must be strings") from e
    except UnicodeEncodeError as e:
        raise MalformedRecord("record id is not valid Unicode (it contains a lone surrogate)") from e
    lens = np.fromiter(map(len, ids), dtype=np.int64, count=n)
    if len(blob) != len(joined):
        # Not all ASCII: UTF-8 byte lengths differ from character counts, so encode one by one.
        id_bytes = [i.encode("utf-8") for i in ids]
        lens = np.fromiter(map(len, id_bytes), dtype=np.int64, count=n)
    starts = np.cumsum(lens) - lens
    return np.frombuffer(blob, dtype=np.uint8), starts, lens


def _groups_by_length(lens: np.ndarray) -> list[tuple[int, slice | np.ndarray]]:
    """Records grouped by id length, each group as a slice when it is a run, else indices."""
    n = len(lens)
    lo, hi = int(lens.min()), int(lens.max())
    if lo == hi:
        return [(lo, slice(0, n))]
    order = np.argsort(lens.astype(np.uint16), kind="stable")  # radix sort: lens <= 256
    sorted_lens = lens[order]
    cuts = np.flatnonzero(sorted_lens[1:] != sorted_lens[:-1]) + 1
    groups: list[tuple[int, slice | np.ndarray]] = []
    for idx in np.split(order, cuts):
        first, last = int(idx[0]), int(idx[-1])
        rows: slice | np.ndarray = slice(first, last + 1) if last - first + 1 == len(idx) else idx
        groups.append((int(lens[first]), rows))
    return groups


def _salt_array(salts: Sequence[bytes] | np.ndarray, n: int) -> np.ndarray:
    if isinstance(salts, np.ndarray):
        if salts.dtype != np.uint8 or salts.shape != (n, SALT_SIZE):
            raise MalformedRecord(f"salts must be a uint8 array of shape ({n}, {SALT_SIZE})")
        return salts
    try:
        sizes = set(map(len, salts))
    except TypeError as e:
        raise MalformedRecord("salts must be bytes") from e
    if sizes != {SALT_SIZE}:
        raise MalformedRecord(f"every salt must be {SALT_SIZE} bytes")
    try:
        blob = b"".join(salts)
    except TypeError as e:
        raise MalformedRecord("salts must be bytes") from e
    return np.frombuffer(blob, dtype=np.uint8).reshape(n, SALT_SIZE)


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordOpening:
    """A disclosed record with its salt: enough to recompute its commitment."""

    id: str
    features: np.ndarray
    label: int
    salt: bytes
    #: the commitment, computed on first use: every field is frozen and the features are a
    #: private read-only copy, so it cannot go stale
    _commitment: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _id_bytes(self.id)
        _features_le(self.features)
        _label_bytes(self.label)
        object.__setattr__(self, "label", int(self.label))
        # Keep private, read-only copies: the caller's array stays as it was (writable), and
        # changing it afterwards cannot change this opening.
        features = np.array(self.features, copy=True)
        features.setflags(write=False)
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "salt", _check_salt(self.salt))

    def __eq__(self, other: object) -> bool:
        # Canonical equality: same salt and same encoding (dtype, shape, values, id, label), so
        # '>f4' and '<f4' features with equal values compare equal.
        if not isinstance(other, RecordOpening):
            return NotImplemented
        return self.salt == other.salt and encode_record(
            self.id, self.features, self.label
        ) == encode_record(other.id, other.features, other.label)

    def __hash__(self) -> int:
        return hash((self.salt, encode_record(self.id, self.features, self.label)))

    def commitment(self) -> bytes:
        c = self._commitment
        if c is None:
            c = commit_record(self.id, self.features, self.label, self.salt)
            object.__setattr__(self, "_commitment", c)
        return c

    def key(self) -> bytes:
        return record_key(self.id)

    def check(self, commitment: bytes) -> None:
        """Raise :class:`CommitmentMismatch` unless this opening matches ``commitment``."""
        if self.commitment() != commitment:
            raise CommitmentMismatch(f"opening of record {self.id!r} does not match its commitment")

    def to_json(self) -> dict[str, Any]:
        code, shape, le = _features_le(self.features)
        return {
            "type": "vmu.record-opening",
            "version": ENCODING_VERSION,
            "id": self.id,
            "dtype": _CODE_DTYPES[code],
            "shape": list(shape),
            "features": b64encode(le.tobytes()),
            "label": str(int(self.label)),
            "salt": self.salt.hex(),
        }

    @classmethod
    def from_json(cls, d: Any) -> RecordOpening:
        fields = {"type", "version", "id", "dtype", "shape", "features", "label", "salt"}
        if not isinstance(d, dict) or d.get("type") != "vmu.record-opening":
            raise MalformedRecord("record opening must be an object of type 'vmu.record-opening'")
        version = d.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version != ENCODING_VERSION:
            raise UnsupportedVersion(f"record opening version {version!r} is not supported")
        if set(d) != fields:
            raise MalformedRecord(f"record opening fields must be exactly {sorted(fields)}")
        dtype = d["dtype"]
        if not isinstance(dtype, str) or dtype not in DTYPE_CODES:
            raise MalformedRecord(f"record opening dtype {dtype!r} is not supported")
        shape = d["shape"]
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_NDIM
            or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**32 for s in shape)
        ):
            raise MalformedRecord("record opening shape must be a list of at most 8 non-negative integers")
        raw = b64decode(d["features"], what="record features", exc=MalformedRecord)
        if b64encode(raw) != d["features"]:
            # One encoding per value: the opening's bytes (and any digest over them) are unique.
            raise MalformedRecord("record features are not canonical standard base64 (non-zero padding bits)")
        dt = np.dtype(dtype).newbyteorder("<")
        count = math.prod(shape)  # exact: an int64 product could wrap around
        if count * dt.itemsize != len(raw):
            raise MalformedRecord("record opening features do not match their dtype and shape")
        label = d["label"]
        if not isinstance(label, str) or not _LABEL_RE.fullmatch(label) or label == "-0":
            raise MalformedRecord("record opening label must be a canonical decimal string")
        feats = np.frombuffer(raw, dtype=dt).reshape(shape).astype(np.dtype(dtype))
        return cls(
            id=d["id"] if isinstance(d["id"], str) else _raise_id(d["id"]),
            features=feats,
            label=int(label),
            salt=hex32(d["salt"], what="record salt", exc=MalformedRecord),
        )


def _raise_id(value: Any) -> str:
    raise MalformedRecord(f"record id must be a string, not {type(value).__name__}")
