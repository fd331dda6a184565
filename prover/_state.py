"""The prover's own state: every SQL statement the workspace runs on its tables in ``state.db``
(their schema, and the one "as of request n" condition, are in :mod:`prover._state_schema`).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from verifiable_mu._log import TransparencyLog
from verifiable_mu._note import NoteSigner
from verifiable_mu._sorted_tree import SliceDescriptor, dataset_root

from ._errors import WorkspaceError
from ._state_schema import NOW, SCHEMA, DeletionPlan, Record, RequestRow, create_tables, live_as_of

__all__ = ["SCHEMA", "State", "DeletionPlan", "Record", "RequestRow", "create_tables", "live_as_of"]


class State:
    """The prover's tables and the log they share a database with; signs the log's tree heads.

    Also keeps the compute-time account of the run in progress (``train``, or one request's
    ``forget``): charged inside the transactions that commit its work, so that an interrupted
    and resumed run counts each stage once and the time between the runs never."""

    def __init__(self, log: TransparencyLog, signer: NoteSigner) -> None:
        self.log = log
        self._signer = signer
        self.account: str | None = None  # the run whose compute time stage commits charge
        self.account_clock = 0.0
        self._commit_of_row: np.ndarray | None = None  # (rows, 32) uint8: row -> commitment

    @property
    def db(self) -> sqlite3.Connection:
        return self.log.connection

    # --- meta ----------------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM p_meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO p_meta(key, value) VALUES(?, ?)", (key, value))

    # --- compute time and steps, summed over interrupted and resumed runs ----------------------
    # Each stage commit charges the stage's own compute time (measured where it ran) and the
    # commit's; the driver's own phases (the commit block, a request's rollback, the closing
    # model entry and transcript) charge their wall time. A stage computed but not committed when
    # a run is interrupted is never charged (it is redone, and charged, on resume).

    def start_account(self, account: str, clock: float | None = None) -> None:
        self.account, self.account_clock = account, time.perf_counter() if clock is None else clock

    def charge(self, steps: int, seconds: float) -> None:
        """Inside a transaction: add ``seconds`` and ``steps`` to the open account (if any)."""
        account = self.account
        if account is None:
            return
        secs = float(self.meta(f"{account}_seconds") or 0.0) + seconds
        self.set_meta(f"{account}_seconds", repr(secs))
        self.set_meta(f"{account}_steps", str(int(self.meta(f"{account}_steps") or 0) + steps))

    def charge_phase(self) -> None:
        """Inside a transaction: charge the driver's wall time since the last charge point."""
        now = time.perf_counter()
        self.charge(0, now - self.account_clock)
        self.account_clock = now

    def end_account(self) -> tuple[float, int]:
        """Charge the run's closing phase and close the account; return its totals."""
        account = self.account
        with self.log.transaction():
            self.charge_phase()
        self.account = None
        return self.account_totals(str(account))

    def account_totals(self, account: str) -> tuple[float, int]:
        """Seconds and steps charged to ``account`` (``train``, ``request_<n>``) over all its runs."""
        return float(self.meta(f"{account}_seconds") or 0.0), int(self.meta(f"{account}_steps") or 0)

    # --- signed tree heads ---------------------------------------------------------------------

    def sign_head(self) -> bytes:
        """Sign a tree head over the whole log; timestamps never go backwards, even if the clock does."""
        last = self.log.latest_tree_head()
        ts = max(int(time.time()), (last.timestamp or 0) if last else 0)
        return self.log.sign_tree_head(self._signer, timestamp=ts)

    def ensure_signed_head(self) -> bytes:
        head = self.log.latest_tree_head()
        if head is None or head.size != self.log.size:
            return self.sign_head()
        return head.note

    # --- the commit block ----------------------------------------------------------------------

    def insert_records(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """``(row, id, role, shard, slice, salt, commitment, key)`` per record, then the id index
        (one sort after the bulk insert is cheaper than keeping the index up to date row by row)."""
        self.db.executemany(
            "INSERT INTO p_records(row, id, role, shard, slice, salt, commitment, key) VALUES(?,?,?,?,?,?,?,?)", rows
        )
        self.db.execute("CREATE UNIQUE INDEX IF NOT EXISTS p_records_id ON p_records(id)")

    def insert_slices(self, rows: Iterable[tuple[int, int, int, bytes, int, int]]) -> None:
        """``(shard, slice, generation, root, size, log_index)`` per logged slice tree."""
        self.db.executemany(
            "INSERT INTO p_slices(shard, slice, generation, root, size, log_index) VALUES(?,?,?,?,?,?)", rows
        )

    def insert_initial_models(self, rows: Iterable[tuple[int, bytes, int]]) -> None:
        """``(shard, digest, log_index)`` of each initial model: stage 0 of generation 0, and
        every shard's training still to do from stage 1."""
        rows = list(rows)
        self.db.executemany(
            "INSERT INTO p_stage(shard, stage, generation, step, digest, ckpt_index) VALUES(?,?,?,?,?,?)",
            ((s, 0, 0, 0, d, i) for s, d, i in rows),
        )
        self.db.executemany("INSERT INTO p_shards(shard, generation, target_from) VALUES(?,?,?)", ((s, 0, 1) for s, _, _ in rows))

    # --- records -------------------------------------------------------------------------------

    def slice_records(self, shard: int, slc: int, *, after: int | None = None) -> list[tuple[bytes, bytes]]:
        """``(key, commitment)`` of slice (shard, slc)'s training records live as of request ``after``."""
        live, at = live_as_of(after)
        return list(
            self.db.execute(
                f"SELECT key, commitment FROM p_records WHERE role='train' AND shard=? AND slice=? AND {live}",  # noqa: S608
                (shard, slc, at),
            )
        )

    def live_rows_by_slice(self, shard: int) -> dict[int, tuple[list[int], list[bytes]]]:
        """``slice -> (rows, commitments)`` of a shard's live training records, in key order
        (one query for the whole shard)."""
        out: dict[int, tuple[list[int], list[bytes]]] = {}
        live, at = live_as_of(None)
        for r, row, c in self.db.execute(
            f"SELECT slice, row, commitment FROM p_records WHERE role='train' AND shard=? AND {live} "  # noqa: S608
            "ORDER BY slice, key",
            (shard, at),
        ):
            got = out.get(r)
            if got is None:
                got = out[r] = ([], [])
            got[0].append(row)
            got[1].append(c)
        return out

    def live_count(self, shard: int) -> int:
        live, at = live_as_of(None)
        return int(
            self.db.execute(
                f"SELECT COUNT(*) FROM p_records WHERE role='train' AND shard=? AND {live}", (shard, at)  # noqa: S608
            ).fetchone()[0]
        )

    def split_column(self, column: str, role: str) -> list[Any]:
        """``id`` or ``row`` of a split's live records (``deleted``: every deleted record), in data order."""
        assert column in ("id", "row")
        params: tuple[Any, ...] = ()
        if role == "deleted":
            where = "deleted_by IS NOT NULL"
        else:
            live, at = live_as_of(None)
            where, params = f"role=? AND {live}", (role, at)
        return [v for (v,) in self.db.execute(f"SELECT {column} FROM p_records WHERE {where} ORDER BY row", params)]  # noqa: S608

    def deleted_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM p_records WHERE deleted_by IS NOT NULL").fetchone()[0])

    def record(self, rid: str) -> tuple[int, str, int | None, int | None, bytes, bytes, int | None] | None:
        """``(row, role, shard, slice, commitment, key, deleted_by)`` of record ``rid``, or None."""
        row = self.db.execute(
            "SELECT row, role, shard, slice, commitment, key, deleted_by FROM p_records WHERE id=?", (rid,)
        ).fetchone()
        if row is None:
            return None
        rownum, role, shard, slc, commitment, key, deleted_by = row
        return rownum, role, shard, slc, commitment, key, deleted_by

    def split_records(self, role: str) -> list[tuple[bytes, bytes]]:
        """``(key, commitment)`` of every record of a split, deleted ones included: the split's
        committed tree."""
        return list(self.db.execute("SELECT key, commitment FROM p_records WHERE role=?", (role,)))

    def deleted_training(self, n: int) -> list[tuple[str, int, int, bytes, bytes]]:
        """``(id, shard, slice, commitment, key)`` of the training records request ``n`` deleted, by key."""
        return list(self.db.execute(
            "SELECT id, shard, slice, commitment, key FROM p_records WHERE deleted_by=? AND role='train' ORDER BY key",
            (n,),
        ))

    def deleted_held_out(self, n: int) -> list[tuple[str, bytes, bytes]]:
        """``(role, commitment, key)`` of the held-out (test or audit) records request ``n`` deleted, by key."""
        return list(self.db.execute(
            "SELECT role, commitment, key FROM p_records WHERE deleted_by=? AND role IN ('test', 'audit') ORDER BY key",
            (n,),
        ))

    def record_chunks(self, size: int = 65_536) -> Iterator[list[tuple[int, str, str, bytes, bytes, bytes]]]:
        """Every record's ``(row, id, role, salt, commitment, key)``, streamed in chunks of ``size``."""
        cur = self.db.execute("SELECT row, id, role, salt, commitment, key FROM p_records")
        while chunk := cur.fetchmany(size):
            yield chunk

    def key_of_commitment(self) -> dict[bytes, bytes]:
        """Every record's key, by commitment."""
        return {c: k for k, c in self.db.execute("SELECT key, commitment FROM p_records")}

    def salts(self) -> dict[int, bytes]:
        """Every record's salt, by row."""
        return {int(r): bytes(s) for r, s in self.db.execute("SELECT row, salt FROM p_records")}

    def step_batch(self, index: int) -> list[bytes]:
        """The record commitments of the batch of step entry ``index``, in batch order, from the
        prover's own table of batch rows."""
        got = self.db.execute("SELECT rows FROM p_batches WHERE idx=?", (index,)).fetchone()
        if got is None:
            raise WorkspaceError(f"the prover has no batch for step entry {index}: the workspace is damaged")
        if self._commit_of_row is None:
            # One array, not a dict of a million bytes objects (32 MB at 10^6 records, not ~150).
            n = self.db.execute("SELECT COALESCE(MAX(row), -1) + 1 FROM p_records").fetchone()[0]
            arr = np.zeros((n, 32), dtype=np.uint8)
            cur = self.db.execute("SELECT row, commitment FROM p_records")
            while chunk := cur.fetchmany(65_536):
                arr[[r for r, _ in chunk]] = np.frombuffer(b"".join(c for _, c in chunk), dtype=np.uint8).reshape(-1, 32)
            self._commit_of_row = arr
        table = self._commit_of_row
        return [table[int(r)].tobytes() for r in np.frombuffer(got[0], dtype="<i4")]

    # --- shards, stages and slices -------------------------------------------------------------

    def shard_generation(self, shard: int) -> tuple[int, int | None]:
        """The shard's current generation, and the first stage it still has to train (None: done)."""
        gen, target_from = self.db.execute("SELECT generation, target_from FROM p_shards WHERE shard=?", (shard,)).fetchone()
        return int(gen), target_from

    def shards(self) -> list[tuple[int, int, int | None]]:
        """``(shard, generation, target_from)`` of every shard."""
        return list(self.db.execute("SELECT shard, generation, target_from FROM p_shards ORDER BY shard"))

    def resume_point(self, shard: int, target_from: int, generation: int) -> tuple[int, int, bytes]:
        """``(stage, step, digest)`` training of ``shard`` resumes from: the last stage committed in
        this generation, else the rollback checkpoint (stage ``target_from - 1``, an older generation's)."""
        done = self.db.execute(
            "SELECT stage, step, digest FROM p_stage WHERE shard=? AND stage>=? - 1 AND generation=? "
            "ORDER BY stage DESC LIMIT 1",
            (shard, target_from, generation),
        ).fetchone()
        if done is None:
            done = self.db.execute(
                "SELECT stage, step, digest FROM p_stage WHERE shard=? AND stage=?", (shard, target_from - 1)
            ).fetchone()
        return int(done[0]), int(done[1]), bytes(done[2])

    def commit_stage(
        self, shard: int, generation: int, stage: int, end: tuple[int, bytes, int], steps: Sequence[tuple[int, bytes]],
        *, last: bool,
    ) -> None:
        """Record a committed stage: ``end`` is its ``(step, digest, checkpoint index)``, ``steps``
        each step entry's ``(index, batch rows)``; ``last``: the shard is trained."""
        # The prover's own record of each step's batch (data rows): the log's format-2 step
        # entries do not list it, and bundles and rollbacks need it.
        self.db.executemany("INSERT OR REPLACE INTO p_batches(idx, rows) VALUES(?,?)", steps)
        first, lst = (steps[0][0], steps[-1][0]) if steps else (None, None)
        self.db.execute(
            "INSERT OR REPLACE INTO p_stage(shard, stage, generation, step, digest, ckpt_index, first_step_index, "
            "last_step_index) VALUES(?,?,?,?,?,?,?,?)",
            (shard, stage, generation, end[0], end[1], end[2], first, lst),
        )
        if last:
            self.db.execute("UPDATE p_shards SET target_from=NULL WHERE shard=?", (shard,))

    def stages(self, shard: int) -> dict[int, tuple[int, bytes]]:
        """``stage -> (step, checkpoint digest)`` of every stage of ``shard`` (its newest generation each)."""
        return {int(s): (int(st), bytes(d)) for s, st, d in
                self.db.execute("SELECT stage, step, digest FROM p_stage WHERE shard=?", (shard,))}  # fmt: skip

    def last_stage(self, shard: int, generation: int) -> int | None:
        return self.db.execute(  # type: ignore[no-any-return]
            "SELECT MAX(stage) FROM p_stage WHERE shard=? AND generation=?", (shard, generation)
        ).fetchone()[0]

    def stage_digests(self, stage: int) -> list[bytes]:
        """Every shard's checkpoint digest at the end of ``stage``, in shard order."""
        return [r[0] for r in self.db.execute("SELECT digest FROM p_stage WHERE stage=? ORDER BY shard", (stage,))]

    def stage_step_entries(self, shard: int, stage: int) -> tuple[int, int]:
        """The log indices of the first and last step entry of a shard's stage."""
        first, last = self.db.execute(
            "SELECT first_step_index, last_step_index FROM p_stage WHERE shard=? AND stage=?", (shard, stage)
        ).fetchone()
        return first, last

    def stage_checkpoint_entry(self, shard: int, stage: int) -> int:
        return int(
            self.db.execute("SELECT ckpt_index FROM p_stage WHERE shard=? AND stage=?", (shard, stage)).fetchone()[0]
        )

    def slice_entry(self, shard: int, slc: int, *, before: int | None = None) -> int:
        """The log index of the newest slice entry of (shard, slc) (of those logged before log
        index ``before``; ``None``: of all)."""
        return int(
            self.db.execute(
                "SELECT log_index FROM p_slices WHERE shard=? AND slice=? AND log_index<? "
                "ORDER BY generation DESC LIMIT 1",
                (shard, slc, NOW if before is None else before),
            ).fetchone()[0]
        )

    def retraining_span(self, shard: int, generation: int) -> tuple[int | None, int | None, int | None]:
        """The log indices of the first step entry, the first checkpoint entry and the last
        checkpoint entry of a shard's generation (None: no stage of it)."""
        first, first_ckpt, end_ckpt = self.db.execute(
            "SELECT MIN(first_step_index), MIN(ckpt_index), MAX(ckpt_index) FROM p_stage WHERE shard=? AND generation=?",
            (shard, generation),
        ).fetchone()
        return first, first_ckpt, end_ckpt

    def new_generation(self, shard: int, from_stage: int) -> int:
        """Roll ``shard`` back: a new generation that trains again from ``from_stage``."""
        gen = self.db.execute("SELECT generation FROM p_shards WHERE shard=?", (shard,)).fetchone()[0] + 1
        self.db.execute("UPDATE p_shards SET generation=?, target_from=? WHERE shard=?", (gen, from_stage, shard))
        return int(gen)

    def dataset_root(self) -> bytes:
        """The dataset root over every slice's newest tree."""
        rows = self.db.execute(
            "SELECT shard, slice, size, root FROM p_slices p WHERE generation = "
            "(SELECT MAX(generation) FROM p_slices q WHERE q.shard=p.shard AND q.slice=p.slice) ORDER BY shard, slice"
        ).fetchall()
        return dataset_root([SliceDescriptor(shard=s, slice=r, size=z, root=root) for s, r, z, root in rows])

    # --- deletion requests ---------------------------------------------------------------------

    def next_request(self) -> int:
        return int(self.db.execute("SELECT COALESCE(MAX(n), 0) FROM p_requests").fetchone()[0]) + 1

    def open_request(
        self, n: int, ids: Sequence[str], *, rows: Iterable[int], deletion_index: int, size_before: int,
        head_before: bytes, started: float, plan: DeletionPlan,
    ) -> None:
        """Inside a transaction: mark the request's records deleted and store it as pending,
        with its plan (what a resumed run finishes it with)."""
        self.db.executemany("UPDATE p_records SET deleted_by=? WHERE row=?", ((n, r) for r in rows))
        self.db.execute(
            "INSERT INTO p_requests(n, ids, status, deletion_index, size_before, head_before, started, plan) "
            "VALUES(?,?,?,?,?,?,?,?)",
            (n, json.dumps(list(ids)), "pending", deletion_index, size_before, head_before, started,
             json.dumps(plan.to_json())),
        )

    def pending_request(self) -> tuple[int, list[str]] | None:
        row = self.db.execute("SELECT n, ids FROM p_requests WHERE status='pending' ORDER BY n LIMIT 1").fetchone()
        return None if row is None else (int(row[0]), json.loads(row[1]))

    def request_plan(self, n: int) -> DeletionPlan:
        """The plan request ``n`` was opened with: the one place it is read back."""
        return DeletionPlan.from_json(json.loads(self.db.execute("SELECT plan FROM p_requests WHERE n=?", (n,)).fetchone()[0]))

    def request_row(self, n: int) -> RequestRow:
        """Request ``n``'s deletion entry, and the log size and signed tree head before it."""
        deletion_index, size_before, head_before = self.db.execute(
            "SELECT deletion_index, size_before, head_before FROM p_requests WHERE n=?", (n,)
        ).fetchone()
        return RequestRow(deletion_index, size_before, head_before)

    def finished_requests(self) -> list[int]:
        """The numbers of the finished requests, in order."""
        return [int(n) for (n,) in self.db.execute("SELECT n FROM p_requests WHERE status='done' ORDER BY n")]

    def request_transcript(self, n: int) -> str:
        """The path (relative to the workspace) of request ``n``'s signed transcript."""
        return str(self.db.execute("SELECT transcript FROM p_requests WHERE n=?", (n,)).fetchone()[0])

    def request_ids(self, n: int) -> tuple[str, ...]:
        return tuple(json.loads(self.db.execute("SELECT ids FROM p_requests WHERE n=?", (n,)).fetchone()[0]))

    def close_request(self, n: int, *, seconds: float, transcript: str) -> None:
        with self.log.transaction():
            self.db.execute(
                "UPDATE p_requests SET status='done', seconds=?, transcript=? WHERE n=?", (seconds, transcript, n)
            )

    def requests(self) -> Iterator[dict[str, Any]]:
        for n, i, st, sec, tr in self.db.execute("SELECT n, ids, status, seconds, transcript FROM p_requests ORDER BY n"):
            yield {"n": n, "ids": json.loads(i), "status": st, "seconds": sec, "transcript": tr}
