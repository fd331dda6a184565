"""Statistics of the residual tests (specs/10-residual.md): AUC, TPR at low FPR, the bootstrap,
Holm's correction, and the matched test of deleted records against audit records of the same
label (strata, permutations, the own-shard p-value)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FPR_LEVELS = (0.01, 0.001)


CONTROL_POWER = 0.8


def auc_score(pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC AUC of ``pos`` (positives) against ``neg``: P(pos > neg) + 0.5 P(pos == neg)."""
    pos = np.asarray(pos, dtype=np.float64)
    neg = np.sort(np.asarray(neg, dtype=np.float64))
    lo = np.searchsorted(neg, pos, side="left")
    hi = np.searchsorted(neg, pos, side="right")
    return float((lo + 0.5 * (hi - lo)).sum() / (len(pos) * len(neg)))


def tpr_at_fpr(pos: np.ndarray, neg: np.ndarray, fpr: float) -> float:
    """Largest TPR whose FPR is at most ``fpr``, deciding "member" when ``score > threshold``."""
    neg_desc = np.sort(np.asarray(neg, dtype=np.float64))[::-1]
    k = int(math.floor(fpr * len(neg_desc) + 1e-9))  # false positives allowed
    thr = neg_desc[k] if k < len(neg_desc) else -np.inf
    return float(np.mean(np.asarray(pos, dtype=np.float64) > thr))


