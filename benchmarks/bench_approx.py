"""Compare run (issue 13): every unlearning method on the same request from the same workspace
state -- exact SISA retraining (``retrain``, proven) and the approximate, UNPROVEN methods of
``prover/_approx.py`` -- side by side:

* wall time, speed-up over full training and over exact SISA retraining;
* test accuracy of the aggregated model, and its agreement with the exactly retrained model on
  the test split (DeepObliviate's "consistency");
* the residual tests on the deleted records (each method's audit package through vmu-audit's
  code: own-shard score, LiRA AUC and TPR at 1% FPR after deletion) and the audit verdict.

Digits, 5 shards x 4 slices, 20 epochs; requests: 1 and 50 random records of shard 0, and the
whole slice 0 of shard 0. Times are measured, never asserted::

    python benchmarks/bench_approx.py [--seed 0] [--json out.json] [--html out.html]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from prover import Workspace, WorkspaceConfig  # noqa: E402
from prover._approx import APPROXIMATE, ApproxParams, approximate_forget  # noqa: E402
from prover._audit_package import build_package, exact_forget_result  # noqa: E402
from verifier._audit import audit_package, read_package  # noqa: E402

CFG = dict(shards=5, slices=4, epochs=20, workers=1)
PAPER = "DeepObliviate (He et al. 2021, their data): 7x-14x speed-up at 89-97% consistency"


def _proba(ws: Any, ckpts: list[dict[str, Any]], X: np.ndarray) -> np.ndarray:
    from prover._approx import _model
    from prover._approx import _proba as pr

    return np.mean([pr(_model(ws, c)[0], X) for c in ckpts], axis=0)


def _row(ws: Any, res: Any, seconds: float, exact: Any, test: np.ndarray, full_s: float,
         exact_s: float, n_boot: int) -> dict[str, Any]:
    X, y = ws.data.X, ws.data.y
    p = _proba(ws, res.post, X[test])
    pred = p.argmax(axis=1)
    exact_pred = _proba(ws, exact.post, X[test]).argmax(axis=1)
    # the changed shards' own models against the exactly retrained ones (a single model, as in the paper)
    shard_cons = float(np.mean([(_proba(ws, [res.post[s]], X[test]).argmax(axis=1)
                                 == _proba(ws, [exact.post[s]], X[test]).argmax(axis=1)).mean()
                                for s in res.shards_changed])) if res.shards_changed else 1.0
    rep = audit_package(read_package(build_package(ws, res)), n_boot=n_boot)
    post = {r["attack"]: r for r in rep["residual"]["post"]}
    return {
        "method": res.method if res.method != "oblivi" else f"oblivi(eps={float(res.params['oblivi_epsilon']):g})",
        "seconds": seconds,
        "speedup_full": full_s / seconds,
        "speedup_exact": exact_s / seconds,
        "test_acc": float((pred == y[test]).mean()),
        "consistency": float((pred == exact_pred).mean()),
        "shard_consistency": shard_cons,
        "own_shard": post.get("shard", {}).get("matched_auc"),
        "lira_auc": post.get("lira", {}).get("auc"),
        "lira_tpr1": post.get("lira", {}).get("tpr_at_fpr_1pct"),
        "verdict": rep["verdict"],
        "robust_after": (rep["residual"].get("robustness") or {}).get("after", {}).get("robust_accuracy"),
        "min_detectable": rep["residual"]["min_detectable_auc"],
        "control": rep["residual"]["control"]["best_auc"],
        "details": res.details,
    }


def run(seed: int, n_boot: int) -> dict[str, Any]:
    root = tempfile.mkdtemp(prefix="vmu-bench-approx-")
    try:
        tmpl = os.path.join(root, "tmpl")
        ws = Workspace.create(tmpl, data="digits", config=WorkspaceConfig(seed=seed, **CFG))
        ws.progress = False
        t0 = time.perf_counter()
        ws.train()
        full_s = time.perf_counter() - t0
        db = ws._db()
        train0 = [(r, i, s) for r, i, s in db.execute(
            "SELECT row, id, slice FROM p_records WHERE role='train' AND shard=0 ORDER BY row")]
        rng = np.random.default_rng(seed + 1000)
        requests = {
            "1 record": [train0[int(rng.integers(len(train0)))][1]],
            "50 records": [train0[i][1] for i in rng.choice(len(train0), 50, replace=False)],
            "whole slice": [i for _, i, s in train0 if s == 0],
        }
        test = ws.split_rows("test")
        approximate_forget(ws, requests["1 record"], "finetune")  # warm-up: first-call costs paid here
        ws.close()
        out: dict[str, Any] = {"seed": seed, "full_training_s": full_s, "requests": {}}
        for name, ids in requests.items():
            dst = os.path.join(root, name.replace(" ", "_"))
            shutil.copytree(tmpl, dst)
            with Workspace.open(dst) as w:
                w.progress = False
                t0 = time.perf_counter()
                ex, _ = exact_forget_result(w, ids)
                exact_s = time.perf_counter() - t0
                rows = [_row(w, ex, exact_s, ex, test, full_s, exact_s, n_boot)]
            with Workspace.open(tmpl) as w:
                w.progress = False
                runs = [(m, ApproxParams()) for m in APPROXIMATE]
                runs.append(("oblivi", ApproxParams(oblivi_epsilon=1.0)))
                for m, prm in runs:
                    t0 = time.perf_counter()
                    res = approximate_forget(w, ids, m, prm)
                    rows.append(_row(w, res, time.perf_counter() - t0, ex, test, full_s, exact_s, n_boot))
            out["requests"][name] = {"n": len(ids), "rows": rows}
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def table(out: dict[str, Any]) -> str:
    lines = [f"digits 5x4, 20 epochs, seed {out['seed']}; full training {out['full_training_s']:.2f} s", "",
             "| request | method | time (s) | speed-up vs full / vs exact | test acc | consistency (model / shard) "
             "| own-shard score | LiRA AUC | TPR@1%FPR | PGD robust acc | audit verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in out["requests"].items():
        for row in r["rows"]:
            lines.append(
                f"| {name} ({r['n']}) | {row['method']} | {row['seconds']:.3f} | {row['speedup_full']:.1f}x / "
                f"{row['speedup_exact']:.1f}x | {row['test_acc']:.3f} | {row['consistency']:.3f} / "
                f"{row['shard_consistency']:.3f} | "
                f"{row['own_shard']:.3f} | {row['lira_auc']:.3f} | {row['lira_tpr1']:.3f} | "
                f"{row['robust_after'] if row['robust_after'] is None else format(row['robust_after'], '.3f')} | "
                f"{row['verdict']} |")
    lines += ["", "power: smallest own-shard effect detectable with 80% power per request: " + ", ".join(
        f"{n} {r['rows'][0]['min_detectable']:.3f} (control {r['rows'][0]['control']})" for n, r in out["requests"].items()),
        PAPER]
    return "\n".join(lines)


def html(out: dict[str, Any]) -> str:
    import base64
    import io
    from html import escape

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for name, r in out["requests"].items():
        xs = [row["speedup_exact"] for row in r["rows"]]
        ys = [row["consistency"] for row in r["rows"]]
        ax.scatter(xs, ys, label=name)
        for row, x, yv in zip(r["rows"], xs, ys, strict=True):
            ax.annotate(row["method"], (x, yv), fontsize=6)
    ax.set_xscale("log")
    ax.set_xlabel("speed-up over exact SISA retraining")
    ax.set_ylabel("consistency with the exactly retrained model")
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    img = base64.b64encode(buf.getvalue()).decode()
    return ("<!doctype html><html><head><meta charset='utf-8'><title>vmu compare</title></head><body>"
            "<h1>Unlearning methods compared (approximate methods are UNPROVEN)</h1>"
            f"<pre>{escape(table(out))}</pre><img alt='speed-up vs consistency' src='data:image/png;base64,{img}'>"
            "</body></html>")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--json", metavar="OUT")
    ap.add_argument("--html", metavar="OUT")
    args = ap.parse_args()
    out = run(args.seed, args.bootstrap)
    print(table(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, sort_keys=True)
    if args.html:
        with open(args.html, "w") as f:
            f.write(html(out))


if __name__ == "__main__":
    main()
