"""Residual-information tests: membership inference on the deleted records (specs/10-residual.md).

After an honest deletion the deleted records must look like records the model never saw. This
module scores every deleted record, every record of the audit set (committed at training time,
never trained on) and a sample of retained training records with four attacks, and compares each
deleted record with audit records *of its own label*, attacked on the same shard: a stratified
permutation test (strata = label x shard; aligned ranks; exact enumeration when the strata admit
few arrangements, else Monte Carlo re-labellings shared by all attacks), the family corrected by
the Westfall-Young step-down maxT over the same re-labellings. A deletion correlated with the label
(one person's photos, one class) therefore meets never-seen records of its kind under the null,
and how the deletion was split into requests does not enter. The same attacks against the
pre-deletion models are the positive control:

* ``loss`` (Yeom et al. 2018): log-probability of the true class under the aggregated model.
* ``confidence`` (Salem et al. 2019): negative entropy of the aggregated model's prediction.
* ``lira`` (Carlini et al. 2022, offline, per example): the record's shard constituent's
  rescaled logit of the true class, standardised by the same quantity on reference models that
  never saw the record (SISA's sibling constituents, plus optional extra references).
* ``rmia`` (Zarifzadeh et al. 2024, offline, one reference set): likelihood ratio of the true-class
  probability on the shard constituent over its mean on the references (offline parameter a = 1),
  turned into the fraction of audit-set records it dominates.

Only lira and rmia decide; loss and confidence are reported. Verdicts: ``fail`` when a deciding
attack's adjusted p-value on the post-deletion models is at most alpha; ``inconclusive`` ("too few
references or records") when no calibrated attack can run, no audit record shares a label with the
deleted records, or even a complete separation could not reach alpha; ``inconclusive`` ("power
too low") when the positive control does not reject, or the test after deletion could not see an
effect as large as the control's; otherwise ``pass``.

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
    "allocate_audit",
    "matched_auc",
    "Permutations",
    "Calibration",
    "bootstrap_metrics",
    "tpr_at_fpr",
    "auc_score",
]

RESIDUAL_REPORT_TYPE = "vmu.residual-report"
RESIDUAL_REPORT_VERSION = 2
CORRECTION = "westfall-young step-down maxT over the shared permutations"
TEST_DESCRIPTION = (
    "own-shard test, one-sided: is each deleted record's own shard constituent more confident on it than its "
    "sibling constituents (rescaled logit standardised over the constituents), beyond the uniform draw every "
    "constituent is for a record none of them saw (exact or Monte Carlo over shard assignments; lira and rmia: "
    "stratified permutation test against audit records of the same label, reported)"
)
ATTACKS = ("loss", "confidence", "lira", "rmia", "shard", "label", "gradnorm", "shadow")
# The decision family: attacks calibrated per example on reference models. The population attacks
# (loss, confidence) are reported but do not decide: they measure how easy a record is, not
# whether it was trained on, and fail honest deletions of easy records (specs/10-residual.md).
DECISION_ATTACKS = ("shard",)
ATTACK_INFO = {
    "shard": "own-shard test (SISA): the record's own shard constituent against all constituents, by the "
    "rescaled logit of the true class standardised over them; tested against a uniformly drawn shard, which is "
    "what every constituent is for a record none of them saw",
    "loss": "Yeom et al. 2018: log-probability of the true class under the aggregated model (mean of softmax)",
    "confidence": "Salem et al. 2019: negative entropy of the aggregated model's prediction (label-free)",
    "lira": "offline LiRA (Carlini et al. 2022): shard constituent's rescaled logit of the true class, "
    "standardised by reference models that never saw the record",
    "rmia": "offline RMIA (Zarifzadeh et al. 2024): true-class probability ratio target / corrected reference mean, "
    "as the fraction of audit-set records it dominates",
    "label": "label-only (Choquette-Choo et al. 2021): how often the shard constituent still predicts the true label "
    "for 8 copies of the record with Gaussian noise (sd 0.3 in feature units) added; needs no scores",
    "gradnorm": "white-box: minus the L2 norm of the gradient of the shard constituent's loss on the record with "
    "respect to its weights (trained records sit where the loss is flat)",
    "shadow": "shadow models (Shokri et al. 2017): two models of the logged architecture trained on halves of the "
    "audit and retained records, and a logistic-regression attack model per class on a record's label "
    "log-probability and largest other log-probability, applied to the shard constituent's",
}
LABEL_QUERIES = 8
LABEL_NOISE = 0.3
_GRAD_ROWS = 256  # per-example gradients computed this many records at a time
FPR_LEVELS = (0.01, 0.001)
DEFAULT_RMIA_A = 1.0  # a < 1 favours records easy for every model: false alarms (spec)
DEFAULT_GAMMA = 1.0
CONTROL_POWER = 0.8
# Policy: no "fail" (and no "pass") on fewer deleted records. The own-shard test is exact at any
# size, but on a handful of records its verdict rests on where those few records happened to be
# sharded, and records of one person or class share effects (specs/10-residual.md section 4).
MIN_RECORDS = 10
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
    matched_auc: float
    matched_auc_ci: tuple[float, float]
    tpr_1pct: float
    tpr_1pct_ci: tuple[float, float]
    tpr_01pct: float
    tpr_01pct_ci: tuple[float, float]
    p_value: float
    p_adj: float | None
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
            "matched_auc": _r(self.matched_auc),
            "matched_auc_ci95": [_r(self.matched_auc_ci[0]), _r(self.matched_auc_ci[1])],
            "tpr_at_fpr_1pct": _r(self.tpr_1pct),
            "tpr_at_fpr_1pct_ci95": [_r(x) for x in self.tpr_1pct_ci],
            "tpr_at_fpr_0.1pct": _r(self.tpr_01pct),
            "tpr_at_fpr_0.1pct_ci95": [_r(x) for x in self.tpr_01pct_ci],
            "p_value": _r(self.p_value),
            "p_adjusted": None if self.p_adj is None else _r(self.p_adj),
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
class Calibration:
    """What the matched test could compare, and the smallest p-value it can reach."""

    matched: int  # deleted records with audit records of their label (and shard) to compare with
    unmatched: int
    smallest_p: float
    level: float  # alpha: a smallest attainable p-value above it never rejects
    exact: bool
    n_perm: int
    refs_per_record: int
    labels: tuple[int, ...]
    strata: tuple[tuple[int, int, int, int], ...]  # (label, shard, deleted, audit)
    on_audit: bool = False  # the deciding attacks compare with audit records (else: own-shard test)
    shards: int = 0

    @property
    def can_reject(self) -> bool:
        return self.matched >= MIN_RECORDS and self.smallest_p <= self.level

    def to_json(self) -> dict[str, Any]:
        return {
            "matched_deleted": self.matched,
            "unmatched_deleted": self.unmatched,
            "smallest_p": _r(self.smallest_p),
            "level": _r(self.level),
            "can_reject": self.can_reject,
            "min_records": MIN_RECORDS,
            "method": "exact" if self.exact else f"monte carlo, {self.n_perm} permutations",
            "compared_with": "audit records of the same label" if self.on_audit else "the other shards' constituents",
            "references_per_record": self.refs_per_record,
            "labels": list(self.labels),
            "strata": [{"label": c, "shard": t, "deleted": k, "audit": n} for c, t, k, n in self.strata],
        }


DELETION_INFERENCE_MEANING = (
    "how well someone holding the published models from before and after this deletion can tell the deleted "
    "records from records that stayed (AUC 0.5: not at all, 1: perfectly), by how much more the earlier model "
    "believes each record's label: the privacy cost of publishing both versions (Chen et al., CCS 2021); "
    "reported, never part of the verdict"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeletionInference:
    """Deletion-inference exposure (Chen et al. 2021, "When machine unlearning jeopardizes
    privacy"): the score of a record is ``log p_pre(y) - log p_post(y)`` of the aggregated models
    (how much belief in its label the deletion removed); deleted records are compared with the
    retained sample. Reported only."""

    auc: float
    auc_ci: tuple[float, float]
    tpr_1pct: float
    tpr_01pct: float
    n_deleted: int
    n_retained: int
    mean_drop_deleted: float  # mean score of the deleted records, in nats
    mean_drop_retained: float

    def to_json(self) -> dict[str, Any]:
        return {
            "score": "log p_before(label) - log p_after(label) of the aggregated models",
            "meaning": DELETION_INFERENCE_MEANING,
            "auc": _r(self.auc),
            "auc_ci95": [_r(x) for x in self.auc_ci],
            "tpr_at_fpr_1pct": _r(self.tpr_1pct),
            "tpr_at_fpr_0.1pct": _r(self.tpr_01pct),
            "n": {"deleted": self.n_deleted, "retained": self.n_retained},
            "mean_drop_nats": {"deleted": _r(self.mean_drop_deleted), "retained": _r(self.mean_drop_retained)},
        }


def deletion_inference(pre_logp: np.ndarray, post_logp: np.ndarray, d_idx: np.ndarray, r_idx: np.ndarray,
                       n_boot: int, rng: np.random.Generator) -> DeletionInference | None:
    """The exposure of the deleted records ``d_idx`` against the retained ``r_idx`` (None without
    retained records). Scores are sorted first, so nothing depends on the records' order."""
    if not len(r_idx) or not len(d_idx):
        return None
    drop = pre_logp - post_logp
    pos, neg = np.sort(drop[d_idx]), np.sort(drop[r_idx])
    boot = bootstrap_metrics(pos, neg, n_boot=n_boot, rng=rng)
    return DeletionInference(
        auc=auc_score(pos, neg),
        auc_ci=(float(np.percentile(boot["auc"], 2.5)), float(np.percentile(boot["auc"], 97.5))),
        tpr_1pct=tpr_at_fpr(pos, neg, 0.01), tpr_01pct=tpr_at_fpr(pos, neg, 0.001),
        n_deleted=len(pos), n_retained=len(neg), mean_drop_deleted=float(pos.mean()),
        mean_drop_retained=float(neg.mean()),
    )


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
    calibration: Calibration
    n_deleted: int
    n_audit: int
    n_retained: int
    n_boot: int
    seed: int
    shards: tuple[int, ...]
    references: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    deletion_inference: DeletionInference | None = None

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
            "test": TEST_DESCRIPTION,
            "correction": "holm" if "shard" in self.decision_attacks else CORRECTION,
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
                "best_auc": _r(best_pre.matched_auc) if best_pre else None,
                "best_auc_ci95": [_r(x) for x in best_pre.matched_auc_ci] if best_pre else None,
                "best_p_adjusted": _r(best_pre.p_adj) if best_pre and best_pre.p_adj is not None else None,
            },
            "min_detectable_auc": _r(self.min_detectable_auc),
            "calibration": self.calibration.to_json(),
            "post": [r.to_json() for r in self.post],
            "pre": [r.to_json() for r in self.pre],
            "deletion_inference": self.deletion_inference.to_json() if self.deletion_inference else None,
            "seconds": round(self.seconds, 6),
        }


