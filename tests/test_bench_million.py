"""Smoke test of benchmarks/bench_million.py (not the benchmark itself: CI never runs that).

Runs its whole code path -- the data generator child, every ``vmu`` and ``vmu-verify`` command as
a child with its peak memory, the table -- at 2,000 records, so that the benchmark cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_million_runs_the_commands_and_prints_the_table(tmp_path: Any) -> None:
    out = os.path.join(os.fspath(tmp_path), "rows.json")
    r = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "bench_million.py"), "--sizes", "2000", "--lineage", "sampled",
         "--standardize", "--work", os.path.join(os.fspath(tmp_path), "w"), "--json", out],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "| records | init s / MiB |" in r.stdout and "| 2,000 |" in r.stdout
    [row] = json.load(open(out))
    for cmd in ("init", "train", "forget", "bundle", "verify"):
        assert row[cmd]["rc"] == 0 and row[cmd]["rss_mib"] > 10 and row[cmd]["wall"] > 0
    assert row["disclosure"]["replay"]["lineage_mode"] == "sampled"
    assert row["steps"] > 0 and row["db_bytes"] > 0 and row["bundle_bytes"] > 0
    assert row["verdict"].startswith("exit 0: verdict: ACCEPTED")
