"""The membership-inference attacks of the residual tests (specs/10-residual.md section 3): the
inputs, checked, and every attack's per-record scores."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from verifiable_mu._errors import MalformedInput

from ._residual_report import ProbaFn

LABEL_QUERIES = 8


LABEL_NOISE = 0.3


_GRAD_ROWS = 256  # per-example gradients computed this many records at a time


_TINY = 1e-300


_MAX_RECORDS = 1_000_000


def checked_features(X: Any, what: str) -> np.ndarray:
    try:
        a = np.asarray(X, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise MalformedInput(f"{what} must be a numeric array: {e}") from e
    if a.ndim < 2:
        raise MalformedInput(f"{what} must have one row per record")
    if a.shape[0] > _MAX_RECORDS:
        raise MalformedInput(f"{what} has too many records ({a.shape[0]} > {_MAX_RECORDS})")
    return a


def checked_labels(y: Any, n: int, what: str) -> np.ndarray:
    a = np.asarray(y)
    if a.ndim != 1 or a.shape[0] != n:
        raise MalformedInput(f"{what} must be a 1-d array with one label per record ({n})")
    if a.dtype.kind not in "iu" or (n and a.min() < 0):
        raise MalformedInput(f"{what} must be non-negative integer class labels")
    return a.astype(np.int64)


def checked_shards(s: Any, n: int, n_models: int, what: str) -> np.ndarray:
    a = np.asarray(s)
    if a.ndim != 1 or a.shape[0] != n or (n and a.dtype.kind not in "iu"):
        raise MalformedInput(f"{what} must be a 1-d array of shard numbers, one per record ({n})")
    a = a.astype(np.int64)
    if n and (a.min() < 0 or a.max() >= n_models):
        raise MalformedInput(f"{what} names a shard outside 0..{n_models - 1}")
    return a


def checked_proba(fn: ProbaFn, X: np.ndarray, n_classes: int | None, what: str) -> np.ndarray:
    try:
        P = np.asarray(fn(X), dtype=np.float64)
    except MalformedInput:
        raise
    except (TypeError, ValueError, RuntimeError) as e:  # torch reports shape errors as RuntimeError
        raise MalformedInput(f"{what} could not score the records: {e}") from e
    if P.ndim != 2 or P.shape[0] != X.shape[0] or P.shape[1] < 2:
        raise MalformedInput(f"{what} returned an array of shape {P.shape}, expected ({X.shape[0]}, classes)")
    if n_classes is not None and P.shape[1] != n_classes:
        raise MalformedInput(f"{what} returned {P.shape[1]} classes, the other models {n_classes}")
    if not np.all(np.isfinite(P)) or P.min() < 0 or np.max(np.abs(P.sum(axis=1) - 1.0)) > 1e-3:
        raise MalformedInput(f"{what} did not return class probabilities (finite, non-negative, rows summing to 1)")
    return P


def _true_prob(P: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(..., n, k) -> (..., n): probability of the true class."""
    return np.take_along_axis(P, np.broadcast_to(y[:, None], P.shape[:-1] + (1,)), axis=-1)[..., 0]


def _rescaled_logit(P: np.ndarray, y: np.ndarray) -> np.ndarray:
    """log p_y - log sum_{j != y} p_j (stable near p_y = 1, unlike log p - log(1 - p))."""
    py = _true_prob(P, y)
    others = np.ones(P.shape, dtype=bool)
    np.put_along_axis(others, np.broadcast_to(y[:, None], P.shape[:-1] + (1,)), False, axis=-1)
    rest = (P * others).sum(axis=-1)  # summed directly: no cancellation when p_y is close to 1
    return np.asarray(np.log(np.maximum(py, _TINY)) - np.log(np.maximum(rest, _TINY)))


