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

from ._residual_attacks import (
    checked_features,
    checked_labels,
    checked_proba,
    checked_shards,
    grad_norm_scores,
    label_only_scores,
    phase_scores,
)
from ._residual_report import (
    ATTACKS,
    DECISION_ATTACKS,
    MIN_RECORDS,
    RESIDUAL_REPORT_TYPE,
    RESIDUAL_REPORT_VERSION,
    AttackResult,
    Calibration,
    ProbaFn,
    Reference,
    ResidualReport,
    deletion_inference,
)
from ._residual_stats import (
    CONTROL_POWER,
    N_PERMUTATIONS,
    Permutations,
    Strata,
    allocate_audit,
    auc_score,
    bootstrap_metrics,
    holm,
    matched_auc,
    matched_bootstrap,
    matched_null_sd,
    min_detectable_auc,
    normal_quantile,
    own_shard_p,
    tpr_at_fpr,
)
from ._residual_verdict import decide

__all__ = [
    "ATTACKS",
    "DECISION_ATTACKS",
    "MIN_RECORDS",
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
    "Strata",
    "Calibration",
    "bootstrap_metrics",
    "deletion_inference",
    "grad_norm_scores",
    "label_only_scores",
    "min_detectable_auc",
    "own_shard_p",
    "tpr_at_fpr",
    "auc_score",
]

DEFAULT_RMIA_A = 1.0  # a < 1 favours records easy for every model: false alarms (spec)


DEFAULT_GAMMA = 1.0


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
    attacks, decision_attacks = _check_parameters(alpha, seed, n_boot, n_perm, rmia_a, gamma, attacks, decision_attacks)
    S = len(post_models)
    if S < 1:
        raise MalformedInput("at least one post-deletion model is needed")
    if pre_models is not None and len(pre_models) != S:
        raise MalformedInput(f"{len(pre_models)} pre-deletion models for {S} post-deletion models")
    (Xd, yd, sd), (Xa, ya), (Xr, yr, sr) = _records(S, deleted_X, deleted_y, shard_of_deleted, audit_X, audit_y,
                                                   retained_X, retained_y, retained_shard)
    nd, na, nr = Xd.shape[0], Xa.shape[0], Xr.shape[0]
    rng = np.random.default_rng([seed, 0x5E51])
    # Audit records are attacked on the shards the deleted records of their label came from
    # (strata of the matched test: label x shard).
    sa, strata = allocate_audit(yd, sd, ya, rng)
    w = _World(X=np.concatenate([Xd, Xa, Xr]), y=np.concatenate([yd, ya, yr]), target=np.concatenate([sd, sa, sr]),
               d_idx=np.arange(nd), a_idx=np.arange(nd, nd + na), r_idx=np.arange(nd + na, nd + na + nr),
               pool_idx=np.arange(nd + na), rmia_a=rmia_a, gamma=gamma, seed=seed, shadow=shadow)
    n_extra_used = _extra_references(w, extra_references, rng)
    n_refs = S - 1 + n_extra_used
    w.run_attacks, skipped = _runnable(attacks, S, n_refs, shadow, [*post_models, *(pre_models or ())])
    deciding = tuple(a for a in w.run_attacks if a in decision_attacks)
    perms = Permutations(strata, n_perm, np.random.default_rng([seed, 0x9E47]))
    post_scores = _phase(w, post_models, "post")
    post = _evaluate(post_scores, w.run_attacks, deciding, "post", w.d_idx, w.a_idx, w.r_idx, perms, alpha, n_boot,
                     seed)
    pre: tuple[AttackResult, ...] = ()
    exposure = None
    if pre_models is not None:
        pre_scores = _phase(w, pre_models, "pre")
        pre = _evaluate(pre_scores, w.run_attacks, deciding, "pre", w.d_idx, w.a_idx, w.r_idx, perms, alpha, n_boot,
                        seed)
        exposure = deletion_inference(pre_scores["agg:logp"], post_scores["agg:logp"], w.d_idx, w.r_idx, n_boot,
                                      np.random.default_rng([seed, 0xDE1]))
    control = None if pre_models is None else any(r.reject for r in pre)
    mde, calib = _calibration(deciding, alpha, S, nd, perms, strata, n_perm, n_refs)
    verdict, reason = decide(post, pre, control, alpha, mde, len(deciding), calib)
    return ResidualReport(
        verdict=verdict, reason=reason, alpha=alpha, attacks=tuple(w.run_attacks), decision_attacks=deciding,
        skipped=tuple(skipped), post=post, pre=pre, post_reject=any(r.reject for r in post), control_detected=control,
        min_detectable_auc=mde, calibration=calib, n_deleted=nd, n_audit=na, n_retained=nr, n_boot=n_boot, seed=seed,
        shards=tuple(int(s) for s in np.unique(sd)),
        references={"siblings": S - 1, "extra_per_record": n_extra_used, "extra_models": len(extra_references)},
        seconds=time.perf_counter() - t0, deletion_inference=exposure,
    )


