"""The prover's state module (prover/_state.py): the one "live as of request n" condition gives
what the three forms it replaced gave (``deleted_by IS NULL`` for now, ``deleted_by > n`` once
request n was done, ``deleted_by >= n`` before request n), a deletion request's plan is one
typed object, stored before retraining starts and read back, strictly, in one place, and no other
prover module runs SQL."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

import prover
from prover import Workspace, WorkspaceError
from prover import _workspace as W
from prover._state import DeletionPlan, live_as_of
from verifiable_mu._wire_bundle import CommitBlock


def _old_forms(db: Any, shard: int, slc: int) -> dict[str, Any]:
    base = "SELECT key, commitment FROM p_records WHERE role='train' AND shard=? AND slice=? AND "
    return {
        "now": lambda: sorted(db.execute(base + "deleted_by IS NULL", (shard, slc))),
        "after": lambda n: sorted(db.execute(base + "(deleted_by IS NULL OR deleted_by > ?)", (shard, slc, n))),
        "before": lambda n: sorted(db.execute(base + "(deleted_by IS NULL OR deleted_by >= ?)", (shard, slc, n))),
    }


def _two_requests(trained_ws: str) -> Workspace:
    """The workspace after two requests, each deleting records of every slice of shard 0."""
    ws = Workspace.open(trained_ws)
    ws.progress = False
    by_slice: dict[int, list[str]] = {}
    for rid, slc in ws._db().execute("SELECT id, slice FROM p_records WHERE role='train' AND shard=0 ORDER BY row"):
        by_slice.setdefault(slc, []).append(rid)
    ws.forget([ids[0] for ids in by_slice.values()])
    ws.forget([ids[1] for ids in by_slice.values()])
    return ws


def test_live_as_of_gives_what_the_three_old_forms_gave(trained_ws: str) -> None:
    with _two_requests(trained_ws) as ws:
        state, cfg = ws._state, ws.config
        seen = set()
        for s in range(cfg.shards):
            for r in range(cfg.slices):
                old = _old_forms(ws._db(), s, r)
                assert sorted(state.slice_records(s, r)) == old["now"]()
                for n in (0, 1, 2, 3):
                    got = sorted(state.slice_records(s, r, after=n))
                    assert got == old["after"](n) == old["before"](n + 1)
                    seen.add(len(got))
                # once the last request is done, "as of it" is "now"
                assert sorted(state.slice_records(s, r, after=2)) == old["now"]()
                live = state.live_rows_by_slice(s).get(r, ([], []))[1]
                assert sorted(live) == sorted(c for _, c in old["now"]())
        assert len(seen) >= 3  # the requests changed the slices: the comparison was not between empty sets
        assert ws.split_ids("deleted") == [i for (i,) in ws._db().execute(
            "SELECT id FROM p_records WHERE deleted_by IS NOT NULL ORDER BY row")]  # fmt: skip
        assert ws.split_ids("train") == [i for (i,) in ws._db().execute(
            "SELECT id FROM p_records WHERE role='train' AND deleted_by IS NULL ORDER BY row")]  # fmt: skip


def test_the_transcripts_queries_as_of_a_request(trained_ws: str) -> None:
    """What the transcript reads through the State: the requests' rows, their deleted records,
    each slice's entry as the log stood at a size, and a shard's retraining span."""
    with _two_requests(trained_ws) as ws:
        st, cfg = ws._state, ws.config
        r1, r2 = st.request_row(1), st.request_row(2)
        assert st.finished_requests() == [1, 2]
        assert r1.deletion_index == r1.size_before < r2.deletion_index == r2.size_before
        for j in range(cfg.slices):
            # before request 1: the commit block's entry; before request 2: request 1's re-logged one
            assert st.slice_entry(0, j, before=r1.size_before) == CommitBlock(cfg.shards, cfg.slices).slice(0, j)
            assert r1.size_before < st.slice_entry(0, j, before=r2.size_before) < r2.size_before
            assert st.slice_entry(0, j) == st.slice_entry(0, j, before=ws.log.size) > r2.size_before
        for n in (1, 2):
            deleted = st.deleted_training(n)
            assert sorted(rid for rid, *_ in deleted) == sorted(st.request_ids(n))
            assert [k for *_, k in deleted] == sorted(k for *_, k in deleted)
            assert {s for _, s, *_ in deleted} == {0} and st.deleted_held_out(n) == []
        gen = st.shard_generation(0)[0]
        first, first_ckpt, end_ckpt = st.retraining_span(0, gen)
        assert gen == 2 and first is not None and first_ckpt is not None and end_ckpt is not None
        assert r2.deletion_index < first_ckpt <= end_ckpt < ws.log.size and first > r2.deletion_index
        assert st.retraining_span(0, 99) == (None, None, None)


def test_no_sql_outside_the_state_modules() -> None:
    """Every SQL statement the prover runs is in prover/_state.py (the schema in _state_schema.py)."""
    sql = re.compile(r"\.execute(many|script)?\(|\b(SELECT|INSERT|UPDATE|DELETE FROM)\b")
    root = Path(prover.__file__).parent
    assert [f.name for f in sorted(root.glob("*.py"))
            if f.name not in ("_state.py", "_state_schema.py") and sql.search(f.read_text())] == []


def test_live_as_of_now_is_never_deleted() -> None:
    cond, at = live_as_of(None)
    assert cond == "(deleted_by IS NULL OR deleted_by > ?)" and at == 2**63 - 1
    assert live_as_of(4) == (cond, 4)


def test_the_stored_plan_is_the_typed_plan_and_what_the_transcript_reads(trained_ws: str) -> None:
    with Workspace.open(trained_ws) as ws:
        ws.progress = False
        rid = ws.split_ids("train")[0]
        rep = ws.forget([rid])
        plan = ws._state.request_plan(rep.request)
        stored = json.loads(ws._db().execute("SELECT plan FROM p_requests WHERE n=?", (rep.request,)).fetchone()[0])
    assert DeletionPlan.from_json(stored) == plan
    assert plan.to_json() == stored  # the column keeps the JSON earlier releases wrote (and _transcript reads)
    assert set(stored) == {"plan", "first_use", "old_slice", "rollback", "model_before"}
    assert tuple(sorted(plan.from_stage)) == rep.shards_retrained and set(plan.rollback) == set(plan.from_stage)
    assert len(plan.first_use) == len(plan.old_slice) == 1 and plan.model_before >= 0


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d.pop("rollback"),
        lambda d: d.update(plan=[1, 2]),
        lambda d: d.update(model_before="x"),
        lambda d: d["first_use"].update({"ab": None}),
    ],
)
def test_a_damaged_stored_plan_is_a_workspace_error(damage: Any) -> None:
    d = DeletionPlan(from_stage={0: 1}, first_use={"ab": 5}, old_slice={"ab": 1}, rollback={0: 9}, model_before=20).to_json()
    damage(d)
    with pytest.raises(WorkspaceError, match="stored plan is damaged"):
        DeletionPlan.from_json(d)


def test_the_plan_is_durable_before_retraining_and_a_resume_uses_it(trained_ws: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Interrupted at its first stage commit, a request has its plan stored; running the same
    request again finishes it with that plan (and reads it back only from the database)."""
    with Workspace.open(trained_ws) as ws:
        ws.progress = False
        rid = ws.split_ids("train")[0]
        with monkeypatch.context() as m:
            m.setattr(W.Workspace, "_commit_stage", lambda self, task, res: (_ for _ in ()).throw(KeyboardInterrupt))
            with pytest.raises(KeyboardInterrupt):
                ws.forget([rid])
    with Workspace.open(trained_ws) as ws:
        ws.progress = False
        assert ws._state.pending_request() == (1, [rid])
        plan = ws._state.request_plan(1)
        read: list[int] = []
        real = W.State.request_plan
        monkeypatch.setattr(W.State, "request_plan", lambda self, n: read.append(n) or real(self, n))
        rep = ws.forget([rid])
        # the resume reads its plan back first (before any retraining), then the transcript reads it too
        assert read == [1, 1] and rep.request == 1
        assert tuple(sorted(plan.from_stage)) == rep.shards_retrained
        assert ws.status()["requests"][0]["status"] == "done"
