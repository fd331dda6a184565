"""The verdict of the residual tests and its reason, written for people (specs/10-residual.md
section 6)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ._residual_report import MIN_RECORDS, AttackResult, Calibration, best_attack


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


def decide(
    post: Sequence[AttackResult],
    pre: Sequence[AttackResult],
    control: bool | None,
    alpha: float,
    mde: float,
    m: int,
    calib: Calibration,
) -> tuple[str, str]:
    """The verdict and its reason (specs/10-residual.md section 6)."""
    rejected = [r for r in post if r.reject]
    best_post = best_attack(post)
    if best_post is not None and not calib.can_reject and (not calib.on_audit or calib.matched > 0):
        return "inconclusive", _cannot_decide(best_post, calib, alpha)
    if rejected:
        return _rejection(rejected, control, alpha, m, calib)
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
    return _against_control(best_post, pre, control, alpha, mde, m, calib)


def _cannot_decide(best_post: AttackResult, calib: Calibration, alpha: float) -> str:
    """Why too few references or records keep the test from deciding, and what to do."""
    few = calib.matched < MIN_RECORDS
    return (
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


def _rejection(rejected: Sequence[AttackResult], control: bool | None, alpha: float, m: int,
               calib: Calibration) -> tuple[str, str]:
    """A test after deletion rejects: a fail if the positive control confirms it, else inconclusive."""
    worst = min(rejected, key=lambda r: r.p_adj)  # type: ignore[arg-type,return-value]
    if control is not True:
        # A residual after deletion is at most the membership signal before it: a rejection the
        # positive control does not confirm (or cannot, without pre-deletion models) is no
        # evidence of a residual, and the verifier does not accuse on it.
        return "inconclusive", (
            f"unconfirmed: the test after deletion rejects ({worst.attack} {_effect(worst)} {worst.matched_auc:.3f}, "
            f"adjusted p = {worst.p_adj:.2g}), but the positive control "
            + ("could not run (no pre-deletion models)" if control is None else "does not detect the same records in "
               "the pre-deletion models")
            + f"; a residual cannot exceed the membership it is left from, so this is no evidence either way. "
            f"{_what_to_do(calib, alpha)}"
        )
    return "fail", (
        f"the deleted records are still singled out by the models: {worst.attack} attack, {_effect(worst)} {worst.matched_auc:.3f} (95% CI {worst.matched_auc_ci[0]:.3f}-"
        f"{worst.matched_auc_ci[1]:.3f}), adjusted p = {worst.p_adj:.2g} <= alpha = {alpha:g} over {m} "
        f"attacks ({calib.matched} deleted records of label(s) {', '.join(str(x) for x in calib.labels)}, "
        f"{calib.refs_per_record} reference models per record). An honest deletion fails with probability at "
        f"most alpha; check that the retrained shards never saw these records"
    )


def _against_control(best_post: AttackResult, pre: Sequence[AttackResult], control: bool | None, alpha: float,
                     mde: float, m: int, calib: Calibration) -> tuple[str, str]:
    """No test after deletion rejects: a pass only if the positive control shows the power."""
    if control is None:
        return "inconclusive", (
            "no positive control: the pre-deletion models were not available, so a pass would not be evidence"
        )
    best_pre = best_attack(pre)
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
