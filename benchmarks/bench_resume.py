"""Speed-up after an interruption (issue 16): the printed speed-up of a deletion that was
interrupted (Ctrl-C after its first stage commit) and resumed after a pause, against the same
deletion run without interruption, on twin digits 5x4 workspaces, alternating which goes first.

The test (tests/test_speedup.py) shows what is exact: the step counts and the step ratio are the
same, and the pause is not counted. Times are measured here, side by side, never asserted::

    python benchmarks/bench_resume.py [--rounds 7] [--pause 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from prover import Workspace, WorkspaceConfig  # noqa: E402
from prover import _workspace as W  # noqa: E402


def _interrupted_forget(ws: Workspace, ids: list[str], pause: float) -> Any:
    real = W.Workspace._commit_stage
    state = {"n": 0}

    def commit(self: Any, task: Any, res: Any) -> int:
        out = real(self, task, res)
        state["n"] += 1
        if state["n"] == 1:
            raise KeyboardInterrupt
        return out

    W.Workspace._commit_stage = commit  # type: ignore[method-assign]
    try:
        ws.forget(ids)
    except KeyboardInterrupt:
        pass
    finally:
        W.Workspace._commit_stage = real  # type: ignore[method-assign]
    time.sleep(pause)  # the process was away
    return ws.forget(ids)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--pause", type=float, default=2.0)
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="vmu-bench-resume-")
    cfg = WorkspaceConfig(shards=5, slices=4, workers=1, threads=1)
    base = os.path.join(root, "base")
    with Workspace.create(base, data="digits", config=cfg) as ws:
        ws.progress = False
        ws.train()
        rows = ws._db().execute("SELECT id FROM p_records WHERE role='train' AND slice=0 ORDER BY row").fetchall()
    plain, resumed, step_plain, step_resumed = [], [], [], []
    for r in range(args.rounds):
        rid = [rows[r][0]]  # a record of slice 0: its shard retrains every stage (several commits)
        for side in ("pr" if r % 2 == 0 else "rp"):
            d = os.path.join(root, f"{side}{r}")
            shutil.copytree(base, d, ignore=shutil.ignore_patterns(".lock"))
            with Workspace.open(d) as ws:
                ws.progress = False
                rep = ws.forget(rid) if side == "p" else _interrupted_forget(ws, rid, args.pause)
            (plain if side == "p" else resumed).append(rep.speedup)
            (step_plain if side == "p" else step_resumed).append(rep.step_ratio)
            shutil.rmtree(d)
    shutil.rmtree(root, ignore_errors=True)
    p, q = statistics.median(plain), statistics.median(resumed)
    print(f"speed-up of one deletion (digits 5x4, a slice-0 record, {args.rounds} alternating rounds, medians): "
          f"uninterrupted {p:.2f}x, interrupted after its first stage and resumed after a {args.pause:g} s pause "
          f"{q:.2f}x: ratio {q / p:.3f} (within 20%: {'yes' if abs(q / p - 1) <= 0.2 else 'NO'}); step ratios "
          f"{statistics.median(step_plain):.2f}x and {statistics.median(step_resumed):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
