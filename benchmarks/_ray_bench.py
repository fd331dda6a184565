"""What the two Ray benchmarks share (bench_backends.py: shard training; bench_verify_backends.py:
replay): starting the local Ray instance, medians over interleaved rounds, the pytest-benchmark
record of Ray against local, and the script entry point."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = str(Path(__file__).resolve().parents[1])


def start_ray(connect: Callable[..., None], num_cpus: int = 2) -> dict[str, float]:
    """Start the local Ray instance through ``connect`` (the prover's or the verifier's); return
    the seconds it took. Ray workers import this checkout; the token goes to a private temporary
    file unless one is configured, so nothing is written to ``~/.ray``."""
    import ray

    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        path = os.path.join(tempfile.mkdtemp(prefix="vmu-bench-ray-auth-"), "auth_token")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        os.environ["RAY_AUTH_TOKEN_PATH"] = path
    if ray.is_initialized():
        ray.shutdown()
    t0 = time.perf_counter()
    connect(None, num_cpus=num_cpus)
    return {"init": time.perf_counter() - t0}


def medians(runs: dict[Any, list[dict[str, Any]]]) -> dict[Any, dict[str, float]]:
    """Per configuration: the medians of wall, steps and compute, and the wall range."""
    med = {c: {k: statistics.median(r[k] for r in rs) for k in ("wall", "steps", "compute")} for c, rs in runs.items()}
    for c, rs in runs.items():
        med[c]["wall_min"] = min(r["wall"] for r in rs)
        med[c]["wall_max"] = max(r["wall"] for r in rs)
    return med


def record(benchmark: Any, *, parallel: int, local: list[dict[str, Any]], fixed: dict[str, float], label: str) -> None:
    """pytest-benchmark: Ray's median wall time (the benchmark's) against the local runs taken
    side by side, as throughputs and their ratio."""
    ray_wall = benchmark.stats.stats.median
    local_wall = statistics.median(r["wall"] for r in local)
    steps = local[0]["steps"]
    benchmark.extra_info.update(
        parallel=parallel,
        steps=steps,
        local_steps_per_s=steps / local_wall,
        ray_steps_per_s=steps / ray_wall,
        ratio_ray_over_local_throughput=local_wall / ray_wall,
        ray_init_s=fixed["init"],
        ray_first_tasks_s=fixed["first_tasks"],
    )
    print(
        f"\n{label}: local {steps / local_wall:7.0f} steps/s, Ray {steps / ray_wall:7.0f} steps/s, "
        f"Ray/local {local_wall / ray_wall:.2f}x (ray.init {fixed['init']:.2f} s, first tasks "
        f"{fixed['first_tasks']:.2f} s, not included)"
    )


def script_main(
    argv: list[str] | None,
    *,
    name: str,
    description: str,
    epochs_help: str,
    measure: Callable[[int, int, str], dict[str, Any]],
    report: Callable[..., str],
) -> int:
    """``python benchmarks/NAME.py [--epochs E] [--rounds R]``: measure in a temporary folder, print
    the report; exit 2 without Ray."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--epochs", type=int, default=60, help=epochs_help)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    try:
        import ray  # noqa: F401
    except ImportError:
        print(f"{name}: Ray is not installed (pip install '.[ray]')", file=sys.stderr)
        return 2
    logging.getLogger("ray").setLevel(logging.WARNING)
    root = tempfile.mkdtemp(prefix=f"vmu-{name.replace('_', '-')}-")
    try:
        res = measure(args.epochs, args.rounds, root)
        print(report(res, epochs=args.epochs, rounds=args.rounds))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0
