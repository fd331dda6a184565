"""Residual-information tests: membership inference on the deleted records (specs/10-residual.md).

After an honest deletion the deleted records must look like records the model never saw. This
module scores every deleted record, every record of the audit set (committed at training time,
never trained on) and a sample of retained training records with four attacks, compares deleted
against audit with a one-sided Mann-Whitney test per attack, corrects the family with Holm's
procedure, and runs the same attacks against the pre-deletion models as a positive control:

* ``loss`` (Yeom et al. 2018): log-probability of the true class under the aggregated model.
* ``confidence`` (Salem et al. 2019): negative entropy of the aggregated model's prediction.
* ``lira`` (Carlini et al. 2022, offline, per example): the record's shard constituent's
  rescaled logit of the true class, standardised by the same quantity on reference models that
  never saw the record (SISA's sibling constituents, plus optional extra references).
* ``rmia`` (Zarifzadeh et al. 2024, offline, one reference set): likelihood ratio of the true-class
  probability on the shard constituent over its mean on the references (offline parameter a = 1),
  turned into the fraction of audit-set records it dominates.

Only lira and rmia decide (Holm over the two); loss and confidence are reported. Verdicts:
``fail`` when a deciding attack's Holm-adjusted p-value on the post-deletion models is at most
alpha; otherwise ``inconclusive`` when the positive control does not reject at the same alpha and
correction ("power too low"), or cannot run; otherwise ``pass``.

Models come in as callables ``predict_proba(X) -> (n, k)`` array of class probabilities; this
module needs numpy, scipy and scikit-learn's metrics only and never imports torch itself.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from verifiable_mu._errors import MalformedInput

__all__ = [
    "ATTACKS",
    "DECISION_ATTACKS",
    "RESIDUAL_REPORT_TYPE",
    "RESIDUAL_REPORT_VERSION",
    "Reference",
    "AttackResult",
    "ResidualReport",
    "residual_tests",
    "holm",
    "bootstrap_metrics",
    "tpr_at_fpr",
    "auc_score",
]

RESIDUAL_REPORT_TYPE = "vmu.residual-report"
RESIDUAL_REPORT_VERSION = 1
ATTACKS = ("loss", "confidence", "lira", "rmia")
# The decision family: attacks calibrated per example on reference models. The population attacks
# (loss, confidence) are reported but do not decide: they measure how easy a record is, not
# whether it was trained on, and fail honest deletions of easy records (specs/10-residual.md).
DECISION_ATTACKS = ("lira", "rmia")
ATTACK_INFO = {
    "loss": "Yeom et al. 2018: log-probability of the true class under the aggregated model (mean of softmax)",
    "confidence": "Salem et al. 2019: negative entropy of the aggregated model's prediction (label-free)",
    "lira": "offline LiRA (Carlini et al. 2022): shard constituent's rescaled logit of the true class, "
    "standardised by reference models that never saw the record",
    "rmia": "offline RMIA (Zarifzadeh et al. 2024): true-class probability ratio target / corrected reference mean, "
    "as the fraction of audit-set records it dominates",
}
FPR_LEVELS = (0.01, 0.001)
DEFAULT_RMIA_A = 1.0  # a < 1 favours records easy for every model: false alarms (spec)
DEFAULT_GAMMA = 1.0
CONTROL_POWER = 0.8
_TINY = 1e-300
_MAX_RECORDS = 1_000_000

ProbaFn = Callable[[np.ndarray], Any]


# --- small statistical helpers (public: the HTML report and the tests use them) --------------


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
            tprs[j].append(np.mean(P > thr[:, None], axis=1))
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


def _mann_whitney_greater(pos: np.ndarray, neg: np.ndarray) -> float:
    """One-sided Mann-Whitney U p-value for "pos tends to be larger than neg"."""
    from scipy.stats import mannwhitneyu

    pos = np.asarray(pos, dtype=np.float64)
    neg = np.asarray(neg, dtype=np.float64)
    ties = len(np.unique(np.concatenate([pos, neg]))) < len(pos) + len(neg)
    method = "exact" if (min(len(pos), len(neg)) < 20 and not ties) else "asymptotic"
    res = mannwhitneyu(pos, neg, alternative="greater", method=method, use_continuity=True)
    return float(res.pvalue)


def _z(q: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(q))


def min_detectable_auc(n_pos: int, n_neg: int, level: float, power: float = CONTROL_POWER) -> float:
    """The AUC a one-sided rank test at ``level`` detects with probability ``power`` (normal
    approximation with the null variance of the AUC)."""
    sd = math.sqrt((n_pos + n_neg + 1) / (12.0 * n_pos * n_neg))
    return min(1.0, 0.5 + (_z(1 - level) + _z(power)) * sd)


# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Reference:
    """An extra reference model the verifier obtained without new data, e.g. one trained on a fold
    of the audit set. ``seen_audit[i]`` says whether it was trained on audit record ``i``.

    Every audit record must be left out by the same number ``c`` of the extra references (a K-fold
    split gives ``c = K - 1``); deleted and retained records then use ``c`` of them drawn at
    random, so every scored record is compared with the same kind and number of references.
    """

    predict_proba: ProbaFn
    seen_audit: tuple[bool, ...]
    name: str = "audit-reference"


@dataclass(frozen=True, slots=True, kw_only=True)
class AttackResult:
    """One attack against one set of models (``phase`` "post" or "pre"), deleted vs audit."""

    attack: str
    phase: str
    auc: float
    auc_ci: tuple[float, float]
    tpr_1pct: float
    tpr_1pct_ci: tuple[float, float]
    tpr_01pct: float
    tpr_01pct_ci: tuple[float, float]
    p_value: float
    p_holm: float | None
    reject: bool
    decides: bool
    retained_auc: float | None
    roc_fpr: tuple[float, ...]
    roc_tpr: tuple[float, ...]
    scores_deleted: tuple[float, ...]
    scores_audit: tuple[float, ...]
    scores_retained: tuple[float, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "attack": self.attack,
            "phase": self.phase,
            "auc": _r(self.auc),
            "auc_ci95": [_r(self.auc_ci[0]), _r(self.auc_ci[1])],
            "tpr_at_fpr_1pct": _r(self.tpr_1pct),
            "tpr_at_fpr_1pct_ci95": [_r(x) for x in self.tpr_1pct_ci],
            "tpr_at_fpr_0.1pct": _r(self.tpr_01pct),
            "tpr_at_fpr_0.1pct_ci95": [_r(x) for x in self.tpr_01pct_ci],
            "p_value": _r(self.p_value),
            "p_holm": None if self.p_holm is None else _r(self.p_holm),
            "reject": self.reject,
            "decides": self.decides,
            "retained_vs_audit_auc": None if self.retained_auc is None else _r(self.retained_auc),
            "roc": {"fpr": [_r(x) for x in self.roc_fpr], "tpr": [_r(x) for x in self.roc_tpr]},
            "scores": {
                "deleted": [_r(x) for x in self.scores_deleted],
                "audit": [_r(x) for x in self.scores_audit],
                "retained": [_r(x) for x in self.scores_retained],
            },
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ResidualReport:
    """Everything the residual tests measured, and the verdict ("pass", "fail", "inconclusive")."""

    verdict: str
    reason: str
    alpha: float
    attacks: tuple[str, ...]
    decision_attacks: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]
    post: tuple[AttackResult, ...]
    pre: tuple[AttackResult, ...]
    post_reject: bool
    control_detected: bool | None
    min_detectable_auc: float
    n_deleted: int
    n_audit: int
    n_retained: int
    n_boot: int
    seed: int
    shards: tuple[int, ...]
    references: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def result(self, attack: str, phase: str = "post") -> AttackResult:
        for r in self.post if phase == "post" else self.pre:
            if r.attack == attack:
                return r
        raise KeyError(f"no {phase} result for attack {attack!r}")

    def to_json(self) -> dict[str, Any]:
        best_pre = _best(self.pre)
        return {
            "type": RESIDUAL_REPORT_TYPE,
            "version": RESIDUAL_REPORT_VERSION,
            "verdict": self.verdict,
            "reason": self.reason,
            "alpha": self.alpha,
            "test": "Mann-Whitney U, one-sided (deleted scores larger than audit scores)",
            "correction": "holm",
            "attacks": list(self.attacks),
            "decision_attacks": list(self.decision_attacks),
            "attack_descriptions": {a: ATTACK_INFO[a] for a in self.attacks},
            "skipped": [{"attack": a, "why": w} for a, w in self.skipped],
            "n": {"deleted": self.n_deleted, "audit": self.n_audit, "retained": self.n_retained},
            "shards": list(self.shards),
            "references": dict(self.references),
            "bootstrap": {"resamples": self.n_boot, "seed": self.seed, "interval": "percentile 95%"},
            "post_reject": self.post_reject,
            "control": {
                "detected": self.control_detected,
                "best_attack": best_pre.attack if best_pre else None,
                "best_auc": _r(best_pre.auc) if best_pre else None,
                "best_auc_ci95": [_r(x) for x in best_pre.auc_ci] if best_pre else None,
                "best_p_holm": _r(best_pre.p_holm) if best_pre and best_pre.p_holm is not None else None,
            },
            "min_detectable_auc": _r(self.min_detectable_auc),
            "post": [r.to_json() for r in self.post],
            "pre": [r.to_json() for r in self.pre],
            "seconds": round(self.seconds, 6),
        }


def _best(results: Sequence[AttackResult]) -> AttackResult | None:
    """The deciding attack with the smallest adjusted p-value (ties: larger AUC)."""
    dec = [r for r in results if r.decides and r.p_holm is not None]
    return min(dec, key=lambda r: (r.p_holm, -r.auc)) if dec else None


def _r(x: float) -> float:
    """Six significant digits, and never NaN/inf in JSON."""
    x = float(x)
    if not math.isfinite(x):
        return 1e308 if x > 0 else (-1e308 if x < 0 else 0.0)
    return float(f"{x:.6g}")


# --- inputs ------------------------------------------------------------------------------------


def _array(X: Any, what: str) -> np.ndarray:
    try:
        a = np.asarray(X, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise MalformedInput(f"{what} must be a numeric array: {e}") from e
    if a.ndim < 2:
        raise MalformedInput(f"{what} must have one row per record")
    if a.shape[0] > _MAX_RECORDS:
        raise MalformedInput(f"{what} has too many records ({a.shape[0]} > {_MAX_RECORDS})")
    return a


def _labels(y: Any, n: int, what: str) -> np.ndarray:
    a = np.asarray(y)
    if a.ndim != 1 or a.shape[0] != n:
        raise MalformedInput(f"{what} must be a 1-d array with one label per record ({n})")
    if a.dtype.kind not in "iu" or (n and a.min() < 0):
        raise MalformedInput(f"{what} must be non-negative integer class labels")
    return a.astype(np.int64)


def _shards(s: Any, n: int, n_models: int, what: str) -> np.ndarray:
    a = np.asarray(s)
    if a.ndim != 1 or a.shape[0] != n or (n and a.dtype.kind not in "iu"):
        raise MalformedInput(f"{what} must be a 1-d array of shard numbers, one per record ({n})")
    a = a.astype(np.int64)
    if n and (a.min() < 0 or a.max() >= n_models):
        raise MalformedInput(f"{what} names a shard outside 0..{n_models - 1}")
    return a


def _proba(fn: ProbaFn, X: np.ndarray, n_classes: int | None, what: str) -> np.ndarray:
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


# --- scores ------------------------------------------------------------------------------------


def _true_prob(P: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(..., n, k) -> (..., n): probability of the true class."""
    return np.take_along_axis(P, np.broadcast_to(y[:, None], P.shape[:-1] + (1,)), axis=-1)[..., 0]


