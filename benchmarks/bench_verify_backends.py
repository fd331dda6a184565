"""Replay throughput of the verifier's backends (step 18): local vs Ray, 1 and 2 segments at once.

What is timed: :func:`verifier._replay.replay` on the replay plan that step 18 builds for one
bundle (every segment the bundle discloses), up to the report in the driver's hands:

* local: the segments one after the other in this process (what ``vmu-verify`` does by default);
* Ray, 1 and 2 in parallel: one Ray task per segment, ``max_parallel=1 | 2``, on one local Ray
  instance with ``num_cpus=2`` started once; its fixed cost (``ray.init`` and the first tasks,
  which start the workers and import torch there) is measured and reported separately.

The bundle: digits, 4 shards x 2 slices, one deletion, torch pinned to 1 thread (the logged
``threads``), so scaling comes from segments in parallel only. The configurations run
interleaved round by round and the medians are compared; the reports of the three are checked to
be identical apart from timings. Throughput is replayed SGD steps per second of wall time;
"compute" is the same over the segments' own replay times (no scheduling, no transfers).

Run as a script (prints the table and the ratios)::

    PYTHONPATH=. python benchmarks/bench_verify_backends.py [--epochs 60] [--rounds 3]

or under pytest-benchmark (needs ``ray``; the ratios land in ``extra_info`` and are printed)::

    PYTHONPATH=. python -m pytest benchmarks/bench_verify_backends.py --benchmark-only -s

The Ray token goes to a temporary file (``RAY_AUTH_TOKEN_PATH``) unless one is configured, so
this does not write ``~/.ray``.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from pathlib import Path
from typing import Any

try:
    import prover  # noqa: F401
except ImportError:  # script mode from a checkout: python benchmarks/bench_verify_backends.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONFIGS = (("local", 1), ("ray", 1), ("ray", 2))

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _ray_bench  # noqa: E402


def build_plan(root: str, *, epochs: int) -> Any:
    """Train, forget one record, bundle every segment; return step 18's replay plan for it."""
    from prover import Workspace, WorkspaceConfig
    from prover._bundle import write_bundle
    from verifier import VerifyOptions, _replay, verify

    cfg = WorkspaceConfig(shards=4, slices=2, epochs=epochs, seed=1, threads=1, workers=1, device="cpu")
    with Workspace.create(os.path.join(root, "ws"), data="digits", config=cfg) as ws:
        ws.progress = False
        ws.train(workers=1)
        first = ws._db().execute("SELECT id FROM p_records WHERE role='train' ORDER BY row LIMIT 1").fetchone()[0]
        ws.forget([first], workers=1)
        path = os.path.join(root, "bundle.zip")
        write_bundle(ws, path, replay=1000)  # every segment
    captured: dict[str, Any] = {}
    real = _replay.replay

    def capture(plan: Any, **kw: Any) -> dict[str, Any]:
        captured["plan"] = plan
        return real(plan, **kw)

    _replay.replay = capture  # type: ignore[assignment]
    try:
        v = verify(path, VerifyOptions(replay=1000, residual=False))  # step 18 (every segment) is what is measured
    finally:
        _replay.replay = real  # type: ignore[assignment]
    assert [r.status for r in v.results if r.step <= 18] == ["pass"] * 18, repr(v.failure)
    return captured["plan"]


def run_once(backend: str, parallel: int, plan: Any) -> dict[str, Any]:
    from verifier import _replay

    t0 = time.perf_counter()
    rep = _replay.replay(plan, backend=backend, max_parallel=parallel if backend == "ray" else 0)
    wall = time.perf_counter() - t0
    return {
        "wall": wall,
        "steps": rep["steps"],
        "compute": sum(s["seconds"] for s in rep["segments"]),
        "segments": len(rep["segments"]),
        "report": rep,
    }


def _strip(rep: dict[str, Any]) -> dict[str, Any]:
    r = copy.deepcopy(rep)
    r.pop("seconds")
    r.pop("steps_per_second")
    for s in r["segments"]:
        s.pop("seconds")
    return r


def start_ray(num_cpus: int = 2) -> dict[str, float]:
    from verifier._ray import connect

    return _ray_bench.start_ray(connect, num_cpus)


