"""Append-only transparency log on SQLite with RFC 9162 proofs and signed tree heads.

Entries are typed JSON objects. The Merkle leaf of entry ``(kind, body)`` is (specs/04-log.md)::

    leaf data = TAG_LOG_ENTRY || ASCII(kind) || 0x00 || RFC8785(body)
    leaf hash = SHA-256(0x00 || leaf data)                       (RFC 9162 leaf hash)

so a verifier recomputes a leaf hash from a disclosed entry with :func:`entry_leaf_hash` alone.

Storage (all tables live in the caller's SQLite file, prefixed ``log_`` so that the prover can keep
its own tables beside them and update them in the same transaction):

* ``log_meta(key, value)`` -- ``schema_version`` (``"1"``) and ``origin``;
* ``log_entries(idx, kind, body, leaf_hash)`` -- ``body`` is the canonical JSON bytes;
* ``log_nodes(level, idx, hash)`` -- the *perfect* subtree hashes of levels 4, 8, 12, ...:
  node ``(l, i)`` is the Merkle tree hash of leaves ``[i * 2^l, (i + 1) * 2^l)``; level 0 is the
  ``leaf_hash`` column of ``log_entries``. A node of any other level is folded from at most 8
  stored nodes (or leaves) four or fewer levels below it, read with one range query. Keeping
  every fourth level stores n/15 node rows instead of n (a bulk append spends about as long
  inserting a row as hashing), and any RFC 9162 subtree hash ``mth(start, end)``, root,
  inclusion or consistency proof still needs O(log n) queries. The nodes are written as leaves
  are appended, in the same transaction;
* ``log_tree_heads(seq, size, root, timestamp, note)`` -- every signed checkpoint issued.

Durability: WAL journal with ``synchronous=FULL``. A signed tree head may be published the moment
:meth:`TransparencyLog.sign_tree_head` returns, so the entries it covers must survive power loss;
``synchronous=NORMAL`` in WAL mode keeps the database consistent but can lose the last committed
transactions on power failure, after which a log could re-append *different* entries below a
published head -- a split view. FULL costs one extra fsync per transaction, which bulk appends
amortise. Bulk work that a later head will cover may commit with NORMAL inside
:meth:`TransparencyLog.relaxed_sync`: the transaction that stores a signed head is always FULL,
and its sync of the WAL makes every earlier transaction durable with it, before the note is
returned. A crash (or kill) inside a transaction leaves the database as of the last commit.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ._canonical import canonical_json
from ._errors import (
    ConsistencyProofFailed,
    LogCorrupted,
    LogError,
    MalformedInput,
    MalformedNote,
    UnsupportedVersion,
    VmuError,
)
from ._merkle import EMPTY_ROOT, HASH_SIZE, consistency_path, inclusion_path, leaf_hash, node_hash
from ._note import Checkpoint, NoteSigner, NoteVerifier, open_checkpoint, sign_checkpoint
from ._proofs import ConsistencyProof, InclusionProof
from ._tags import TAG_LOG_ENTRY

__all__ = [
    "SCHEMA_VERSION",
    "KIND_PATTERN",
    "entry_leaf_data",
    "entry_leaf_hash",
    "LogEntry",
    "SignedTreeHead",
    "TransparencyLog",
]

#: Version of the SQLite layout; a database stating another version is refused.
SCHEMA_VERSION = 1
#: Entry kinds: lower-case ASCII, 1 to 64 characters.
KIND_PATTERN = r"[a-z][a-z0-9_.-]{0,63}"
_KIND = re.compile(KIND_PATTERN)
_BATCH = 8192
#: log_nodes keeps the levels that are multiples of this (level 0 lives in log_entries).
_NODE_STRIDE = 4
_MAX_INDEX = 2**63 - 1

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS log_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS log_entries ("
    " idx INTEGER PRIMARY KEY, kind TEXT NOT NULL, body BLOB NOT NULL, leaf_hash BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS log_nodes ("
    " level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL, PRIMARY KEY (level, idx)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS log_tree_heads ("
    " seq INTEGER PRIMARY KEY, size INTEGER NOT NULL, root BLOB NOT NULL, timestamp INTEGER, note BLOB NOT NULL)",
)


# --- entry encoding (needs no log) --------------------------------------------------------------


def _encode(kind: Any, body: Any) -> tuple[bytes, bytes]:
    """Validate an entry; return ``(leaf data, canonical body)``."""
    if not isinstance(kind, str) or not _KIND.fullmatch(kind):
        raise MalformedInput(f"log entry kind {kind!r} must match {KIND_PATTERN}")
    if not isinstance(body, dict):
        raise MalformedInput(f"log entry body of kind {kind!r} must be a JSON object (dict)")
    try:
        cbody = canonical_json(body)
    except MalformedInput as e:
        raise MalformedInput(f"log entry body of kind {kind!r}: {e}") from e
    return TAG_LOG_ENTRY + kind.encode("ascii") + b"\x00" + cbody, cbody


def entry_leaf_data(kind: str, body: dict[str, Any]) -> bytes:
    """``TAG_LOG_ENTRY || ASCII(kind) || 0x00 || RFC8785(body)``."""
    return _encode(kind, body)[0]


def entry_leaf_hash(kind: str, body: dict[str, Any]) -> bytes:
    """The RFC 9162 leaf hash of a log entry: ``SHA-256(0x00 || entry_leaf_data(kind, body))``."""
    return leaf_hash(_encode(kind, body)[0])


@dataclass(frozen=True, slots=True, kw_only=True)
class LogEntry:
    """One log entry. ``body`` is the parsed canonical JSON; treat it as read-only.

    ``leaf_hash`` is as stored by the log; a verifier that receives an entry should recompute it
    (:attr:`leaf_data`, :func:`entry_leaf_hash`, or :meth:`from_json`, which always recomputes).
    """

    index: int
    kind: str
    body: dict[str, Any]
    leaf_hash: bytes

    TYPE = "vmu.log-entry"

    @property
    def leaf_data(self) -> bytes:
        return entry_leaf_data(self.kind, self.body)

    def to_json(self) -> dict[str, Any]:
        """``{"type": "vmu.log-entry", "version": 1, "index": "<decimal>", "kind": ..., "body": {...}}``."""
        return {"type": self.TYPE, "version": 1, "index": str(self.index), "kind": self.kind, "body": self.body}

    @classmethod
    def from_json(cls, d: Any) -> LogEntry:
        """Parse a disclosed entry; the leaf hash is recomputed from kind and body."""
        if not isinstance(d, dict):
            raise MalformedInput("log entry must be a JSON object")
        if d.get("type") != cls.TYPE:
            raise MalformedInput(f"expected a {cls.TYPE!r} object, got type {d.get('type')!r}")
        if "version" not in d or d["version"] != 1 or isinstance(d["version"], bool):
            raise UnsupportedVersion(f"log entry version {d.get('version')!r} is not supported (only 1)")
        fields = {"type", "version", "index", "kind", "body"}
        if set(d) != fields:
            extra, missing = sorted(set(d) - fields), sorted(fields - set(d))
            raise MalformedInput(f"log entry has unknown field(s) {extra} or lacks field(s) {missing}")
        idx = d["index"]
        if not isinstance(idx, str) or not re.fullmatch(r"0|[1-9][0-9]{0,18}", idx) or int(idx) > _MAX_INDEX:
            raise MalformedInput("log entry index must be a decimal string without leading zeros")
        return cls(index=int(idx), kind=d["kind"], body=d["body"], leaf_hash=entry_leaf_hash(d["kind"], d["body"]))


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedTreeHead:
    """A stored signed checkpoint: what it commits to and the exact signed note bytes."""

    size: int
    root_hash: bytes
    timestamp: int | None
    note: bytes


def _split(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


# --- the log ------------------------------------------------------------------------------------


class TransparencyLog:
    """An append-only RFC 9162 log in one SQLite file. Not thread-safe; one object per thread."""

    __slots__ = ("_conn", "_path", "_origin", "_depth", "_frontier", "_edge", "_closed", "_committed_edge")

    def __init__(self, conn: sqlite3.Connection, path: str, origin: str) -> None:
        self._conn = conn
        self._path = path
        self._origin = origin
        self._depth = 0
        # Right edge of the tree while a write transaction is open: _frontier[l] is the hash of the
        # last complete level-l node whenever bit l of the size is set. None = load from the DB.
        self._frontier: list[bytes | None] | None = None
        # (size, last leaf hash, frontier) as of this connection's last commit: the next write
        # transaction reuses the frontier if the log still ends with that leaf at that size.
        self._committed_edge: tuple[int, bytes, list[bytes | None]] | None = None
        self._edge: tuple[int, bytes] | None = None  # (size, last leaf hash) after this transaction's appends
        self._closed = False

    # -- opening ---------------------------------------------------------------------------------

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, origin: str, create: bool = False, timeout: float = 30.0
    ) -> TransparencyLog:
        """Open the log in ``path`` (creating the file and tables when ``create``).

        Raises :class:`LogError` if there is no log (and ``create`` is false) or the stored origin
        differs from ``origin``; :class:`UnsupportedVersion` for another schema version.
        """
        try:
            Checkpoint(origin=origin, size=0, root_hash=EMPTY_ROOT)
        except MalformedNote as e:
            raise MalformedNote(f"invalid log origin: {e}") from e
        spath = os.fspath(path)
        memory = spath == ":memory:"
        if not create and not memory and not os.path.exists(spath):
            raise LogError(f"no transparency log at {spath}")
        try:
            conn = sqlite3.connect(spath, isolation_level=None, timeout=timeout)
        except sqlite3.Error as e:
            raise LogError(f"cannot open {spath}: {e}") from e
        try:
            conn.execute("PRAGMA journal_mode=WAL").fetchone()
            conn.execute("PRAGMA synchronous=FULL")
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "log_meta" not in tables:
                if not create:
                    raise LogError(f"{spath} is not a verifiable-mu transparency log (no log_meta table)")
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for stmt in _SCHEMA:
                        conn.execute(stmt)
                    conn.execute(
                        "INSERT OR IGNORE INTO log_meta(key, value) VALUES ('schema_version', ?), ('origin', ?)",
                        (str(SCHEMA_VERSION), origin),
                    )
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            meta = dict(conn.execute("SELECT key, value FROM log_meta").fetchall())
            version = meta.get("schema_version")
            if version is None:
                raise LogCorrupted(f"{spath}: log_meta has no schema_version")
            if version != str(SCHEMA_VERSION):
                raise UnsupportedVersion(f"log schema version {version!r} is not supported (only {SCHEMA_VERSION})")
            missing = {"log_entries", "log_nodes", "log_tree_heads"} - {
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            if missing:
                raise LogCorrupted(f"{spath}: log table(s) missing: {', '.join(sorted(missing))}")
            if meta.get("origin") != origin:
                raise LogError(f"{spath} holds the log of origin {meta.get('origin')!r}, not {origin!r}")
        except BaseException as e:
            conn.close()
            if isinstance(e, sqlite3.Error):
                raise LogError(f"cannot open the log in {spath}: {e}") from e
            raise
        return cls(conn, spath, origin)

    @property
    def origin(self) -> str:
        return self._origin

    @property
    def path(self) -> str:
        return self._path

    @property
    def connection(self) -> sqlite3.Connection:
        """The SQLite connection (autocommit mode). Write your own tables through it inside
        :meth:`transaction` to make them atomic with appends; never COMMIT/ROLLBACK it yourself
        while a log transaction is open, and never change the ``log_*`` tables."""
        self._check_open()
        return self._conn

    def close(self) -> None:
        """Close the connection; an open transaction is rolled back."""
        if not self._closed:
            self._closed = True
            self._conn.close()

    def __enter__(self) -> TransparencyLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise LogError("the transparency log is closed")

    # -- transactions ----------------------------------------------------------------------------

    @contextmanager
    def relaxed_sync(self) -> Iterator[TransparencyLog]:
        """Commit the block's transactions with ``synchronous=NORMAL``: each stays atomic and the
        database consistent after a crash, but the last of them may be lost on power failure
        until the next full-synchronous commit, which :meth:`sign_tree_head` always is. For bulk
        work whose every entry is covered by a head signed later: no entry is signed before it
        is durable. Nested blocks and the previous level are restored on exit."""
        self._check_open()
        if self._depth or self._conn.in_transaction:
            raise LogError("the sync level can only change between transactions")
        before = int(self._conn.execute("PRAGMA synchronous").fetchone()[0])
        self._conn.execute("PRAGMA synchronous=NORMAL")
        try:
            yield self
        finally:
            if not self._closed and not self._conn.in_transaction:
                self._conn.execute(f"PRAGMA synchronous={before}")

    @contextmanager
    def full_sync(self) -> Iterator[TransparencyLog]:
        """Commit the block's transactions with ``synchronous=FULL`` (the WAL is synced at each
        commit, and with it every transaction committed before), whatever the level outside."""
        before = int(self._conn.execute("PRAGMA synchronous").fetchone()[0])
        if before < 2:
            self._conn.execute("PRAGMA synchronous=FULL")
        try:
            yield self
        finally:
            if before < 2 and not self._closed and not self._conn.in_transaction:
                self._conn.execute(f"PRAGMA synchronous={before}")

    @contextmanager
    def transaction(self) -> Iterator[TransparencyLog]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on an exception).

        Nested use opens a SAVEPOINT: an exception leaving the inner block undoes only the inner
        block (and propagates); the outer transaction commits or rolls back as a whole.
        """
        self._check_open()
        conn = self._conn
        if self._depth == 0:
            if conn.in_transaction:
                raise LogError("the connection already has a transaction that the log did not open")
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise LogError(f"cannot start a write transaction on the log: {e}") from e
            self._depth = 1
            self._frontier = self._edge = None
            try:
                yield self
            except BaseException:
                self._depth = 0
                self._frontier = self._edge = None
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            self._depth = 0
            frontier, edge = self._frontier, self._edge
            self._frontier = self._edge = None
            if not conn.in_transaction:
                raise LogError("the log transaction was ended by someone else before it could commit")
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as e:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise LogError(f"cannot commit the log transaction: {e}") from e
            if frontier is not None and edge is not None:
                self._committed_edge = (edge[0], edge[1], frontier)
        else:
            name = f"vmu_log_sp{self._depth}"
            conn.execute(f"SAVEPOINT {name}")
            self._depth += 1
            try:
                yield self
            except BaseException:
                self._frontier = self._edge = None
                if conn.in_transaction:
                    conn.execute(f"ROLLBACK TO {name}")
                    conn.execute(f"RELEASE {name}")
                raise
            else:
                conn.execute(f"RELEASE {name}")
            finally:
                self._depth -= 1

    @contextmanager
    def _snapshot(self) -> Iterator[None]:
        """A read transaction (consistent view) unless a transaction is already open."""
        conn = self._conn
        if conn.in_transaction:
            yield
            return
        conn.execute("BEGIN")
        try:
            yield
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")

    # -- reading ---------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Number of entries (as seen by this connection, including its own uncommitted appends)."""
        self._check_open()
        try:
            return int(self._conn.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM log_entries").fetchone()[0])
        except sqlite3.Error as e:
            raise LogError(f"cannot read the log size: {e}") from e

    def _perfect(self, level: int, idx: int) -> bytes:
        """Hash of the perfect subtree (level, idx), from the stored level at or below it."""
        base = level - level % _NODE_STRIDE
        first, span = idx << (level - base), 1 << (level - base)
        if base == 0:
            rows = self._conn.execute(
                "SELECT leaf_hash FROM log_entries WHERE idx >= ? AND idx < ? ORDER BY idx", (first, first + span)
            ).fetchall()
        else:
            rows = self._conn.execute(
                "SELECT hash FROM log_nodes WHERE level = ? AND idx >= ? AND idx < ? ORDER BY idx",
                (base, first, first + span),
            ).fetchall()
        if len(rows) != span:
            raise LogCorrupted(f"stored tree nodes under (level {level}, index {idx}) are missing")
        hashes = [r[0] for r in rows]
        for h in hashes:
            if not isinstance(h, bytes) or len(h) != HASH_SIZE:
                raise LogCorrupted(
                    f"a stored tree node under (level {level}, index {idx}) is not a {HASH_SIZE}-byte hash"
                )
        while len(hashes) > 1:
            hashes = [node_hash(hashes[j], hashes[j + 1]) for j in range(0, len(hashes), 2)]
        return bytes(hashes[0])

    def _oracle(self) -> Callable[[int, int], bytes]:
        """A memoising ``mth(start, end)`` for one proof: O(log n) lookups per proof."""
        memo: dict[tuple[int, int], bytes] = {}

        def mth(start: int, end: int) -> bytes:
            key = (start, end)
            r = memo.get(key)
            if r is not None:
                return r
            n = end - start
            if n == 0:
                r = EMPTY_ROOT
            elif n & (n - 1) == 0 and start % n == 0:
                lvl = n.bit_length() - 1
                r = self._perfect(lvl, start >> lvl)
            else:
                k = _split(n)
                r = node_hash(mth(start, start + k), mth(start + k, end))
            memo[key] = r
            return r

        return mth

    def _tree_size(self, tree_size: int | None, what: str = "tree size") -> int:
        size = self.size
        if tree_size is None:
            return size
        if not isinstance(tree_size, int) or isinstance(tree_size, bool) or tree_size < 0:
            raise LogError(f"{what} must be a non-negative integer")
        if tree_size > size:
            raise LogError(f"{what} {tree_size} exceeds the log size {size}")
        return tree_size

    def mth(self, start: int, end: int) -> bytes:
        """RFC 9162 Merkle tree hash of entries ``[start, end)``."""
        self._check_open()
        if not (isinstance(start, int) and isinstance(end, int)) or not 0 <= start <= end:
            raise LogError(f"invalid range [{start}, {end})")
        self._tree_size(end, "range end")
        try:
            return self._oracle()(start, end)
        except sqlite3.Error as e:
            raise LogError(f"cannot read tree nodes: {e}") from e

    def root(self, size: int | None = None) -> bytes:
        """Root hash of the tree of the first ``size`` entries (default: all)."""
        self._check_open()
        n = self._tree_size(size)
        try:
            return self._oracle()(0, n)
        except sqlite3.Error as e:
            raise LogError(f"cannot read tree nodes: {e}") from e

    def inclusion_proof(self, index: int, tree_size: int | None = None) -> InclusionProof:
        """RFC 9162 inclusion proof of entry ``index`` in the tree of ``tree_size`` entries."""
        self._check_open()
        n = self._tree_size(tree_size)
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < n:
            raise LogError(f"entry index {index} is outside a tree of size {n}")
        try:
            path = inclusion_path(self._oracle(), index, n)
        except sqlite3.Error as e:
            raise LogError(f"cannot read tree nodes: {e}") from e
        return InclusionProof(index=index, tree_size=n, path=tuple(path))

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> ConsistencyProof:
        """RFC 9162 consistency proof from the tree of ``old_size`` entries to ``new_size``."""
        self._check_open()
        n = self._tree_size(new_size, "new size")
        if not isinstance(old_size, int) or isinstance(old_size, bool) or not 0 <= old_size <= n:
            raise LogError(f"old size {old_size} must be between 0 and the new size {n}")
        try:
            path = consistency_path(self._oracle(), old_size, n)
        except sqlite3.Error as e:
            raise LogError(f"cannot read tree nodes: {e}") from e
        return ConsistencyProof(old_size=old_size, new_size=n, path=tuple(path))

    @staticmethod
    def _row_entry(row: tuple[Any, ...]) -> LogEntry:
        idx, kind, body, lh = row
        try:
            parsed = json.loads(body)
        except (ValueError, TypeError) as e:
            raise LogCorrupted(f"entry {idx}: stored body is not JSON") from e
        return LogEntry(index=idx, kind=kind, body=parsed, leaf_hash=lh)

    def entry(self, index: int) -> LogEntry:
        """Entry ``index`` (as stored; see :class:`LogEntry` about recomputing the leaf hash)."""
        self._check_open()
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise LogError(f"entry index {index!r} must be a non-negative integer")
        try:
            row = self._conn.execute(
                "SELECT idx, kind, body, leaf_hash FROM log_entries WHERE idx = ?", (index,)
            ).fetchone()
        except sqlite3.Error as e:
            raise LogError(f"cannot read entry {index}: {e}") from e
        if row is None:
            raise LogError(f"entry index {index} is outside the log (size {self.size})")
        return self._row_entry(row)

    def entries(self, start: int = 0, end: int | None = None) -> Iterator[LogEntry]:
        """Entries ``[start, end)`` in order (``end`` defaults to the current size)."""
        self._check_open()
        stop = self._tree_size(end, "end")
        if not isinstance(start, int) or isinstance(start, bool) or not 0 <= start <= stop:
            raise LogError(f"invalid entry range [{start}, {stop})")
        return self._iter_entries(start, stop)

    def _iter_entries(self, start: int, stop: int) -> Iterator[LogEntry]:
        pos = start
        while pos < stop:
            hi = min(stop, pos + 1024)
            rows = self._conn.execute(
                "SELECT idx, kind, body, leaf_hash FROM log_entries WHERE idx >= ? AND idx < ? ORDER BY idx",
                (pos, hi),
            ).fetchall()
            if len(rows) != hi - pos:
                raise LogCorrupted(f"entries [{pos}, {hi}) are not all present")
            for row in rows:
                yield self._row_entry(row)
            pos = hi

    # -- appending -------------------------------------------------------------------------------

    def append(self, kind: str, body: dict[str, Any]) -> int:
        """Append one entry; return its index. Commits at once unless inside :meth:`transaction`."""
        return self.append_many(((kind, body),)).start

    def append_many(self, items: Iterable[tuple[str, dict[str, Any] | bytes]]) -> range:
        """Append entries atomically (one transaction, or one savepoint inside a transaction).

        Returns the range of their indices. If any entry is malformed nothing of this call is kept.
        A body may be given as ``bytes`` already in RFC 8785 form (a hot path for encoders whose
        output is tested against :func:`canonical_json`); it is stored and hashed as given.
        """
        self._check_open()
        with self.transaction():
            try:
                return self._append_locked(items)
            except sqlite3.Error as e:
                raise LogError(f"cannot append to the log: {e}") from e

    def _load_frontier(self, n: int) -> list[bytes | None]:
        f: list[bytes | None] = [None] * max(1, n.bit_length() + 1)
        for lvl in range(n.bit_length()):
            if n >> lvl & 1:
                f[lvl] = self._perfect(lvl, (n >> lvl) - 1)
        return f

    def _append_locked(self, items: Iterable[tuple[str, dict[str, Any] | bytes]]) -> range:
        conn = self._conn
        start = n = self.size
        frontier = self._frontier
        if frontier is None:
            ce = self._committed_edge
            if ce is not None and ce[0] == n and n > 0 and self._leaf_hash_at(n - 1) == ce[1]:
                frontier = list(ce[2])
            else:
                frontier = self._load_frontier(n)
        self._frontier = None  # invalid until this call finishes
        ins_e = "INSERT INTO log_entries(idx, kind, body, leaf_hash) VALUES (?, ?, ?, ?)"
        ins_n = "INSERT INTO log_nodes(level, idx, hash) VALUES (?, ?, ?)"
        rows_e: list[tuple[int, str, bytes, bytes]] = []
        rows_n: list[tuple[int, int, bytes]] = []
        prefixes: dict[str, bytes] = {}  # kind -> TAG || kind || 0x00, for kinds already validated
        cjson, lh_of, nh_of, add_e, add_n = canonical_json, leaf_hash, node_hash, rows_e.append, rows_n.append
        for item in items:
            try:
                kind, body = item
            except (TypeError, ValueError) as e:
                raise MalformedInput("each log item must be a (kind, body) pair") from e
            prefix = prefixes.get(kind) if type(kind) is str else None
            if type(body) is bytes:  # pre-encoded by the caller, who vouches it is canonical
                if prefix is None:
                    prefix = _encode(kind, {})[0][:-2]
                    prefixes[kind] = prefix
                if body[:1] != b"{" or body[-1:] != b"}":
                    raise MalformedInput(f"a pre-encoded body of kind {kind!r} must be a canonical JSON object")
                cbody = body
                data = prefix + cbody
            elif prefix is None or type(body) is not dict:
                data, cbody = _encode(kind, body)
                prefixes[kind] = data[: len(data) - len(cbody)]
            else:
                try:
                    cbody = cjson(body)
                except MalformedInput as e:
                    raise MalformedInput(f"log entry body of kind {kind!r}: {e}") from e
                data = prefix + cbody
            h = lh = lh_of(data)
            add_e((n, kind, cbody, h))
            lvl, i = 0, n
            while i & 1:
                h = nh_of(frontier[lvl], h)  # type: ignore[arg-type]
                lvl += 1
                i >>= 1
                if not lvl % _NODE_STRIDE:
                    add_n((lvl, i, h))
            if lvl == len(frontier):
                frontier.append(None)
            frontier[lvl] = h
            n += 1
            if len(rows_e) >= _BATCH:
                conn.executemany(ins_e, rows_e)
                conn.executemany(ins_n, rows_n)
                rows_e.clear()
                rows_n.clear()
        if rows_e:
            conn.executemany(ins_e, rows_e)
            conn.executemany(ins_n, rows_n)
        self._frontier = frontier
        if n > start:
            self._edge = (n, lh)
        return range(start, n)

    def _leaf_hash_at(self, index: int) -> bytes | None:
        row = self._conn.execute("SELECT leaf_hash FROM log_entries WHERE idx = ?", (index,)).fetchone()
        return None if row is None else row[0]

    # -- signed tree heads -------------------------------------------------------------------------

    def sign_tree_head(self, signer: NoteSigner, *, timestamp: int | None = None) -> bytes:
        """Sign a checkpoint of the current tree, store it, and return the signed note.

        Before signing, the new head is checked to be consistent with the latest stored head (a log
        must never sign two inconsistent checkpoints), and ``timestamp`` must not go backwards.

        Refused inside :meth:`transaction`: a head must only cover committed (durable) entries,
        or a rollback after the note was handed out would let the log later sign a different tree
        of the same size -- two inconsistent heads. The head is stored and committed before the
        note is returned.
        """
        self._check_open()
        if not isinstance(signer, NoteSigner):
            raise LogError(f"expected a NoteSigner, got {type(signer).__name__}")
        if self._depth or self._conn.in_transaction:
            raise LogError("sign_tree_head must not run inside a transaction: it may only sign committed entries")
        with self.full_sync(), self.transaction():
            try:
                size = self.size
                root = self.root(size)
                prev = self.latest_tree_head()
                if prev is not None:
                    if prev.size > size:
                        raise LogCorrupted(
                            f"the latest signed tree head (size {prev.size}) is larger than the log ({size})"
                        )
                    try:
                        self.consistency_proof(prev.size, size).verify(old_root=prev.root_hash, new_root=root)
                    except ConsistencyProofFailed as e:
                        raise LogCorrupted(f"the log is not consistent with its latest signed tree head: {e}") from e
                    if timestamp is not None and prev.timestamp is not None and timestamp < prev.timestamp:
                        raise LogError(
                            f"timestamp {timestamp} is earlier than the latest tree head's ({prev.timestamp})"
                        )
                cp = Checkpoint(origin=self._origin, size=size, root_hash=root, timestamp=timestamp)
                note = sign_checkpoint(cp, signer)
                if open_checkpoint(note, [signer.verifier], origin=self._origin) != cp:  # pragma: no cover
                    raise LogError("the signed tree head does not round-trip")
                self._conn.execute(
                    "INSERT INTO log_tree_heads(size, root, timestamp, note) VALUES (?, ?, ?, ?)",
                    (size, root, timestamp, note),
                )
            except sqlite3.Error as e:
                raise LogError(f"cannot store the signed tree head: {e}") from e
        return note

    def tree_heads(self) -> list[SignedTreeHead]:
        """Every stored signed tree head, oldest first."""
        self._check_open()
        try:
            rows = self._conn.execute("SELECT size, root, timestamp, note FROM log_tree_heads ORDER BY seq").fetchall()
        except sqlite3.Error as e:
            raise LogError(f"cannot read tree heads: {e}") from e
        return [SignedTreeHead(size=s, root_hash=r, timestamp=t, note=nb) for s, r, t, nb in rows]

    def latest_tree_head(self) -> SignedTreeHead | None:
        """The most recently signed tree head, or None."""
        self._check_open()
        try:
            row = self._conn.execute(
                "SELECT size, root, timestamp, note FROM log_tree_heads ORDER BY seq DESC LIMIT 1"
            ).fetchone()
        except sqlite3.Error as e:
            raise LogError(f"cannot read tree heads: {e}") from e
        if row is None:
            return None
        return SignedTreeHead(size=row[0], root_hash=row[1], timestamp=row[2], note=row[3])

    # -- integrity -------------------------------------------------------------------------------

    def check_integrity(self, verifiers: Sequence[NoteVerifier] | None = None) -> int:
        """Recompute everything stored and raise :class:`LogCorrupted` on the first mismatch.

        Checks: the meta table; entries are numbered 0..n-1 with valid kinds, canonical JSON object
        bodies and matching leaf hashes; every perfect-subtree node is present, correct, and there
        are no others; every stored tree head covers at most n entries, has the recomputed root,
        sizes and timestamps never decrease, and its note is a checkpoint of this origin with the
        same size, root and timestamp (and, if ``verifiers`` are given, is signed by one of them).
        Returns the number of entries checked. Reads the whole log: O(n).
        """
        self._check_open()
        try:
            with self._snapshot():
                return self._check_integrity(verifiers)
        except sqlite3.Error as e:
            raise LogCorrupted(f"the log database cannot be read: {e}") from e

    def _check_integrity(self, verifiers: Sequence[NoteVerifier] | None) -> int:
        self._check_meta()
        n = self._check_entries()
        self._check_nodes(n)
        self._check_heads(n, verifiers)
        return n

    def _check_meta(self) -> None:
        meta = dict(self._conn.execute("SELECT key, value FROM log_meta").fetchall())
        if meta.get("schema_version") != str(SCHEMA_VERSION):
            raise LogCorrupted(f"log_meta schema_version is {meta.get('schema_version')!r}")
        if meta.get("origin") != self._origin:
            raise LogCorrupted(f"log_meta origin is {meta.get('origin')!r}, expected {self._origin!r}")

    def _check_entries(self) -> int:
        """Entries numbered 0..n-1 with valid kinds, canonical JSON object bodies and matching leaf
        hashes; returns n."""
        n = 0
        for idx, kind, body, lh in self._conn.execute("SELECT idx, kind, body, leaf_hash FROM log_entries ORDER BY idx"):
            if idx != n:
                raise LogCorrupted(f"entry {n} is missing (next stored entry is {idx})")
            if not isinstance(body, bytes):
                raise LogCorrupted(f"entry {idx}: body is not stored as bytes")
            try:
                parsed = json.loads(body)
                data, cbody = _encode(kind, parsed)
            except (ValueError, TypeError, MalformedInput) as e:
                raise LogCorrupted(f"entry {idx}: stored kind or body is invalid: {e}") from e
            if cbody != body:
                raise LogCorrupted(f"entry {idx}: stored body is not canonical JSON")
            if lh != leaf_hash(data):
                raise LogCorrupted(f"entry {idx}: stored leaf hash does not match its kind and body")
            n += 1
        return n

    def _check_nodes(self, n: int) -> None:
        """Stored perfect-subtree nodes, level by level, streamed (constant memory): each node of
        level L is recomputed from the 2^_NODE_STRIDE stored hashes of level L - _NODE_STRIDE."""
        conn = self._conn
        expected_total = 0
        group = 1 << _NODE_STRIDE
        for lvl in range(_NODE_STRIDE, n.bit_length(), _NODE_STRIDE):
            count = n >> lvl
            expected_total += count
            if lvl == _NODE_STRIDE:
                children = conn.execute("SELECT leaf_hash FROM log_entries ORDER BY idx")
            else:
                children = conn.execute(
                    "SELECT hash FROM log_nodes WHERE level = ? ORDER BY idx", (lvl - _NODE_STRIDE,)
                )
            parents = conn.execute("SELECT idx, hash FROM log_nodes WHERE level = ? ORDER BY idx", (lvl,))
            for j in range(count):
                kids = [r[0] for r in children.fetchmany(group)]
                parent = parents.fetchone()
                if parent is None or parent[0] != j:
                    raise LogCorrupted(f"tree node (level {lvl}, index {j}) is missing")
                if len(kids) != group or any(not isinstance(k, bytes) or len(k) != HASH_SIZE for k in kids):
                    raise LogCorrupted(f"children of tree node (level {lvl}, index {j}) are missing or malformed")
                while len(kids) > 1:
                    kids = [node_hash(kids[k], kids[k + 1]) for k in range(0, len(kids), 2)]
                if parent[1] != kids[0]:
                    raise LogCorrupted(f"tree node (level {lvl}, index {j}) does not match the entries below it")
            extra = parents.fetchone()
            if extra is not None:
                raise LogCorrupted(f"unexpected tree node (level {lvl}, index {extra[0]}) beyond the log")
        total = conn.execute("SELECT COUNT(*) FROM log_nodes").fetchone()[0]
        if total != expected_total:
            raise LogCorrupted(f"log_nodes has {total} rows, expected {expected_total} for {n} entries")

    def _check_heads(self, n: int, verifiers: Sequence[NoteVerifier] | None) -> None:
        """Stored tree heads: each covers at most n entries with the recomputed root, sizes and
        timestamps never decrease, and its note matches (and is signed by ``verifiers``, if given)."""
        prev_size, prev_ts = 0, None
        oracle = self._oracle()
        for seq, size, root, ts, note in self._conn.execute(
            "SELECT seq, size, root, timestamp, note FROM log_tree_heads ORDER BY seq"
        ):
            where = f"tree head #{seq} (size {size})"
            if not isinstance(size, int) or not 0 <= size <= n:
                raise LogCorrupted(f"{where} covers more entries than the log holds ({n})")
            if size < prev_size:
                raise LogCorrupted(f"{where} is smaller than an earlier tree head ({prev_size})")
            if ts is not None and prev_ts is not None and ts < prev_ts:
                raise LogCorrupted(f"{where} has a timestamp earlier than an earlier tree head")
            if root != oracle(0, size):
                raise LogCorrupted(f"{where}: stored root does not match the entries")
            if not isinstance(note, bytes):
                raise LogCorrupted(f"{where}: note is not stored as bytes")
            cp = self._stored_checkpoint(note, verifiers, where)
            if (cp.origin, cp.size, cp.root_hash, cp.timestamp) != (self._origin, size, root, ts):
                raise LogCorrupted(f"{where}: stored note does not match the stored size, root or timestamp")
            prev_size = size
            prev_ts = ts if ts is not None else prev_ts

    def _stored_checkpoint(self, note: bytes, verifiers: Sequence[NoteVerifier] | None, where: str) -> Checkpoint:
        """A stored head's note as a checkpoint of this log (its signature checked by ``verifiers``, if given)."""
        try:
            if verifiers is not None:
                return open_checkpoint(note, verifiers, origin=self._origin)
            text = note.decode("utf-8")
            cut = text.rfind("\n\n")
            if cut < 0:
                raise MalformedNote("not a signed note")
            return Checkpoint.from_text(text[: cut + 1])
        except (VmuError, UnicodeDecodeError) as e:
            raise LogCorrupted(f"{where}: stored note is not a valid checkpoint of this log: {e}") from e