def _rescaled_logit(P: np.ndarray, y: np.ndarray) -> np.ndarray:
    """log p_y - log sum_{j != y} p_j (stable near p_y = 1, unlike log p - log(1 - p))."""
    py = _true_prob(P, y)
    others = np.ones(P.shape, dtype=bool)
    np.put_along_axis(others, np.broadcast_to(y[:, None], P.shape[:-1] + (1,)), False, axis=-1)
    rest = (P * others).sum(axis=-1)  # summed directly: no cancellation when p_y is close to 1
    return np.log(np.maximum(py, _TINY)) - np.log(np.maximum(rest, _TINY))


def _phase_scores(
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
    S, n, _ = P.shape
    rows = np.arange(n)
    out: dict[str, np.ndarray] = {}
    agg = P.mean(axis=0)
    if "loss" in attacks:
        out["loss"] = np.log(np.maximum(agg[rows, y], _TINY))
    if "confidence" in attacks:
        out["confidence"] = (agg * np.log(np.maximum(agg, _TINY))).sum(axis=1)
    if "lira" not in attacks and "rmia" not in attacks:
        return out
    py_all = _true_prob(P, y)  # (S, n)
    py_ext = _true_prob(Pext, y) if Pext is not None else None  # (E, n)
    use = ext_use if (ext_use is not None and ext_use.any()) else None

    def refs(t: np.ndarray, idx: np.ndarray, value: np.ndarray, value_ext: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Masked reference values for records ``idx`` attacked on constituents ``t``: siblings
        (every constituent but the target) plus the extra references assigned to the record."""
        mask = np.ones((S, len(idx)), dtype=bool)
        mask[t, np.arange(len(idx))] = False
        vals = value[:, idx]
        if use is not None and value_ext is not None:
            vals = np.concatenate([vals, value_ext[:, idx]])
            mask = np.concatenate([mask, use[:, idx]])
        return vals, mask

    if "lira" in attacks:
        phi_all = _rescaled_logit(P, y)  # (S, n)
        phi_ext = _rescaled_logit(Pext, y) if Pext is not None else None
        vals, mask = refs(target, rows, phi_all, phi_ext)
        cnt = mask.sum(axis=0)
        mu = (vals * mask).sum(axis=0) / np.maximum(cnt, 1)
        var = (((vals - mu) ** 2) * mask).sum(axis=0) / np.maximum(cnt - 1, 1)
        pooled = float(np.median(var[pool_idx]))
        # Few references: shrink each record's variance half-way to the pooled median.
        sd = np.sqrt(0.5 * (var + pooled) + 1e-12)
        out["lira"] = (phi_all[target, rows] - mu) / sd
    if "rmia" in attacks:

        def ratio(t: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            vals, mask = refs(t, idx, py_all, py_ext)
            mean = (vals * mask).sum(axis=0) / np.maximum(mask.sum(axis=0), 1)
            pr = 0.5 * ((1 + rmia_a) * mean + (1 - rmia_a))  # offline estimate of Pr(x)
            return np.maximum(py_all[t, idx], _TINY) / pr, mean

        lr, _ = ratio(target, rows)
        score = np.empty(n)
        for t in np.unique(target):
            # Population Z: the whole audit set, attacked on the same constituent t.
            lr_z = np.sort(ratio(np.full(len(audit_idx), t), audit_idx)[0])
            sel = target == t
            q = lr[sel] / gamma
            # mid-rank: strictly between the audit values around it, so with gamma = 1 the order
            # of every record against every audit record is the order of their ratios (no ties).
            below = np.searchsorted(lr_z, q, side="left") + np.searchsorted(lr_z, q, side="right")
            score[sel] = below / (2.0 * len(lr_z))
        out["rmia"] = score
    return out


# --- the test ------------------------------------------------------------------------------------


def _evaluate(
    scores: dict[str, np.ndarray],
    attacks: Sequence[str],
    deciding: Sequence[str],
    phase: str,
    d_idx: np.ndarray,
    a_idx: np.ndarray,
    r_idx: np.ndarray,
    alpha: float,
    n_boot: int,
    seed: int,
) -> tuple[AttackResult, ...]:
    from sklearn.metrics import roc_curve

    ps = [_mann_whitney_greater(scores[a][d_idx], scores[a][a_idx]) for a in attacks]
    dec = [i for i, a in enumerate(attacks) if a in deciding]
    adj: list[float | None] = [None] * len(attacks)
    for i, q in zip(dec, holm([ps[i] for i in dec]) if dec else [], strict=True):
        adj[i] = q
    results = []
    for i, a in enumerate(attacks):
        s = scores[a]
        pos, neg = s[d_idx], s[a_idx]
        boot = bootstrap_metrics(pos, neg, n_boot=n_boot, rng=np.random.default_rng([seed, i, 0 if phase == "post" else 1]))

        def ci(v: np.ndarray) -> tuple[float, float]:
            return float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))

        fpr, tpr, _ = roc_curve(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg])
        results.append(
            AttackResult(
                attack=a,
                phase=phase,
                auc=auc_score(pos, neg),
                auc_ci=ci(boot["auc"]),
                tpr_1pct=tpr_at_fpr(pos, neg, 0.01),
                tpr_1pct_ci=ci(boot["tpr@0.01"]),
                tpr_01pct=tpr_at_fpr(pos, neg, 0.001),
                tpr_01pct_ci=ci(boot["tpr@0.001"]),
                p_value=ps[i],
                p_holm=adj[i],
                reject=adj[i] is not None and adj[i] <= alpha,  # type: ignore[operator]
                decides=a in deciding,
                retained_auc=auc_score(s[r_idx], neg) if len(r_idx) else None,
                roc_fpr=tuple(float(x) for x in fpr),
                roc_tpr=tuple(float(x) for x in tpr),
                scores_deleted=tuple(float(x) for x in pos),
                scores_audit=tuple(float(x) for x in neg),
                scores_retained=tuple(float(x) for x in s[r_idx]),
            )
        )
    return tuple(results)


def residual_tests(
    *,
    post_models: Sequence[ProbaFn],
    pre_models: Sequence[ProbaFn] | None,
    shard_of_deleted: Any,
    deleted_X: Any,
    deleted_y: Any,
    audit_X: Any,
    audit_y: Any,
    retained_X: Any = None,
    retained_y: Any = None,
    retained_shard: Any = None,
    extra_references: Sequence[Reference] = (),
    alpha: float = 0.05,
    n_boot: int = 1000,
    seed: int = 0,
    attacks: Sequence[str] = ATTACKS,
    decision_attacks: Sequence[str] = DECISION_ATTACKS,
    rmia_a: float = DEFAULT_RMIA_A,
    gamma: float = DEFAULT_GAMMA,
) -> ResidualReport:
    """Run the membership-inference tests on the post-deletion constituents (``post_models``, one
    per shard, aggregated by the mean of their softmax) and the positive control on the
    pre-deletion constituents (``pre_models``, same order; ``None`` skips the control and the
    verdict can then be no better than "inconclusive").

    ``shard_of_deleted[i]`` is the shard deleted record ``i`` was trained in; ``retained_shard``
    likewise for the retained sample (optional; reported, not part of the decision).
    """
    t0 = time.perf_counter()
    if not 0 < alpha < 0.5:
        raise MalformedInput("alpha must be in (0, 0.5)")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise MalformedInput("seed must be a non-negative 63-bit integer")
    if not 1 <= n_boot <= 100_000:
        raise MalformedInput("n_boot must be between 1 and 100000")
    if not 0 <= rmia_a <= 1 or not gamma >= 1:
        raise MalformedInput("rmia_a must be in [0, 1] and gamma at least 1")
    attacks = tuple(attacks)
    if not attacks or any(a not in ATTACKS for a in attacks) or len(set(attacks)) != len(attacks):
        raise MalformedInput(f"attacks must be distinct names from {', '.join(ATTACKS)}")
    decision_attacks = tuple(decision_attacks)
    if not decision_attacks or any(a not in attacks for a in decision_attacks):
        raise MalformedInput("decision_attacks must be a non-empty subset of attacks")
    S = len(post_models)
    if S < 1:
        raise MalformedInput("at least one post-deletion model is needed")
    if pre_models is not None and len(pre_models) != S:
        raise MalformedInput(f"{len(pre_models)} pre-deletion models for {S} post-deletion models")
    Xd = _array(deleted_X, "deleted_X")
    Xa = _array(audit_X, "audit_X")
    if Xd.shape[0] == 0 or Xa.shape[0] == 0:
        raise MalformedInput("the residual tests need at least one deleted record and one audit record")
    yd = _labels(deleted_y, Xd.shape[0], "deleted_y")
    ya = _labels(audit_y, Xa.shape[0], "audit_y")
    sd = _shards(shard_of_deleted, Xd.shape[0], S, "shard_of_deleted")
    if retained_X is not None:
        Xr = _array(retained_X, "retained_X")
        yr = _labels(retained_y, Xr.shape[0], "retained_y")
        sr = _shards(retained_shard, Xr.shape[0], S, "retained_shard")
    else:
        Xr = np.zeros((0,) + Xd.shape[1:], dtype=np.float32)
        yr = np.zeros(0, dtype=np.int64)
        sr = np.zeros(0, dtype=np.int64)
    if Xa.shape[1:] != Xd.shape[1:] or Xr.shape[1:] != Xd.shape[1:]:
        raise MalformedInput("deleted, audit and retained records must have the same feature shape")
    nd, na, nr = Xd.shape[0], Xa.shape[0], Xr.shape[0]
    rng = np.random.default_rng([seed, 0x5E51])
    # Audit records are attacked on the affected shards in proportion to the deleted records.
    shards, counts = np.unique(sd, return_counts=True)
    sa = rng.choice(shards, size=na, p=counts / counts.sum()) if len(shards) > 1 else np.full(na, shards[0])
    X = np.concatenate([Xd, Xa, Xr])
    y = np.concatenate([yd, ya, yr])
    target = np.concatenate([sd, sa, sr])
    d_idx = np.arange(nd)
    a_idx = np.arange(nd, nd + na)
    r_idx = np.arange(nd + na, nd + na + nr)
    pool_idx = np.arange(nd + na)

    # Extra references: every audit record left out by the same number c of them.
    Pext = ext_use = None
    n_extra_used = 0
    if extra_references:
        E = len(extra_references)
        seen = np.zeros((E, na), dtype=bool)
        for e, ref in enumerate(extra_references):
            m = np.asarray(ref.seen_audit, dtype=bool)
            if m.shape != (na,):
                raise MalformedInput(f"extra reference {ref.name!r}: seen_audit must have one flag per audit record ({na})")
            seen[e] = m
        out_counts = (~seen).sum(axis=0)
        if np.any(out_counts != out_counts[0]):
            raise MalformedInput(
                "extra references must leave every audit record out of the same number of them (use a K-fold split)"
            )
        c = int(out_counts[0])
        if c > 0:
            ext_use = np.zeros((E, nd + na + nr), dtype=bool)
            ext_use[:, a_idx] = ~seen
            for i in np.concatenate([d_idx, r_idx]):
                ext_use[rng.choice(E, size=c, replace=False), i] = True
            Pext = np.stack(
                [_proba(ref.predict_proba, X, None, f"extra reference {ref.name!r}") for ref in extra_references]
            )
            n_extra_used = c

    def run(models: Sequence[ProbaFn], phase: str) -> dict[str, np.ndarray]:
        P0 = _proba(models[0], X, None, f"{phase}-deletion model 0")
        if y.max() >= P0.shape[1]:
            raise MalformedInput(f"a label ({int(y.max())}) is outside the models' {P0.shape[1]} classes")
        P = np.stack([P0] + [_proba(m, X, P0.shape[1], f"{phase}-deletion model {j}") for j, m in enumerate(models[1:], 1)])
        if Pext is not None and Pext.shape[2] != P.shape[2]:
            raise MalformedInput("extra references and constituents disagree on the number of classes")
        return _phase_scores(P, y, target, Pext, ext_use, a_idx, pool_idx, run_attacks, rmia_a, gamma)

    skipped: list[tuple[str, str]] = []
    n_refs = S - 1 + n_extra_used
    run_attacks = []
    for a in attacks:
        if a == "lira" and n_refs < 2:
            skipped.append((a, f"needs at least 2 reference models per record, has {n_refs}"))
        elif a == "rmia" and n_refs < 1:
            skipped.append((a, "needs at least 1 reference model per record, has 0"))
        else:
            run_attacks.append(a)
    deciding = tuple(a for a in run_attacks if a in decision_attacks)
    post = _evaluate(run(post_models, "post"), run_attacks, deciding, "post", d_idx, a_idx, r_idx, alpha, n_boot, seed)
    pre: tuple[AttackResult, ...] = ()
    if pre_models is not None:
        pre = _evaluate(run(pre_models, "pre"), run_attacks, deciding, "pre", d_idx, a_idx, r_idx, alpha, n_boot, seed)
    post_reject = any(r.reject for r in post)
    control = None if pre_models is None else any(r.reject for r in pre)
    mde = min_detectable_auc(nd, na, alpha / max(1, len(deciding)))
    verdict, reason = _decide(post, pre, control, alpha, mde, len(deciding))
    return ResidualReport(
        verdict=verdict,
        reason=reason,
        alpha=alpha,
        attacks=tuple(run_attacks),
        decision_attacks=deciding,
        skipped=tuple(skipped),
        post=post,
        pre=pre,
        post_reject=post_reject,
        control_detected=control,
        min_detectable_auc=mde,
        n_deleted=nd,
        n_audit=na,
        n_retained=nr,
        n_boot=n_boot,
        seed=seed,
        shards=tuple(int(s) for s in shards),
        references={"siblings": S - 1, "extra_per_record": n_extra_used, "extra_models": len(extra_references)},
        seconds=time.perf_counter() - t0,
    )


def _decide(
    post: Sequence[AttackResult],
    pre: Sequence[AttackResult],
    control: bool | None,
    alpha: float,
    mde: float,
    m: int,
) -> tuple[str, str]:
    rejected = [r for r in post if r.reject]
    if rejected:
        worst = min(rejected, key=lambda r: r.p_holm)  # type: ignore[arg-type,return-value]
        return "fail", (
            f"the deleted records are distinguishable from never-seen audit records: {worst.attack} attack AUC "
            f"{worst.auc:.3f} (95% CI {worst.auc_ci[0]:.3f}-{worst.auc_ci[1]:.3f}), Holm-adjusted p = "
            f"{worst.p_holm:.2g} <= alpha = {alpha:g} over {m} attacks"
        )
    best_post = _best(post)
    if best_post is None:
        return "inconclusive", (
            "no calibrated attack could run: lira and rmia need sibling constituents or extra reference models"
        )
    if control is None:
        return "inconclusive", (
            "no positive control: the pre-deletion models were not available, so a pass would not be evidence"
        )
    best_pre = _best(pre)
    assert best_pre is not None
    if not control:
        return "inconclusive", (
            f"power too low: the positive control did not detect membership of the deleted records in the "
            f"pre-deletion models (best: {best_pre.attack} AUC {best_pre.auc:.3f}, 95% CI "
            f"{best_pre.auc_ci[0]:.3f}-{best_pre.auc_ci[1]:.3f}, Holm-adjusted p = {best_pre.p_holm:.2g} > "
            f"alpha = {alpha:g}), so the same test on the post-deletion models is no evidence"
        )
    if mde > best_pre.auc_ci[1]:
        return "inconclusive", (
            f"power too low: the positive control detects the deleted records before deletion ({best_pre.attack} "
            f"AUC {best_pre.auc:.3f}, 95% CI {best_pre.auc_ci[0]:.3f}-{best_pre.auc_ci[1]:.3f}), but with this few "
            f"records the test after deletion detects, with 80% power, only an AUC of {mde:.3f} or more -- above "
            f"every effect size the control is consistent with"
        )
    return "pass", (
        f"no attack distinguishes the deleted records from never-seen audit records (smallest Holm-adjusted "
        f"p = {best_post.p_holm:.2g} > alpha = {alpha:g} over {m} attacks, {best_post.attack} AUC "
        f"{best_post.auc:.3f}); the positive control detects them before deletion ({best_pre.attack} AUC "
        f"{best_pre.auc:.3f}, 95% CI {best_pre.auc_ci[0]:.3f}-{best_pre.auc_ci[1]:.3f}, Holm-adjusted p = "
        f"{best_pre.p_holm:.2g}); smallest AUC this test detects with 80% power: {mde:.3f}"
    )
