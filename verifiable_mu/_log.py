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

The code is in four parts: entry encoding (:mod:`verifiable_mu._log_entry`), the schema, opening and
transactions (:mod:`verifiable_mu._log_store`), reading, proofs and integrity checks
(:mod:`verifiable_mu._log_read`), and here appending and signing tree heads. Every name is
re-exported from this module.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

from ._canonical import canonical_json
from ._errors import ConsistencyProofFailed, LogCorrupted, LogError, MalformedInput
from ._log_entry import (
    KIND_PATTERN,
    SCHEMA_VERSION,
    LogEntry,
    SignedTreeHead,
    _encode,
    entry_leaf_data,
    entry_leaf_hash,
)
from ._log_read import LogReader
from ._log_store import _NODE_STRIDE
from ._merkle import leaf_hash, node_hash
from ._note import Checkpoint, NoteSigner, open_checkpoint, sign_checkpoint

__all__ = [
    "SCHEMA_VERSION",
    "KIND_PATTERN",
    "entry_leaf_data",
    "entry_leaf_hash",
    "LogEntry",
    "SignedTreeHead",
    "TransparencyLog",
]

_BATCH = 8192


# --- the log ------------------------------------------------------------------------------------


class TransparencyLog(LogReader):
    """An append-only RFC 9162 log in one SQLite file. Not thread-safe; one object per thread.

    Opening, transactions and storage are in :class:`verifiable_mu._log_store.LogStore`; reading,
    proofs, tree heads and integrity checks in :class:`verifiable_mu._log_read.LogReader`.
    """

    __slots__ = ()

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
