"""The Ray backend on a real local Ray instance (``ray.init(num_cpus=2)``, no network).

Ray 2.60 turns token authentication on by default; these tests run with it on (the token lives
in a temporary file named by ``RAY_AUTH_TOKEN_PATH``, so the tests do not write ``~/.ray``).
Skipped only when Ray is not installed (CI installs the ``ray`` extra).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import pytest

from prover import BadInput, Workspace, WorkspaceConfig, WorkspaceError
from prover._ray import MAX_RETRIES, TASK_NAME_PREFIX, _host_port, connect, run_ray
from prover.cli import main as vmu_main
from tests._transcript_check import check_transcript
from tests.conftest import ROOT, SMALL

pytestmark = pytest.mark.slow





# --- helpers --------------------------------------------------------------------------------


def _committed_pair(root: str, **cfg: Any) -> tuple[str, str]:
    """One workspace committed once (same salts, same commitments), copied twice."""
    src = os.path.join(root, "src")
    ws = Workspace.create(src, data="digits", config=WorkspaceConfig(**cfg))
    ws._commit()
    ws.close()
    a, b = os.path.join(root, "local"), os.path.join(root, "ray")
    shutil.copytree(src, a)
    shutil.copytree(src, b)
    return a, b


def _open(path: str) -> Workspace:
    ws = Workspace.open(path)
    ws.progress = False
    return ws


def _log_rows(path: str) -> list[tuple[Any, ...]]:
    with _open(path) as ws:
        assert ws.log.check_integrity() == ws.log.size
        return ws.log.connection.execute("SELECT idx, kind, body, leaf_hash FROM log_entries ORDER BY idx").fetchall()


def _checkpoint_files(path: str) -> dict[str, bytes]:
    d = os.path.join(path, "checkpoints")
    out = {}
    for name in sorted(os.listdir(d)):
        if name.endswith(".safetensors"):
            with open(os.path.join(d, name), "rb") as f:
                out[name] = f.read()
    return out


def _forget_ids(path: str) -> list[str]:
    """Two training records in different shards, deterministic."""
    with _open(path) as ws:
        rows = ws.log.connection.execute("SELECT id, shard FROM p_records WHERE role='train' ORDER BY row").fetchall()
    by_shard: dict[int, str] = {}
    for rid, shard in rows:
        by_shard.setdefault(shard, rid)
    return [by_shard[0], by_shard[2]]


def _step_keys(rows: list[tuple[Any, ...]]) -> list[bytes]:
    return [body for _, kind, body, _ in rows if kind == "step"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- same results whatever the backend ----------------------------------------------------------


def test_ray_train_and_forget_are_bit_identical_to_local(ray_local: dict[str, Any], tmp_path: Any) -> None:
    local, remote = _committed_pair(str(tmp_path), **{**SMALL, "workers": 0})
    ids = _forget_ids(local)
    with _open(local) as ws:
        ws.train(backend="local", workers=2)  # a real process pool, not inline
        rep_local = ws.forget(ids, backend="local", workers=2)
        digests_local = [d.hex() for d in ws._shard_digests()]
    with _open(remote) as ws:
        ws.train(backend="ray")
        rep_ray = ws.forget(ids, backend="ray")
        digests_ray = [d.hex() for d in ws._shard_digests()]
        with open(rep_ray.transcript_path, "rb") as f:
            check_transcript(f.read(), ws.public_key, ws.log.origin)

    assert digests_ray == digests_local
    assert rep_ray.shards_retrained == rep_local.shards_retrained == (0, 2)
    assert rep_ray.steps == rep_local.steps > 0
    rows_local, rows_ray = _log_rows(local), _log_rows(remote)
    # the same log, entry for entry and byte for byte (same salts: one commit, copied)
    assert len(rows_ray) == len(rows_local)
    assert rows_ray == rows_local
    # the same checkpoint files, bit for bit
    files_local, files_ray = _checkpoint_files(local), _checkpoint_files(remote)
    assert files_ray.keys() == files_local.keys() and len(files_ray) > 3 * 3
    assert files_ray == files_local


def test_run_ray_yields_in_task_order_with_a_bounded_window(ray_local: dict[str, Any], tmp_path: Any) -> None:
    _, remote = _committed_pair(str(tmp_path), shards=3, slices=2, epochs=2, seed=3)
    with _open(remote) as ws:
        tasks = [ws._shard_task(s) for s in (2, 0, 1)]
        got = list(run_ray(tasks, max_parallel=1))  # type: ignore[arg-type]
    assert [t.shard for t, _ in got] == [2, 0, 1]
    assert all([r.stage for r in res] == [1, 2] for _, res in got)
    assert all(len(r.steps) > 0 and len(r.checkpoints) == 1 for _, res in got for r in res)


# --- a worker killed mid-shard --------------------------------------------------------------------


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _descends_from_us(pid: int) -> bool:
    me = os.getpid()
    for _ in range(8):  # worker -> raylet -> this driver
        pid = _parent(pid)
        if pid == me:
            return True
        if pid <= 1:
            return False
    return False


def _running_shard_tasks() -> dict[int, str]:
    """pid -> process title for the workers of this process's Ray instance that are running a
    shard task now (never another run's workers)."""
    out = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                title = f.read().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title.startswith("ray::" + TASK_NAME_PREFIX) and _descends_from_us(int(p)):
            out[int(p)] = title
    return out


def _kill_one_shard_worker(stop: threading.Event, killed: list[tuple[int, str]], busy_for: float = 0.15) -> None:
    """SIGKILL the first worker seen running the same shard task for ``busy_for`` seconds."""
    since: dict[int, tuple[str, float]] = {}
    while not stop.is_set():
        now = time.monotonic()
        running = _running_shard_tasks()
        for pid, title in running.items():
            t0 = since.get(pid)
            if t0 is None or t0[0] != title:
                since[pid] = (title, now)
            elif now - t0[1] >= busy_for:
                os.kill(pid, signal.SIGKILL)
                killed.append((pid, title))
                return
        since = {p: v for p, v in since.items() if p in running}
        time.sleep(0.01)


def test_worker_killed_mid_shard_is_retried_and_the_log_is_complete(ray_local: dict[str, Any], tmp_path: Any) -> None:
    cfg = dict(shards=2, slices=2, epochs=40, seed=11, workers=1)
    local, remote = _committed_pair(str(tmp_path), **cfg)
    with _open(local) as ws:
        ws.train(backend="local")
    stop = threading.Event()
    killed: list[tuple[int, str]] = []
    killer = threading.Thread(target=_kill_one_shard_worker, args=(stop, killed), daemon=True)
    killer.start()
    try:
        with _open(remote) as ws:  # the driver: the only process that writes the log
            rep = ws.train(backend="ray")
    finally:
        stop.set()
        killer.join(timeout=10)
    assert killed, "no Ray worker was seen running a shard task (nothing was killed)"
    pid, title = killed[0]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # it is really gone; its shard finished on a retry
    assert rep.steps > 0 and MAX_RETRIES >= 1
    rows_local, rows_ray = _log_rows(local), _log_rows(remote)
    steps = _step_keys(rows_ray)
    assert len(steps) == len(set(steps)), "a step was logged twice"
    assert rows_ray == rows_local, f"the log after killing {title} differs from the local run"
    assert _checkpoint_files(remote).keys() >= _checkpoint_files(local).keys()


# --- connection errors and the CLI ----------------------------------------------------------------


def test_unreachable_cluster_is_a_clear_error(ray_local: dict[str, Any], tmp_path: Any) -> None:
    _, remote = _committed_pair(str(tmp_path), shards=2, slices=2, epochs=2, seed=5)
    addr = f"127.0.0.1:{_closed_port()}"
    t0 = time.monotonic()
    with _open(remote) as ws:
        with pytest.raises(WorkspaceError, match=rf"cannot reach the Ray cluster at {addr}: .*refused"):
            ws.train(backend="ray", ray_address=addr)
        assert ws.log.size > 0 and not ws.trained  # committed before, nothing half-written
    assert time.monotonic() - t0 < 30
    with pytest.raises(WorkspaceError, match="cannot reach the Ray cluster at no-such-host.invalid:6379"):
        connect("no-such-host.invalid:6379")


def test_cli_ray_address_errors(ray_local: dict[str, Any], tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    _, remote = _committed_pair(str(tmp_path), shards=2, slices=2, epochs=2, seed=5)
    assert vmu_main(["train", remote, "--ray-address", "127.0.0.1:6379"]) == 2
    assert "--ray-address needs --backend ray" in capsys.readouterr().err
    assert vmu_main(["forget", remote, "--ids", "1", "--backend", "local", "--ray-address", "127.0.0.1:6379"]) == 2
    assert "--ray-address needs --backend ray" in capsys.readouterr().err
    addr = f"127.0.0.1:{_closed_port()}"
    assert vmu_main(["train", remote, "--backend", "ray", "--ray-address", addr]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"vmu: error: cannot reach the Ray cluster at {addr}") and err.count("\n") == 1


def test_worker_that_cannot_see_the_workspace_fails_clearly(ray_local: dict[str, Any], tmp_path: Any) -> None:
    import dataclasses

    _, remote = _committed_pair(str(tmp_path), shards=2, slices=2, epochs=2, seed=5)
    with _open(remote) as ws:
        task = ws._shard_task(0)
    assert task is not None
    moved = dataclasses.replace(task, store=os.path.join(str(tmp_path), "not-mounted-here"))
    with pytest.raises(
        WorkspaceError, match=r"cannot see the workspace's checkpoint store .*not-mounted-here: on a cluster"
    ):
        list(run_ray([moved]))


def test_missing_ray_is_a_clear_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(BadInput, match=r"the Ray backend needs Ray, which is not installed: pip install"):
        connect()


@pytest.mark.parametrize(
    "address, expected",
    [
        ("10.0.0.5:6379", ("10.0.0.5", 6379)),
        ("ray://head.example:10001", ("head.example", 10001)),
        ("[::1]:6379", ("::1", 6379)),
        ("auto", None),
        ("head.example", None),
        ("head.example:port", None),
    ],
)
def test_address_forms(address: str, expected: tuple[str, int] | None) -> None:
    assert _host_port(address) == expected


# --- joining a cluster started with `ray start --head` (token authentication on) -----------------


def _free_port() -> int:
    return _closed_port()


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` is still running (zombies do not count)."""
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _kill_group(pgid: int) -> None:
    """SIGKILL the process group we started and wait until it is gone (at most 10 s)."""
    deadline = time.monotonic() + 10
    while _group_alive(pgid) and time.monotonic() < deadline:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def test_cli_joins_a_ray_start_cluster_with_token_auth(ray_local: dict[str, Any], tmp_path: Any) -> None:
    """`ray start --head` (a second, separate instance) with the token file, then
    `vmu train --backend ray --ray-address ADDR` in another process: RAY_AUTH_MODE is not set
    for it, the token is found through RAY_AUTH_TOKEN_PATH and sent."""
    local, remote = _committed_pair(str(tmp_path), shards=2, slices=2, epochs=4, seed=9, workers=1)
    with _open(local) as ws:
        ws.train(backend="local")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env["RAY_AUTH_TOKEN_PATH"] = ray_local["token_path"]
    env["PYTHONPATH"] = ROOT
    temp_dir = tempfile.mkdtemp(prefix="vmu-ray-", dir="/tmp")  # short: Ray puts unix sockets here
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
         "--disable-usage-stats", f"--temp-dir={temp_dir}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert head.poll() is None, f"ray start failed: {head.stdout.read() if head.stdout else ''}"
                assert time.monotonic() < deadline, "ray start --head did not come up in 60 s"
                time.sleep(0.2)
        out = subprocess.run(
            [sys.executable, "-m", "prover.cli", "train", remote, "--backend", "ray", "--ray-address", f"127.0.0.1:{port}"],
            capture_output=True, text=True, env=env, cwd=ROOT, timeout=180,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        assert "trained 2 shards" in out.stdout
    finally:
        head.terminate()  # `ray start --block` stops its node's processes on SIGTERM (2-5 s)
        try:
            head.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=10)
        head_log = head.stdout.read() if head.stdout else ""
        _kill_group(head.pid)  # anything of that process group still alive (raylet, workers)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert "Token authentication is enabled" in head_log, head_log[-2000:]
    assert _log_rows(remote) == _log_rows(local)
