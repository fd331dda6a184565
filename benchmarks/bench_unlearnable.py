"""Unlearnable examples on digits (issue 14): how much a model trained on protected records still
learns, by noise bound, against the same model trained on clean records.

    python benchmarks/bench_unlearnable.py

Digits scaled to [0, 1], a seeded 1,400 / 397 split; the whole training split is protected with
``verifiable_mu.subject.make_unlearnable`` (sample-wise error-minimizing noise), then an MLP(128)
is trained on it (SGD with momentum, 20 epochs, batch 32) and evaluated on the clean test records
and on the clean versions of the protected records. Two surrogates: the paper's (an MLP trained
between noise updates, stopping at 99% accuracy on the perturbed records) and a random linear one
(one round, no training), which makes the noise a class-consistent pattern. Chance is 10%.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402

from verifiable_mu.subject import learnability, make_unlearnable  # noqa: E402

SURROGATES = {
    "paper (MLP, trained, stop at 99%)": {},
    "random linear, one round": {"hidden": 0, "train_steps": 0, "max_rounds": 1},
}
BOUNDS = (8 / 255, 16 / 255, 0.125, 0.25, 0.5)


def main() -> int:
    import torch
    from sklearn.datasets import load_digits

    torch.set_num_threads(1)
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    p = np.random.default_rng(0).permutation(len(y))
    tr, te = p[:1400], p[1400:]
    evals = [(X[te], y[te]), (X[tr], y[tr])]
    test, own = learnability(X[tr], y[tr], evals)
    print(f"clean training: test accuracy {test:.1%}, on its own (clean) training records {own:.1%}")
    print("| surrogate | epsilon | rounds | noise s | test accuracy | on the clean protected records |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, kw in SURROGATES.items():
        for eps in BOUNDS:
            t0 = time.perf_counter()
            r = make_unlearnable(X[tr], y[tr], epsilon=eps, seed=0, **kw)  # type: ignore[arg-type]
            secs = time.perf_counter() - t0
            test, own = learnability(r.X, y[tr], evals)
            print(f"| {name} | {eps:.3f} | {r.rounds} | {secs:.1f} | {test:.1%} | {own:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
