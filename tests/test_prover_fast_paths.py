"""The prover's fast paths against obviously correct slow versions: the hand-written step-entry
encoder against canonical_json (and the log's pre-encoded body path), the record assignment
against its spec formula."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prover._sisa import assign, step_body_json
from verifiable_mu import MalformedInput
from verifiable_mu._canonical import canonical_json
from verifiable_mu._log import TransparencyLog, entry_leaf_hash
from verifiable_mu._records import record_key
from verifiable_mu._tags import TAG_ASSIGNMENT, tagged_hash

_u63 = st.integers(0, 2**63 - 1)
_small = st.integers(0, 2**31 - 1)
_lr = st.floats(min_value=1e-6, max_value=10.0, allow_nan=False) | st.sampled_from([0.1, 0.05, 1e-3, 1.0, 2.0, 1e-5])
_batch = st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=40).map(lambda cs: "".join(c.hex() for c in cs))


_hints = st.none() | st.lists(
    st.tuples(st.integers(0, 2**16 - 1), st.integers(-1, 2**40), st.integers(-(2**31), 2**31 - 1)), max_size=5
)


@settings(max_examples=300, deadline=None)
@given(_small, _small, _small, _small, _u63, _u63, _lr, _batch, _hints)
def test_step_body_json_is_canonical_json(shard, generation, stage, epoch, step, seed, lr, batch, hints) -> None:
    body = {
        "shard": shard,
        "generation": generation,
        "stage": stage,
        "epoch": epoch,
        "step": str(step),
        "seed": str(seed),
        "lr": lr,
        "batch": batch,
    }
    if hints is not None:
        body["hints"] = [list(h) for h in hints]
    got = step_body_json(
        shard=shard,
        generation=generation,
        stage=stage,
        epoch=epoch,
        step=step,
        seed=seed,
        lr_json=canonical_json(lr),
        batch_hex=batch.encode("ascii"),
        hints=hints,
    )
    assert got == canonical_json(body)


def test_pre_encoded_bodies_hash_and_read_back_like_dicts(tmp_path: os.PathLike) -> None:
    body = {"b": "x", "a": [1, 2], "lr": 0.1}
    log = TransparencyLog.open(os.path.join(os.fspath(tmp_path), "l.db"), origin="test/log", create=True)
    try:
        log.append_many([("step", body), ("step", canonical_json(body))])
        e0, e1 = log.entry(0), log.entry(1)
        assert e0.leaf_hash == e1.leaf_hash == entry_leaf_hash("step", body)
        assert e0.body == e1.body == body
    finally:
        log.close()


@pytest.mark.parametrize("raw", [b"", b"[1]", b'"x"', b"{", b"1}"])
def test_pre_encoded_body_must_be_an_object(raw: bytes, tmp_path: os.PathLike) -> None:
    log = TransparencyLog.open(os.path.join(os.fspath(tmp_path), "l.db"), origin="test/log", create=True)
    try:
        with pytest.raises(MalformedInput, match="canonical JSON object"):
            log.append_many([("step", {"ok": 1}), ("step", raw)])
        assert log.size == 0
    finally:
        log.close()


def _naive_assign(keys: list[bytes], seed: int, shards: int, slices: int) -> list[tuple[int, int]]:
    """specs/06: rank by SHA-256(TAG_ASSIGNMENT || u64be seed || key); rank i -> shard i mod S;
    within a shard, position p of m records -> slice p * R div m."""
    order = sorted(range(len(keys)), key=lambda i: tagged_hash(TAG_ASSIGNMENT, struct.pack(">Q", seed), keys[i]))
    shard_of = {i: rank % shards for rank, i in enumerate(order)}
    members = {s: [i for i in order if shard_of[i] == s] for s in range(shards)}
    out = {}
    for s, rows in members.items():
        for p, i in enumerate(rows):
            out[i] = (s, p * slices // len(rows))
    return [out[i] for i in range(len(keys))]


@settings(max_examples=50, deadline=None)
@given(st.integers(20, 300), _u63, st.integers(1, 6), st.integers(1, 4))
def test_assignment_matches_the_spec_formula(n: int, seed: int, shards: int, slices: int) -> None:
    keys = [record_key(f"r{i}") for i in range(n)]
    shard, slc = assign(keys, seed=seed, shards=shards, slices=slices)
    assert list(zip(shard.tolist(), slc.tolist(), strict=True)) == _naive_assign(keys, seed, shards, slices)


def test_committed_record_rows_match_the_records_row_by_row(tmp_path: os.PathLike) -> None:
    """The commit block's bulk insert of the prover's record table (columns converted as whole
    lists) against each record worked out on its own: commitment from its id, features, label
    and stored salt; key; role from the committed split; shard and slice from the spec's
    assignment formula, for training records only."""
    from prover import Workspace, WorkspaceConfig
    from verifiable_mu._records import commit_record

    ws = Workspace.create(os.path.join(os.fspath(tmp_path), "ws"), data="digits",
                          config=WorkspaceConfig(shards=3, slices=2, epochs=1, workers=1, seed=11))  # fmt: skip
    try:
        ws.commit()
        ds = ws.data
        rows = ws.log.connection.execute(
            "SELECT row, id, role, shard, slice, salt, commitment, key FROM p_records ORDER BY row"
        ).fetchall()
        assert [r[0] for r in rows] == list(range(len(ds.ids)))
        split = ws._split(len(ds.ids))
        train = [i for i in range(len(ds.ids)) if split[i] == 0]
        placed = dict(zip(train, _naive_assign([record_key(ds.ids[i]) for i in train], 11, 3, 2), strict=True))
        for i, rid, role, shard, slc, salt, commitment, key in rows:
            assert rid == ds.ids[i] and key == record_key(rid)
            assert len(salt) == 32 and commitment == commit_record(rid, ds.X[i], int(ds.y[i]), salt)
            assert role == {0: "train", 1: "audit", 2: "test"}[int(split[i])]
            assert (shard, slc) == (placed.get(i, (None, None)))
        assert len({r[5] for r in rows}) == len(rows)  # fresh salts
    finally:
        ws.close()


_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
_special = st.sampled_from([float("nan"), float("inf"), -float("inf"), 3.4028234663852886e38, -3.4028234663852886e38])


@settings(max_examples=300, deadline=None)
@given(st.lists(_f32 | _special, min_size=1, max_size=300), st.sampled_from([(-1,), (3, -1)]))
def test_all_finite_matches_torch_isfinite(values: list[float], shape: tuple[int, ...]) -> None:
    """The divergence check's one-sum test against the element-wise one, with values at the
    float32 limits (a float32 sum would overflow there), infinities of both signs and NaN."""
    import numpy as np
    import torch

    from prover._sisa import all_finite

    if len(shape) == 2:
        values = values[: len(values) // 3 * 3] or [0.0, 0.0, 0.0]
    t = torch.from_numpy(np.array(values, dtype=np.float32).reshape(shape))
    assert all_finite(t) == bool(torch.isfinite(t).all())


def test_all_finite_at_the_float32_limit() -> None:
    import torch

    from prover._sisa import all_finite

    big = torch.full((10_000,), 3.4028234663852886e38)
    assert all_finite(big) and all_finite(-big)  # a float32 sum would be inf here
    big[1234] = float("nan")
    assert not all_finite(big)


def _committed_tasks(tmp_path: os.PathLike) -> tuple:  # type: ignore[type-arg]
    from prover import Workspace, WorkspaceConfig

    ws = Workspace.create(os.path.join(os.fspath(tmp_path), "ws"), data="digits",
                          config=WorkspaceConfig(shards=3, slices=2, epochs=1, workers=1, seed=5))  # fmt: skip
    ws.progress = False
    ws.commit()
    return ws, [ws._shard_task(s) for s in range(3)]


def test_the_inline_backend_hands_over_each_task_once_its_files_are_durable(tmp_path: os.PathLike) -> None:
    """The inline backend syncs a task's checkpoint files while the next one trains: every task
    still comes out in order, with every checkpoint it names in place (never a temporary file),
    and the same results as the plain worker (which syncs before it returns)."""
    from prover import _sisa
    from prover._backend import _inline

    ws, tasks = _committed_tasks(tmp_path)
    try:
        got = []
        for t, out in _inline(tasks):
            for res in out:
                for _, d in res.checkpoints:
                    assert os.path.exists(os.path.join(ws.store, d.hex() + ".safetensors"))
            got.append((t.shard, [(r.stage, r.checkpoints, [s.body for s in r.steps]) for r in out]))
        assert [s for s, _ in got] == [0, 1, 2]
        assert not [n for n in os.listdir(ws.store) if ".tmp." in n]
        want = [(t.shard, [(r.stage, r.checkpoints, [s.body for s in r.steps]) for r in _sisa.train_shard(t)]) for t in tasks]
        assert got == want
    finally:
        ws.close()


def test_the_inline_backend_hands_over_the_task_before_a_failure(tmp_path: os.PathLike, monkeypatch: pytest.MonkeyPatch) -> None:
    from prover import _sisa
    from prover._backend import _inline

    ws, tasks = _committed_tasks(tmp_path)
    real = _sisa.train_shard_staged

    def second_fails(task):  # type: ignore[no-untyped-def]
        if task.shard == 1:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(_sisa, "train_shard_staged", second_fails)
    try:
        gen = _inline(tasks)
        t, out = next(gen)
        assert t.shard == 0 and out
        for _, d in out[-1].checkpoints:
            assert os.path.exists(os.path.join(ws.store, d.hex() + ".safetensors"))
        with pytest.raises(KeyboardInterrupt):
            next(gen)
    finally:
        ws.close()


def test_the_inline_backend_raises_a_failed_sync_and_hands_over_nothing(tmp_path: os.PathLike, monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes

    from prover._backend import _inline
    from verifiable_mu import _seeds

    if _seeds._SYNCFS is None:
        pytest.skip("no syncfs here")
    ws, tasks = _committed_tasks(tmp_path)
    monkeypatch.setattr(_seeds, "_SYNCFS", lambda fd: -1)
    monkeypatch.setattr(ctypes, "get_errno", lambda: 28)  # ENOSPC
    try:
        with pytest.raises(OSError, match="syncfs of .* failed"):
            next(_inline(tasks))
    finally:
        ws.close()


@settings(max_examples=300, deadline=None)
@given(_small, _small, _small, _small, _u63, _u63, _lr)
def test_step_body_template_is_step_body_json(shard, generation, stage, epoch, step, seed, lr) -> None:
    """The per-epoch template filled with a step's seed and number is the step's body, as
    step_body_json writes it (itself checked against canonical_json above)."""
    from prover._sisa import step_body_template

    template = step_body_template(shard=shard, generation=generation, stage=stage, epoch=epoch, lr_json=canonical_json(lr))
    want = step_body_json(shard=shard, generation=generation, stage=stage, epoch=epoch, step=step, seed=seed,
                          lr_json=canonical_json(lr), batch_hex=None)  # fmt: skip
    assert template % (seed, step) == want


def test_a_commit_block_that_fails_commits_nothing_and_leaves_no_temporary_file(tmp_path: os.PathLike, monkeypatch: pytest.MonkeyPatch) -> None:
    """The initial models' files sync on a thread while the trees are built: a failure there
    still waits for it, commits nothing, and leaves no temporary file; a retry commits."""
    import prover._commit as W
    from prover import Workspace, WorkspaceConfig

    ws = Workspace.create(os.path.join(os.fspath(tmp_path), "ws"), data="digits",
                          config=WorkspaceConfig(shards=2, slices=2, epochs=1, workers=1))  # fmt: skip
    try:
        real = W.dataset_root
        monkeypatch.setattr(W, "dataset_root", lambda d: (_ for _ in ()).throw(RuntimeError("disk on fire")))
        with pytest.raises(RuntimeError, match="disk on fire"):
            ws.commit()
        assert not ws.committed and ws.log.size == 0
        assert not [n for n in os.listdir(ws.store) if ".tmp." in n]
        monkeypatch.setattr(W, "dataset_root", real)
        ws.commit()
        assert ws.committed and ws.log.latest_tree_head() is not None
    finally:
        ws.close()
