"""Smoke test of benchmarks/bench_scale.py (not the benchmark itself: CI never runs that).

Runs the benchmark's whole code path -- data generator, the prover and verifier children, the
table -- at 2,000 records with tiny settings, so that the benchmark cannot rot unnoticed."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import bench_scale  # noqa: E402


def test_generator_is_seeded_and_class_conditional() -> None:
    X, y = bench_scale.synthetic_images(3000, side=8, seed=1)
    X2, y2 = bench_scale.synthetic_images(3000, side=8, seed=1)
    assert X.shape == (3000, 8, 8) and X.dtype == np.float32 and y.dtype == np.int64
    assert np.array_equal(X, X2) and np.array_equal(y, y2)
    assert not np.array_equal(X, bench_scale.synthetic_images(3000, side=8, seed=2)[0])
    assert X.min() >= 0.0 and X.max() <= 1.0 and set(y.tolist()) == set(range(10))
    # the classes differ: nearest class mean beats chance by far
    means = np.stack([X[y == c].mean(axis=0) for c in range(10)])
    pred = ((X[:, None] - means[None]) ** 2).sum(axis=(2, 3)).argmin(axis=1)
    assert (pred == y).mean() > 0.3  # chance: 0.1


def test_benchmark_code_path_at_2000_records(tmp_path: os.PathLike, capsys: pytest.CaptureFixture) -> None:
    out = os.path.join(tmp_path, "scale.json")
    argv = ["--sizes", "2000", "--side", "8", "--shards", "2", "--shard-records", "0", "--batch", "32", "--checkpoint-every", "4",
            "--replay", "1", "--timeout", "300", "--json", out]
    assert bench_scale.main(argv) == 0
    printed = capsys.readouterr().out
    assert "2,000 records" in printed and "| records |" in printed and "wall time" in printed
    with open(out) as f:
        (r,) = json.load(f)["results"]
    p, v = r["prover"], r["verifier"]
    assert v["exit_code"] == 0 and v["replayed_segments"] >= 1 and v["replay_mode"] == "exact"
    assert p["steps"] == 2 * -(-700 // 32) and p["forget_steps"] > 0
    assert p["bundle_bytes"] > p["bundle_bytes_without_checkpoints"] > 0
    assert set(p["peak_mib"]) == {"commit", "train", "plain", "forget", "bundle"} and v["peak_mib"] > 0
    row = bench_scale.figures(r)
    assert row["records"] == 2000 and row["ratio"] > 0 and 0 < row["log B/step"] < 32 * 64  # format 2: no batch lists