def _check_parameters(alpha: float, seed: int, n_boot: int, n_perm: int, rmia_a: float, gamma: float,
                      attacks: Sequence[str], decision_attacks: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The caller's parameters, checked (fail closed); the attack lists as tuples."""
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
    return attacks, decision_attacks


def _records(S: int, deleted_X: Any, deleted_y: Any, shard_of_deleted: Any, audit_X: Any, audit_y: Any,
             retained_X: Any, retained_y: Any, retained_shard: Any) -> tuple[Any, Any, Any]:
    """The deleted ``(X, y, shard)``, audit ``(X, y)`` and retained ``(X, y, shard)`` records, checked."""
    Xd = checked_features(deleted_X, "deleted_X")
    Xa = checked_features(audit_X, "audit_X")
    if Xd.shape[0] == 0 or Xa.shape[0] == 0:
        raise MalformedInput("the residual tests need at least one deleted record and one audit record")
    yd = checked_labels(deleted_y, Xd.shape[0], "deleted_y")
    ya = checked_labels(audit_y, Xa.shape[0], "audit_y")
    sd = checked_shards(shard_of_deleted, Xd.shape[0], S, "shard_of_deleted")
    if retained_X is not None:
        Xr = checked_features(retained_X, "retained_X")
        yr = checked_labels(retained_y, Xr.shape[0], "retained_y")
        sr = checked_shards(retained_shard, Xr.shape[0], S, "retained_shard")
    else:
        Xr = np.zeros((0,) + Xd.shape[1:], dtype=np.float32)
        yr = np.zeros(0, dtype=np.int64)
        sr = np.zeros(0, dtype=np.int64)
    if Xa.shape[1:] != Xd.shape[1:] or Xr.shape[1:] != Xd.shape[1:]:
        raise MalformedInput("deleted, audit and retained records must have the same feature shape")
    return (Xd, yd, sd), (Xa, ya), (Xr, yr, sr)


@dataclass(slots=True, kw_only=True)
class _World:
    """Every record the attacks score (deleted, then audit, then retained), the constituent each
    is attacked on (``target``), the index ranges, and the attack settings."""

    X: np.ndarray
    y: np.ndarray
    target: np.ndarray
    d_idx: np.ndarray
    a_idx: np.ndarray
    r_idx: np.ndarray
    pool_idx: np.ndarray
    rmia_a: float
    gamma: float
    seed: int
    shadow: Callable[[np.ndarray, np.ndarray], np.ndarray] | None
    run_attacks: list[str] = field(default_factory=list)
    Pext: np.ndarray | None = None  # extra references' probabilities
    ext_use: np.ndarray | None = None  # which extra references each record uses


def _extra_references(w: _World, extra_references: Sequence[Reference], rng: np.random.Generator) -> int:
    """Extra references: every audit record left out by the same number c of them; each deleted and
    retained record uses c of them drawn at random. Returns c."""
    if not extra_references:
        return 0
    na, n = len(w.a_idx), len(w.y)
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
    if c == 0:
        return 0
    w.ext_use = np.zeros((E, n), dtype=bool)
    w.ext_use[:, w.a_idx] = ~seen
    for i in np.concatenate([w.d_idx, w.r_idx]):
        w.ext_use[rng.choice(E, size=c, replace=False), i] = True
    w.Pext = np.stack([checked_proba(ref.predict_proba, w.X, None, f"extra reference {ref.name!r}") for ref in extra_references])
    return c


def _runnable(attacks: Sequence[str], S: int, n_refs: int, shadow: Any,
              models: Sequence[ProbaFn]) -> tuple[list[str], list[tuple[str, str]]]:
    """The attacks that can run on these models, and the others with the reason."""
    skipped: list[tuple[str, str]] = []
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
        elif a == "gradnorm" and not all(hasattr(m, "module") for m in models):
            skipped.append((a, "needs the constituents' weights (torch modules), not only their predictions"))
        else:
            run_attacks.append(a)
    return run_attacks, skipped


def _phase(w: _World, models: Sequence[ProbaFn], phase: str) -> dict[str, np.ndarray]:
    """Every attack's scores of every record against ``models`` (the post- or pre-deletion ones)."""
    X, y = w.X, w.y
    P0 = checked_proba(models[0], X, None, f"{phase}-deletion model 0")
    if y.max() >= P0.shape[1]:
        raise MalformedInput(f"a label ({int(y.max())}) is outside the models' {P0.shape[1]} classes")
    P = np.stack([P0] + [checked_proba(m, X, P0.shape[1], f"{phase}-deletion model {j}") for j, m in enumerate(models[1:], 1)])
    if w.Pext is not None and w.Pext.shape[2] != P.shape[2]:
        raise MalformedInput("extra references and constituents disagree on the number of classes")
    out = phase_scores(P, y, w.target, w.Pext, w.ext_use, w.a_idx, w.pool_idx, w.run_attacks, w.rmia_a, w.gamma)
    if "label" in w.run_attacks:
        out["label"] = label_only_scores(models, X, y, w.target, w.seed)
    if "gradnorm" in w.run_attacks:
        out["gradnorm"] = grad_norm_scores(models, X, y, w.target)
    if "shadow" in w.run_attacks and w.shadow is not None:
        out["shadow"] = np.asarray(w.shadow(P[w.target, np.arange(len(y))], y), dtype=np.float64)
    return out


def _calibration(deciding: tuple[str, ...], alpha: float, S: int, nd: int, perms: Permutations, strata: Strata,
                 n_perm: int, n_refs: int) -> tuple[float, Calibration]:
    """The smallest effect the decision could see (min detectable AUC) and its calibration."""
    level = alpha  # an adjusted p-value is never below the raw one: above alpha nothing rejects
    mde_level = alpha / max(1, len(deciding))  # Bonferroni: a lower bound on the power
    on_audit = "shard" not in deciding  # the own-shard test needs no audit record
    if not on_audit:
        level = alpha / len(deciding)  # Holm's first threshold
        smallest = min(float(S) ** -nd if a == "shard" else perms.smallest_p() for a in deciding)
        null_sd = math.sqrt((S + 1) / (12.0 * max(S - 1, 1) * nd))
    else:
        smallest, null_sd = perms.smallest_p(), matched_null_sd(strata)
    mde = min(1.0, 0.5 + (normal_quantile(1 - mde_level) + normal_quantile(CONTROL_POWER)) * null_sd)
    calib = Calibration(
        matched=nd if not on_audit else strata.n_matched, unmatched=0 if not on_audit else strata.unmatched,
        smallest_p=smallest, level=level, exact=perms.exact or not on_audit, n_perm=n_perm, refs_per_record=n_refs,
        on_audit=on_audit, shards=S,
        labels=tuple(sorted({k[0] for k in strata.keys})),
        strata=tuple((k[0], k[1], len(d), len(a)) for k, d, a in zip(strata.keys, strata.deleted, strata.audit, strict=True)),
    )
    return mde, calib
