"""The prover's tables in ``state.db`` beside the transparency log's: their schema, the one "as of
request n" condition, and the typed rows stored in them (:mod:`prover._state` runs every SQL
statement on them).

One SQLite file holds both, so that a stage's log entries and the prover's record of them commit
in one transaction. The tables::

    p_meta      key/value: committed, trained, model_index, model_request, compute-time accounts
    p_records   one row per record: split (role), shard and slice, salt, commitment, key,
                and deleted_by, the request that deleted it (NULL while live)
    p_stage     per shard and stage: the generation, the stage-end step, checkpoint and entries
    p_slices    every logged slice tree (shard, slice, generation), with its log index
    p_shards    per shard: the current generation and the first stage still to train
    p_batches   the data rows of each logged step (format-2 step entries do not list them)
    p_requests  deletion requests: ids, status, the log before them, and their deletion plan

A record is *live as of request n* when no request up to ``n`` deleted it; :func:`live_as_of` is
the one place that condition is written (``n = None``: now, after every request so far).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from verifiable_mu._log import TransparencyLog

from ._errors import WorkspaceError

__all__ = ["NOW", "SCHEMA", "DeletionPlan", "Record", "RequestRow", "create_tables", "live_as_of"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS p_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS p_records(
    row INTEGER PRIMARY KEY, id TEXT NOT NULL, role TEXT NOT NULL,
    shard INTEGER, slice INTEGER, salt BLOB NOT NULL, commitment BLOB NOT NULL, key BLOB NOT NULL,
    deleted_by INTEGER);
CREATE TABLE IF NOT EXISTS p_stage(
    shard INTEGER NOT NULL, stage INTEGER NOT NULL, generation INTEGER NOT NULL, step INTEGER NOT NULL,
    digest BLOB NOT NULL, ckpt_index INTEGER NOT NULL, first_step_index INTEGER, last_step_index INTEGER,
    PRIMARY KEY(shard, stage));
CREATE TABLE IF NOT EXISTS p_slices(
    shard INTEGER NOT NULL, slice INTEGER NOT NULL, generation INTEGER NOT NULL, root BLOB NOT NULL,
    size INTEGER NOT NULL, log_index INTEGER NOT NULL, PRIMARY KEY(shard, slice, generation));
CREATE TABLE IF NOT EXISTS p_shards(
    shard INTEGER PRIMARY KEY, generation INTEGER NOT NULL, target_from INTEGER);
CREATE TABLE IF NOT EXISTS p_batches(idx INTEGER PRIMARY KEY, rows BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS p_requests(
    n INTEGER PRIMARY KEY, ids TEXT NOT NULL, status TEXT NOT NULL, deletion_index INTEGER NOT NULL,
    size_before INTEGER NOT NULL, head_before BLOB NOT NULL, started REAL NOT NULL, seconds REAL,
    transcript TEXT, plan TEXT NOT NULL);
"""

#: Request numbers start at 1; no request (and no log index) is numbered above this (SQLite's
#: largest integer), so "live as of request NOW" means "never deleted".
NOW = 2**63 - 1
_LIVE = "(deleted_by IS NULL OR deleted_by > ?)"


def live_as_of(after: int | None) -> tuple[str, int]:
    """The SQL condition, and its parameter, for a record that no request ``1..after`` deleted
    (``after = n - 1``: as the slice stood before request n; ``None``: now)."""
    return _LIVE, NOW if after is None else after


def create_tables(log: TransparencyLog) -> None:
    """Create the prover's tables beside the log's (where they do not exist yet)."""
    log.connection.executescript(SCHEMA)


class Record(NamedTuple):
    """A record as a deletion request names it; shard and slice are None for a held-out record
    (test or audit split: never trained on, deleted without retraining)."""

    row: int
    id: str
    shard: int | None
    slice: int | None
    commitment: bytes
    key: bytes


class RequestRow(NamedTuple):
    """Where a deletion request stands in the log: its deletion entry, and the log and signed
    tree head before it."""

    deletion_index: int
    size_before: int
    head_before: bytes


@dataclass(frozen=True, slots=True)
class DeletionPlan:
    """What a deletion request retrains, and where its transcript points in the log as it was
    before the request. Stored (durably, before any retraining) in the request's ``plan`` column,
    so that an interrupted request resumes with the plan it started with."""

    from_stage: dict[int, int]  # shard -> first stage to retrain (stages are 1-based)
    first_use: dict[str, int]  # commitment (hex) -> index of the first step entry that used it
    old_slice: dict[str, int]  # commitment (hex) -> index of its slice's entry before the request
    rollback: dict[int, int]  # shard -> index of the checkpoint entry retraining starts from
    model_before: int  # index of the model entry before the request (-1: none)

    def to_json(self) -> dict[str, Any]:
        return {
            "plan": {str(k): v for k, v in self.from_stage.items()},
            "first_use": dict(self.first_use),
            "old_slice": dict(self.old_slice),
            "rollback": {str(k): v for k, v in self.rollback.items()},
            "model_before": self.model_before,
        }

    @classmethod
    def from_json(cls, d: Any) -> DeletionPlan:
        try:
            return cls(
                from_stage={int(k): int(v) for k, v in d["plan"].items()},
                first_use={str(k): int(v) for k, v in d["first_use"].items()},
                old_slice={str(k): int(v) for k, v in d["old_slice"].items()},
                rollback={int(k): int(v) for k, v in d["rollback"].items()},
                model_before=int(d["model_before"]),
            )
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise WorkspaceError(f"a deletion request's stored plan is damaged ({e!r}): the workspace is damaged") from e
