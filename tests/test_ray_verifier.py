"""The verifier's Ray backend (issue 6): one Ray task per replayed segment, same verdict as local.

Runs on a real local Ray instance (``ray.init(num_cpus=2)``, no network) with token
authentication on; the token lives in a temporary file named by ``RAY_AUTH_TOKEN_PATH``, so the
tests do not write ``~/.ray``. Skipped only when Ray is not installed.

* an honest bundle: ``verify`` with the Ray backend gives the same JSON report as the local
  backend, timings aside, and its segments really ran as Ray tasks;
* a cheating prover's bundle (retraining skipped, ``test_cheating`` (b)): rejected at step 18
  under Ray with the same error type and message as locally;
* the replay plan itself: tampered segments give the same first failure (in plan order, not in
  completion order), a worker's own exception comes back as it was raised, the mode is kept;
* connection errors and bad arguments are one-line ``MalformedInput`` (exit code 2, not a
  rejection).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import re
import socket
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from conftest_verifier import bundle_for, honest, skip_retraining
from test_cheating import _forge_keep

from verifiable_mu._errors import InvalidBundle, MalformedInput
from verifier import ReplayMismatch, VerifyOptions, _replay, to_json, verify

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))





# --- helpers ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _ray_spy() -> Iterator[list[int]]:
    """Count the segment entries that come back from Ray tasks (proof that Ray ran them)."""
    from verifier import _ray

    seen: list[int] = []
    real = _ray.run_segments

    def spy(plans: Any, **kw: Any) -> Iterator[dict[str, Any]]:
        for seg in real(plans, **kw):
            seen.append(seg["end_index"])
            yield seg

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_ray, "run_segments", spy)
        yield seen


def _verify(data: bytes, backend: str, **opts: Any) -> Any:
    # Step 19 (residual-information tests) does not depend on the replay backend; it is left out
    # (here and below) to keep these tests on step 18 and fast.
    return verify(data, VerifyOptions(backend=backend, residual=False, **opts))


def _without_timings(doc: dict[str, Any]) -> dict[str, Any]:
    d = copy.deepcopy(doc)
    d.pop("timing")
    for c in d["checks"]:
        c.pop("seconds")
    rep = d.get("replay") or {}
    for k in ("seconds", "steps_per_second"):
        rep.pop(k, None)
    for s in rep.get("segments", []):
        s.pop("seconds")
    return d


def _report_without_timings(rep: dict[str, Any]) -> dict[str, Any]:
    return _without_timings({"timing": {}, "checks": [], "replay": rep})["replay"]


_PLAN: dict[str, Any] = {}


def _honest_plan() -> _replay.ReplayPlan:
    """The replay plan step 18 builds for the honest bundle (captured from a local verify)."""
    if "plan" not in _PLAN:
        real = _replay.replay

        def capture(plan: _replay.ReplayPlan, **kw: Any) -> dict[str, Any]:
            _PLAN["plan"] = plan
            return real(plan, **kw)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(_replay, "replay", capture)
            v = verify(honest().bundle, VerifyOptions(residual=False))
            assert v.exit_code == 0, repr(v.failure)
    return _PLAN["plan"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- whole bundles: the same report and verdict whatever the backend ----------------------------


def test_honest_bundle_same_report_on_ray_and_local(ray_local: Any) -> None:
    h = honest()
    local = _verify(h.bundle, "local")
    with _ray_spy() as seen:
        remote = _verify(h.bundle, "ray")
    assert local.exit_code == remote.exit_code == 0, (repr(local.failure), repr(remote.failure))
    segs = local.replay_report["segments"]
    assert len(segs) >= 4 and all(s["match"] and s["bit_exact"] for s in segs)
    assert seen == [s["end_index"] for s in segs], "the segments did not all come back from Ray tasks"
    a, b = to_json(local, path="bundle"), to_json(remote, path="bundle")
    assert _without_timings(b) == _without_timings(a)
    # the timings are real numbers on both sides (what was removed above)
    assert all(s["seconds"] > 0 for s in remote.replay_report["segments"]) and remote.replay_report["seconds"] > 0


def test_cheater_skipping_retraining_rejected_alike_on_ray(ray_local: Any) -> None:
    """test_cheating (b): every retraining checkpoint is the old one; the retraining is part of the
    deletion lineage, replayed in full, so step 18 rejects -- with the same error and message on
    both backends."""

    ws_dir, st = _forge_keep(skip_retraining)
    data, replayed = bundle_for(ws_dir)
    assert st["forged"] <= set(replayed)
    local = _verify(data, "local")
    with _ray_spy() as seen:
        remote = _verify(data, "ray")
    assert seen and f"entry {seen[-1]} " in str(remote.failure)  # the failing segment came back from Ray
    assert local.exit_code == remote.exit_code == 1
    assert local.failed_step == remote.failed_step == 18
    assert type(remote.failure) is type(local.failure) is ReplayMismatch
    assert str(remote.failure) == str(local.failure)
    assert "does not reproduce the logged checkpoint (bit-exact digest differs)" in str(remote.failure)
    assert _without_timings(to_json(remote, path="b")) == _without_timings(to_json(local, path="b"))


# --- the replay plan: order, worker exceptions, modes ---------------------------------------------


def _tampered(plan: _replay.ReplayPlan, **changes: dict[str, Any]) -> _replay.ReplayPlan:
    """``changes[str(i)] = {field: value}`` replaces fields of segment i's SegmentWork."""
    segs = list(plan.segments)
    for i, fields in changes.items():
        segs[int(i)] = dataclasses.replace(segs[int(i)], **fields)
    return dataclasses.replace(plan, segments=tuple(segs))


