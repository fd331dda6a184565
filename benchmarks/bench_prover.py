"""Prover benchmarks: forget vs full retraining, and the overhead of verifiability.

Run as a script for the figures the README quotes::

    python benchmarks/bench_prover.py            # digits, 5 shards x 4 slices, 1 torch thread

It prints, measured side by side in one process:
  * the aggregated SISA model's test accuracy next to one model trained on all training data
    with the same budget (same epochs over the data, same optimiser);
  * the mean speed-up of single-record deletions over full retraining (>= 10 random records),
    next to the slice schedule's expected speed-up S*3R/(2R+1) and the 80 % bar;
  * the wall-time ratio of training with commitments, logging and checkpoints against the
    same SISA schedule without them (bar: <= 1.15), for checkpoint_every = 0 and K.

pytest-benchmark entry points (``pytest benchmarks/bench_prover.py``) time the same operations.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402

import verifiable_mu.training as T  # noqa: E402
from prover import (  # noqa: E402
    Workspace,
    WorkspaceConfig,
    _sisa,  # noqa: E402
    expected_speedup,
)
from verifiable_mu._canonical import canonical_json


def _fresh(root: str, name: str, **kw: object) -> Workspace:
    path = os.path.join(root, name)
    shutil.rmtree(path, ignore_errors=True)
    ws = Workspace.create(path, data="digits", config=WorkspaceConfig(workers=1, **kw))  # type: ignore[arg-type]
    ws.progress = False
    return ws


def plain_sisa_seconds(tasks: list) -> float:
    """The same SISA schedule (same data, order, steps) without commitments, logging or
    checkpoint files: every shard from its initial weights, all stages, stage-end states kept
    in memory. ``tasks``: ``Workspace._shard_task(s, record=False, from_scratch=True)``."""
    t0 = time.perf_counter()
    for task in tasks:
        _sisa.train_shard(task)
    return time.perf_counter() - t0


def single_model_accuracy(ws: Workspace) -> float:
    """One model on all training rows, same epochs, same optimiser, same batch size."""
    import torch

    cfg = ws.config
    ds = ws.data
    rows = ws.split_rows("train")
    spec = T.ModelSpec(name=cfg.model, n_features=ds.n_features, n_classes=ds.n_classes, input_shape=ds.input_shape, hidden=cfg.hidden)
    model = T.build_model(spec, init_seed=12345)
    mom = T.zero_momentum(model)
    hyper = T.Hyper(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, batch_size=cfg.batch_size)
    X = torch.from_numpy(ds.X[rows])
    y = torch.from_numpy(ds.y[rows])
    rng = np.random.default_rng(7)
    step = 0
    for _ in range(cfg.epochs):
        perm = rng.permutation(len(rows))
        for b in range(0, len(rows), cfg.batch_size):
            idx = torch.from_numpy(perm[b : b + cfg.batch_size])
            T.sgd_step(model, mom, X[idx], y[idx], hyper, step)
            step += 1
    test = ws.split_rows("test")
    with torch.no_grad():
        pred = model(torch.from_numpy(ds.X[test])).argmax(1).numpy()
    return float((pred == ds.y[test]).mean())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--deletions", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--overhead-only", action="store_true", help="skip the accuracy and speed-up parts")
    ap.add_argument("--portable", action="store_true", help="only portable mode's own cost (specs/06 section 3a)")
    ap.add_argument("--log-bytes", action="store_true", help="only log bytes per step, format 1 against format 2")
    args = ap.parse_args()
    T.configure_determinism(args.threads)
    root = tempfile.mkdtemp(prefix="vmu-bench-")
    try:
        print(f"torch {T.torch.__version__}, intra-op threads pinned to {args.threads}, cores {os.cpu_count()}")
        if args.portable:
            portable_cost(root, args)
            return 0
        if args.log_bytes:
            log_bytes(root, args)
            return 0
        if not args.overhead_only:
            accuracy_and_speedup(root, args)
        overhead(root, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def accuracy_and_speedup(root: str, args: argparse.Namespace) -> None:
    # One-time costs (first use of the allocator, of each code path) must fall on neither side:
    # a throwaway workspace trains and forgets once before anything is timed.
    warm = _fresh(root, "warm", threads=args.threads)
    warm.train()
    warm.forget([warm.data.ids[warm.split_rows("train")[0]]])
    warm.close()
    # --- accuracy ---------------------------------------------------------------------------
    fulls = []
    for r in range(3):  # full training: the median of three fresh workspaces; the last is kept
        ws = _fresh(root, f"acc{r}", threads=args.threads)
        t0 = time.perf_counter()
        ws.train()
        fulls.append(time.perf_counter() - t0)
        if r < 2:
            ws.close()
    full = statistics.median(fulls)
    full_steps = sum(1 for e in ws.log.entries(0, ws.log.size) if e.kind == "step")
    sisa = ws.evaluate()
    single = single_model_accuracy(ws)
    print(
        f"accuracy: SISA 5x4 aggregated {100 * sisa:.1f}%  single model {100 * single:.1f}%  "
        f"gap {100 * (single - sisa):+.1f} points (bar: within 3)"
    )
    # --- speed-up ------------------------------------------------------------------------------
    rng = random.Random(2026)
    train_ids = [ws.data.ids[i] for i in ws.split_rows("train")]
    ratios = []
    times = []
    steps = []
    for _ in range(args.deletions):
        rid = rng.choice(train_ids)
        train_ids.remove(rid)
        t0 = time.perf_counter()
        rep = ws.forget([rid])
        dt = time.perf_counter() - t0
        times.append(dt)
        steps.append(rep.steps)
        ratios.append(full / dt)
    exp = expected_speedup(ws.config.shards, ws.config.slices)
    mean = statistics.mean(ratios)
    print(
        f"speed-up: full training {full:.3f} s (median of 3, {full_steps} steps); mean single-record forget "
        f"{statistics.mean(times):.3f} s over {args.deletions} random records ({statistics.mean(steps):.0f} steps "
        f"retrained on average: {full_steps / statistics.mean(steps):.2f}x fewer); mean speed-up {mean:.2f}x vs "
        f"expected {exp:.2f}x = {100 * mean / exp:.0f}% (bar: >= 80%)"
    )
    ws.close()


def portable_cost(root: str, args: argparse.Namespace) -> None:
    """Portable mode's own cost (specs/06 section 3a): verifiable portable training against plain
    float32 SISA (the same schedule, no commitments, no logging), and against verifiable float32
    training, alternating sides round by round; log bytes per step and accuracy of both."""
    for model in ("mlp", "cnn"):
        times: dict[str, list[float]] = {"plain": [], "f32": [], "portable": []}
        rounds = args.rounds if model != "cnn" else max(3, args.rounds // 3)
        bytes_step: dict[str, float] = {}
        acc: dict[str, list[float]] = {}
        for r in range(rounds):
            twin = _fresh(root, f"pc{model}_{r}p", threads=args.threads, model=model)
            twin.commit()
            p_task = [twin._shard_task(s, record=False, from_scratch=True) for s in range(twin.config.shards)]
            twin.close()
            ws = {
                "f32": _fresh(root, f"pc{model}_{r}f", threads=args.threads, model=model),
                "portable": _fresh(root, f"pc{model}_{r}v", threads=args.threads, model=model, arithmetic="portable"),
            }
            order = ["plain", "f32", "portable"]
            for side in order[r % 3 :] + order[: r % 3]:
                _sisa._DATA_CACHE.clear()
                if side == "plain":
                    times["plain"].append(plain_sisa_seconds(p_task))
                    continue
                t0 = time.perf_counter()
                ws[side].train()
                times[side].append(time.perf_counter() - t0)
            for side, w in ws.items():
                sizes = [len(canonical_json(e.body)) for e in w.log.entries(0, w.log.size) if e.kind == "step"]
                bytes_step[side] = statistics.mean(sizes)
                acc.setdefault(side, []).append(w.evaluate() or float("nan"))
                w.close()
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"portable cost ({model}, {rounds} alternating rounds, medians): verifiable portable / plain float32 "
              f"SISA {med['portable'] / med['plain']:.2f}x; verifiable float32 / plain float32 {med['f32'] / med['plain']:.2f}x; "
              f"portable / float32, both verifiable {med['portable'] / med['f32']:.2f}x; step entry bytes: float32 "
              f"{bytes_step['f32']:.0f}, portable {bytes_step['portable']:.0f} (hints "
              f"{bytes_step['portable'] - bytes_step['f32']:+.0f}); test accuracy float32 "
              f"{100 * statistics.mean(acc['f32']):.1f}%, portable {100 * statistics.mean(acc['portable']):.1f}%")


def log_bytes(root: str, args: argparse.Namespace) -> None:
    """Log bytes per step, format 1 (step entries list their batch) against format 2 (the committed
    order fixes it), on the default digits 5x4: the step entry's canonical JSON, and the whole
    state database per step."""
    out = {}
    for fmt in (1, 2):
        w = _fresh(root, f"lb{fmt}", threads=args.threads, log_format=fmt)
        w.train()
        steps = [e for e in w.log.entries(0, w.log.size) if e.kind == "step"]
        entry = statistics.mean(len(canonical_json(e.body)) for e in steps)
        w.log.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db = os.path.getsize(os.path.join(w.path, "state.db")) / len(steps)
        out[fmt] = (entry, db)
        w.close()
    print(f"log bytes per step (digits 5x4): step entry {out[1][0]:.0f} B (format 1) -> {out[2][0]:.0f} B (format 2), "
          f"{out[1][0] / out[2][0]:.1f}x smaller; state.db per step {out[1][1]:.0f} B -> {out[2][1]:.0f} B, "
          f"{out[1][1] / out[2][1]:.1f}x smaller")


def overhead(root: str, args: argparse.Namespace) -> None:
    # --- overhead of verifiability --------------------------------------------------------------
    # Timings on a shared 2-core machine swing by +-20 % from run to run, so the two sides
    # alternate round by round (which side goes first alternates too) and the ratio is of
    # the medians; the ratio of the minima (the least disturbed run of each) is printed too.
    # CPU time (this process, threads included) is printed beside wall time: it counts the work
    # and is less moved by other processes sharing the cores, though not by the disk.
    for model, k in (("mlp", 0), ("mlp", 16), ("cnn", 0)):
        vs, ps, vc, pc = [], [], [], []
        rounds = args.rounds if model != "cnn" else max(3, args.rounds // 3)
        for r in range(rounds):
            # The plain run starts from the same initial weights, read from a committed twin.
            twin = _fresh(root, f"ovh{model}{k}_{r}p", threads=args.threads, checkpoint_every=k, model=model)
            twin.commit()
            p_task = [twin._shard_task(s, record=False, from_scratch=True) for s in range(twin.config.shards)]
            twin.close()
            w = _fresh(root, f"ovh{model}{k}_{r}", threads=args.threads, checkpoint_every=k, model=model)
            for side in ("vp" if r % 2 == 0 else "pv"):
                _sisa._DATA_CACHE.clear()  # both sides read their data file once
                c0 = time.process_time()
                if side == "v":
                    t0 = time.perf_counter()
                    w.train()
                    vs.append(time.perf_counter() - t0)
                    vc.append(time.process_time() - c0)
                else:
                    ps.append(plain_sisa_seconds(p_task))
                    pc.append(time.process_time() - c0)
            steps = sum(1 for e in w.log.entries(0, w.log.size) if e.kind == "step")
            w.close()
        v, p = statistics.median(vs), statistics.median(ps)
        print(f"overhead ({model}, checkpoint_every={k}, {1000 * p / steps:.2f} ms per plain step): verifiable "
              f"{v:.3f} s, plain SISA {p:.3f} s (medians of {rounds} alternating rounds), ratio {v / p:.3f} "
              f"(bar: <= {1.15 if model == 'mlp' else 1.05}); ratio of minima {min(vs) / min(ps):.3f}; CPU time ratio of medians "
              f"{statistics.median(vc) / statistics.median(pc):.3f}")


if __name__ == "__main__":
    sys.exit(main())
