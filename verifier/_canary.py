"""Backdoor-canary test (Athena; Sommer et al., PETS 2022) -- specs/10-residual.md.

A data subject marked their records with a :class:`~verifiable_mu._canary.Trigger` before
submitting them. After they asked for deletion, the verifier stamps the trigger onto clean query
records whose label is not the target class (the audit set) and counts how often each model answers
the target class:

* the **base rate** ``p0``: on the constituents of shards that never held marked records; ``p0`` is
  the largest of their one-sided ``1 - alpha`` Clopper-Pearson upper bounds (conservative: it
  absorbs both sampling noise and model-to-model spread);
* the **control**: the pre-deletion constituent of each marked shard must answer the target more
  often than ``p0`` (one-sided exact binomial test);
* the **residual**: the post-deletion constituent must not (same test).

Holm's correction runs over the marked shards, separately for control and residual. Verdict:
``fail`` if any residual test rejects; ``inconclusive`` if some marked shard's control does not
reject (the trigger never worked there, so its absence proves nothing) or no shard is left to
measure the base rate; ``pass`` otherwise.

The aggregated model (mean of softmax) dilutes one constituent's backdoor among ``S`` models, so the
test runs on the constituents; the aggregated rates are reported for information. Numpy and scipy
only; models are callables ``predict_proba(X) -> (n, k)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from verifiable_mu._canary import Trigger, apply_trigger
from verifiable_mu._errors import MalformedInput

from ._residual_attacks import checked_labels, checked_proba
from ._residual_report import rounded
from ._residual_stats import holm

__all__ = ["CANARY_REPORT_TYPE", "CANARY_REPORT_VERSION", "CanaryShard", "CanaryReport", "canary_test", "clopper_pearson_upper"]

CANARY_REPORT_TYPE = "vmu.canary-report"
CANARY_REPORT_VERSION = 1

ProbaFn = Callable[[np.ndarray], Any]


def clopper_pearson_upper(k: int, n: int, level: float) -> float:
    """One-sided Clopper-Pearson upper confidence bound of a binomial rate at ``level``."""
    from scipy.stats import beta

    if k >= n:
        return 1.0
    return float(beta.ppf(level, k + 1, n - k))


def _binom_greater(k: int, n: int, p: float) -> float:
    from scipy.stats import binomtest

    return float(binomtest(k, n, p, alternative="greater").pvalue) if p < 1 else 1.0


def _binom_less(k: int, n: int, p: float) -> float:
    from scipy.stats import binomtest

    return float(binomtest(k, n, p, alternative="less").pvalue) if p > 0 else 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CanaryShard:
    """The trigger on one marked shard's constituent, before and after deletion."""

    shard: int
    pre_hits: int
    post_hits: int
    n_queries: int
    p_control: float
    p_control_holm: float
    p_residual: float
    p_residual_holm: float
    p_drop: float
    control_detected: bool
    residual_detected: bool

    @property
    def pre_rate(self) -> float:
        return self.pre_hits / self.n_queries

    @property
    def post_rate(self) -> float:
        return self.post_hits / self.n_queries

    def to_json(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "queries": self.n_queries,
            "pre_hits": self.pre_hits,
            "post_hits": self.post_hits,
            "pre_rate": rounded(self.pre_rate),
            "post_rate": rounded(self.post_rate),
            "p_control": rounded(self.p_control),
            "p_control_holm": rounded(self.p_control_holm),
            "p_residual": rounded(self.p_residual),
            "p_residual_holm": rounded(self.p_residual_holm),
            "p_post_below_pre": rounded(self.p_drop),
            "control_detected": self.control_detected,
            "residual_detected": self.residual_detected,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class CanaryReport:
    verdict: str
    reason: str
    alpha: float
    trigger: Trigger
    n_queries: int
    base_rate: float
    base_shards: tuple[int, ...]
    base_hits: tuple[int, ...]
    shards: tuple[CanaryShard, ...]
    aggregate_pre_rate: float
    aggregate_post_rate: float
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "type": CANARY_REPORT_TYPE,
            "version": CANARY_REPORT_VERSION,
            "verdict": self.verdict,
            "reason": self.reason,
            "alpha": self.alpha,
            "test": "exact binomial, one-sided; Holm over the marked shards",
            "trigger": self.trigger.to_json(),
            "queries": self.n_queries,
            "base_rate": rounded(self.base_rate),
            "base_rate_rule": "largest one-sided (1 - alpha) Clopper-Pearson upper bound over the unmarked shards",
            "base": [
                {"shard": s, "hits": h, "rate": rounded(h / self.n_queries)} for s, h in zip(self.base_shards, self.base_hits, strict=True)
            ],
            "shards": [s.to_json() for s in self.shards],
            "aggregate": {"pre_rate": rounded(self.aggregate_pre_rate), "post_rate": rounded(self.aggregate_post_rate)},
            "seconds": round(self.seconds, 6),
        }


