"""The prover: committed SISA training, unlearning, transcripts, bad input, crash safety."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from prover import BadInput, Workspace, WorkspaceConfig, WorkspaceLocked, from_arrays, load_digits_dataset
from prover.cli import main as vmu_main
from tests._transcript_check import check_transcript
from tests.conftest import ROOT, SMALL
from verifiable_mu import MalformedKey, SigningKey
from verifiable_mu._canonical import canonical_json

# --- helpers ------------------------------------------------------------------------------


def _open(path: str) -> Workspace:
    ws = Workspace.open(path)
    ws.progress = False
    return ws


def _rows(ws: Workspace, where: str, args: tuple = ()) -> list[tuple]:
    return ws.log.connection.execute(f"SELECT id, shard, slice FROM p_records WHERE role='train' {where}", args).fetchall()


def _forget_and_check(path: str, ids: list[str]) -> dict:
    with _open(path) as ws:
        rep = ws.forget(ids)
        with open(rep.transcript_path, "rb") as f:
            env = f.read()
        pred = check_transcript(env, ws.public_key, ws.log.origin)
        # no logged retraining step names a deleted commitment
        deleted = {r["commitment"] for r in pred["records"]}
        for sh in pred["shards"]:
            for e in ws.log.entries(int(sh["retraining"]["start"]), int(sh["retraining"]["end"])):
                if e.kind == "step":
                    assert not deleted & {c.hex() for c in ws.batch_of(e)}
        assert ws.log.check_integrity() == ws.log.size
        return pred


def _final_digests(path: str) -> list[str]:
    with _open(path) as ws:
        return [d.hex() for d in ws._shard_digests()]


def _vmu(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ, PYTHONPATH=ROOT)
    if env:
        e.update(env)
    return subprocess.run(
        [sys.executable, "-m", "prover.cli", *args], capture_output=True, text=True, env=e, cwd=ROOT, timeout=600
    )


# --- training ---------------------------------------------------------------------------------


def test_train_commits_everything_before_the_first_step(trained_template: str) -> None:
    with _open(trained_template) as ws:
        kinds = [e.kind for e in ws.log.entries(0, ws.log.size)]
        first_step = kinds.index("step")
        assert kinds[0] == "config"
        assert {"slice", "dataset", "audit", "checkpoint"} <= set(kinds[:first_step])
        cfg = ws.log.entry(0).body
        for k in ("seed", "hyper", "platform", "model", "stage_epochs"):
            assert k in cfg
        assert cfg["platform"]["threads"] == 1
        # every step carries its seed and learning rate; in format 2 no batch list (the committed
        # order fixes it), and the prover keeps its own record of the batch
        assert cfg["format"] == 2 and cfg["hyper"]["arithmetic"] == "float32"
        for e in ws.log.entries(first_step, first_step + 5):
            assert e.kind == "step" and {"seed", "lr", "step"} <= set(e.body) and "batch" not in e.body
            assert 0 < len(ws.batch_of(e)) <= ws.config.batch_size
        assert len(canonical_json(ws.log.entry(first_step).body)) < 200
        assert ws.trained and ws.log.check_integrity() == ws.log.size
        key_mode = stat.S_IMODE(os.stat(os.path.join(ws.path, "signing-key.pem")).st_mode)
        assert key_mode == 0o600
        acc = ws.evaluate()
        assert acc is not None and acc > 0.8
        assert abs(ws.predict_proba(ws.data.X[:5], aggregation="vote").sum(axis=1) - 1).max() < 1e-9


def test_data_digest_hashes_the_arrays_in_place() -> None:
    """The data digest (recorded at init, checked at every open) is SHA-256 over X as little-endian
    float32, y as little-endian int64 and the ids joined by newlines, computed on the arrays'
    buffers: no copy of X (a second gigabyte at 10^6 16x16 images, benchmarks/bench_scale.py)."""
    import hashlib
    import tracemalloc

    rng = np.random.default_rng(3)
    ds = from_arrays(rng.random((2048, 32, 32), dtype=np.float32), rng.integers(0, 10, 2048))
    ref = hashlib.sha256(
        ds.X.astype("<f4").tobytes() + ds.y.astype("<i8").tobytes() + "\n".join(ds.ids).encode()
    ).hexdigest()
    tracemalloc.start()
    try:
        got = ds.digest()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got == ref
    assert peak < ds.X.nbytes // 8, f"digest allocated {peak} bytes for an X of {ds.X.nbytes}"


def test_assignment_is_balanced(trained_template: str) -> None:
    with _open(trained_template) as ws:
        sizes = ws.log.connection.execute(
            "SELECT COUNT(*) FROM p_records WHERE role='train' GROUP BY shard, slice"
        ).fetchall()
        assert len(sizes) == SMALL["shards"] * SMALL["slices"]
        assert max(sizes)[0] - min(sizes)[0] <= 1


# --- forgetting: transcripts check with the core's functions alone ------------------------------


def test_single_deletion(trained_ws: str) -> None:
    with _open(trained_ws) as ws:
        rid = _rows(ws, "AND slice=1 LIMIT 1")[0][0]
    pred = _forget_and_check(trained_ws, [rid])
    assert len(pred["shards"]) == 1 and pred["shards"][0]["from_stage"] == 2


def test_batch_deletion_retrains_each_shard_once(trained_ws: str) -> None:
    with _open(trained_ws) as ws:
        ids = [r[0] for r in _rows(ws, "AND slice=2 LIMIT 6")] + [r[0] for r in _rows(ws, "AND slice=0 LIMIT 2")]
        shards = {r[1] for r in _rows(ws, "")} & {
            s for (i, s, _) in _rows(ws, "") if i in ids
        }
    pred = _forget_and_check(trained_ws, ids)
    assert sorted(s["shard"] for s in pred["shards"]) == sorted(shards)
    assert len(pred["records"]) == len(ids)


def test_first_slice_deletion_rolls_back_to_the_initial_model(trained_ws: str) -> None:
    with _open(trained_ws) as ws:
        rid = _rows(ws, "AND slice=0 LIMIT 1")[0][0]
    pred = _forget_and_check(trained_ws, [rid])
    assert pred["shards"][0]["from_stage"] == 1
    assert pred["shards"][0]["rollback"]["entry"]["body"]["stage"] == 0


def test_whole_slice_deletion(trained_ws: str) -> None:
    with _open(trained_ws) as ws:
        ids = [r[0] for r in _rows(ws, "AND shard=1 AND slice=1")]
    pred = _forget_and_check(trained_ws, ids)
    sizes = {i["slice"]["entry"]["body"]["slice"]: i["slice"]["entry"]["body"]["size"] for i in pred["shards"][0]["slices"]}
    assert sizes[1] == "0"


def test_whole_shard_deletion(trained_ws: str) -> None:
    with _open(trained_ws) as ws:
        ids = [r[0] for r in _rows(ws, "AND shard=2")]
    pred = _forget_and_check(trained_ws, ids)
    assert all(i["slice"]["entry"]["body"]["size"] == "0" for i in pred["shards"][0]["slices"])
    with _open(trained_ws) as ws:
        assert ws.evaluate() is not None  # the empty shard still predicts (from its initial weights)


def test_successive_requests_and_status(trained_ws: str) -> None:
    with _open(trained_ws) as ws:
        a, b = (r[0] for r in _rows(ws, "AND shard=0 LIMIT 2"))
    _forget_and_check(trained_ws, [a])
    _forget_and_check(trained_ws, [b])
    with _open(trained_ws) as ws:
        st = ws.status()
    assert st["deleted_records"] == 2 and [r["status"] for r in st["requests"]] == ["done", "done"]
    assert st["shard_state"][0]["generation"] == 2


def test_retraining_twice_is_bit_identical(trained_ws: str, tmp_path: os.PathLike) -> None:
    other = os.path.join(os.fspath(tmp_path), "other")
    shutil.copytree(trained_ws, other)
    with _open(trained_ws) as ws:
        ids = [r[0] for r in _rows(ws, "AND slice=1 LIMIT 3")]
    _forget_and_check(trained_ws, ids)
    _forget_and_check(other, ids)
    a, b = _final_digests(trained_ws), _final_digests(other)
    assert a == b
    for d in a:
        with open(os.path.join(trained_ws, "checkpoints", d + ".safetensors"), "rb") as f1, open(
            os.path.join(other, "checkpoints", d + ".safetensors"), "rb"
        ) as f2:
            assert f1.read() == f2.read()


def test_unlearned_model_does_not_depend_on_the_deleted_record(tmp_path: os.PathLike) -> None:
    """Two owners whose data differ only in record x end with bit-identical models once x is
    forgotten: the retrained shard carries no trace of x's features or label."""
    ds = load_digits_dataset()
    X2, y2 = ds.X.copy(), ds.y.copy()
    ws_a = Workspace.create(os.path.join(os.fspath(tmp_path), "a"), data=ds, config=WorkspaceConfig(**SMALL))
    ws_a.progress = False
    ws_a.train()
    rid, shard, _ = _rows(ws_a, "AND slice=1 LIMIT 1")[0]
    before_a = [d.hex() for d in ws_a._shard_digests()]
    ws_a.close()
    row = ds.ids.index(rid)
    X2[row] = 1.0 - X2[row]
    y2[row] = (y2[row] + 3) % 10
    ws_b = Workspace.create(os.path.join(os.fspath(tmp_path), "b"), data=from_arrays(X2, y2), config=WorkspaceConfig(**SMALL))
    ws_b.progress = False
    ws_b.train()
    before_b = [d.hex() for d in ws_b._shard_digests()]
    ws_b.close()
    assert before_a[shard] != before_b[shard]  # x left a trace before deletion
    assert [d for i, d in enumerate(before_a) if i != shard] == [d for i, d in enumerate(before_b) if i != shard]
    _forget_and_check(os.path.join(os.fspath(tmp_path), "a"), [rid])
    _forget_and_check(os.path.join(os.fspath(tmp_path), "b"), [rid])
    assert _final_digests(os.path.join(os.fspath(tmp_path), "a")) == _final_digests(os.path.join(os.fspath(tmp_path), "b"))


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ids, fragment",
    [
        (["no-such-id"], "unknown record id"),
        ([], "no record ids"),
    ],
)
def test_forget_rejects_bad_ids(trained_ws: str, ids: list[str], fragment: str) -> None:
    with _open(trained_ws) as ws, pytest.raises(BadInput, match=fragment):
        ws.forget(ids)


