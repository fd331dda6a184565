"""What the residual-information tests cost next to the retraining of the deletion they check.

Run as a script for the figures specs/10-residual.md quotes::

    python benchmarks/bench_residual.py              # digits, 5 shards x 4 slices, 50 records, 3 seeds

For each seed it trains SISA on digits with the prover, deletes 50 random records of shard 0
(timing ``Workspace.forget``: the retraining plus its transcript), then times, in the same
process and on the same models:

  * the membership-inference tests with the positive control (4 attacks x 2 model sets,
    1000 bootstrap resamples; model evaluation included);
  * the same with 200 resamples;
  * the canary test (20 marked records' trigger on the audit set);

and prints each as a ratio to the retraining time. pytest-benchmark entry points
(``pytest benchmarks/bench_residual.py``) time the same operations and record the ratio in
``extra_info``.
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


from verifiable_mu._canary import Trigger  # noqa: E402
from verifier._canary import canary_test  # noqa: E402
from verifier._residual import residual_tests  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from test_residual import N_DELETED, digits_run  # noqa: E402


def setup(seed: int, root: str) -> dict[str, Any]:
    """The residual tests' own digits run (tests/test_residual.py: train, delete 50 random
    records of shard 0, time the deletion), as keyword arguments for the tests."""
    run = digits_run(seed, root)
    kw = {**run["kw"], "post_models": run["post"]}
    return {
        "forget_s": run["forget_s"],
        "kw": kw,
        "canary": dict(trigger=Trigger.corner(n_features=64, target=0), post_models=run["post"], pre_models=run["pre"],
                       marked_shards=[0], query_X=kw["audit_X"], query_y=kw["audit_y"]),
    }


def sweep(n: int, root: str) -> int:
    """Honest deletions over seeds 0..n-1, and the same runs with the pre-deletion models passed
    off as post-deletion ones (a prover that skips retraining)."""
    from verifier._canary import clopper_pearson_upper

    honest: dict[str, int] = {"pass": 0, "fail": 0, "inconclusive": 0}
    caught = powered = 0
    for seed in range(n):
        s = setup(seed, root)
        h = residual_tests(n_boot=20, **s["kw"])
        honest[h.verdict] += 1
        if h.control_detected:
            powered += 1
            c = residual_tests(n_boot=20, **{**s["kw"], "post_models": s["kw"]["pre_models"]})
            caught += c.verdict == "fail"
        shutil.rmtree(os.path.join(root, f"ws{seed}"), ignore_errors=True)
        print(f"seed {seed}: {h.verdict}", flush=True)
    lo = 1 - clopper_pearson_upper(n - honest["fail"], n, 0.975) if honest["fail"] else 0.0
    hi = clopper_pearson_upper(honest["fail"], n, 0.975)
    print(f"honest deletions over {n} seeds: {honest}")
    print(f"  false-alarm rate {honest['fail'] / n:.3f} (95% CI {lo:.3f}-{hi:.3f}); alpha = 0.05")
    print(f"  positive control detects: {powered} / {n}")
    print(f"  prover that skips retraining: 'fail' in {caught} of the {powered} runs whose control detects")
    return 0


def _time(fn: Any, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--sweep", type=int, default=0, metavar="N",
                    help="instead: honest and skipping provers over seeds 0..N-1 (false alarms, control power)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    root = tempfile.mkdtemp(prefix="vmu-bench-residual-")
    try:
        if args.sweep:
            return sweep(args.sweep, root)
        rows = []
        for seed in range(args.seeds):
            s = setup(seed, root)
            kw, ckw = s["kw"], s["canary"]
            t1000 = _time(lambda kw=kw: residual_tests(n_boot=1000, **kw))
            t200 = _time(lambda kw=kw: residual_tests(n_boot=200, **kw))
            tcan = _time(lambda ckw=ckw: canary_test(**ckw))
            rows.append((s["forget_s"], t1000, t200, tcan))
            print(f"seed {seed}: retraining {s['forget_s']:.3f} s; residual tests {t1000:.3f} s (1000 resamples), "
                  f"{t200:.3f} s (200); canary {tcan:.4f} s")
        med = [statistics.median(c) for c in zip(*rows, strict=True)]
        print(f"median over {args.seeds} seeds (digits, 5 shards x 4 slices, {N_DELETED} deleted records of one shard):")
        print(f"  residual tests / retraining: {med[1] / med[0]:.2f} (1000 resamples), {med[2] / med[0]:.2f} (200)")
        print(f"  canary test / retraining:    {med[3] / med[0]:.3f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


# --- pytest-benchmark ------------------------------------------------------------------------


def test_residual_tests_vs_retraining(benchmark: Any, tmp_path: Any) -> None:
    s = setup(0, str(tmp_path))
    rep = benchmark(lambda: residual_tests(n_boot=1000, **s["kw"]))
    assert rep.verdict in ("pass", "inconclusive")
    benchmark.extra_info["retraining_s"] = s["forget_s"]
    benchmark.extra_info["ratio_to_retraining"] = benchmark.stats.stats.median / s["forget_s"]


def test_canary_vs_retraining(benchmark: Any, tmp_path: Any) -> None:
    s = setup(0, str(tmp_path))
    benchmark(lambda: canary_test(**s["canary"]))
    benchmark.extra_info["retraining_s"] = s["forget_s"]
    benchmark.extra_info["ratio_to_retraining"] = benchmark.stats.stats.median / s["forget_s"]


if __name__ == "__main__":
    raise SystemExit(main())
