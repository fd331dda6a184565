"""The prover and verifier at a realistic scale: 10^5 to 10^6 image records, the built-in CNN.

Data: a seeded class-conditional generator (:func:`synthetic_images`): ten classes, each a fixed
random pattern of blobs on a ``side x side`` single-channel image, drawn shifted by up to two
pixels, scaled, with Gaussian noise. Deterministic, nothing downloaded, learnable but not
trivially (nearest class mean: ~90 % at 16x16, ~42 % at 8x8).

For each size, as a user would: ``Workspace.create(from_arrays(X, y))``, ``commit``, ``train``,
``forget`` one record, ``write_bundle`` (Fiat-Shamir sampling, ``--replay`` segments) and
``verifier.verify``. The plain side is the same SISA schedule without commitments, logging or
checkpoint files (``Workspace._shard_task(record=False, from_scratch=True)``, as
benchmarks/bench_prover.py measures it), run in the same process as the verifiable side, the two
sides alternating which goes first from size to size. Each size's prover runs in one child
process and its verifier in another, so that each one's peak RSS (``VmHWM``, reset between
phases through ``/proc/self/clear_refs``) is its own.

Run (the figures in README.md's "Scale" section)::

    python benchmarks/bench_scale.py                      # 10^5, 3x10^5, 10^6 records

It prints one line per size as it goes and then the table and how each figure grows from the
smallest size to the largest. ``--sizes 2000`` runs the same code path in seconds
(tests/test_bench_scale.py does, so that this file cannot rot). Not a test: CI does not run it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402

DEFAULT_SIZES = (100_000, 300_000, 1_000_000)
EVAL_ROWS = 5000  # test records the accuracy is measured on


def synthetic_images(n: int, *, side: int = 16, classes: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` seeded ``(side, side)`` float32 images in [0, 1] and int64 labels in [0, classes).

    Class c's template is the sum of five Gaussian blobs at seeded places; a record is its class
    template rolled by up to two pixels each way, times an amplitude in [0.6, 1.4], plus N(0, 0.35)
    noise, clipped. Generated in chunks of 65,536 rows from one seeded generator: the same
    arguments give the same bytes."""
    rng = np.random.default_rng([seed, n, side, classes])
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    templates = np.zeros((classes, side, side), dtype=np.float32)
    for c in range(classes):
        for _ in range(5):
            cy, cx = rng.uniform(0, side, 2)
            w = rng.uniform(1.0, side / 5)
            templates[c] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * w * w)).astype(np.float32)
        templates[c] /= templates[c].max()
    shifts = range(-2, 3)
    # shifted[c, dy + 2, dx + 2] = template c rolled by (dy, dx)
    shifted = np.stack(
        [np.stack([np.stack([np.roll(t, (dy, dx), (0, 1)) for dx in shifts]) for dy in shifts]) for t in templates]
    )
    y = rng.integers(0, classes, n)
    X = np.empty((n, side, side), dtype=np.float32)
    for a in range(0, n, 65_536):
        b = min(n, a + 65_536)
        m = b - a
        sy, sx = rng.integers(0, 5, m), rng.integers(0, 5, m)
        amp = rng.uniform(0.6, 1.4, m).astype(np.float32)
        chunk = shifted[y[a:b], sy, sx] * amp[:, None, None]
        chunk += rng.standard_normal((m, side, side), dtype=np.float32) * np.float32(0.35)
        np.clip(chunk, 0.0, 1.0, out=chunk)
        X[a:b] = chunk
    return X, y.astype(np.int64)


# --- peak memory ------------------------------------------------------------------------------