def test_forget_rejects_duplicates_already_deleted_and_accepts_held_out(trained_ws: str) -> None:
    with _open(trained_ws) as ws:
        rid = _rows(ws, "LIMIT 1")[0][0]
        with pytest.raises(BadInput, match="given twice"):
            ws.forget([rid, rid])
        ws.forget([rid])
        with pytest.raises(BadInput, match="already deleted"):
            ws.forget([rid])
        # A held-out (test split) record is deleted without retraining any shard (issue 12).
        test_id = ws.log.connection.execute("SELECT id FROM p_records WHERE role='test' LIMIT 1").fetchone()[0]
        rep = ws.forget([test_id])
        assert rep.shards_retrained == () and rep.steps == 0
        with pytest.raises(BadInput, match="already deleted"):
            ws.forget([test_id])


def test_forget_refuses_test_records_of_a_log_without_a_committed_test_split(
    trained_ws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A workspace committed by an older release (its audit entry has no test_root): deleting a test
    record could not be proven, so the prover refuses it instead of signing a claim the verifier
    rejects."""
    monkeypatch.setattr(Workspace, "_commits_test_split", lambda self: False)
    with _open(trained_ws) as ws:
        test_id = ws.log.connection.execute("SELECT id FROM p_records WHERE role='test' LIMIT 1").fetchone()[0]
        with pytest.raises(BadInput, match="does not commit"):
            ws.forget([test_id])


def test_cli_exit_codes_and_one_line_errors(trained_ws: str, capsys: pytest.CaptureFixture) -> None:
    assert vmu_main(["forget", trained_ws, "--ids", "no-such-id"]) == 2
    err = capsys.readouterr().err
    assert "unknown record id" in err and "Traceback" not in err and err.count("\n") == 1
    assert vmu_main(["forget", trained_ws, "--ids", ","]) == 2
    assert vmu_main(["status", os.path.join(trained_ws, "nope")]) == 2
    assert "not a verifiable-mu workspace" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        vmu_main(["forget", trained_ws])  # neither --ids nor --ids-file
    assert e.value.code == 2
    assert vmu_main(["forget", trained_ws, "--ids-file", os.path.join(trained_ws, "missing.txt")]) == 2
    assert vmu_main(["status", trained_ws, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trained"] is True


def test_corrupted_data_file_is_refused(trained_ws: str, tmp_path: os.PathLike) -> None:
    with open(os.path.join(trained_ws, "data.npz"), "r+b") as f:
        f.seek(200)
        f.write(b"\xff" * 16)
    with _open(trained_ws) as ws, pytest.raises(BadInput, match="(cannot read data file|does not match)"):
        ws.data  # noqa: B018
    bad = os.path.join(os.fspath(tmp_path), "bad.npz")
    with open(bad, "wb") as f:
        f.write(b"not a zip at all")
    assert vmu_main(["init", os.path.join(os.fspath(tmp_path), "w2"), "--data", bad]) == 2
    np.savez(bad, X=np.zeros((10, 4)), z=np.zeros(10))
    with pytest.raises(BadInput, match="must hold arrays 'X' and 'y'"):
        Workspace.create(os.path.join(os.fspath(tmp_path), "w3"), data=bad)
    np.savez(bad, X=np.full((10, 4), np.nan), y=np.zeros(10, dtype=int))
    with pytest.raises(BadInput, match="NaN"):
        Workspace.create(os.path.join(os.fspath(tmp_path), "w4"), data=bad)
    assert not os.path.exists(os.path.join(os.fspath(tmp_path), "w4"))  # init is all or nothing


def test_newer_workspace_version_is_refused(trained_ws: str, capsys: pytest.CaptureFixture) -> None:
    p = os.path.join(trained_ws, "vmu-workspace.json")
    with open(p) as f:
        cfg = json.load(f)
    cfg["format_version"] = 3
    with open(p, "w") as f:
        json.dump(cfg, f)
    assert vmu_main(["status", trained_ws]) == 2
    assert "format version 3 is not supported" in capsys.readouterr().err


def test_missing_wrong_or_exposed_key(trained_ws: str, capsys: pytest.CaptureFixture) -> None:
    key = os.path.join(trained_ws, "signing-key.pem")
    os.chmod(key, 0o644)
    with pytest.raises(MalformedKey, match="has mode 0644: group/others may access it; run 'chmod 600' on it"):
        Workspace.open(trained_ws)
    os.unlink(key)
    assert vmu_main(["status", trained_ws]) == 2
    assert "signing key" in capsys.readouterr().err
    SigningKey.generate().save(key)
    with pytest.raises(BadInput, match="does not match"):
        Workspace.open(trained_ws)


def test_second_process_is_locked_out(trained_ws: str, capsys: pytest.CaptureFixture) -> None:
    with _open(trained_ws) as ws:
        rid = _rows(ws, "LIMIT 1")[0][0]
        with pytest.raises(WorkspaceLocked, match="another vmu process"):
            Workspace.open(trained_ws)
        proc = _vmu("forget", trained_ws, "--ids", rid)
        assert proc.returncode == 1 and "another vmu process" in proc.stderr and "Traceback" not in proc.stderr
        assert ws.status()["deleted_records"] == 0


# --- crash safety ---------------------------------------------------------------------------


def _check_log_complete(path: str, reference: str) -> None:
    with _open(path) as ws, _open(reference) as ref:
        assert ws.log.check_integrity() == ws.log.size
        got = [(e.kind, e.body.get("shard"), e.body.get("generation"), e.body.get("step")) for e in ws.log.entries(0, ws.log.size)]
        want = [(e.kind, e.body.get("shard"), e.body.get("generation"), e.body.get("step")) for e in ref.log.entries(0, ref.log.size)]
        assert got == want  # nothing lost, nothing doubled, same order
        assert [d.hex() for d in ws._shard_digests()] == [d.hex() for d in ref._shard_digests()]


@pytest.mark.parametrize("point", ["1:inside", "4:after", "8:inside"])
def test_killed_train_resumes_to_the_same_log(point: str, trained_template: str, tmp_path: os.PathLike) -> None:
    path = os.path.join(os.fspath(tmp_path), "ws")
    Workspace.create(path, data="digits", config=WorkspaceConfig(**SMALL)).close()
    crashed = _vmu("train", path, env={"VMU_UNSAFE_FAULT_INJECTION": point})
    assert crashed.returncode == 137, crashed.stderr
    with _open(path) as ws:
        assert not ws.trained and ws.log.check_integrity() == ws.log.size
        head = ws.log.latest_tree_head()
        assert head is not None and head.size <= ws.log.size  # the previous signed head still stands
    again = _vmu("train", path)
    assert again.returncode == 0, again.stderr
    _check_log_complete(path, trained_template)


def test_sigkill_at_random_moments_during_train(trained_template: str, tmp_path: os.PathLike) -> None:
    for i, delay in enumerate((2.5, 3.5, 4.5)):
        path = os.path.join(os.fspath(tmp_path), f"ws{i}")
        Workspace.create(path, data="digits", config=WorkspaceConfig(**SMALL)).close()
        p = subprocess.Popen(
            [sys.executable, "-m", "prover.cli", "train", path],
            env=dict(os.environ, PYTHONPATH=ROOT),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        again = _vmu("train", path)
        assert again.returncode == 0, again.stderr
        _check_log_complete(path, trained_template)


def test_killed_forget_resumes_and_transcript_verifies(trained_ws: str, tmp_path: os.PathLike) -> None:
    ref = os.path.join(os.fspath(tmp_path), "ref")
    shutil.copytree(trained_ws, ref)
    with _open(trained_ws) as ws:
        ids = [r[0] for r in _rows(ws, "AND slice=0 LIMIT 2")]
    crashed = _vmu("forget", trained_ws, "--ids", ",".join(ids), env={"VMU_UNSAFE_FAULT_INJECTION": "2:inside"})
    assert crashed.returncode == 137
    with _open(trained_ws) as ws:
        assert ws.status()["requests"][0]["status"] == "pending"
    again = _vmu("forget", trained_ws, "--ids", ",".join(ids))
    assert again.returncode == 0, again.stderr
    with _open(trained_ws) as ws:
        with open(ws.transcript_paths()[0], "rb") as f:
            check_transcript(f.read(), ws.public_key, ws.log.origin)
    _forget_and_check(ref, ids)
    _check_log_complete(trained_ws, ref)


def test_process_pool_gives_the_same_log_as_inline(tmp_path: os.PathLike) -> None:
    """Shards trained in two worker processes: the same log entries (the driver appends in
    shard order) and the same checkpoints as training inline."""
    a = os.path.join(os.fspath(tmp_path), "a")
    with Workspace.create(a, data="digits", config=WorkspaceConfig(**SMALL)) as ws:
        ws.commit()
    b = os.path.join(os.fspath(tmp_path), "b")
    shutil.copytree(a, b)  # same salts, so the logs must agree byte for byte
    for path, workers in ((a, 1), (b, 2)):
        with _open(path) as ws:
            ws.train(workers=workers)
    with _open(a) as wa, _open(b) as wb:
        assert wa.log.size == wb.log.size
        assert wa.log.root() == wb.log.root()


def test_train_signs_nothing_before_it_is_durable(tmp_path: os.PathLike[str]) -> None:
    """vmu train commits its bulk work with synchronous=NORMAL, but every signed head's commit is
    FULL (its WAL sync makes all before it durable), the run ends with one, and the connection
    is back at FULL afterwards."""
    import verifiable_mu.training as T
    from tests.test_log import _commit_levels

    ws = Workspace.create(os.path.join(os.fspath(tmp_path), "ws"), data="digits", config=WorkspaceConfig(**SMALL))
    ws.progress = False
    try:
        seen: list[str] = []
        ws.log.connection.set_trace_callback(seen.append)
        ws.train()
        ws.log.connection.set_trace_callback(None)
        levels = _commit_levels(seen, 2)
        heads = [lv for lv, head in levels if head]
        assert len(heads) == 2 and set(heads) == {2}  # after the commit block, after training
        assert levels[-1] == (2, True)  # nothing committed after the last signed head
        assert {lv for lv, head in levels if not head} == {1}  # the bulk work: relaxed
        assert ws.log.connection.execute("PRAGMA synchronous").fetchone()[0] == 2
        assert not [n for n in os.listdir(ws.store) if ".tmp." in n]
        for e in ws.log.entries(0, ws.log.size):  # every logged checkpoint is in place, content as named
            if e.kind == "checkpoint":
                path = os.path.join(ws.store, e.body["digest"] + ".safetensors")
                T.load_checkpoint(path, expected_digest=bytes.fromhex(e.body["digest"]))
    finally:
        ws.close()
