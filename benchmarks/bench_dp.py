"""DP-SGD against plain SISA on digits (issue 14): test accuracy, the residual tests' positive
control (how well the pre-deletion models single out 50 deleted records), and the step's cost.

    python benchmarks/bench_dp.py [--eps 1 8] [--seeds 2]

Digits 5 shards x 4 slices, 20 epochs, batch 32, clipping norm 1, delta 1e-5; 50 records of shard 0
deleted in one request; the bundle verified with the residual tests (step 19). Per setting and
seed: test accuracy of the aggregated model, the verifier's recomputed epsilon, the positive
control's best label-matched AUC (own-shard score for the deciding test) and whether it detected
the records, the step 19 verdict, and seconds of training compute. Runs alternate settings per
seed; the ratio of training time is side by side in one process.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def run(root: str, eps: float | None, seed: int) -> dict[str, float | str | None]:
    from prover import Workspace, WorkspaceConfig
    from prover._bundle import write_bundle
    from verifier import VerifyOptions, verify
    from verifier._report import to_json

    dp = {"dp_epsilon": eps, "dp_delta": 1e-5} if eps else {}
    cfg = WorkspaceConfig(shards=5, slices=4, epochs=20, workers=1, seed=seed, **dp)  # type: ignore[arg-type]
    d = os.path.join(root, f"ws-{eps}-{seed}")
    with Workspace.create(d, data="digits", config=cfg) as ws:
        ws.progress = False
        rep = ws.train(workers=1)
        acc = ws.evaluate()
        rows = ws._db().execute("SELECT id FROM p_records WHERE role='train' AND shard=0").fetchall()
        ids = sorted(str(r[0]) for r in rows)
        random.Random(seed).shuffle(ids)
        ws.forget(ids[:50], workers=1)
        write_bundle(ws, os.path.join(root, f"b-{eps}-{seed}.zip"), replay=8)
    v = to_json(verify(os.path.join(root, f"b-{eps}-{seed}.zip"), VerifyOptions(n_boot=200)))
    res = v["residual"]
    shutil.rmtree(d, ignore_errors=True)
    return {"accuracy": acc, "epsilon": (v["dp"] or {}).get("epsilon"), "control_auc": res["control"]["best_auc"],
            "control": res["control"]["detected"], "verdict": res["verdict"], "train_s": rep.seconds,
            "noise": (v["dp"] or {}).get("noise_multiplier")}


def main() -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eps", type=float, nargs="+", default=[1.0, 8.0])
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = tempfile.mkdtemp(prefix="vmu-bench-dp-")
    out: dict[str, list[dict]] = {}
    try:
        for seed in range(args.seeds):
            for eps in [None, *args.eps]:
                r = run(root, eps, seed)
                out.setdefault("plain" if eps is None else f"eps={eps:g}", []).append(r)
                print(f"seed {seed} {'plain' if eps is None else f'epsilon {eps:g}'}: {r}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base = statistics.median(float(r["train_s"]) for r in out["plain"])  # type: ignore[arg-type]
    print("| training | epsilon (recomputed) | noise multiplier | test accuracy | control AUC (own-shard) | control "
          "detects | step 19 | training time vs plain |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rs in out.items():
        med = lambda k, rs=rs: statistics.median(float(r[k]) for r in rs)  # noqa: E731
        eps = "-" if rs[0]["epsilon"] is None else f"{med('epsilon'):.3g}"
        noise = "-" if rs[0]["noise"] is None else f"{med('noise'):.3g}"
        print(f"| {name} | {eps} | {noise} | {med('accuracy'):.1%} | {med('control_auc'):.3f} | "
              f"{sum(bool(r['control']) for r in rs)}/{len(rs)} | {', '.join(str(r['verdict']) for r in rs)} | "
              f"{med('train_s') / base:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