def phase_scores(
    P: np.ndarray,
    y: np.ndarray,
    target: np.ndarray,
    Pext: np.ndarray | None,
    ext_use: np.ndarray | None,
    audit_idx: np.ndarray,
    pool_idx: np.ndarray,
    attacks: Sequence[str],
    rmia_a: float,
    gamma: float,
) -> dict[str, np.ndarray]:
    """Per-example scores (higher = more member-like) for every attack.

    ``P``: (S, n, k) constituent probabilities; ``target``: (n,) the shard constituent each record
    is attacked on; ``Pext``/``ext_use``: (E, n, k)/(E, n) extra references and whether each
    serves as a reference for each record.
    """
    n = P.shape[1]
    rows = np.arange(n)
    out: dict[str, np.ndarray] = {}
    agg = P.mean(axis=0)
    out["agg:logp"] = np.log(np.maximum(agg[rows, y], _TINY))  # for the deletion-inference exposure
    if "loss" in attacks:
        out["loss"] = np.log(np.maximum(agg[rows, y], _TINY))
    if "confidence" in attacks:
        out["confidence"] = (agg * np.log(np.maximum(agg, _TINY))).sum(axis=1)
    if "shard" in attacks:
        out.update(_shard_scores(P, y, target))
    if "lira" not in attacks and "rmia" not in attacks:
        return out
    refs = _References(S=P.shape[0], use=ext_use if (ext_use is not None and ext_use.any()) else None)
    if "lira" in attacks:
        out["lira"] = _lira_scores(P, y, target, Pext, pool_idx, refs)
    if "rmia" in attacks:
        out["rmia:ratio"], out["rmia"] = _rmia_scores(P, y, target, Pext, audit_idx, refs, rmia_a, gamma)
    return out


