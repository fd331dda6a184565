"""Bulk appends to the transparency log, relative to a plain SQLite insert of the same rows.

Brief (issue "Foundation", item 5): appending 1,000,000 small entries (``{"i": "123"}``) must
finish on 2 cores, well under a minute (for scale: pymerkle needs about 3.6 s in bulk on SQLite
for 10^6 leaves here, without JSON entries).

* (a) ``TransparencyLog.append_many`` of ``n`` entries ``("step", {"i": str(i)})`` into a fresh
  log: kind validation, RFC 8785 canonical JSON, the leaf hash, the perfect-subtree node hashes,
  and the inserts into ``log_entries`` / ``log_nodes``, in one transaction, then close.
* (b) plain SQLite: the same rows ``(idx, kind, JSON body)`` inserted with ``executemany`` in one
  transaction into one table, body by ``json.dumps(sort_keys=True, separators=(",", ":"))``
  (byte-identical to the canonical form for these bodies), no hashing, same pragmas (WAL,
  synchronous=FULL), then close.

(a) and (b) run alternately, round by round, so both see the same machine load; the ratio reported
is median_time(a) / median_time(b), i.e. how many times a plain insert the log costs.

Run as a script (prints a scaling table, plus root / proof timings showing they stay O(log n))::

    python benchmarks/bench_log.py [--sizes 1000,10000,100000,1000000] [--rounds 3]

or under pytest-benchmark (ratios land in ``extra_info`` and are printed)::

    PYTHONPATH=. python -m pytest benchmarks/bench_log.py --benchmark-only -s
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    from verifiable_mu._log import TransparencyLog
except ImportError:  # script mode from a checkout: python benchmarks/bench_log.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from verifiable_mu._log import TransparencyLog

SIZES = (1_000, 10_000, 100_000, 1_000_000)
ORIGIN = "bench.example/log"
_BATCH = 8192


def entries(n: int) -> Iterator[tuple[str, dict[str, Any]]]:
    return (("step", {"i": str(i)}) for i in range(n))


def _remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        p = Path(f"{path}{suffix}")
        if p.exists():
            p.unlink()


def run_log(path: Path, n: int) -> float:
    """Seconds to create a log at ``path``, append ``n`` entries in bulk, and close it."""
    _remove(path)
    t = time.perf_counter()
    log = TransparencyLog.open(path, origin=ORIGIN, create=True)
    log.append_many(entries(n))
    log.close()
    return time.perf_counter() - t


def run_plain(path: Path, n: int) -> float:
    """Seconds for the plain-SQLite baseline (b) with the same rows and pragmas."""
    _remove(path)
    dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
    t = time.perf_counter()
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("CREATE TABLE rows (idx INTEGER PRIMARY KEY, kind TEXT NOT NULL, body BLOB NOT NULL)")
    con.execute("BEGIN IMMEDIATE")
    batch: list[tuple[int, str, bytes]] = []
    for i, (kind, body) in enumerate(entries(n)):
        batch.append((i, kind, dumps(body).encode("utf-8")))
        if len(batch) >= _BATCH:
            con.executemany("INSERT INTO rows VALUES (?, ?, ?)", batch)
            batch.clear()
    if batch:
        con.executemany("INSERT INTO rows VALUES (?, ?, ?)", batch)
    con.execute("COMMIT")
    con.close()
    return time.perf_counter() - t


def measure(n: int, rounds: int, folder: Path) -> dict[str, float]:
    """Alternate (b) and (a) for ``rounds`` rounds; return medians, the ratio and sizes."""
    log_t: list[float] = []
    plain_t: list[float] = []
    for _ in range(rounds):
        plain_t.append(run_plain(folder / "plain.db", n))
        log_t.append(run_log(folder / "log.db", n))
    out = {
        "n": n,
        "log_s": statistics.median(log_t),
        "plain_s": statistics.median(plain_t),
        "log_mb": (folder / "log.db").stat().st_size / 1e6,
        "plain_mb": (folder / "plain.db").stat().st_size / 1e6,
    }
    out["ratio"] = out["log_s"] / out["plain_s"]
    out.update(proof_timings(folder / "log.db", n))
    _remove(folder / "plain.db")
    _remove(folder / "log.db")
    return out


def proof_timings(path: Path, n: int, k: int = 200) -> dict[str, float]:
    """Mean milliseconds for root(size), inclusion and consistency proofs at random sizes."""
    rng = random.Random(n)
    with TransparencyLog.open(path, origin=ORIGIN) as log:
        sizes = [rng.randint(1, n) for _ in range(k)]
        t = time.perf_counter()
        for s in sizes:
            log.root(s)
        root_ms = (time.perf_counter() - t) / k * 1e3
        t = time.perf_counter()
        for s in sizes:
            log.inclusion_proof(rng.randrange(s), s)
        incl_ms = (time.perf_counter() - t) / k * 1e3
        t = time.perf_counter()
        for s in sizes:
            log.consistency_proof(rng.randint(0, s), s)
        cons_ms = (time.perf_counter() - t) / k * 1e3
    return {"root_ms": root_ms, "inclusion_ms": incl_ms, "consistency_ms": cons_ms}


def _rounds_for(n: int) -> int:
    return max(1, min(7, 300_000 // n))


# --- pytest-benchmark -----------------------------------------------------------------------------

try:
    import pytest
except ImportError:  # pragma: no cover - script mode without pytest
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.mark.parametrize("n", SIZES)
    def test_bulk_append_vs_plain_sqlite(benchmark: Any, tmp_path: Path, n: int) -> None:
        plain_t: list[float] = []

        def setup() -> tuple[tuple[Path, int], dict[str, Any]]:
            # The baseline runs right before each timed log round: same conditions, side by side.
            plain_t.append(run_plain(tmp_path / "plain.db", n))
            return (tmp_path / "log.db", n), {}

        benchmark.group = f"append {n:,}"
        benchmark.pedantic(run_log, setup=setup, rounds=_rounds_for(n), iterations=1, warmup_rounds=0)
        log_median = benchmark.stats.stats.median
        plain_median = statistics.median(plain_t)
        benchmark.extra_info.update(
            n=n, plain_median_s=plain_median, ratio_log_over_plain=log_median / plain_median
        )
        with TransparencyLog.open(tmp_path / "log.db", origin=ORIGIN) as log:
            assert log.size == n
        print(f"\nn={n:>9,}  log {log_median:8.3f} s  plain {plain_median:8.3f} s  ratio {log_median / plain_median:5.2f}")


# --- script mode --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default=",".join(str(s) for s in SIZES), help="comma-separated entry counts")
    ap.add_argument("--rounds", type=int, default=0, help="rounds per size (default: fewer for larger sizes)")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    print(f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs")
    header = (
        f"{'entries':>10} {'log s':>8} {'plain s':>8} {'ratio':>6} {'entries/s':>10} "
        f"{'log MB':>7} {'plain MB':>8} {'root ms':>8} {'incl ms':>8} {'cons ms':>8}"
    )
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory(prefix="vmu-bench-log-") as d:
        for n in sizes:
            r = measure(n, args.rounds or _rounds_for(n), Path(d))
            print(
                f"{n:>10,} {r['log_s']:>8.3f} {r['plain_s']:>8.3f} {r['ratio']:>6.2f} {n / r['log_s']:>10,.0f} "
                f"{r['log_mb']:>7.1f} {r['plain_mb']:>8.1f} {r['root_ms']:>8.3f} {r['inclusion_ms']:>8.3f} "
                f"{r['consistency_ms']:>8.3f}",
                flush=True,
            )
    print("ratio = median log time / median plain-SQLite time, measured alternately in this run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
