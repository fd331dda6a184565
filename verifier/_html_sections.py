"""The sections of the HTML report (verifier/_html.py): the checks, the replay, the residual tests,
the canary test and the temporal residual memory, each a fragment of escaped HTML."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from ._html_figures import (
    _fig_canary,
    _fig_escape,
    _fig_hist,
    _fig_replay,
    _fig_roc,
    _fig_temporal,
    _img,
)

_VERDICT_CLASS = {
    "accepted": "ok",
    "accepted-reduced": "warn",
    "pass": "ok",
    "rejected": "bad",
    "fail": "bad",
    "unusable": "bad",
    "inconclusive": "warn",
}


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _num(x: Any, fmt: str = ".3g") -> str:
    if x is None:
        return "&ndash;"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, float)):
        return format(x, fmt)
    return _e(x)


_PILL_TEXT = {"accepted-reduced": "accepted with reduced checks", "unusable": "unusable input"}


def _pill(v: Any) -> str:
    return f'<span class="pill {_VERDICT_CLASS.get(str(v), "warn")}">{_e(_PILL_TEXT.get(str(v), str(v)).upper())}</span>'


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    h = "".join(f"<th>{_e(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<div class="scroll"><table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table></div>'


def _ci(v: Any) -> str:
    if not isinstance(v, Sequence) or len(v) != 2:
        return "&ndash;"
    return f"{_num(v[0], '.3f')}&ndash;{_num(v[1], '.3f')}"


def _section_checks(r: Mapping[str, Any]) -> str:
    rows = []
    for c in r.get("checks") or []:
        rows.append([_e(c.get("step")), _e(c.get("name")), _pill({"pass": "pass", "fail": "fail", "error": "fail"}.get(c.get("status"), "skipped")) if c.get("status") != "skipped" else "skipped", _e(c.get("detail")), _num(c.get("seconds"), ".3f")])
    out = "<h2>Checks</h2>"
    if r.get("failure"):
        f = r["failure"]
        out += f'<p class="bad" style="padding:.4em">Step {_e(f.get("step"))}: {_e(f.get("error"))}: {_e(f.get("message"))}</p>'
    out += _table(["step", "check", "status", "detail", "seconds"], rows) if rows else '<p class="note">no checks ran</p>'
    for w in r.get("warnings") or []:
        out += f'<p class="warn" style="padding:.3em">WARNING: {_e(w)}</p>'
    return out


def _section_replay(r: Mapping[str, Any]) -> str:
    out = "<h2>Replay</h2>"
    rep = r.get("replay") or {}
    segs = rep.get("segments") or []
    samp = r.get("sampling") or {}
    out += (
        f"<p>Sampled {_num(samp.get('sampled'), 'd')} of {_num(samp.get('population'), 'd')} segments; "
        f"replayed {_num(samp.get('replayed'), 'd')}, mode <code>{_e(rep.get('mode'))}</code>"
        + (f", threshold {_num(rep.get('threshold'))}" if rep.get("threshold") else "")
        + (f", {_num(rep.get('steps'), 'd')} steps in {_num(rep.get('seconds'), '.2f')} s" if rep.get("steps") is not None else "")
        + ".</p>"
    )
    if segs:
        out += _img(_fig_replay(segs, rep.get("threshold")), "replay distance per segment")
        out += _table(
            ["shard", "generation", "stage", "log entries", "steps", "bit-exact", "distance", "match"],
            [
                [_e(s.get("shard")), _e(s.get("generation")), _e(s.get("stage")), f"{_e(s.get('start_index'))}&ndash;{_e(s.get('end_index'))}",
                 _num(s.get("steps"), "d"), _num(s.get("bit_exact")), _num(s.get("distance")), _num(s.get("match"))]
                for s in segs
            ],
        )
    else:
        out += '<p class="note">no segment was replayed</p>'
    esc = r.get("escape_probability") or {}
    if samp.get("statement"):
        owner = samp.get("sampled_by") == "owner"
        out += (f'<p class="{"warn" if owner else "note"}" style="padding:.3em">'
                f'{"SAMPLED BY THE OWNER. " if owner else ""}{_e(samp.get("statement"))}</p>')
    if esc:
        k = int(samp.get("uniform_draws") or 0)
        n = int(samp.get("sampled_population") or 0)
        out += "<h2>Escape probability</h2>"
        out += (f"<p>The deletion lineage ({_num(samp.get('complete'), 'd')} segments) is replayed in full. Of the "
                f"{n} other segments, {k} were drawn uniformly: one forged segment among them escapes with "
                f"probability {_num(samp.get('single_segment_escape'))} (1 - k/N); if a fraction f were forged, "
                f"with probability at most (1-f)<sup>{k}</sup>"
                + (" per try of the owner, who chose the sample" if samp.get("sampled_by") == "owner" else "")
                + ".</p>")
        out += _table(["forged fraction f", "escape probability"], [[_num(float(f), "g"), _num(p)] for f, p in esc.items()])
        out += _img(_fig_escape(k, esc), "escape probability (1-f)^k")
    return out


def _section_residual(res: Mapping[str, Any] | None) -> str:
    out = "<h2>Residual information: membership inference</h2>"
    if not isinstance(res, Mapping):
        return out + '<p class="note">not run</p>'
    n = res.get("n") or {}
    out += f"<p>{_pill(res.get('verdict'))} {_e(res.get('reason'))}</p>"
    out += (
        f"<p>Deleted records: {_num(n.get('deleted'), 'd')}; audit set (never trained on): {_num(n.get('audit'), 'd')}; "
        f"retained sample: {_num(n.get('retained'), 'd')}; shards: {_e(', '.join(str(s) for s in res.get('shards') or []))}. "
        f"Test: {_e(res.get('test'))} at alpha = {_num(res.get('alpha'), 'g')}, {_e(res.get('correction'))} over "
        f"{_e(', '.join(res.get('decision_attacks') or []))}; other attacks are reported only. Smallest label-matched AUC "
        f"detected with 80% power: {_num(res.get('min_detectable_auc'), '.3f')}.</p>"
    )
    cal = res.get("calibration")
    if isinstance(cal, Mapping):
        strata = cal.get("strata") or []
        out += (
            f"<p>What the test could compare: {_num(cal.get('matched_deleted'), 'd')} deleted record(s) against audit "
            f"records of the same label on the same shard ({_num(cal.get('unmatched_deleted'), 'd')} without any), "
            f"{_num(cal.get('references_per_record'), 'd')} reference models per record, "
            f"{_e(cal.get('method'))}; smallest attainable p-value {_num(cal.get('smallest_p'))} "
            f"({'can' if cal.get('can_reject') else 'cannot'} reach alpha).</p>"
        )
        if strata:
            out += _table(["label", "shard", "deleted records", "audit records of the label"],
                          [[_num(s.get("label"), "d"), _num(s.get("shard"), "d"), _num(s.get("deleted"), "d"),
                            _num(s.get("audit"), "d")] for s in strata if isinstance(s, Mapping)])
    ctl = res.get("control") or {}
    out += (
        f"<p>Positive control (same attacks on the pre-deletion models): detected = {_num(ctl.get('detected'))}; best "
        f"{_e(ctl.get('best_attack'))} label-matched AUC {_num(ctl.get('best_auc'), '.3f')} (95% CI "
        f"{_ci(ctl.get('best_auc_ci95'))}), adjusted p = {_num(ctl.get('best_p_adjusted'))}.</p>"
    )
    rows = []
    for ph in ("post", "pre"):
        for r in res.get(ph) or []:
            rows.append([
                "after" if ph == "post" else "before (control)", _e(r["attack"]) + ("" if r.get("decides") else " <i>(reported)</i>"),
                f'{_num(r.get("matched_auc"), ".3f")} ({_ci(r.get("matched_auc_ci95"))})',
                f'{_num(r["auc"], ".3f")} ({_ci(r["auc_ci95"])})',
                f'{_num(r["tpr_at_fpr_1pct"], ".3f")} ({_ci(r["tpr_at_fpr_1pct_ci95"])})',
                f'{_num(r["tpr_at_fpr_0.1pct"], ".3f")} ({_ci(r["tpr_at_fpr_0.1pct_ci95"])})',
                _num(r["p_value"]), _num(r.get("p_adjusted")), _num(r.get("reject")), _num(r.get("retained_vs_audit_auc"), ".3f"),
            ])
    out += _table(["models", "attack", "label-matched AUC (95% CI)", "all-label AUC (95% CI)", "TPR at 1% FPR",
                   "TPR at 0.1% FPR", "p", "p (adjusted)", "reject",
                   "retained vs audit AUC"], rows)
    for a in res.get("skipped") or []:
        out += f'<p class="note">skipped {_e(a.get("attack"))}: {_e(a.get("why"))}</p>'
    rob = res.get("robustness")
    if isinstance(rob, Mapping):
        bef, aft = rob.get("before") or {}, rob.get("after") or {}
        out += (
            f"<p><b>Robustness</b> (reported, not part of the verdict): {_e(rob.get('attack'))}, on "
            f"{_num(rob.get('records'), 'd')} {_e(rob.get('records_are'))}. Before deletion: clean accuracy "
            f"{_num(bef.get('clean_accuracy'), '.1%')}, robust {_num(bef.get('robust_accuracy'), '.1%')}; after: clean "
            f"{_num(aft.get('clean_accuracy'), '.1%')}, robust {_num(aft.get('robust_accuracy'), '.1%')}.</p>"
        )
    di = res.get("deletion_inference")
    if isinstance(di, Mapping):
        dn, drop = di.get("n") or {}, di.get("mean_drop_nats") or {}
        out += (
            f"<p><b>Deletion-inference exposure</b> (reported, not part of the verdict): AUC "
            f"{_num(di.get('auc'), '.3f')} (95% CI {_ci(di.get('auc_ci95'))}), TPR at 1% FPR "
            f"{_num(di.get('tpr_at_fpr_1pct'), '.3f')}, over {_num(dn.get('deleted'), 'd')} deleted and "
            f"{_num(dn.get('retained'), 'd')} retained records; mean drop in the label's log-probability "
            f"{_num(drop.get('deleted'), '.3f')} nats (deleted) vs {_num(drop.get('retained'), '.3f')} (retained). "
            f"{_e(di.get('meaning'))}.</p>"
        )
    desc = res.get("attack_descriptions") or {}
    if desc:
        out += "<ul>" + "".join(f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in desc.items()) + "</ul>"
    if res.get("post"):
        out += _img(_fig_roc(res), "ROC curves, deleted vs audit set (log-log)")
        out += _img(_fig_hist(res, "post"), "score histograms after deletion: deleted / audit / retained")
    if res.get("pre"):
        out += _img(_fig_hist(res, "pre"), "score histograms before deletion (positive control)")
    return out


def _section_canary(can: Mapping[str, Any] | None) -> str:
    out = "<h2>Backdoor canaries</h2>"
    if not isinstance(can, Mapping):
        return out + '<p class="note">not run (no trigger supplied)</p>'
    out += f"<p>{_pill(can.get('verdict'))} {_e(can.get('reason'))}</p>"
    trig = can.get("trigger") or {}
    out += (
        f"<p>Trigger: {len(trig.get('indices') or [])} features, target class {_e(trig.get('target'))}; "
        f"{_num(can.get('queries'), 'd')} triggered audit records; base rate bound {_num(can.get('base_rate'))} "
        f"({_e(can.get('base_rate_rule'))}); {_e(can.get('test'))} at alpha = {_num(can.get('alpha'), 'g')}.</p>"
    )
    rows = [
        [_e(s["shard"]), f'{_num(s["pre_hits"], "d")}/{_num(s["queries"], "d")} ({_num(s["pre_rate"], ".1%")})',
         f'{_num(s["post_hits"], "d")}/{_num(s["queries"], "d")} ({_num(s["post_rate"], ".1%")})',
         _num(s["p_control_holm"]), _num(s["p_residual_holm"]), _num(s["p_post_below_pre"])]
        for s in can.get("shards") or []
    ]
    out += _table(["shard", "before deletion", "after deletion", "control p (Holm)", "residual p (Holm)",
                   "p (after < before)"], rows)
    base = can.get("base") or []
    if base:
        out += '<p class="note">unmarked shards: ' + ", ".join(
            f"shard {_e(b['shard'])}: {_num(b['hits'], 'd')} hits" for b in base) + "</p>"
    if can.get("shards"):
        out += _img(_fig_canary(can), "trigger success rates before and after deletion")
    return out


def _section_temporal(temps: Any) -> str:
    out = "<h2>Temporal residual memory (informative)</h2>"
    if not isinstance(temps, Sequence) or not temps:
        return out + '<p class="note">not measured</p>'
    out += ("<p>How much of the original training's movement, stage by stage after the rollback point, came from "
            "the deleted records (DeepObliviate): the difference of the two lineages' stage updates, relative to the "
            "original update, and the distance between the lineages. Not part of the verdict.</p>")
    rows = [
        [_e(t.get("shard")), _e(p["stage"]), _num(p["residual_l1"]), _num(p["residual_rel"], ".3f"),
         _num(p["distance_rel"], ".3f"), _num(p.get("margin_nats"), ".3f")]
        for t in temps for p in t.get("points") or []
    ]
    out += _table(["shard", "stage", "residual L1", "residual (relative)", "lineage distance", "margin (nats)"], rows)
    if rows:
        out += _img(_fig_temporal(temps), "temporal residual memory per stage")
    return out
