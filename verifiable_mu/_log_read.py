"""Reading the transparency log: subtree hashes, proofs, entries, signed tree heads, integrity.

Part of :mod:`verifiable_mu._log`: :class:`LogReader` is a base of
:class:`verifiable_mu._log.TransparencyLog`, which adds appending and signing.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

from ._errors import LogCorrupted, LogError, MalformedInput, MalformedNote, VmuError
from ._log_entry import SCHEMA_VERSION, LogEntry, SignedTreeHead, _encode
from ._log_store import _NODE_STRIDE, LogStore
from ._merkle import HASH_SIZE, consistency_path, inclusion_path, leaf_hash, node_hash
from ._note import Checkpoint, NoteVerifier, open_checkpoint
from ._proofs import ConsistencyProof, InclusionProof

__all__ = ["LogReader"]


class LogReader(LogStore):
    """The read-only methods of a :class:`verifiable_mu._log.TransparencyLog`."""

    __slots__ = ()

    # -- reading ---------------------------------------------------------------------------------

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
