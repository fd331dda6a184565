"""Unlearnable examples on digits (issue 14): how much the project's default model still learns
from records protected with error-minimizing noise, by form and noise bound, against the same
model trained on the clean records.

    OMP_NUM_THREADS=1 python benchmarks/bench_unlearnable.py
    OMP_NUM_THREADS=1 python benchmarks/bench_unlearnable.py --sisa    # through the prover instead

``--sisa`` trains the real prover instead (``prover.Workspace``: 5 shards x 4 slices, the
``vmu init`` defaults, committed and logged) on the unprotected and on the adversarially poisoned
training split (the workspace takes its own test and audit records out of it, as with any data),
and measures the aggregated SISA model on the same clean test split; class-wise error-minimizing
noise at 0.5 beside it.

Digits as the project loads them (pixels / 16, so in [0, 1]; epsilon is in those units: 8/255 is
half of one of the 16 grey levels, 0.25 is 4 grey levels, 0.5 is 8), a seeded 1,400 / 397 split.
The whole training split is protected with ``verifiable_mu.subject.make_unlearnable`` (min-min
error-minimizing noise, sample-wise or class-wise; once also in the paper's order) or, for
comparison, ``make_adversarial_poison`` (error-maximizing, class-targeted); then the project's default model and recipe
(``vmu init`` defaults: MLP with 128 hidden units, SGD lr 0.05, momentum 0.9, batch 32, 20 epochs)
is trained on it and its accuracy measured on the clean test split. "standardized" repeats the
training after ``vmu init --standardize``'s scaling (``fit_standardize`` on the protected training
split, applied to it and to the clean test split). Each cell is the mean over three seeds (noise
and training seeds both vary) and, in brackets, the lowest and highest. Chance is 10%.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402

from verifiable_mu._scaling import fit_standardize  # noqa: E402
from verifiable_mu.subject import (  # noqa: E402
    UnlearnableResult,
    learnability,
    make_adversarial_poison,
    make_unlearnable,
)

SEEDS = (0, 1, 2)
ALL = ((8 / 255, "8/255"), (0.25, "0.25"), (0.375, "0.375"), (0.5, "0.5"))
METHODS: list[tuple[str, Callable[..., UnlearnableResult], dict[str, Any], tuple[tuple[float, str], ...]]] = [
    ("sample-wise error-minimizing", make_unlearnable, {"kind": "sample"}, ALL),
    ("class-wise error-minimizing", make_unlearnable, {"kind": "class"}, ALL),
    ("class-wise, the paper's order (MLP source model trained first)", make_unlearnable,
     {"kind": "class", "hidden": 128, "train_first": True}, ALL[1::2]),
    ("not Huang et al.: adversarial poisoning (Fowl et al. 2021)", make_adversarial_poison, {}, ALL),
]


def _cell(values: list[float]) -> str:
    return f"{np.mean(values):.1%} ({min(values):.1%}-{max(values):.1%})"


def _sisa_accuracy(Xtr: np.ndarray, ytr: np.ndarray, Xte: np.ndarray, yte: np.ndarray, root: str, name: str) -> float:
    from prover import Workspace, WorkspaceConfig
    from prover._data import Dataset

    ds = Dataset(ids=tuple(f"r{i}" for i in range(len(ytr))), X=Xtr.astype(np.float32), y=ytr.astype(np.int64))
    with Workspace.create(os.path.join(root, name), data=ds, config=WorkspaceConfig(shards=5, slices=4, workers=1)) as ws:
        ws.progress = False
        ws.train(workers=1)
        return float((ws.predict_proba(Xte).argmax(axis=1) == yte).mean())


def sisa(X: np.ndarray, y: np.ndarray, tr: np.ndarray, te: np.ndarray) -> None:
    """The unprotected, the class-wise error-minimizing (epsilon 0.5) and the adversarially poisoned
    (epsilon 0.375) training split through the prover's SISA training, measured on the clean test
    split."""
    import tempfile

    print("| training data (SISA 5x4 through prover.Workspace) | epsilon | clean test accuracy |")
    print("|---|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="vmu-unlearnable-") as root:
        clean = [_sisa_accuracy(X[tr], y[tr], X[te], y[te], root, f"clean{s}") for s in SEEDS[:1]]
        print(f"| unprotected | 0 | {_cell(clean)} |", flush=True)
        variants: list[tuple[str, Callable[..., UnlearnableResult], dict[str, Any], float]] = [
            ("class-wise error-minimizing", make_unlearnable, {"kind": "class"}, 0.5),
            ("adversarial poisoning (not Huang et al.)", make_adversarial_poison, {}, 0.375),
        ]
        for label, make, kw, eps in variants:
            rows = []
            for s in SEEDS:
                r = make(X[tr], y[tr], epsilon=eps, seed=s, **kw)
                rows.append(_sisa_accuracy(r.X, y[tr], X[te], y[te], root, f"{make.__name__}{s}"))
            print(f"| {label} | {eps:g} | {_cell(rows)} |", flush=True)


def main() -> int:
    import torch
    from sklearn.datasets import load_digits

    torch.set_num_threads(1)
    t_start = time.perf_counter()
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    p = np.random.default_rng(0).permutation(len(y))
    tr, te = p[:1400], p[1400:]
    if "--sisa" in sys.argv[1:]:
        sisa(X, y, tr, te)
        print(f"\n{time.perf_counter() - t_start:.0f} s")
        return 0

    def measure(Xtr: np.ndarray, seed: int) -> tuple[float, float]:
        (plain,) = learnability(Xtr, y[tr], [(X[te], y[te])], seed=seed + 1)
        s = fit_standardize(Xtr, np.arange(len(Xtr)))
        (scaled,) = learnability(s.apply(Xtr), y[tr], [(s.apply(X[te]), y[te])], seed=seed + 1)
        return plain, scaled

    print("| training data | epsilon | rounds | clean test accuracy | standardized |")
    print("|---|---:|---:|---:|---:|")
    clean = [measure(X[tr], s) for s in SEEDS]
    print(f"| unprotected | 0 | - | {_cell([c[0] for c in clean])} | {_cell([c[1] for c in clean])} |")
    for name, make, kw, bounds in METHODS:
        for eps, label in bounds:
            rows, rounds = [], []
            for s in SEEDS:
                r = make(X[tr], y[tr], epsilon=eps, seed=s, **kw)
                assert np.abs(r.noise).max() <= eps + 1e-6
                rounds.append(r.rounds)
                rows.append(measure(r.X, s))
            print(f"| {name} | {label} | {min(rounds)}-{max(rounds)} | {_cell([a[0] for a in rows])} | "
                  f"{_cell([a[1] for a in rows])} |", flush=True)
    print(f"\n{time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