def _hwm_mib() -> float:
    """This process's peak RSS since the last :func:`_reset_hwm` (``VmHWM``), in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # pragma: no cover - not Linux


def _reset_hwm() -> None:
    """Reset the peak RSS to the current RSS (Linux >= 4.0: ``5`` to ``/proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # pragma: no cover - not Linux: the peak then covers the whole child
        pass


# --- the two children -------------------------------------------------------------------------


def prover_child(args: dict[str, Any]) -> dict[str, Any]:
    """One size: generate, commit, both sides of training, one deletion, the bundle."""
    import verifiable_mu.training as T
    # by file, not as benchmarks.bench_prover: opacus installs a top-level package named
    # 'benchmarks' that shadows this folder
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_prover import plain_sisa_seconds

    from prover import Workspace, WorkspaceConfig, _sisa, from_arrays
    from prover._bundle import write_bundle
    from verifiable_mu._canonical import canonical_json

    n, root = int(args["n"]), str(args["root"])
    T.configure_determinism(1)
    out: dict[str, Any] = {"n": n}
    t0 = time.perf_counter()
    X, y = synthetic_images(n, side=int(args["side"]))
    out["generate_s"] = time.perf_counter() - t0
    out["data_mib"] = X.nbytes / 2**20
    cfg = WorkspaceConfig(
        shards=int(args["shards"]),
        slices=int(args["slices"]),
        epochs=int(args["epochs"]),
        batch_size=int(args["batch"]),
        checkpoint_every=int(args["checkpoint_every"]),
        model=str(args.get("model", "cnn")),
        workers=1,
        threads=1,
        device="cpu",
    )
    peaks: dict[str, float] = {}
    _reset_hwm()
    t0 = time.perf_counter()
    ws = Workspace.create(os.path.join(root, "ws"), data=from_arrays(X, y), config=cfg)
    ws.progress = False
    del X, y  # the workspace holds the validated copy
    out["create_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ws.commit()
    out["commit_s"] = time.perf_counter() - t0
    peaks["commit"] = _hwm_mib()
    plain_tasks = [ws._shard_task(s, record=False, from_scratch=True) for s in range(cfg.shards)]
    ws._warm_up()
    T.warm_up(ws._model_spec(), T.Hyper.from_json(cfg.hyper_json()), ws.data.input_shape)
    # Alternate which side goes first from size to size (the machine's state drifts).
    order = ("verifiable", "plain") if int(args["index"]) % 2 == 0 else ("plain", "verifiable")
    for side in order:
        _sisa._DATA_CACHE.clear()  # both sides read the data file once
        _reset_hwm()
        if side == "plain":
            out["plain_s"] = plain_sisa_seconds(plain_tasks)
            peaks["plain"] = _hwm_mib()
        else:
            t0 = time.perf_counter()
            rep = ws.train()
            out["train_s"] = time.perf_counter() - t0
            out["steps"] = rep.steps
            peaks["train"] = _hwm_mib()
    out["order"] = "/".join(order)
    del plain_tasks
    _sisa._DATA_CACHE.clear()
    # Accuracy on a fixed sample of the test split: ws.evaluate() scores all of it with every
    # constituent (at 10^6 records, 200,000 records x S models: as long as training itself).
    test = ws.split_rows("test")[:EVAL_ROWS]
    t0 = time.perf_counter()
    p = ws.predict_proba(ws.data.X[test])
    out["accuracy"] = float((p.argmax(axis=1) == ws.data.y[test]).mean())
    out["predict_s_per_record"] = (time.perf_counter() - t0) / len(test)
    step_bytes = [len(canonical_json(e.body)) for e in ws.log.entries(0, ws.log.size) if e.kind == "step"]
    out["log_entries"] = ws.log.size
    out["log_bytes_per_step"] = statistics.mean(step_bytes)
    # One deletion: a training record drawn with a fixed seed.
    train_ids = [r for (r,) in ws._db().execute("SELECT id FROM p_records WHERE role='train' ORDER BY row")]
    rid = random.Random(n).choice(train_ids)
    del train_ids
    _reset_hwm()
    t0 = time.perf_counter()
    frep = ws.forget([rid])
    out["forget_s"] = time.perf_counter() - t0
    out["forget_steps"] = frep.steps
    peaks["forget"] = _hwm_mib()
    _reset_hwm()
    t0 = time.perf_counter()
    info = write_bundle(ws, os.path.join(root, "bundle.vmu"), replay=int(args["replay"]))
    out["bundle_s"] = time.perf_counter() - t0
    peaks["bundle"] = _hwm_mib()
    out["bundle_bytes"] = info.bytes_total
    out["bundle_bytes_without_checkpoints"] = info.bytes_without_checkpoints
    out["segments_sampled"] = info.segments
    out["segments_population"] = info.population
    ws.close()
    out["peak_mib"] = peaks
    return out


def verifier_child(args: dict[str, Any]) -> dict[str, Any]:
    """Verify the bundle once (proof checks, replay of the disclosed segments, step 19)."""
    from verifier import VerifyOptions, verify

    _reset_hwm()
    t0 = time.perf_counter()
    v = verify(str(args["bundle"]), VerifyOptions(replay=int(args["replay"])))
    total = time.perf_counter() - t0
    rr = v.replay_report or {}
    return {
        "exit_code": v.exit_code,
        "failure": None if v.failure is None else f"step {v.failed_step}: {v.failure}",
        "proof_checks_s": v.timings.get("proof_checks_s"),
        "replay_s": v.timings.get("replay_s"),
        "total_s": total,
        "replayed_segments": len(rr.get("segments", [])),
        "replayed_steps": rr.get("steps", 0),
        "replay_mode": rr.get("mode"),
        "residual_s": next((r.seconds for r in v.results if r.step == 19), None),
        "peak_mib": _hwm_mib(),
    }


def _child(kind: str, args: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    """Run one child (a fresh interpreter), return its JSON, and its peak RSS as the kernel
    counted it (``RUSAGE_CHILDREN``: the largest child so far, so only a lower bound check)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, json.dumps(args)]
    env = {**os.environ, "PYTHONPATH": os.path.join(os.path.dirname(__file__), "..")}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"{kind} child for {args.get('n')} records failed:\n{p.stderr[-4000:]}")
    res: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    res["rusage_children_max_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return res


def run_size(index: int, n: int, opts: argparse.Namespace, root: str) -> dict[str, Any]:
    d = os.path.join(root, f"n{n}")
    os.makedirs(d)
    common = {"replay": opts.replay}
    p = _child(
        "prover",
        {
            **common,
            "n": n,
            "index": index,
            "root": d,
            "side": opts.side,
            # With --shard-records the shard count grows with the data, so that the shard a deletion
            # retrains (replayed and opened in full: its whole deletion lineage) keeps its size.
            "shards": max(1, round(0.7 * n / opts.shard_records)) if opts.shard_records else opts.shards,
            "slices": opts.slices,
            "epochs": opts.epochs,
            "batch": opts.batch,
            "checkpoint_every": opts.checkpoint_every,
        },
        opts.timeout,
    )
    v = _child("verifier", {**common, "n": n, "bundle": os.path.join(d, "bundle.vmu")}, opts.timeout)
    if v["exit_code"] != 0:
        raise RuntimeError(f"the honest bundle for {n} records was not accepted: {v['failure']}")
    shutil.rmtree(d, ignore_errors=True)
    return {"prover": p, "verifier": v}


# --- the table --------------------------------------------------------------------------------


def figures(r: dict[str, Any]) -> dict[str, float]:
    """The figures of one size, by column name."""
    p, v = r["prover"], r["verifier"]
    steps = p["steps"]
    return {
        "records": p["n"],
        "steps": steps,
        "plain steps/s": steps / p["plain_s"],
        "verif. steps/s": steps / p["train_s"],
        "ratio": p["train_s"] / p["plain_s"],
        "+commit": (p["train_s"] + p["commit_s"]) / p["plain_s"],
        "commit s": p["commit_s"],
        "log B/step": p["log_bytes_per_step"],
        "forget s": p["forget_s"],
        "bundle KiB": p["bundle_bytes"] / 1024,
        "w/o ckpt KiB": p["bundle_bytes_without_checkpoints"] / 1024,
        "proofs s": v["proof_checks_s"],
        "replay s": v["replay_s"],
        "step 19 s": v["residual_s"],
        "verify s": v["total_s"],
        "prover MiB": max(p["peak_mib"][k] for k in ("commit", "train", "forget", "bundle")),
        "verifier MiB": v["peak_mib"],
    }


_FMT = {"records": "{:,.0f}", "steps": "{:,.0f}", "ratio": "{:.3f}", "+commit": "{:.3f}", "log B/step": "{:.0f}"}


def table(results: list[dict[str, Any]]) -> str:
    rows = [figures(r) for r in results]
    cols = list(rows[0])
    cells = [[_FMT.get(c, "{:,.1f}" if rows[0][c] < 1000 else "{:,.0f}").format(row[c]) for c in cols] for row in rows]
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        cells.append([f"x{last[c] / first[c]:.2f}" if first[c] else "-" for c in cols])
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    lines = ["| " + " | ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    for i, x in enumerate(cells):
        if len(rows) > 1 and i == len(cells) - 1:
            x = [f"growth {rows[0]['records']:,.0f} to {rows[-1]['records']:,.0f}" if j == 0 else c for j, c in enumerate(x)]
            widths[0] = max(widths[0], len(x[0]))
        lines.append("| " + " | ".join(c.rjust(w) for c, w in zip(x, widths, strict=True)) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="comma-separated record counts")
    ap.add_argument("--side", type=int, default=16, help="image side in pixels (side x side, one channel)")
    ap.add_argument("--shards", type=int, default=10, help="shards, when --shard-records is 0")
    ap.add_argument("--shard-records", type=int, default=7000,
                    help="training records per shard: the shard count grows with the data (0: use --shards)")
    ap.add_argument("--slices", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--checkpoint-every", type=int, default=16, help="steps between checkpoints (the replay segment length)")
    ap.add_argument("--replay", type=int, default=8, help="segments the verifier replays")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds allowed to each child")
    ap.add_argument("--json", help="also write the raw figures to this file")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    if opts.child:
        kind, raw = opts.child
        res = (prover_child if kind == "prover" else verifier_child)(json.loads(raw))
        print(json.dumps(res))
        return 0
    sizes = [int(s) for s in opts.sizes.split(",")]
    print(
        f"CNN on {opts.side}x{opts.side} synthetic images; "
        f"{f'~{opts.shard_records:,} training records a shard' if opts.shard_records else f'{opts.shards} shards'} x {opts.slices} slices, "
        f"{opts.epochs} epoch(s), batch {opts.batch}, a checkpoint every {opts.checkpoint_every} steps, "
        f"replay {opts.replay} segments; 1 torch thread, {os.cpu_count()} cores",
        flush=True,
    )
    root = tempfile.mkdtemp(prefix="vmu-scale-")
    t_all = time.perf_counter()
    results = []
    try:
        for i, n in enumerate(sizes):
            t0 = time.perf_counter()
            r = run_size(i, n, opts, root)
            results.append(r)
            p, v = r["prover"], r["verifier"]
            print(
                f"{n:>9,} records: {p['steps']:,} steps, {p['order']} first: plain {p['plain_s']:.1f} s, verifiable "
                f"{p['train_s']:.1f} s (+ commit {p['commit_s']:.1f} s, create {p['create_s']:.1f} s), forget "
                f"{p['forget_s']:.1f} s ({p['forget_steps']} steps), bundle {p['bundle_bytes']:,} B written in "
                f"{p['bundle_s']:.1f} s ({p['segments_sampled']} of {p['segments_population']} segments), verify "
                f"{v['total_s']:.1f} s (proofs {v['proof_checks_s']:.2f} s, replay {v['replay_s']:.1f} s: "
                f"{v['replayed_segments']} segments, {v['replayed_steps']} steps, {v['replay_mode']}; step 19 "
                f"{v['residual_s']:.1f} s), accuracy "
                f"{100 * (p['accuracy'] or 0):.1f}%, peaks (MiB) prover {p['peak_mib']}, verifier "
                f"{v['peak_mib']:.0f}, data {p['data_mib']:.0f}; {time.perf_counter() - t0:.0f} s",
                flush=True,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    wall = time.perf_counter() - t_all
    print()
    print(table(results))
    print(
        "\nratio: verifiable training / plain SISA (same process, same schedule); +commit: with the commit phase "
        "(hashing and committing every record) on the verifiable side; bundle: for one deletion, with and without "
        "checkpoint files; proofs: steps 1-17; replay: step 18; prover MiB: peak RSS over commit, train, forget "
        "and bundle (the process holds the data set); growth: largest size / smallest"
    )
    print(f"\nwall time {wall:.0f} s")
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"options": vars(opts), "results": results, "wall_s": wall}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
