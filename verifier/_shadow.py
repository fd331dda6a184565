"""The shadow-model attack of the residual suite (Shokri et al. 2017; specs/10-residual.md section
2 item 8) -- reported only.

Step 19 trains two shadow models of the logged architecture and hyper-parameters on disjoint
halves of a pool the verifier holds in the clear and no deleted record belongs to: the audit
records (never trained on by any constituent) and the disclosed retained records. Each shadow's
own half are its members, the other half its non-members. One logistic-regression attack model
per class learns, from a shadow's log-probability of a record's label and its largest other
log-probability, whether the shadow trained on it. The attack then scores any record from the target constituent's probability vector.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["ShadowAttack", "train_shadow_attack"]

MIN_POOL = 40  # fewer pooled records than this: no shadows (the attack is skipped, with the reason)
MAX_POOL = 4000  # at most this many pooled records train the shadows: step 19's cost stays bounded


class ShadowAttack:
    """Per-class attack models; ``__call__(P, y)`` gives each row's membership score in [0, 1]."""

    def __init__(self, per_class: dict[int, Any], fallback: Any) -> None:
        self.per_class = per_class
        self.fallback = fallback

    def __call__(self, P: np.ndarray, y: np.ndarray) -> np.ndarray:
        F = _features(P, y)
        out = np.empty(len(y))
        for c in np.unique(y):
            sel = np.flatnonzero(y == c)
            model = self.per_class.get(int(c), self.fallback)
            out[sel] = model.predict_proba(F[sel])[:, 1]
        return out


def _features(P: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Two features a small pool can fit: the log-probability of the label and the largest
    log-probability of any other class."""
    L = np.log(np.maximum(np.asarray(P, dtype=np.float64), 1e-30))
    rows = np.arange(len(y))
    own = L[rows, y]
    other = L.copy()
    other[rows, y] = -np.inf
    return np.column_stack([own, other.max(axis=1)])


def _train(make_model: Callable[[int], Any], hyper: Any, X: np.ndarray, y: np.ndarray, epochs: int, seed: int) -> Any:
    import torch

    from verifiable_mu.training import sgd_step, zero_momentum

    model = make_model(seed)
    mom = zero_momentum(model)
    xt, yt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)), torch.from_numpy(y.astype(np.int64))
    rng = np.random.default_rng([seed, 0x54D])
    step = 0
    for _ in range(epochs):
        perm = rng.permutation(len(X))
        for b in range(0, len(X), hyper.batch_size):
            idx = torch.from_numpy(perm[b : b + hyper.batch_size])
            sgd_step(model, mom, xt[idx], yt[idx], hyper, (seed % 2**31) * 100_003 + step)
            step += 1
    model.eval()

    def proba(A: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(model(torch.from_numpy(np.ascontiguousarray(A, dtype=np.float32))), dim=1).double().numpy()

    return proba


def train_shadow_attack(
    make_model: Callable[[int], Any], hyper: Any, X: np.ndarray, y: np.ndarray, *, epochs: int, seed: int
) -> ShadowAttack | None:
    """Two shadows on the halves of the pool ``X, y`` (rows put in a canonical order first, by
    their bytes, then split by a permutation seeded with ``seed``), ``epochs`` epochs each of the
    logged step (SGD with momentum, ``hyper``; float32), then the per-class attack models. None
    when the pool has fewer than ``MIN_POOL`` records."""
    from sklearn.linear_model import LogisticRegression

    if len(X) < MIN_POOL:
        return None
    flat = np.ascontiguousarray(X, dtype=np.float32).reshape(len(X), -1)
    order = np.lexsort(np.column_stack([flat, y]).T[::-1])
    X, y = X[order], y[order]
    perm = np.random.default_rng([seed, 0x5AD]).permutation(len(X))[:MAX_POOL]
    halves = (perm[: len(perm) // 2], perm[len(perm) // 2 :])
    feats, member, labels = [], [], []
    for i, (ins, outs) in enumerate((halves, halves[::-1])):
        shadow = _train(make_model, hyper, X[ins], y[ins], epochs, seed + i + 1)
        for rows, m in ((ins, 1), (outs, 0)):
            feats.append(_features(shadow(X[rows]), y[rows]))
            member.append(np.full(len(rows), m))
            labels.append(y[rows])
    F, M, L = np.concatenate(feats), np.concatenate(member), np.concatenate(labels)
    fallback = LogisticRegression(max_iter=2000).fit(F, M)
    per_class = {}
    for c in np.unique(L):
        sel = c == L
        if len(np.unique(M[sel])) == 2 and sel.sum() >= 10:
            per_class[int(c)] = LogisticRegression(max_iter=2000).fit(F[sel], M[sel])
    return ShadowAttack(per_class, fallback)
