"""The results of the residual tests (specs/10-residual.md section 7): the report, each attack's
result, the calibration, the deletion-inference exposure, and the constants they name."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._residual_stats import auc_score, bootstrap_metrics, tpr_at_fpr

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


# Policy: no "fail" (and no "pass") on fewer deleted records. The own-shard test is exact at any
# size, but on a handful of records its verdict rests on where those few records happened to be
# sharded, and records of one person or class share effects (specs/10-residual.md section 4).
MIN_RECORDS = 10


ProbaFn = Callable[[np.ndarray], Any]


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
            "auc": rounded(self.auc),
            "auc_ci95": [rounded(self.auc_ci[0]), rounded(self.auc_ci[1])],
            "matched_auc": rounded(self.matched_auc),
            "matched_auc_ci95": [rounded(self.matched_auc_ci[0]), rounded(self.matched_auc_ci[1])],
            "tpr_at_fpr_1pct": rounded(self.tpr_1pct),
            "tpr_at_fpr_1pct_ci95": [rounded(x) for x in self.tpr_1pct_ci],
            "tpr_at_fpr_0.1pct": rounded(self.tpr_01pct),
            "tpr_at_fpr_0.1pct_ci95": [rounded(x) for x in self.tpr_01pct_ci],
            "p_value": rounded(self.p_value),
            "p_adjusted": None if self.p_adj is None else rounded(self.p_adj),
            "reject": self.reject,
            "decides": self.decides,
            "retained_vs_audit_auc": None if self.retained_auc is None else rounded(self.retained_auc),
            "roc": {"fpr": [rounded(x) for x in self.roc_fpr], "tpr": [rounded(x) for x in self.roc_tpr]},
            "scores": {
                "deleted": [rounded(x) for x in self.scores_deleted],
                "audit": [rounded(x) for x in self.scores_audit],
                "retained": [rounded(x) for x in self.scores_retained],
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
            "smallest_p": rounded(self.smallest_p),
            "level": rounded(self.level),
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
            "auc": rounded(self.auc),
            "auc_ci95": [rounded(x) for x in self.auc_ci],
            "tpr_at_fpr_1pct": rounded(self.tpr_1pct),
            "tpr_at_fpr_0.1pct": rounded(self.tpr_01pct),
            "n": {"deleted": self.n_deleted, "retained": self.n_retained},
            "mean_drop_nats": {"deleted": rounded(self.mean_drop_deleted), "retained": rounded(self.mean_drop_retained)},
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
        best_pre = best_attack(self.pre)
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
                "best_auc": rounded(best_pre.matched_auc) if best_pre else None,
                "best_auc_ci95": [rounded(x) for x in best_pre.matched_auc_ci] if best_pre else None,
                "best_p_adjusted": rounded(best_pre.p_adj) if best_pre and best_pre.p_adj is not None else None,
            },
            "min_detectable_auc": rounded(self.min_detectable_auc),
            "calibration": self.calibration.to_json(),
            "post": [r.to_json() for r in self.post],
            "pre": [r.to_json() for r in self.pre],
            "deletion_inference": self.deletion_inference.to_json() if self.deletion_inference else None,
            "seconds": round(self.seconds, 6),
        }


def best_attack(results: Sequence[AttackResult]) -> AttackResult | None:
    """The deciding attack with the smallest adjusted p-value (ties: larger AUC)."""
    dec = [r for r in results if r.decides and r.p_adj is not None]
    return min(dec, key=lambda r: (r.p_adj, -r.matched_auc)) if dec else None


def rounded(x: float) -> float:
    """Six significant digits, and never NaN/inf in JSON."""
    x = float(x)
    if not math.isfinite(x):
        return 1e308 if x > 0 else (-1e308 if x < 0 else 0.0)
    return float(f"{x:.6g}")