def test_replay_plan_same_report_and_ray_tasks(ray_local: Any) -> None:
    plan = _honest_plan()
    local = _replay.replay(plan)
    with _ray_spy() as seen:
        remote = _replay.replay(plan, backend="ray", max_parallel=1)  # one task at a time: same answer
    assert _report_without_timings(remote) == _report_without_timings(local)
    assert [s["end_index"] for s in remote["segments"]] == seen == [w.ref.end_index for w in plan.segments]
    # distance mode (the other platforms' comparison) alike
    dist = dataclasses.replace(plan, mode="distance")
    with _ray_spy() as seen:
        a, b = _replay.replay(dist), _replay.replay(dist, backend="ray")
    assert len(seen) == len(plan.segments)
    assert a["mode"] == b["mode"] == "distance" and a["warning"] == b["warning"] and "DISTANCE REPLAY" in a["warning"]
    assert _report_without_timings(b) == _report_without_timings(a)


def test_first_failure_in_plan_order_not_completion_order(ray_local: Any) -> None:
    """Segments 1 and the last are tampered; on Ray all run at once and either may finish first,
    but both backends report segment 1, the first in plan order."""
    plan = _honest_plan()
    n = len(plan.segments)
    other = plan.segments[0].end_digest
    bad = _tampered(plan, **{"1": {"end_digest": other}, str(n - 1): {"end_digest": other}})
    errs = []
    for backend in ("local", "ray"):
        with _ray_spy() as seen, pytest.raises(ReplayMismatch, match=r"bit-exact digest differs") as ei:
            _replay.replay(bad, backend=backend)
        errs.append(str(ei.value))
    assert errs[0] == errs[1]
    assert f"entry {plan.segments[1].ref.end_index} " in errs[1]
    assert seen == [w.ref.end_index for w in plan.segments[:2]]  # Ray answered, up to the failure


def test_worker_exception_comes_back_as_raised(ray_local: Any) -> None:
    plan = _honest_plan()
    bad = _tampered(plan, **{"2": {"start_file": b"not a safetensors file"}})
    errs = []
    for backend in ("local", "ray"):
        with _ray_spy() as seen, pytest.raises(InvalidBundle, match=r"start checkpoint cannot be loaded") as ei:
            _replay.replay(bad, backend=backend)
        errs.append(str(ei.value))
    assert errs[0] == errs[1] and f"entry {plan.segments[2].ref.end_index} " in errs[1]
    assert seen == [w.ref.end_index for w in plan.segments[:2]]  # raised by the Ray task of segment 2


def test_replay_segment_is_pure() -> None:
    """The same SegmentPlan twice, in either order, gives the same entry (no state carried over)."""
    plan = _honest_plan()
    sps = _replay.segment_plans(plan, "exact")
    first = [_replay.replay_segment(sp) for sp in sps]
    again = [_replay.replay_segment(sp) for sp in reversed(sps)][::-1]
    strip = [{k: v for k, v in s.items() if k != "seconds"} for s in first]
    assert strip == [{k: v for k, v in s.items() if k != "seconds"} for s in again]
    assert all(s["match"] for s in first)
    # each task carries only the openings its own batches use
    for sp in sps:
        assert set(sp.openings) == {c for _, batch in sp.work.steps for c in batch}


def test_worker_with_another_torch_is_refused(ray_local: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from verifier import _ray

    sps = _replay.segment_plans(_honest_plan(), "exact")[:1]
    real = torch.__version__
    monkeypatch.setattr(torch, "__version__", "0.0.0+driver")  # the driver's view only
    want = rf"Ray node .* runs torch {re.escape(real)} but this verifier runs torch 0\.0\.0\+driver: replay results"
    with pytest.raises(MalformedInput, match=want):
        list(_ray.run_segments(sps))


# --- connection and argument errors: unusable (exit 2), one line, fast ---------------------------


def test_unreachable_cluster_is_a_clear_error(ray_local: Any) -> None:
    addr = f"127.0.0.1:{_closed_port()}"
    with pytest.raises(MalformedInput, match=rf"^cannot reach the Ray cluster at {addr}: .*refused"):
        _replay.replay(_honest_plan(), backend="ray", ray_address=addr)


def test_bad_backend_arguments() -> None:
    plan = _honest_plan()
    with pytest.raises(MalformedInput, match=r"unknown replay backend 'dask' \(use local or ray\)"):
        _replay.replay(plan, backend="dask")
    with pytest.raises(MalformedInput, match=r"--ray-address needs --backend ray"):
        _replay.replay(plan, backend="local", ray_address="127.0.0.1:6379")


def test_missing_ray_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(MalformedInput, match=r"the Ray backend needs Ray, which is not installed: pip install"):
        _replay.replay(_honest_plan(), backend="ray")
    # a verification with no Ray fails as unusable input (exit 2) at step 18, not as a rejection
    v = verify(honest().bundle, VerifyOptions(backend="ray", residual=False))
    assert v.exit_code == 2 and v.failed_step == 18 and "needs Ray" in str(v.failure)
    assert v.verdict == "unusable"


def test_verifier_ray_module_imports_no_prover() -> None:
    import subprocess

    code = "import verifier._ray, verifiable_mu._ray_support, sys; print('\\n'.join(sorted(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": ROOT}, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    mods = set(r.stdout.split())
    assert not {m for m in mods if m == "prover" or m.startswith("prover.")}
    assert "ray" not in mods and "torch" not in mods  # both only when the backend runs
