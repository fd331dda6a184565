"""The transparency log's storage: the SQLite schema, opening, transactions and subtree hashes.

Part of :mod:`verifiable_mu._log` (the layout and the durability rules are described there):
:class:`LogStore` is the base of :class:`verifiable_mu._log.TransparencyLog` and holds its
connection state; the reading, proof and integrity methods are in :mod:`verifiable_mu._log_read`,
appending and signing in :mod:`verifiable_mu._log`.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ._errors import LogCorrupted, LogError, MalformedNote, UnsupportedVersion
from ._log_entry import SCHEMA_VERSION
from ._merkle import EMPTY_ROOT, HASH_SIZE, node_hash
from ._note import Checkpoint

if TYPE_CHECKING:
    from typing import Self

__all__ = ["LogStore"]

#: log_nodes keeps the levels that are multiples of this (level 0 lives in log_entries).
_NODE_STRIDE = 4

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS log_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS log_entries ("
    " idx INTEGER PRIMARY KEY, kind TEXT NOT NULL, body BLOB NOT NULL, leaf_hash BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS log_nodes ("
    " level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL, PRIMARY KEY (level, idx)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS log_tree_heads ("
    " seq INTEGER PRIMARY KEY, size INTEGER NOT NULL, root BLOB NOT NULL, timestamp INTEGER, note BLOB NOT NULL)",
)


def _split(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


class LogStore:
    """The connection and tree state of a :class:`verifiable_mu._log.TransparencyLog`."""

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
    ) -> Self:
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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise LogError("the transparency log is closed")

    # -- transactions ----------------------------------------------------------------------------

    @contextmanager
    def relaxed_sync(self) -> Iterator[Self]:
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
    def full_sync(self) -> Iterator[Self]:
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
    def transaction(self) -> Iterator[Self]:
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