def measure(epochs: int, rounds: int, root: str) -> dict[str, Any]:
    import ray

    plan = build_plan(root, epochs=epochs)
    fixed = start_ray(2)
    try:
        first = run_once("ray", 2, plan)  # workers start and import torch
        base = run_once("local", 1, plan)  # warm the driver
        runs: dict[tuple[str, int], list[dict[str, Any]]] = {c: [] for c in CONFIGS}
        for _ in range(rounds):
            for c in CONFIGS:
                runs[c].append(run_once(c[0], c[1], plan))
        ref = _strip(base["report"])
        for rs in runs.values():
            for r in rs:
                assert _strip(r["report"]) == ref, "a backend gave another report"
        med = _ray_bench.medians(runs)
        fixed["first_tasks_extra"] = first["wall"] - med[("ray", 2)]["wall"]
        return {"median": med, "fixed": fixed, "segments": base["segments"], "steps": base["steps"]}
    finally:
        ray.shutdown()


def report(res: dict[str, Any], *, epochs: int, rounds: int) -> str:
    import torch

    med = res["median"]
    lines = [
        f"torch {torch.__version__}, 1 intra-op thread per segment (logged threads); digits, 4 shards x 2 slices, "
        f"{epochs} epochs, one deletion: {res['segments']} segments, {int(res['steps'])} steps replayed; "
        f"median of {rounds} rounds, interleaved; reports identical apart from timings",
        f"{'backend':<8}{'parallel':>9}{'wall s':>8}{'(min-max)':>13}{'compute s':>10}{'steps/s':>9}{'vs local':>9}",
    ]
    loc = med[("local", 1)]
    for backend, par in CONFIGS:
        m = med[(backend, par)]
        spread = f"{m['wall_min']:.2f}-{m['wall_max']:.2f}"
        lines.append(
            f"{backend:<8}{par:>9}{m['wall']:>8.3f}{spread:>13}{m['compute']:>10.3f}"
            f"{m['steps'] / m['wall']:>9.0f}{loc['wall'] / m['wall']:>8.2f}x"
        )
    r1, r2 = med[("ray", 1)], med[("ray", 2)]
    lines.append(f"Ray 2 in parallel over Ray 1: {r1['wall'] / r2['wall']:.2f}x")
    f = res["fixed"]
    lines.append(
        f"Ray fixed overhead, not in the table: ray.init {f['init']:.2f} s, first tasks +{f['first_tasks_extra']:.2f} s "
        "(worker start and torch import, once per driver)"
    )
    return "\n".join(lines)


# --- pytest-benchmark -------------------------------------------------------------------------------

try:
    import pytest
except ImportError:  # pragma: no cover - script mode without pytest
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture(scope="module")
    def _bench_env(tmp_path_factory: Any) -> Any:
        ray = pytest.importorskip("ray", reason="the Ray backend is an optional extra: pip install '.[ray]'")
        saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "RAY_AUTH_TOKEN_PATH")}
        plan = build_plan(str(tmp_path_factory.mktemp("bench-verify-backends")), epochs=30)
        fixed = start_ray(2)
        t0 = time.perf_counter()
        run_once("ray", 2, plan)
        fixed["first_tasks"] = time.perf_counter() - t0
        yield plan, fixed
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    @pytest.mark.parametrize("parallel", (1, 2))
    def test_ray_vs_local_replay_throughput(benchmark: Any, _bench_env: Any, parallel: int) -> None:
        plan, fixed = _bench_env
        local: list[dict[str, Any]] = []

        def setup() -> tuple[tuple[str, int, Any], dict[str, Any]]:
            local.append(run_once("local", 1, plan))  # side by side: right before each Ray round
            return ("ray", parallel, plan), {}

        benchmark.group = f"replay, Ray {parallel} in parallel vs local"
        out = benchmark.pedantic(run_once, setup=setup, rounds=3, iterations=1, warmup_rounds=0)
        assert _strip(out["report"]) == _strip(local[-1]["report"])
        _ray_bench.record(benchmark, parallel=parallel, local=local, fixed=fixed, label=f"Ray {parallel} in parallel")


# --- script mode ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    return _ray_bench.script_main(
        argv,
        name="bench_verify_backends",
        description=__doc__.split("\n\n")[0],
        epochs_help="SISA epochs per shard (default 60)",
        measure=measure,
        report=report,
    )


if __name__ == "__main__":
    sys.exit(main())
