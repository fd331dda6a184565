"""Record commitment throughput, relative to raw hashlib.sha256 over the same bytes.

Acceptance criterion (issue "Foundation", item 3): committing 100,000 digits-sized records with
:func:`verifiable_mu._records.commit_records` runs at >= 50% of the throughput of raw
``hashlib.sha256`` over the same bytes, both measured side by side in one run.

* (a) ``commit_records(ids, X, y, salts)`` end to end: validation, the vectorised numpy
  encoding, and one SHA-256 per record.
* (b) ``[hashlib.sha256(b).digest() for b in encodings]`` where ``encodings[i]`` is the pre-built
  byte string ``salt_i || encode_record(record_i)`` (no encoding work at all, only hashing).
* (b') the same with the domain tag in front, ``TAG_RECORD_COMMITMENT || salt || encoding``:
  exactly the bytes (a) hashes. Its digests must equal (a)'s, which checks that (a) and (b')
  hash the same data.

The two are measured alternately for several rounds and the median of each is taken, so both
see the same machine load. The ratio reported is throughput(a) / throughput(b) =
median_time(b) / median_time(a). hashlib is single-threaded; the CPU count is printed only to
describe the machine.

Run as a script (prints the ratios and an informational PASS/FAIL line against 0.5)::

    python benchmarks/bench_commit.py [--n 100000] [--rounds 11]

or under pytest-benchmark (the ratio lands in ``extra_info``)::

    PYTHONPATH=. python -m pytest benchmarks/bench_commit.py --benchmark-only
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

try:
    from verifiable_mu._records import commit_records, encode_record, new_salt_array
    from verifiable_mu._tags import TAG_RECORD_COMMITMENT
except ImportError:  # script mode from a checkout: python benchmarks/bench_commit.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from verifiable_mu._records import commit_records, encode_record, new_salt_array
    from verifiable_mu._tags import TAG_RECORD_COMMITMENT

N_RECORDS = 100_000
ROUNDS = 11
TARGET_RATIO = 0.5


def build_inputs(n: int = N_RECORDS) -> dict[str, Any]:
    """digits (64 float32 features, int64 label) tiled to ``n`` rows, ids ``str(i)``, fresh salts."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x0 = digits.data.astype(np.float32)
    y0 = digits.target.astype(np.int64)
    reps = -(-n // len(x0))
    x = np.ascontiguousarray(np.tile(x0, (reps, 1))[:n])
    y = np.ascontiguousarray(np.tile(y0, reps)[:n])
    ids = [str(i) for i in range(n)]
    salts = new_salt_array(n)
    encodings = [salts[i].tobytes() + encode_record(ids[i], x[i], int(y[i])) for i in range(n)]
    tagged = [TAG_RECORD_COMMITMENT + e for e in encodings]
    return {"ids": ids, "X": x, "y": y, "salts": salts, "encodings": encodings, "tagged": tagged}


def run_commit(inp: dict[str, Any]) -> list[bytes]:
    return commit_records(inp["ids"], inp["X"], inp["y"], inp["salts"])


def run_raw(encodings: list[bytes]) -> list[bytes]:
    sha256 = hashlib.sha256
    return [sha256(b).digest() for b in encodings]


def _timed(fn: Any, *args: Any) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def side_by_side(inp: dict[str, Any], rounds: int = ROUNDS) -> dict[str, Any]:
    """Alternate (a), (b), (b') for ``rounds`` rounds; return medians and ratios."""
    # Correctness first: (a) must hash exactly the bytes of (b').
    if run_commit(inp) != run_raw(inp["tagged"]):
        raise AssertionError("commit_records does not hash TAG || salt || encoding")
    ta: list[float] = []
    tb: list[float] = []
    tt: list[float] = []
    for _ in range(rounds):
        ta.append(_timed(run_commit, inp))
        tb.append(_timed(run_raw, inp["encodings"]))
        tt.append(_timed(run_raw, inp["tagged"]))
    a, b, t = statistics.median(ta), statistics.median(tb), statistics.median(tt)
    n = len(inp["ids"])
    return {
        "n": n,
        "rounds": rounds,
        "bytes_per_record": len(inp["encodings"][0]),
        "commit_s": a,
        "raw_s": b,
        "raw_tagged_s": t,
        "ratio": b / a,
        "ratio_tagged": t / a,
        "commit_records_per_s": n / a,
        "raw_records_per_s": n / b,
    }


def _describe(r: dict[str, Any]) -> str:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        affinity = os.cpu_count()
    return "\n".join(
        [
            f"records: {r['n']}, rounds: {r['rounds']} (median of each), "
            f"salt||encoding: {r['bytes_per_record']} bytes/record",
            f"os.cpu_count(): {os.cpu_count()}, usable CPUs: {affinity} "
            "(hashlib and commit_records are single-threaded)",
            f"(a)  commit_records end to end:      {r['commit_s'] * 1e3:8.1f} ms  "
            f"({r['commit_records_per_s']:,.0f} records/s)",
            f"(b)  raw sha256(salt||encoding):     {r['raw_s'] * 1e3:8.1f} ms  "
            f"({r['raw_records_per_s']:,.0f} records/s)",
            f"(b') raw sha256(tag||salt||encoding): {r['raw_tagged_s'] * 1e3:7.1f} ms",
            f"throughput ratio (a)/(b):  {r['ratio']:.3f}",
            f"throughput ratio (a)/(b'): {r['ratio_tagged']:.3f}",
        ]
    )


# --- pytest-benchmark ---------------------------------------------------------------------

try:
    import pytest
except ImportError:  # pragma: no cover - script mode without pytest
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture(scope="module")
    def inputs() -> dict[str, Any]:
        return build_inputs(N_RECORDS)

    def test_commit_records_100k(benchmark: Any, inputs: dict[str, Any]) -> None:
        benchmark.group = "commit-100k-digits"
        out = benchmark.pedantic(run_commit, args=(inputs,), rounds=ROUNDS, iterations=1, warmup_rounds=1)
        assert len(out) == N_RECORDS

    def test_raw_sha256_100k(benchmark: Any, inputs: dict[str, Any]) -> None:
        benchmark.group = "commit-100k-digits"
        out = benchmark.pedantic(
            run_raw, args=(inputs["encodings"],), rounds=ROUNDS, iterations=1, warmup_rounds=1
        )
        assert len(out) == N_RECORDS

    def test_commit_ratio_side_by_side(benchmark: Any, inputs: dict[str, Any]) -> None:
        """The acceptance ratio, measured alternately in one run (informational, not asserted)."""
        benchmark.group = "commit-ratio"
        r = benchmark.pedantic(side_by_side, args=(inputs, ROUNDS), rounds=1, iterations=1)
        benchmark.extra_info.update(
            {k: r[k] for k in ("n", "ratio", "ratio_tagged", "commit_s", "raw_s")}
            | {"cpu_count": os.cpu_count(), "target_ratio": TARGET_RATIO}
        )
        print()
        print(_describe(r))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=N_RECORDS, help="number of records (default 100000)")
    ap.add_argument("--rounds", type=int, default=ROUNDS, help="alternating rounds (default 11)")
    args = ap.parse_args(argv)
    r = side_by_side(build_inputs(args.n), args.rounds)
    print(_describe(r))
    verdict = "PASS" if r["ratio"] >= TARGET_RATIO else "FAIL"
    print(f"{verdict}: commit_records throughput is {r['ratio']:.0%} of raw hashlib.sha256 (target >= {TARGET_RATIO:.0%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