def canary_test(
    *,
    trigger: Trigger,
    post_models: Sequence[ProbaFn],
    pre_models: Sequence[ProbaFn],
    marked_shards: Sequence[int],
    query_X: Any,
    query_y: Any,
    alpha: float = 0.05,
) -> CanaryReport:
    """Measure the trigger's success rate on every constituent before and after deletion.

    ``marked_shards``: the shards that held marked records (from the deletion transcript);
    ``query_X``/``query_y``: clean records the models never trained on (the audit set); those whose
    label is the target are left out.
    """
    t0 = time.perf_counter()
    S, marked, Xq = _checked_inputs(trigger, alpha, post_models, pre_models, marked_shards, query_X, query_y)
    n = Xq.shape[0]
    Xt = apply_trigger(Xq, trigger)

    def hits(P: np.ndarray) -> int:
        return int(np.sum(P.argmax(axis=1) == trigger.target))

    post_P = [checked_proba(m, Xt, None, f"post-deletion model {j}") for j, m in enumerate(post_models)]
    pre_P = [checked_proba(m, Xt, None, f"pre-deletion model {j}") for j, m in enumerate(pre_models)]
    k = post_P[0].shape[1]
    if trigger.target >= k or any(P.shape[1] != k for P in post_P + pre_P):
        raise MalformedInput(f"the trigger's target {trigger.target} is not one of the models' {k} classes")
    base_shards = tuple(j for j in range(S) if j not in marked)
    base_hits = tuple(hits(post_P[j]) for j in base_shards)
    base = max((clopper_pearson_upper(h, n, 1 - alpha) for h in base_hits), default=1.0)
    agg_pre = hits(np.mean(pre_P, axis=0)) / n
    agg_post = hits(np.mean(post_P, axis=0)) / n
    pre_h = [hits(pre_P[s]) for s in marked]
    post_h = [hits(post_P[s]) for s in marked]
    p_ctl = [_binom_greater(h, n, base) for h in pre_h]
    p_res = [_binom_greater(h, n, base) for h in post_h]
    p_ctl_h, p_res_h = holm(p_ctl), holm(p_res)
    shards = tuple(
        CanaryShard(
            shard=s,
            pre_hits=pre_h[i],
            post_hits=post_h[i],
            n_queries=n,
            p_control=p_ctl[i],
            p_control_holm=p_ctl_h[i],
            p_residual=p_res[i],
            p_residual_holm=p_res_h[i],
            p_drop=_binom_less(post_h[i], n, pre_h[i] / n),
            control_detected=p_ctl_h[i] <= alpha,
            residual_detected=p_res_h[i] <= alpha,
        )
        for i, s in enumerate(marked)
    )
    verdict, reason = _decide(shards, base, base_shards, alpha)
    return CanaryReport(
        verdict=verdict,
        reason=reason,
        alpha=alpha,
        trigger=trigger,
        n_queries=n,
        base_rate=base,
        base_shards=base_shards,
        base_hits=base_hits,
        shards=shards,
        aggregate_pre_rate=agg_pre,
        aggregate_post_rate=agg_post,
        seconds=time.perf_counter() - t0,
    )


def _checked_inputs(trigger: Trigger, alpha: float, post_models: Sequence[ProbaFn], pre_models: Sequence[ProbaFn],
                    marked_shards: Sequence[int], query_X: Any, query_y: Any) -> tuple[int, list[int], np.ndarray]:
    """The caller's inputs, checked: the number of shards, the marked shards, and the query records
    whose label is not the trigger's target."""
    if not isinstance(trigger, Trigger):
        raise MalformedInput("trigger must be a Trigger (use Trigger.from_json for a trigger document)")
    if not 0 < alpha < 0.5:
        raise MalformedInput("alpha must be in (0, 0.5)")
    S = len(post_models)
    if S < 1 or len(pre_models) != S:
        raise MalformedInput(f"{len(pre_models)} pre-deletion models for {S} post-deletion models")
    marked = sorted({int(s) for s in marked_shards})
    if not marked or marked[0] < 0 or marked[-1] >= S:
        raise MalformedInput(f"marked_shards must name at least one shard in 0..{S - 1}")
    try:
        Xq = np.asarray(query_X, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise MalformedInput(f"query_X must be a numeric array: {e}") from e
    if Xq.ndim < 2:
        raise MalformedInput("query_X must have one row per record")
    yq = checked_labels(query_y, Xq.shape[0], "query_y")
    Xq = Xq[yq != trigger.target]
    n = Xq.shape[0]
    if n == 0:
        raise MalformedInput(f"no query record has a label other than the trigger's target {trigger.target}")
    return S, marked, Xq


def _decide(shards: Sequence[CanaryShard], base: float, base_shards: Sequence[int], alpha: float) -> tuple[str, str]:
    bad = [s for s in shards if s.residual_detected]
    if bad:
        s = bad[0]
        return "fail", (
            f"the trigger still works after deletion on shard {s.shard}: {s.post_hits}/{s.n_queries} triggered queries "
            f"answer the target (base rate <= {base:.3g}; Holm-adjusted p = {s.p_residual_holm:.2g} <= alpha = {alpha:g})"
        )
    if not base_shards:
        return "inconclusive", "every shard held marked records: no constituent is left to measure the base rate"
    weak = [s for s in shards if not s.control_detected]
    if weak:
        s = weak[0]
        return "inconclusive", (
            f"power too low: the trigger did not work before deletion on shard {s.shard} ({s.pre_hits}/{s.n_queries}, "
            f"base rate <= {base:.3g}, Holm-adjusted p = {s.p_control_holm:.2g} > alpha = {alpha:g})"
        )
    rates = ", ".join(f"shard {s.shard}: {s.pre_rate:.0%} -> {s.post_rate:.0%}" for s in shards)
    return "pass", f"the trigger worked before deletion and no longer does ({rates}; base rate <= {base:.3g})"
