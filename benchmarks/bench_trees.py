"""Benchmarks: building sorted slice trees (verifiable_mu._sorted_tree.SortedTree).

pytest-benchmark (the file is named bench_* so the normal test run does not collect it)::

    PYTHONPATH=. python -m pytest benchmarks/bench_trees.py --benchmark-group-by=group

* ``build``: SortedTree.build from 10^3, 10^4, 10^5 and 10^6 random (key, commitment) pairs.
* ``vs-pymerkle``: the same 10^5 leaves built by SortedTree and by pymerkle's InmemoryTree
  (tests-only GPL oracle; it is given the leaf data already sorted and the roots must agree).
  The ratio is measured side by side in one run, interleaved, and printed.

Script mode prints a small table for the README (seconds, and the time relative to 10^3
scaled linearly, so 1.00 means exactly linear)::

    PYTHONPATH=. python benchmarks/bench_trees.py [--max-n 1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from verifiable_mu._sorted_tree import SortedTree, record_leaf_data  # noqa: E402

SIZES = (10**3, 10**4, 10**5, 10**6)
PYMERKLE_N = 10**5


def make_pairs(n: int, seed: int = 0) -> list[tuple[bytes, bytes]]:
    """``n`` random 32-byte (key, commitment) pairs from a seeded generator."""
    rnd = random.Random(seed * 7919 + n)
    return [(rnd.randbytes(32), rnd.randbytes(32)) for _ in range(n)]


def build_ours(pairs: list[tuple[bytes, bytes]]) -> bytes:
    return SortedTree.build(pairs).root


def build_pymerkle(sorted_leaf_data: list[bytes]) -> bytes:
    from pymerkle import InmemoryTree  # GPL-3.0+: benchmarks/tests only, never the library

    tree = InmemoryTree(algorithm="sha256")
    for d in sorted_leaf_data:
        tree.append_entry(d)
    return tree.get_root()


def _time(fn: Callable[[], object]) -> float:
    gc.collect()
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure_ratio(n: int = PYMERKLE_N, rounds: int = 3) -> dict[str, float]:
    """Interleaved timings of ours and pymerkle on the same ``n`` leaves; medians and ratio."""
    pairs = make_pairs(n)
    leaf_data = [record_leaf_data(k, c) for k, c in sorted(pairs)]
    if build_ours(pairs) != build_pymerkle(leaf_data):
        raise AssertionError("SortedTree and pymerkle disagree on the root")
    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(_time(lambda: build_ours(pairs)))
        theirs.append(_time(lambda: build_pymerkle(leaf_data)))
    o, p = statistics.median(ours), statistics.median(theirs)
    return {"n": n, "ours_s": o, "pymerkle_s": p, "pymerkle_over_ours": p / o}


# --- pytest-benchmark -----------------------------------------------------------------------

try:
    import pytest
except ImportError:  # pragma: no cover - script mode without pytest
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.mark.parametrize("n", SIZES, ids=[f"1e{len(str(n)) - 1}" for n in SIZES])
    def test_build_sorted_tree(benchmark, n: int) -> None:  # noqa: ANN001
        benchmark.group = "build"
        pairs = make_pairs(n)
        rounds = 1 if n >= 10**6 else 3 if n >= 10**5 else 10
        root = benchmark.pedantic(build_ours, args=(pairs,), rounds=rounds, iterations=1, warmup_rounds=0)
        assert len(root) == 32
        benchmark.extra_info["records"] = n

    @pytest.fixture(scope="module")
    def pymerkle_inputs() -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
        pairs = make_pairs(PYMERKLE_N)
        return pairs, [record_leaf_data(k, c) for k, c in sorted(pairs)]

    def test_vs_pymerkle_ours(benchmark, pymerkle_inputs) -> None:  # noqa: ANN001
        benchmark.group = "vs-pymerkle"
        pairs, _ = pymerkle_inputs
        benchmark.pedantic(build_ours, args=(pairs,), rounds=3, iterations=1)

    def test_vs_pymerkle_pymerkle(benchmark, pymerkle_inputs) -> None:  # noqa: ANN001
        benchmark.group = "vs-pymerkle"
        pairs, leaf_data = pymerkle_inputs
        root = benchmark.pedantic(build_pymerkle, args=(leaf_data,), rounds=3, iterations=1)
        assert root == build_ours(pairs)

    def test_vs_pymerkle_ratio(benchmark) -> None:  # noqa: ANN001
        """The ratio itself, measured interleaved in one test; recorded in extra_info."""
        benchmark.group = "vs-pymerkle-ratio"
        r = benchmark.pedantic(measure_ratio, kwargs={"rounds": 3}, rounds=1, iterations=1)
        benchmark.extra_info.update(r)
        print(
            f"\n[bench_trees] n={r['n']}: SortedTree {r['ours_s']:.3f} s, pymerkle {r['pymerkle_s']:.3f} s, "
            f"pymerkle/SortedTree = {r['pymerkle_over_ours']:.2f}x"
        )


# --- script mode ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-n", type=int, default=10**6, help="largest number of records (default 10^6)")
    ap.add_argument("--repeat", type=int, default=3, help="timed builds per size; the best is shown")
    ap.add_argument("--no-pymerkle", action="store_true", help="skip the side-by-side pymerkle ratio")
    args = ap.parse_args(argv)
    sizes = [n for n in SIZES if n <= args.max_n]
    best: dict[int, float] = {}
    build_ours(make_pairs(1000, seed=1))  # warm up (first numpy/hashlib calls)
    print(f"{'n':>9}  {'seconds':>8}  {'us/record':>9}  {'vs 1e3 scaled':>13}")
    for n in sizes:
        pairs = make_pairs(n)
        reps = 1 if n >= 10**6 else args.repeat
        best[n] = min(_time(lambda pairs=pairs: build_ours(pairs)) for _ in range(reps))
        base = best[sizes[0]] * n / sizes[0]
        print(f"{n:>9}  {best[n]:>8.3f}  {best[n] / n * 1e6:>9.2f}  {best[n] / base:>13.2f}")
        del pairs
    if not args.no_pymerkle and args.max_n >= PYMERKLE_N:
        try:
            r = measure_ratio(PYMERKLE_N, rounds=args.repeat)
        except ImportError:
            print("pymerkle is not installed; no ratio")
        else:
            print(
                f"pymerkle InmemoryTree, n={r['n']}: {r['pymerkle_s']:.3f} s vs SortedTree {r['ours_s']:.3f} s "
                f"(median of {args.repeat}, interleaved): SortedTree is {r['pymerkle_over_ours']:.2f}x faster"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
