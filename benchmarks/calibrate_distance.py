"""Calibrate the replay distance threshold (specs/09-verification.md, step 18).

Trains a small digits workspace, then, for every segment of the original training, measures the
relative L2 parameter distance between the logged end checkpoint and:

* honest drift: the same steps with another intra-op thread count, and the same steps computed in
  float64 and rounded to float32 (a deliberately pessimistic stand-in for another platform);
* one substituted record: the same steps with one record of one batch (the first, the middle
  or the last step) replaced by another training record.

Run: PYTHONPATH=. python benchmarks/calibrate_distance.py [--shards 3 --slices 3 --epochs 6]
Prints the per-kind maxima/minima and the margin around verifier._replay.DISTANCE_THRESHOLD.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--slices", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--model", default="mlp")
    args = ap.parse_args()
    import torch

    from prover import Workspace, WorkspaceConfig
    from verifiable_mu import training as T
    from verifier._replay import DISTANCE_THRESHOLD

    root = tempfile.mkdtemp(prefix="vmu-calib-")
    ws = Workspace.create(os.path.join(root, "ws"), data="digits", config=WorkspaceConfig(
        shards=args.shards, slices=args.slices, epochs=args.epochs, model=args.model, workers=1, device="cpu"))
    ws.progress = False
    ws.train(workers=1)
    cfg = ws.log.entry(0).body
    spec, hyper = T.ModelSpec.from_json(cfg["model"]), T.Hyper.from_json(cfg["hyper"])
    ds = ws.data
    row_of = {c: r for r, c in ws._db().execute("SELECT row, commitment FROM p_records")}
    entries = list(ws.log.entries())
    last: dict[int, int] = {}
    segs = []
    for e in entries:
        if e.kind == "checkpoint":
            s = e.body["shard"]
            if s in last:
                segs.append((last[s], e.index))
            last[s] = e.index
    rng = np.random.default_rng(0)
    all_train = [r for (r,) in ws._db().execute("SELECT row FROM p_records WHERE role='train'")]

    def run(start: int, end: int, *, threads: int = 1, f64: bool = False, sub: int | None = None) -> float:
        T.configure_determinism(threads)
        model = T.build_model(spec, init_seed=0)
        ck = T.load_checkpoint(os.path.join(ws.store, entries[start].body["digest"] + ".safetensors"))
        mom = T.load_into_model(model, ck, torch.device("cpu"))
        if f64:
            model = model.double()
            mom = {k: v.double() for k, v in mom.items()}
        n = int(entries[end].body["step"]) - int(entries[start].body["step"])
        for j, i in enumerate(range(end - n, end)):
            b = entries[i].body
            cs = ws.batch_of(entries[i])
            rows = [row_of[c] for c in cs]
            if sub is not None and j == sub:
                rows[0] = int(rng.choice([r for r in all_train if r not in rows]))
            x = torch.from_numpy(ds.X[np.asarray(rows)])
            x = x.double() if f64 else x
            T.sgd_step(model, mom, x, torch.from_numpy(ds.y[np.asarray(rows)]), hyper, int(b["seed"]))
        got = T.checkpoint_from_model(model.float(), {k: v.float() for k, v in mom.items()})
        ref = T.load_checkpoint(os.path.join(ws.store, entries[end].body["digest"] + ".safetensors"))
        return T.checkpoint_distance(got, ref)

    honest, subst = [], []
    for a, b in segs:
        n = int(entries[b].body["step"]) - int(entries[a].body["step"])
        assert run(a, b) == 0.0
        honest += [run(a, b, threads=2), run(a, b, f64=True)]
        subst += [run(a, b, sub=0), run(a, b, sub=n // 2), run(a, b, sub=n - 1)]
    print(f"segments: {len(segs)}; threshold {DISTANCE_THRESHOLD:g}")
    print(f"honest drift (threads 2, float64):  max {max(honest):.3g}  median {np.median(honest):.3g}")
    print(f"one substituted record:             min {min(subst):.3g}  median {np.median(subst):.3g}")
    ok = max(honest) < DISTANCE_THRESHOLD < min(subst)
    print("threshold separates them" if ok else "THRESHOLD DOES NOT SEPARATE THEM")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
