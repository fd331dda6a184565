"""Shard-training throughput of the local and Ray backends, 1 and 2 shards in parallel.

What is timed: the backend running shard tasks exactly as ``Workspace.train`` hands them over
(every stage of a shard from its initial checkpoint, with commitments, step records and
checkpoint files), up to the driver holding every task's results; the driver's log commits are
not included (they are the same for both backends). Each configuration runs ``--rounds`` times,
the configurations interleaved round by round, and the medians are compared:

* local, 1 in parallel: ``run_tasks([shard 0], workers=1)`` -- inline in the driver;
* local, 2 in parallel: ``run_tasks([shard 0, shard 1], workers=2)`` -- a fresh process pool
  (spawn: each process imports torch) per call, as ``vmu train`` does;
* Ray, 1 and 2 in parallel: ``run_ray(..., max_parallel=1 | 2)`` on one local Ray instance with
  ``num_cpus=2`` that is started once; its fixed cost (``ray.init`` and the first tasks, which
  start the workers and import torch there) is measured and reported separately.

Throughput is logged SGD steps per second of wall time; "compute" is the same over the workers'
own stage timings (no start-up, no scheduling). torch intra-op threads are pinned to 1 in every
shard task (the workspace's ``threads``); scaling comes from shards in parallel only.

Run as a script (the table the README quotes)::

    PYTHONPATH=. python benchmarks/bench_backends.py [--epochs 60] [--rounds 3]

or under pytest-benchmark (needs ``ray``; the ratios land in ``extra_info`` and are printed)::

    PYTHONPATH=. python -m pytest benchmarks/bench_backends.py --benchmark-only -s
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

try:
    import prover  # noqa: F401
except ImportError:  # script mode from a checkout: python benchmarks/bench_backends.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prover import Workspace, WorkspaceConfig  # noqa: E402
from prover._backend import available_cores, run_tasks  # noqa: E402
from prover._sisa import ShardTask  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _ray_bench  # noqa: E402

CONFIGS = (("local", 1), ("local", 2), ("ray", 1), ("ray", 2))


def make_workspace(root: str, *, epochs: int) -> Workspace:
    """Digits, 2 shards x 2 slices, committed (no step run yet)."""
    ws = Workspace.create(
        os.path.join(root, "ws"),
        data="digits",
        config=WorkspaceConfig(shards=2, slices=2, epochs=epochs, seed=1, threads=1, workers=1),
    )
    ws.progress = False
    ws._commit()
    return ws


def shard_tasks(ws: Workspace) -> list[ShardTask]:
    tasks = [ws._shard_task(s) for s in range(ws.config.shards)]
    assert all(t is not None and t.threads == 1 for t in tasks)
    return tasks  # type: ignore[return-value]


def run_once(backend: str, parallel: int, tasks: list[ShardTask]) -> dict[str, float]:
    """One timed run of ``parallel`` shard tasks, ``parallel`` at a time."""
    todo = tasks[:parallel]
    t0 = time.perf_counter()
    if backend == "local":
        out = list(run_tasks(todo, backend="local", workers=parallel))
    else:
        from prover._ray import run_ray

        out = list(run_ray(todo, max_parallel=parallel))
    wall = time.perf_counter() - t0
    steps = sum(len(r.steps) for _, res in out for r in res)
    compute = max(sum(r.seconds for r in res) for _, res in out)  # the slowest shard's own time
    return {"wall": wall, "steps": steps, "compute": compute}


def start_ray(num_cpus: int = 2) -> dict[str, float]:
    from prover._ray import connect

    return _ray_bench.start_ray(connect, num_cpus)


def measure(epochs: int, rounds: int, root: str) -> dict[str, Any]:
    import verifiable_mu.training as T

    T.configure_determinism(1)
    ws = make_workspace(root, epochs=epochs)
    try:
        tasks = shard_tasks(ws)
        ray_fixed = start_ray(2)
        # First Ray tasks: both workers start and import torch. Their extra time over a warm run
        # of the same tasks is Ray's per-job start-up cost (paid again by every new driver).
        first = run_once("ray", 2, tasks)
        run_once("local", 1, tasks)  # warm the driver (torch kernels, data cache)
        runs: dict[tuple[str, int], list[dict[str, float]]] = {c: [] for c in CONFIGS}
        for _ in range(rounds):
            for c in CONFIGS:
                runs[c].append(run_once(c[0], c[1], tasks))
        med = _ray_bench.medians(runs)
        ray_fixed["first_tasks_extra"] = first["wall"] - med[("ray", 2)]["wall"]
        return {"median": med, "ray_fixed": ray_fixed, "steps_per_shard": med[("local", 1)]["steps"]}
    finally:
        ws.close()


def report(res: dict[str, Any], *, epochs: int, rounds: int) -> str:
    import torch

    med = res["median"]
    lines = [
        f"torch {torch.__version__}: intra-op threads pinned to 1 per shard task (driver: {torch.get_num_threads()}); "
        f"{available_cores()} cores; digits, 2 shards x 2 slices, {epochs} epochs, "
        f"{int(res['steps_per_shard'])} steps per shard; median of {rounds} rounds, interleaved",
        f"{'backend':<8}{'parallel':>9}{'steps':>7}{'wall s':>8}{'(min-max)':>13}{'compute s':>10}{'other s':>9}"
        f"{'steps/s':>9}{'scaling':>9}{'compute steps/s':>17}{'scaling':>9}",
    ]
    for backend, par in CONFIGS:
        m = med[(backend, par)]
        base = med[(backend, 1)]
        tput, ctput = m["steps"] / m["wall"], m["steps"] / m["compute"]
        scaling = tput / (base["steps"] / base["wall"])
        cscaling = ctput / (base["steps"] / base["compute"])
        spread = f"{m['wall_min']:.2f}-{m['wall_max']:.2f}"
        lines.append(
            f"{backend:<8}{par:>9}{int(m['steps']):>7}{m['wall']:>8.3f}{spread:>13}"
            f"{m['compute']:>10.3f}"
            f"{m['wall'] - m['compute']:>9.3f}{tput:>9.0f}{scaling:>8.2f}x{ctput:>17.0f}{cscaling:>8.2f}x"
        )
    for par in (1, 2):
        r, loc = med[("ray", par)], med[("local", par)]
        lines.append(
            f"Ray / local at {par} in parallel: throughput {loc['wall'] / r['wall']:.2f}x, "
            f"compute throughput {loc['compute'] / r['compute']:.2f}x"
        )
    rf = res["ray_fixed"]
    lines.append(
        f"Ray fixed overhead, not in the table: ray.init {rf['init']:.2f} s (once per driver process), first tasks "
        f"+{rf['first_tasks_extra']:.2f} s (worker start and imports, once per job)"
    )
    lines.append(
        "compute = the slowest shard's own stage time; other = wall - compute (process start, imports, "
        "scheduling, transfers); scaling = steps/s at 2 in parallel over 1, same backend"
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
        import verifiable_mu.training as T

        T.configure_determinism(1)
        ws = make_workspace(str(tmp_path_factory.mktemp("bench-backends")), epochs=30)
        fixed = start_ray(2)
        t0 = time.perf_counter()
        run_once("ray", 2, shard_tasks(ws))
        fixed["first_tasks"] = time.perf_counter() - t0
        yield ws, fixed
        ws.close()
        ray.shutdown()

    @pytest.mark.parametrize("parallel", (1, 2))
    def test_ray_vs_local_throughput(benchmark: Any, _bench_env: Any, parallel: int) -> None:
        ws, fixed = _bench_env
        tasks = shard_tasks(ws)
        local: list[dict[str, float]] = []

        def setup() -> tuple[tuple[str, int, list[ShardTask]], dict[str, Any]]:
            local.append(run_once("local", parallel, tasks))  # side by side: right before each Ray round
            return ("ray", parallel, tasks), {}

        benchmark.group = f"{parallel} shard(s) in parallel"
        benchmark.pedantic(run_once, setup=setup, rounds=3, iterations=1, warmup_rounds=0)
        _ray_bench.record(benchmark, parallel=parallel, local=local, fixed=fixed, label=f"{parallel} in parallel")


# --- script mode ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    return _ray_bench.script_main(
        argv,
        name="bench_backends",
        description=__doc__.split("\n\n")[0],
        epochs_help="SISA epochs per shard (default 60: about 1,200 steps)",
        measure=measure,
        report=report,
    )


if __name__ == "__main__":
    sys.exit(main())