def bootstrap_metrics(
    pos: np.ndarray, neg: np.ndarray, *, n_boot: int, rng: np.random.Generator, fprs: Sequence[float] = FPR_LEVELS
) -> dict[str, np.ndarray]:
    """Stratified bootstrap (positives and negatives resampled separately, with replacement):
    ``{"auc": (n_boot,), "tpr@<f>": (n_boot,) ...}``."""
    pos = np.asarray(pos, dtype=np.float64)
    neg = np.asarray(neg, dtype=np.float64)
    n1, n2 = len(pos), len(neg)
    # Dense ranks of the pooled sample (ties kept), so that every resample's sorted negatives can
    # be offset by b * U and all resamples searched in one sorted array.
    _, inv = np.unique(np.concatenate([pos, neg]), return_inverse=True)
    u = int(inv.max()) + 1
    pr, nr = inv[:n1].astype(np.int64), inv[n1:].astype(np.int64)
    out: dict[str, np.ndarray] = {}
    ks = [int(math.floor(f * n2 + 1e-9)) for f in fprs]
    aucs: list[np.ndarray] = []
    tprs: list[list[np.ndarray]] = [[] for _ in fprs]
    chunk = max(1, min(n_boot, 4_000_000 // max(1, n1 + n2)))
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        P = pr[rng.integers(0, n1, (b, n1))]
        Q = np.sort(nr[rng.integers(0, n2, (b, n2))], axis=1)
        off = (np.arange(b, dtype=np.int64) * u)[:, None]
        flat = (Q + off).ravel()
        base = (np.arange(b, dtype=np.int64) * n2)[:, None]
        lo = np.searchsorted(flat, (P + off).ravel(), side="left").reshape(b, n1) - base
        hi = np.searchsorted(flat, (P + off).ravel(), side="right").reshape(b, n1) - base
        aucs.append((lo + 0.5 * (hi - lo)).sum(axis=1) / (n1 * n2))
        for j, k in enumerate(ks):
            thr = Q[:, n2 - 1 - k] if k < n2 else np.full(b, -1)
            tprs[j].append(np.mean(thr[:, None] < P, axis=1))
        done += b
    out["auc"] = np.concatenate(aucs)
    for j, f in enumerate(fprs):
        out[f"tpr@{f:g}"] = np.concatenate(tprs[j])
    return out


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down; controls the family-wise error rate)."""
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    return [float(x) for x in adj]


def normal_quantile(q: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(q))


def min_detectable_auc(n_pos: int, n_neg: int, level: float, power: float = CONTROL_POWER) -> float:
    """The AUC a one-sided rank test at ``level`` detects with probability ``power`` (normal
    approximation with the null variance of the AUC)."""
    sd = math.sqrt((n_pos + n_neg + 1) / (12.0 * n_pos * n_neg))
    return min(1.0, 0.5 + (normal_quantile(1 - level) + normal_quantile(power)) * sd)


N_PERMUTATIONS = 9999


@dataclass(frozen=True, slots=True)
class Strata:
    """The comparison groups of the matched test: one per (label, target shard) holding deleted
    records. ``deleted[s]``/``audit[s]`` are the positions (in the pooled record order) of the
    stratum's deleted and audit records; ``unmatched`` counts deleted records whose group has no
    audit record (they cannot be compared and take no part in the test)."""

    keys: tuple[tuple[int, int], ...]  # (label, shard)
    deleted: tuple[np.ndarray, ...]
    audit: tuple[np.ndarray, ...]
    unmatched: int

    @property
    def n_matched(self) -> int:
        return int(sum(len(d) for d, a in zip(self.deleted, self.audit, strict=True) if len(a)))

    def usable(self) -> list[int]:
        return [i for i, a in enumerate(self.audit) if len(a)]

    def log10_arrangements(self) -> float:
        """log10 of the number of ways to choose the deleted records within their strata: the
        exact permutation test's smallest p-value is one over this (without ties)."""
        tot = 0.0
        for i in self.usable():
            n, k = len(self.deleted[i]) + len(self.audit[i]), len(self.deleted[i])
            tot += (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(10)
        return tot


def allocate_audit(yd: np.ndarray, sd: np.ndarray, ya: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Strata]:
    """Target shard of every audit record, and the strata of the matched test.

    The audit records of a label the deleted records carry are shuffled (``rng``) and dealt to the
    shards that label's deleted records came from, in proportion to the number of deleted records
    of that label per shard (largest remainder, ties to the lower shard). Audit records of other
    labels are dealt the same way in proportion to all deleted records per shard (they only enter
    the reported pooled figures). Nothing here depends on how the deletion was split into
    requests or on the order the records were given in.
    """
    na = len(ya)
    target = np.empty(na, dtype=np.int64)

    def deal(rows: np.ndarray, shards: np.ndarray, counts: np.ndarray) -> None:
        quota = counts * len(rows) / counts.sum()
        base = np.floor(quota).astype(np.int64)
        rest = len(rows) - int(base.sum())
        base[np.argsort(-(quota - base), kind="stable")[:rest]] += 1
        target[rng.permutation(rows)] = np.repeat(shards, base)

    all_shards, all_counts = np.unique(sd, return_counts=True)
    for c in np.unique(ya):
        rows = np.flatnonzero(ya == c)
        sel = yd == c
        if sel.any():
            shards, counts = np.unique(sd[sel], return_counts=True)
            deal(rows, shards, counts)
        else:
            deal(rows, all_shards, all_counts)
    keys, dels, auds = [], [], []
    unmatched = 0
    for c in np.unique(yd):
        for s in np.unique(sd[yd == c]):
            d = np.flatnonzero((yd == c) & (sd == s))
            a = np.flatnonzero((ya == c) & (target == s))
            keys.append((int(c), int(s)))
            dels.append(d)
            auds.append(a)
            if len(a) == 0:
                unmatched += len(d)
    return target, Strata(tuple(keys), tuple(dels), tuple(auds), unmatched)


def _midranks(v: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return np.asarray(rankdata(v, method="average"), dtype=np.float64)


def matched_auc(pos_scores: np.ndarray, neg_scores: np.ndarray, strata: Strata) -> float:
    """Label-matched AUC: the mean, over the matched deleted records, of the fraction of their
    stratum's audit records they score above (ties count one half). 0.5 under H0."""
    m = strata.n_matched
    if m == 0:
        return 0.5
    tot = 0.0
    for i in strata.usable():
        tot += auc_score(pos_scores[strata.deleted[i]], neg_scores[strata.audit[i]]) * len(strata.deleted[i])
    return tot / m


class Permutations:
    """The random re-labellings of the stratified permutation test, drawn once and shared by every
    attack and both model sets: for each usable stratum, ``B`` random choices of which of its
    ``N`` pooled positions are "deleted". The pooled positions are taken in score order, so the
    test depends on the multiset of ranks only, never on the order the records were given in."""

    def __init__(self, strata: Strata, n_perm: int, rng: np.random.Generator) -> None:
        from itertools import combinations

        self.strata = strata
        self.n_perm = n_perm
        self.choice: list[np.ndarray] = []
        # Few arrangements: enumerate them all (the exact test); else B random ones.
        self.exact = strata.log10_arrangements() <= math.log10(n_perm + 1)
        for i in strata.usable():
            if self.exact:
                n = len(strata.deleted[i]) + len(strata.audit[i])
                self.choice.append(np.array(list(combinations(range(n), len(strata.deleted[i]))), dtype=np.int64))
                continue
            k, n = len(strata.deleted[i]), len(strata.deleted[i]) + len(strata.audit[i])
            u = rng.random((n_perm, n))
            self.choice.append(np.argpartition(u, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (n_perm, 1)))

    def p_value(self, pos_scores: np.ndarray, neg_scores: np.ndarray) -> float:
        """One-sided p-value of the matched AUC ("deleted records score higher"):
        ``(1 + #{T_perm >= T_obs}) / (1 + B)``, valid for any B under exchangeability."""
        obs, perm = self.distribution(pos_scores, neg_scores)
        return self.tail(perm, obs)

    def tail(self, perm: np.ndarray, obs: float) -> float:
        hits = np.count_nonzero(perm >= obs - 1e-9)
        return float(hits / len(perm)) if self.exact else float((1 + hits) / (1 + self.n_perm))

    def distribution(self, pos_scores: np.ndarray, neg_scores: np.ndarray) -> tuple[float, np.ndarray]:
        """The test statistic and its value under every re-labelling: the AUC, minus 1/2, of the
        deleted against the audit records of all strata after *aligning* each stratum (its scores
        minus the median of its pooled deleted and audit scores; Hodges-Lehmann aligned ranks).
        The median of a stratum's pool does not change when its records are re-labelled, so the
        re-labellings within strata stay exact; aligning lets a deleted record be compared with
        the audit records of every stratum without comparing labels of different difficulty."""
        st = self.strata
        use = st.usable()
        m = st.n_matched
        if m == 0:
            return 0.0, np.zeros(1)
        pools = [np.concatenate([pos_scores[st.deleted[i]], neg_scores[st.audit[i]]]) for i in use]
        ranks = _midranks(np.concatenate([v - np.median(v) for v in pools]))
        n_a = sum(len(st.audit[i]) for i in use)
        shift = m * (m + 1) / 2.0
        obs = 0.0
        perm: np.ndarray = np.zeros(1 if self.exact else self.n_perm)
        at = 0
        for j, i in enumerate(use):
            k, r = len(st.deleted[i]), ranks[at : at + len(pools[j])]
            at += len(pools[j])
            obs += r[:k].sum()
            t = np.sort(r)[self.choice[j]].sum(axis=1)
            perm = np.add.outer(perm, t).ravel() if self.exact else perm + t
        return (obs - shift) / (m * n_a) - 0.5, (perm - shift) / (m * n_a) - 0.5

    def max_t(self, stats: Sequence[tuple[float, np.ndarray]]) -> list[float]:
        """Westfall-Young step-down maxT adjusted p-values over the attacks (one statistic each,
        all on the same scale and under the same re-labellings): the family-wise error rate is at
        most alpha whatever the dependence between the attacks, and correlated attacks cost less
        than Holm's bound."""
        order = sorted(range(len(stats)), key=lambda i: -stats[i][0])
        adj = [1.0] * len(stats)
        running = 0.0
        for rank, i in enumerate(order):
            rest = [stats[j][1] for j in order[rank:]]
            running = max(running, self.tail(np.max(np.stack(rest), axis=0), stats[i][0]))
            adj[i] = running
        return adj

    def smallest_p(self) -> float:
        """The smallest p-value this test can return (ties ignored)."""
        exact = float(10.0 ** -self.strata.log10_arrangements())
        return exact if self.exact else max(exact, 1.0 / (1 + self.n_perm))


def own_shard_p(cand: np.ndarray, own: np.ndarray, n_perm: int, rng: np.random.Generator) -> float:
    """One-sided p-value of the own-shard test: ``cand`` (n, S) holds each deleted record's value
    under every constituent, ``own`` the one of its own shard. Under H0 every constituent is
    equally likely to be the record's own (none saw it; SISA assigns shards uniformly),
    independently across records: P(sum of draws >= sum of ``own``), over all S^n assignments
    when there are at most n_perm + 1 of them, else ``(1 + #{draws >= obs}) / (1 + n_perm)``."""
    n, S = cand.shape
    order = np.lexsort(np.column_stack([cand, own]).T[::-1])  # canonical order: the records' order does not matter
    cand, own = cand[order], own[order]
    obs = float(own.sum()) - 1e-9
    if n * math.log(S) <= math.log(n_perm + 1):
        tot = np.zeros(1)
        for row in cand:
            tot = np.add.outer(tot, row).ravel()
        return float(np.mean(tot >= obs))
    hits = 0
    for b in range(0, n_perm, 2000):
        t = rng.integers(0, S, (min(2000, n_perm - b), n))
        hits += int(np.count_nonzero(cand[np.arange(n), t].sum(axis=1) >= obs))
    return float((1 + hits) / (1 + n_perm))


def matched_null_sd(strata: Strata) -> float:
    """Standard deviation of the matched AUC under H0 (no ties): strata independent, each AUC with
    variance (N_s + 1) / (12 k_s n_s), weighted by k_s / m."""
    m = strata.n_matched
    if m == 0:
        return math.inf
    var = 0.0
    for i in strata.usable():
        k, n = len(strata.deleted[i]), len(strata.audit[i])
        var += (k / m) ** 2 * (k + n + 1) / (12.0 * k * n)
    return math.sqrt(var)


def matched_bootstrap(pos: np.ndarray, neg: np.ndarray, strata: Strata, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Stratified bootstrap of the matched AUC: deleted and audit records resampled with
    replacement within each stratum."""
    m = strata.n_matched
    out = np.zeros(n_boot)
    if m == 0:
        return out + 0.5
    for i in strata.usable():
        d, a = np.sort(pos[strata.deleted[i]]), np.sort(neg[strata.audit[i]])
        k, n = len(d), len(a)
        D = d[rng.integers(0, k, (n_boot, k))]
        A = np.sort(a[rng.integers(0, n, (n_boot, n))], axis=1)
        wins = np.zeros(n_boot)
        for b in range(0, n_boot, 256):
            sl = slice(b, min(n_boot, b + 256))
            gt = (D[sl][:, :, None] > A[sl][:, None, :]).sum(axis=(1, 2))
            eq = (D[sl][:, :, None] == A[sl][:, None, :]).sum(axis=(1, 2))
            wins[sl] = gt + 0.5 * eq
        out += wins / n / m
    return out