def _shard_scores(P: np.ndarray, y: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
    """The own-shard attack: "shard", "shard:null", "shard:stat"."""
    from scipy.stats import rankdata

    S, n, _ = P.shape
    rows = np.arange(n)
    # Rank of every constituent among all S for each record (midranks), scaled to [0, 1]: the
    # record's score is its own shard's; "shard:null" keeps the S values it could have had.
    phi = _rescaled_logit(P, y)  # (S, n)
    ranks = np.asarray(rankdata(phi, axis=0, method="average"), dtype=np.float64)
    cand = ((ranks - 1.0) / max(S - 1, 1)).T  # (n, S)
    # What the test sums: each constituent's rescaled logit standardised over the S
    # constituents of the record (a symmetric function of the S values, so under H0 the own
    # shard's value is a uniform draw from the record's S values).
    z = ((phi - phi.mean(axis=0)) / (phi.std(axis=0) + 1e-12)).T  # (n, S)
    return {"shard": cand[rows, target], "shard:null": z, "shard:stat": z[rows, target]}


@dataclass(frozen=True, slots=True)
class _References:
    """The reference models of each record: its siblings (every constituent but the one it is
    attacked on), plus the extra references assigned to it (``use``: (E, n), or None)."""

    S: int
    use: np.ndarray | None

    def values(self, t: np.ndarray, idx: np.ndarray, value: np.ndarray,
               value_ext: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Masked reference values for records ``idx`` attacked on constituents ``t``."""
        mask = np.ones((self.S, len(idx)), dtype=bool)
        mask[t, np.arange(len(idx))] = False
        vals = value[:, idx]
        if self.use is not None and value_ext is not None:
            vals = np.concatenate([vals, value_ext[:, idx]])
            mask = np.concatenate([mask, self.use[:, idx]])
        return vals, mask


def _lira_scores(P: np.ndarray, y: np.ndarray, target: np.ndarray, Pext: np.ndarray | None, pool_idx: np.ndarray,
                 refs: _References) -> np.ndarray:
    """LiRA (offline): the target's rescaled logit standardised by the references'."""
    n = P.shape[1]
    rows = np.arange(n)
    phi_all = _rescaled_logit(P, y)  # (S, n)
    phi_ext = _rescaled_logit(Pext, y) if Pext is not None else None
    vals, mask = refs.values(target, rows, phi_all, phi_ext)
    cnt = mask.sum(axis=0)
    mu = (vals * mask).sum(axis=0) / np.maximum(cnt, 1)
    var = (((vals - mu) ** 2) * mask).sum(axis=0) / np.maximum(cnt - 1, 1)
    # Few references: shrink each record's variance half-way to the median over the deleted
    # and audit records of its label (scales differ between classes; the median is a symmetric
    # function of the pooled records, so it does not break their exchangeability).
    pooled = np.full(n, float(np.median(var[pool_idx])))
    for c in np.unique(y[pool_idx]):
        of_c = pool_idx[y[pool_idx] == c]
        if len(of_c) >= 2:
            pooled[y == c] = float(np.median(var[of_c]))
    sd = np.sqrt(0.5 * (var + pooled) + 1e-12)
    return np.asarray((phi_all[target, rows] - mu) / sd)


def _rmia_scores(P: np.ndarray, y: np.ndarray, target: np.ndarray, Pext: np.ndarray | None, audit_idx: np.ndarray,
                 refs: _References, rmia_a: float, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """RMIA (offline): the log likelihood ratio (what the matched test ranks) and the score (the
    fraction of the audit set, attacked on the same constituent, the record dominates)."""
    n = P.shape[1]
    rows = np.arange(n)
    py_all = _true_prob(P, y)  # (S, n)
    py_ext = _true_prob(Pext, y) if Pext is not None else None  # (E, n)

    def ratio(t: np.ndarray, idx: np.ndarray) -> np.ndarray:
        vals, mask = refs.values(t, idx, py_all, py_ext)
        mean = (vals * mask).sum(axis=0) / np.maximum(mask.sum(axis=0), 1)
        pr = np.maximum(0.5 * ((1 + rmia_a) * mean + (1 - rmia_a)), _TINY)  # offline estimate of Pr(x); floored: a
        # reference set that gives the label probability 0 (a model destroyed by DP noise) must not divide by 0
        return np.asarray(np.maximum(py_all[t, idx], _TINY) / pr)

    lr = ratio(target, rows)
    score = np.empty(n)
    for t in np.unique(target):
        # Population Z: the whole audit set, attacked on the same constituent t.
        lr_z = np.sort(ratio(np.full(len(audit_idx), t), audit_idx))
        sel = target == t
        q = lr[sel] / gamma
        # mid-rank: strictly between the audit values around it, so with gamma = 1 the order
        # of every record against every audit record is the order of their ratios (no ties).
        below = np.searchsorted(lr_z, q, side="left") + np.searchsorted(lr_z, q, side="right")
        score[sel] = below / (2.0 * len(lr_z))
    return np.log(lr), score


def label_only_scores(models: Sequence[ProbaFn], X: np.ndarray, y: np.ndarray, target: np.ndarray,
                      seed: int) -> np.ndarray:
    """Label-only membership score: the share of ``LABEL_QUERIES`` noisy copies of each record
    (Gaussian, sd ``LABEL_NOISE``) that the record's target constituent labels correctly (argmax
    only). A record's noise comes from a generator seeded with ``seed`` and the SHA-256 of its
    features and label, so no score depends on the order the records came in."""
    import hashlib

    flat = np.ascontiguousarray(X, dtype=np.float32).reshape(len(X), -1)
    noise = np.empty((LABEL_QUERIES,) + flat.shape, dtype=np.float32)
    for i in range(len(flat)):
        h = int.from_bytes(hashlib.sha256(flat[i].tobytes() + int(y[i]).to_bytes(8, "big", signed=True)).digest()[:8], "big")
        noise[:, i] = np.random.default_rng([seed, 0x1AB, h]).standard_normal((LABEL_QUERIES, flat.shape[1]))
    hits = np.zeros(len(X))
    for q in range(LABEL_QUERIES):
        Xq = (flat + LABEL_NOISE * noise[q]).reshape(X.shape)
        for t in np.unique(target):
            sel = np.flatnonzero(target == t)
            P = checked_proba(models[int(t)], Xq[sel], None, f"model {int(t)} (label-only queries)")
            hits[sel] += P.argmax(axis=1) == y[sel]
    return hits / LABEL_QUERIES


def grad_norm_scores(models: Sequence[ProbaFn], X: np.ndarray, y: np.ndarray, target: np.ndarray) -> np.ndarray:
    """White-box membership score: minus the L2 norm of the gradient of the target constituent's
    cross-entropy on each record with respect to all its parameters (per-example gradients with
    torch.func, ``_GRAD_ROWS`` records at a time). The models must carry their ``module``."""
    import torch
    from torch.func import functional_call, grad, vmap

    out = np.empty(len(X))
    xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    for t in np.unique(target):
        m = models[int(t)].module  # type: ignore[attr-defined]
        params = {k: v.detach() for k, v in m.named_parameters()}

        def loss(p: dict[str, Any], x: Any, yy: Any, _m: Any = m) -> Any:
            return torch.nn.functional.cross_entropy(functional_call(_m, p, (x[None],)), yy[None])

        per_example = vmap(grad(loss), in_dims=(None, 0, 0))
        sel = np.flatnonzero(target == t)
        for a in range(0, len(sel), _GRAD_ROWS):
            rows = torch.from_numpy(sel[a : a + _GRAD_ROWS])
            g = per_example(params, xt[rows], yt[rows])
            sq = sum((v.reshape(len(rows), -1).double() ** 2).sum(dim=1) for v in g.values())
            out[sel[a : a + _GRAD_ROWS]] = -np.sqrt(np.asarray(sq))
    return out