def _best(results: Sequence[AttackResult]) -> AttackResult | None:
    """The deciding attack with the smallest adjusted p-value (ties: larger AUC)."""
    dec = [r for r in results if r.decides and r.p_adj is not None]
    return min(dec, key=lambda r: (r.p_adj, -r.matched_auc)) if dec else None


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
    out["agg:logp"] = np.log(np.maximum(agg[rows, y], _TINY))  # for the deletion-inference exposure
    if "loss" in attacks:
        out["loss"] = np.log(np.maximum(agg[rows, y], _TINY))
    if "confidence" in attacks:
        out["confidence"] = (agg * np.log(np.maximum(agg, _TINY))).sum(axis=1)
    if "shard" in attacks:
        from scipy.stats import rankdata

        # Rank of every constituent among all S for each record (midranks), scaled to [0, 1]: the
        # record's score is its own shard's; "shard:null" keeps the S values it could have had.
        phi = _rescaled_logit(P, y)  # (S, n)
        ranks = np.asarray(rankdata(phi, axis=0, method="average"), dtype=np.float64)
        cand = ((ranks - 1.0) / max(S - 1, 1)).T  # (n, S)
        out["shard"] = cand[rows, target]
        # What the test sums: each constituent's rescaled logit standardised over the S
        # constituents of the record (a symmetric function of the S values, so under H0 the own
        # shard's value is a uniform draw from the record's S values).
        z = ((phi - phi.mean(axis=0)) / (phi.std(axis=0) + 1e-12)).T  # (n, S)
        out["shard:null"] = z
        out["shard:stat"] = z[rows, target]
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
        # Few references: shrink each record's variance half-way to the median over the deleted
        # and audit records of its label (scales differ between classes; the median is a symmetric
        # function of the pooled records, so it does not break their exchangeability).
        pooled = np.full(n, float(np.median(var[pool_idx])))
        for c in np.unique(y[pool_idx]):
            of_c = pool_idx[y[pool_idx] == c]
            if len(of_c) >= 2:
                pooled[y == c] = float(np.median(var[of_c]))
        sd = np.sqrt(0.5 * (var + pooled) + 1e-12)
        out["lira"] = (phi_all[target, rows] - mu) / sd
    if "rmia" in attacks:

        def ratio(t: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            vals, mask = refs(t, idx, py_all, py_ext)
            mean = (vals * mask).sum(axis=0) / np.maximum(mask.sum(axis=0), 1)
            pr = np.maximum(0.5 * ((1 + rmia_a) * mean + (1 - rmia_a)), _TINY)  # offline estimate of Pr(x); floored: a
            # reference set that gives the label probability 0 (a model destroyed by DP noise) must not divide by 0
            return np.maximum(py_all[t, idx], _TINY) / pr, mean

        lr, _ = ratio(target, rows)
        out["rmia:ratio"] = np.log(lr)  # what the matched test ranks (same order per target shard)
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
            P = _proba(models[int(t)], Xq[sel], None, f"model {int(t)} (label-only queries)")
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


# --- the matched test: deleted records against audit records of the same label -----------------


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
        exact = 10.0 ** -self.strata.log10_arrangements()
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


def own_shard_smallest_p(cand: np.ndarray) -> float:
    """The smallest p-value the own-shard test can give these records: every record at its top."""
    top = cand.max(axis=1, keepdims=True)
    return float(np.prod((cand >= top - 1e-12).sum(axis=1) / cand.shape[1]))


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


# --- the test ------------------------------------------------------------------------------------


def _evaluate(
    scores: dict[str, np.ndarray],
    attacks: Sequence[str],
    deciding: Sequence[str],
    phase: str,
    d_idx: np.ndarray,
    a_idx: np.ndarray,
    r_idx: np.ndarray,
    perms: Permutations,
    alpha: float,
    n_boot: int,
    seed: int,
) -> tuple[AttackResult, ...]:
    from sklearn.metrics import roc_curve

    strata = perms.strata
    stat = {a: scores.get(f"{a}:ratio", scores[a]) for a in attacks}
    dists = [perms.distribution(stat[a][d_idx], stat[a][a_idx]) for a in attacks]
    ps = [perms.tail(perm, obs) for obs, perm in dists]
    if "shard" in attacks:
        ps[attacks.index("shard")] = own_shard_p(scores["shard:null"][d_idx], scores["shard:stat"][d_idx], perms.n_perm,
                                                 np.random.default_rng([seed, 0x5A4D]))
    dec = [i for i, a in enumerate(attacks) if a in deciding]
    adj: list[float | None] = [None] * len(attacks)
    # One shared re-labelling for the matched attacks: Westfall-Young; with the own-shard test
    # (another null distribution) in the family: Holm, valid under any dependence.
    shared = "shard" not in deciding
    family = perms.max_t([dists[i] for i in dec]) if shared else holm([ps[i] for i in dec])
    for i, q in zip(dec, family if dec else [], strict=True):
        adj[i] = q
    results = []
    ph = 0 if phase == "post" else 1
    for i, a in enumerate(attacks):
        s = scores[a]
        pos, neg = s[d_idx], s[a_idx]
        # sorted first: the intervals do not depend on the order the records came in
        boot = bootstrap_metrics(np.sort(pos), np.sort(neg), n_boot=n_boot, rng=np.random.default_rng([seed, i, ph]))
        mrng = np.random.default_rng([seed, i, ph, 2])
        if a == "shard":  # the mean own-shard score over resampled deleted records
            own = np.sort(s[d_idx])
            mboot = own[mrng.integers(0, len(own), (n_boot, len(own)))].mean(axis=1)
            effect = float(own.mean())
        else:
            mboot = matched_bootstrap(stat[a][d_idx], stat[a][a_idx], strata, n_boot, mrng)
            effect = matched_auc(stat[a][d_idx], stat[a][a_idx], strata)

        def ci(v: np.ndarray) -> tuple[float, float]:
            return float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))

        fpr, tpr, _ = roc_curve(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg])
        results.append(
            AttackResult(
                attack=a,
                phase=phase,
                auc=auc_score(pos, neg),
                auc_ci=ci(boot["auc"]),
                matched_auc=effect,
                matched_auc_ci=ci(mboot),
                tpr_1pct=tpr_at_fpr(pos, neg, 0.01),
                tpr_1pct_ci=ci(boot["tpr@0.01"]),
                tpr_01pct=tpr_at_fpr(pos, neg, 0.001),
                tpr_01pct_ci=ci(boot["tpr@0.001"]),
                p_value=ps[i],
                p_adj=adj[i],
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
    n_perm: int = N_PERMUTATIONS,
    shadow: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
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
    if not isinstance(n_perm, int) or not 99 <= n_perm <= 1_000_000:
        raise MalformedInput("n_perm must be an integer between 99 and 1000000")
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
    # Audit records are attacked on the shards the deleted records of their label came from
    # (strata of the matched test: label x shard).
    shards = np.unique(sd)
    sa, strata = allocate_audit(yd, sd, ya, rng)
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
        out = _phase_scores(P, y, target, Pext, ext_use, a_idx, pool_idx, run_attacks, rmia_a, gamma)
        if "label" in run_attacks:
            out["label"] = label_only_scores(models, X, y, target, seed)
        if "gradnorm" in run_attacks:
            out["gradnorm"] = grad_norm_scores(models, X, y, target)
        if "shadow" in run_attacks and shadow is not None:
            out["shadow"] = np.asarray(shadow(P[target, np.arange(len(y))], y), dtype=np.float64)
        return out

    skipped: list[tuple[str, str]] = []
    n_refs = S - 1 + n_extra_used
    run_attacks = []
    for a in attacks:
        if a == "shard" and S < 2:
            skipped.append((a, "needs at least 2 shard constituents, has 1"))
        elif a == "lira" and n_refs < 2:
            skipped.append((a, f"needs at least 2 reference models per record, has {n_refs}"))
        elif a == "rmia" and n_refs < 1:
            skipped.append((a, "needs at least 1 reference model per record, has 0"))
        elif a == "shadow" and shadow is None:
            skipped.append((a, "needs shadow models (step 19 trains them on the audit and retained records)"))
        elif a == "gradnorm" and not all(hasattr(m, "module") for m in [*post_models, *(pre_models or ())]):
            skipped.append((a, "needs the constituents' weights (torch modules), not only their predictions"))
        else:
            run_attacks.append(a)
    deciding = tuple(a for a in run_attacks if a in decision_attacks)
    perms = Permutations(strata, n_perm, np.random.default_rng([seed, 0x9E47]))
    post_scores = run(post_models, "post")
    post = _evaluate(post_scores, run_attacks, deciding, "post", d_idx, a_idx, r_idx, perms, alpha, n_boot, seed)
    pre: tuple[AttackResult, ...] = ()
    exposure = None
    if pre_models is not None:
        pre_scores = run(pre_models, "pre")
        pre = _evaluate(pre_scores, run_attacks, deciding, "pre", d_idx, a_idx, r_idx, perms, alpha, n_boot, seed)
        exposure = deletion_inference(pre_scores["agg:logp"], post_scores["agg:logp"], d_idx, r_idx, n_boot,
                                      np.random.default_rng([seed, 0xDE1]))
    post_reject = any(r.reject for r in post)
    control = None if pre_models is None else any(r.reject for r in pre)
    level = alpha  # an adjusted p-value is never below the raw one: above alpha nothing rejects
    mde_level = alpha / max(1, len(deciding))  # Bonferroni: a lower bound on the power
    on_audit = "shard" not in deciding  # the own-shard test needs no audit record
    if not on_audit:
        level = alpha / len(deciding)  # Holm's first threshold
        smallest = min(float(S) ** -nd if a == "shard" else perms.smallest_p() for a in deciding)
        null_sd = math.sqrt((S + 1) / (12.0 * max(S - 1, 1) * nd))
    else:
        smallest, null_sd = perms.smallest_p(), matched_null_sd(strata)
    mde = min(1.0, 0.5 + (_z(1 - mde_level) + _z(CONTROL_POWER)) * null_sd)
    calib = Calibration(
        matched=nd if not on_audit else strata.n_matched, unmatched=0 if not on_audit else strata.unmatched,
        smallest_p=smallest, level=level, exact=perms.exact or not on_audit, n_perm=n_perm, refs_per_record=n_refs,
        on_audit=on_audit, shards=S,
        labels=tuple(sorted({k[0] for k in strata.keys})),
        strata=tuple((k[0], k[1], len(d), len(a)) for k, d, a in zip(strata.keys, strata.deleted, strata.audit, strict=True)),
    )
    verdict, reason = _decide(post, pre, control, alpha, mde, len(deciding), calib)
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
        calibration=calib,
        n_deleted=nd,
        n_audit=na,
        n_retained=nr,
        n_boot=n_boot,
        seed=seed,
        shards=tuple(int(s) for s in shards),
        references={"siblings": S - 1, "extra_per_record": n_extra_used, "extra_models": len(extra_references)},
        seconds=time.perf_counter() - t0,
        deletion_inference=exposure,
    )


def _effect(r: AttackResult) -> str:
    return "own-shard score" if r.attack == "shard" else "label-matched AUC"


def _what_to_do(c: Calibration, alpha: float) -> str:
    labels = ", ".join(str(x) for x in c.labels)
    if not c.on_audit:
        need = math.ceil(math.log(1 / c.level) / math.log(max(c.shards, 2)))
        return (
            f"{c.matched} deleted record(s) of label(s) {labels} were each compared with their {c.refs_per_record} "
            f"sibling constituents; to get a decision: verify more deleted records together (at least "
            f"{max(need, MIN_RECORDS)}, more for small effects) or use more shards; use --require-residual only "
            f"where the report shows power"
        )
    need = math.ceil(1 / c.level) - 1
    return (
        f"{c.matched} deleted record(s) of label(s) {labels} were compared with {sum(n for *_, n in c.strata)} audit "
        f"records of the same labels, with {c.refs_per_record} reference models per record; to get a decision: a "
        f"larger audit set (at least {need} audit records per label for a single deleted record, more for small "
        f"effects), more shards (more reference models), or more records deleted in one verification; use "
        f"--require-residual only where the report shows power"
    )


def _decide(
    post: Sequence[AttackResult],
    pre: Sequence[AttackResult],
    control: bool | None,
    alpha: float,
    mde: float,
    m: int,
    calib: Calibration,
) -> tuple[str, str]:
    rejected = [r for r in post if r.reject]
    best_post = _best(post)
    if best_post is not None and not calib.can_reject and (not calib.on_audit or calib.matched > 0):
        few = calib.matched < MIN_RECORDS
        return "inconclusive", (
            "too few references or records: "
            + (f"{calib.matched} deleted record(s), fewer than the {MIN_RECORDS} the verifier needs before it decides "
               f"(on a handful of records the verdict rests on where they happened to be sharded)"
               if few else
               f"even a complete separation of the deleted records from never-seen records would give "
               f"p = {calib.smallest_p:.2g} > {calib.level:.2g}, so this test cannot hold alpha and decide")
            + (f" (after deletion: {best_post.attack} {_effect(best_post)} {best_post.matched_auc:.3f}, p = "
               f"{best_post.p_value:.2g}; not a verdict)" if few else "")
            + f"; {_what_to_do(calib, alpha)}"
        )
    if rejected and control is not True:
        # A residual after deletion is at most the membership signal before it: a rejection the
        # positive control does not confirm (or cannot, without pre-deletion models) is no
        # evidence of a residual, and the verifier does not accuse on it.
        worst = min(rejected, key=lambda r: r.p_adj)  # type: ignore[arg-type,return-value]
        return "inconclusive", (
            f"unconfirmed: the test after deletion rejects ({worst.attack} {_effect(worst)} {worst.matched_auc:.3f}, "
            f"adjusted p = {worst.p_adj:.2g}), but the positive control "
            + ("could not run (no pre-deletion models)" if control is None else "does not detect the same records in "
               "the pre-deletion models")
            + f"; a residual cannot exceed the membership it is left from, so this is no evidence either way. "
            f"{_what_to_do(calib, alpha)}"
        )
    if rejected:
        worst = min(rejected, key=lambda r: r.p_adj)  # type: ignore[arg-type,return-value]
        return "fail", (
            f"the deleted records are still singled out by the models: {worst.attack} attack, {_effect(worst)} {worst.matched_auc:.3f} (95% CI {worst.matched_auc_ci[0]:.3f}-"
            f"{worst.matched_auc_ci[1]:.3f}), adjusted p = {worst.p_adj:.2g} <= alpha = {alpha:g} over {m} "
            f"attacks ({calib.matched} deleted records of label(s) {', '.join(str(x) for x in calib.labels)}, "
            f"{calib.refs_per_record} reference models per record). An honest deletion fails with probability at "
            f"most alpha; check that the retrained shards never saw these records"
        )
    if best_post is None:
        return "inconclusive", (
            "too few references or records: no calibrated attack could run (lira and rmia need sibling "
            "constituents or extra reference models); more shards give more reference models"
        )
    if calib.on_audit and calib.matched == 0:
        return "inconclusive", (
            f"too few references or records: no audit record shares a label with the deleted records (labels "
            f"{', '.join(str(x) for x in calib.labels)}), so they cannot be compared with never-seen records of "
            f"their kind; {_what_to_do(calib, alpha)}"
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
            f"pre-deletion models (best: {best_pre.attack} {_effect(best_pre)} {best_pre.matched_auc:.3f}, 95% CI "
            f"{best_pre.matched_auc_ci[0]:.3f}-{best_pre.matched_auc_ci[1]:.3f}, adjusted p = "
            f"{best_pre.p_adj:.2g} > alpha = {alpha:g}), so the same test on the post-deletion models is no "
            f"evidence; the smallest AUC it detects with 80% power is {mde:.3f}. {_what_to_do(calib, alpha)}"
        )
    if mde > best_pre.matched_auc_ci[1]:
        return "inconclusive", (
            f"power too low: the positive control detects the deleted records before deletion ({best_pre.attack} "
            f"{_effect(best_pre)} {best_pre.matched_auc:.3f}, 95% CI {best_pre.matched_auc_ci[0]:.3f}-"
            f"{best_pre.matched_auc_ci[1]:.3f}), but with this few records the test after deletion detects, with 80% "
            f"power, only an AUC of {mde:.3f} or more -- above every effect size the control is consistent with. "
            f"{_what_to_do(calib, alpha)}"
        )
    return "pass", (
        f"no attack singles out the deleted records (smallest "
        f"adjusted p = {best_post.p_adj:.2g} > alpha = {alpha:g} over {m} attacks, {best_post.attack} "
        f"{_effect(best_post)} {best_post.matched_auc:.3f}); the positive control detects them before deletion "
        f"({best_pre.attack} {_effect(best_pre)} {best_pre.matched_auc:.3f}, 95% CI {best_pre.matched_auc_ci[0]:.3f}-"
        f"{best_pre.matched_auc_ci[1]:.3f}, adjusted p = {best_pre.p_adj:.2g}); smallest AUC this test "
        f"detects with 80% power: {mde:.3f}"
    )
