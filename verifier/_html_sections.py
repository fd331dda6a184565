"""The sections of the HTML report (verifier/_html.py): the checks, the replay, the residual tests,
the canary test and the temporal residual memory, each a fragment of escaped HTML."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from ._html_figures import (
    fig_canary,
    fig_escape,
    fig_hist,
    fig_replay,
    fig_roc,
    fig_temporal,
    img,
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


def escape(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def num(x: Any, fmt: str = ".3g") -> str:
    if x is None:
        return "&ndash;"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, float)):
        return format(x, fmt)
    return escape(x)


_PILL_TEXT = {"accepted-reduced": "accepted with reduced checks", "unusable": "unusable input"}


def pill(v: Any) -> str:
    return f'<span class="pill {_VERDICT_CLASS.get(str(v), "warn")}">{escape(_PILL_TEXT.get(str(v), str(v)).upper())}</span>'


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    h = "".join(f"<th>{escape(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<div class="scroll"><table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table></div>'


def _ci(v: Any) -> str:
    if not isinstance(v, Sequence) or len(v) != 2:
        return "&ndash;"
    return f"{num(v[0], '.3f')}&ndash;{num(v[1], '.3f')}"


def section_checks(r: Mapping[str, Any]) -> str:
    rows = []
    for c in r.get("checks") or []:
        rows.append([escape(c.get("step")), escape(c.get("name")), pill({"pass": "pass", "fail": "fail", "error": "fail"}.get(c.get("status"), "skipped")) if c.get("status") != "skipped" else "skipped", escape(c.get("detail")), num(c.get("seconds"), ".3f")])
    out = "<h2>Checks</h2>"
    if r.get("failure"):
        f = r["failure"]
        out += f'<p class="bad" style="padding:.4em">Step {escape(f.get("step"))}: {escape(f.get("error"))}: {escape(f.get("message"))}</p>'
    out += table(["step", "check", "status", "detail", "seconds"], rows) if rows else '<p class="note">no checks ran</p>'
    for w in r.get("warnings") or []:
        out += f'<p class="warn" style="padding:.3em">WARNING: {escape(w)}</p>'
    return out


def section_replay(r: Mapping[str, Any]) -> str:
    out = "<h2>Replay</h2>"
    rep = r.get("replay") or {}
    segs = rep.get("segments") or []
    samp = r.get("sampling") or {}
    out += (
        f"<p>Sampled {num(samp.get('sampled'), 'd')} of {num(samp.get('population'), 'd')} segments; "
        f"replayed {num(samp.get('replayed'), 'd')}, mode <code>{escape(rep.get('mode'))}</code>"
        + (f", threshold {num(rep.get('threshold'))}" if rep.get("threshold") else "")
        + (f", {num(rep.get('steps'), 'd')} steps in {num(rep.get('seconds'), '.2f')} s" if rep.get("steps") is not None else "")
        + ".</p>"
    )
    if segs:
        out += img(fig_replay(segs, rep.get("threshold")), "replay distance per segment")
        out += table(
            ["shard", "generation", "stage", "log entries", "steps", "bit-exact", "distance", "match"],
            [
                [escape(s.get("shard")), escape(s.get("generation")), escape(s.get("stage")), f"{escape(s.get('start_index'))}&ndash;{escape(s.get('end_index'))}",
                 num(s.get("steps"), "d"), num(s.get("bit_exact")), num(s.get("distance")), num(s.get("match"))]
                for s in segs
            ],
        )
    else:
        out += '<p class="note">no segment was replayed</p>'
    esc = r.get("escape_probability") or {}
    if samp.get("statement"):
        owner = samp.get("sampled_by") == "owner"
        out += (f'<p class="{"warn" if owner else "note"}" style="padding:.3em">'
                f'{"SAMPLED BY THE OWNER. " if owner else ""}{escape(samp.get("statement"))}</p>')
    if esc:
        k = int(samp.get("uniform_draws") or 0)
        n = int(samp.get("sampled_population") or 0)
        out += "<h2>Escape probability</h2>"
        out += (f"<p>The deletion lineage ({num(samp.get('complete'), 'd')} segments) is replayed in full. Of the "
                f"{n} other segments, {k} were drawn uniformly: one forged segment among them escapes with "
                f"probability {num(samp.get('single_segment_escape'))} (1 - k/N); if a fraction f were forged, "
                f"with probability at most (1-f)<sup>{k}</sup>"
                + (" per try of the owner, who chose the sample" if samp.get("sampled_by") == "owner" else "")
                + ".</p>")
        out += table(["forged fraction f", "escape probability"], [[num(float(f), "g"), num(p)] for f, p in esc.items()])
        out += img(fig_escape(k, esc), "escape probability (1-f)^k")
    return out


def section_residual(res: Mapping[str, Any] | None) -> str:
    out = "<h2>Residual information: membership inference</h2>"
    if not isinstance(res, Mapping):
        return out + '<p class="note">not run</p>'
    n = res.get("n") or {}
    out += f"<p>{pill(res.get('verdict'))} {escape(res.get('reason'))}</p>"
    out += (
        f"<p>Deleted records: {num(n.get('deleted'), 'd')}; audit set (never trained on): {num(n.get('audit'), 'd')}; "
        f"retained sample: {num(n.get('retained'), 'd')}; shards: {escape(', '.join(str(s) for s in res.get('shards') or []))}. "
        f"Test: {escape(res.get('test'))} at alpha = {num(res.get('alpha'), 'g')}, {escape(res.get('correction'))} over "
        f"{escape(', '.join(res.get('decision_attacks') or []))}; other attacks are reported only. Smallest label-matched AUC "
        f"detected with 80% power: {num(res.get('min_detectable_auc'), '.3f')}.</p>"
    )
    cal = res.get("calibration")
    if isinstance(cal, Mapping):
        strata = cal.get("strata") or []
        out += (
            f"<p>What the test could compare: {num(cal.get('matched_deleted'), 'd')} deleted record(s) against audit "
            f"records of the same label on the same shard ({num(cal.get('unmatched_deleted'), 'd')} without any), "
            f"{num(cal.get('references_per_record'), 'd')} reference models per record, "
            f"{escape(cal.get('method'))}; smallest attainable p-value {num(cal.get('smallest_p'))} "
            f"({'can' if cal.get('can_reject') else 'cannot'} reach alpha).</p>"
        )
        if strata:
            out += table(["label", "shard", "deleted records", "audit records of the label"],
                          [[num(s.get("label"), "d"), num(s.get("shard"), "d"), num(s.get("deleted"), "d"),
                            num(s.get("audit"), "d")] for s in strata if isinstance(s, Mapping)])
    ctl = res.get("control") or {}
    out += (
        f"<p>Positive control (same attacks on the pre-deletion models): detected = {num(ctl.get('detected'))}; best "
        f"{escape(ctl.get('best_attack'))} label-matched AUC {num(ctl.get('best_auc'), '.3f')} (95% CI "
        f"{_ci(ctl.get('best_auc_ci95'))}), adjusted p = {num(ctl.get('best_p_adjusted'))}.</p>"
    )
    rows = []
    for ph in ("post", "pre"):
        for r in res.get(ph) or []:
            rows.append([
                "after" if ph == "post" else "before (control)", escape(r["attack"]) + ("" if r.get("decides") else " <i>(reported)</i>"),
                f'{num(r.get("matched_auc"), ".3f")} ({_ci(r.get("matched_auc_ci95"))})',
                f'{num(r["auc"], ".3f")} ({_ci(r["auc_ci95"])})',
                f'{num(r["tpr_at_fpr_1pct"], ".3f")} ({_ci(r["tpr_at_fpr_1pct_ci95"])})',
                f'{num(r["tpr_at_fpr_0.1pct"], ".3f")} ({_ci(r["tpr_at_fpr_0.1pct_ci95"])})',
                num(r["p_value"]), num(r.get("p_adjusted")), num(r.get("reject")), num(r.get("retained_vs_audit_auc"), ".3f"),
            ])
    out += table(["models", "attack", "label-matched AUC (95% CI)", "all-label AUC (95% CI)", "TPR at 1% FPR",
                   "TPR at 0.1% FPR", "p", "p (adjusted)", "reject",
                   "retained vs audit AUC"], rows)
    for a in res.get("skipped") or []:
        out += f'<p class="note">skipped {escape(a.get("attack"))}: {escape(a.get("why"))}</p>'
    rob = res.get("robustness")
    if isinstance(rob, Mapping):
        bef, aft = rob.get("before") or {}, rob.get("after") or {}
        out += (
            f"<p><b>Robustness</b> (reported, not part of the verdict): {escape(rob.get('attack'))}, on "
            f"{num(rob.get('records'), 'd')} {escape(rob.get('records_are'))}. Before deletion: clean accuracy "
            f"{num(bef.get('clean_accuracy'), '.1%')}, robust {num(bef.get('robust_accuracy'), '.1%')}; after: clean "
            f"{num(aft.get('clean_accuracy'), '.1%')}, robust {num(aft.get('robust_accuracy'), '.1%')}.</p>"
        )
    di = res.get("deletion_inference")
    if isinstance(di, Mapping):
        dn, drop = di.get("n") or {}, di.get("mean_drop_nats") or {}
        out += (
            f"<p><b>Deletion-inference exposure</b> (reported, not part of the verdict): AUC "
            f"{num(di.get('auc'), '.3f')} (95% CI {_ci(di.get('auc_ci95'))}), TPR at 1% FPR "
            f"{num(di.get('tpr_at_fpr_1pct'), '.3f')}, over {num(dn.get('deleted'), 'd')} deleted and "
            f"{num(dn.get('retained'), 'd')} retained records; mean drop in the label's log-probability "
            f"{num(drop.get('deleted'), '.3f')} nats (deleted) vs {num(drop.get('retained'), '.3f')} (retained). "
            f"{escape(di.get('meaning'))}.</p>"
        )
    desc = res.get("attack_descriptions") or {}
    if desc:
        out += "<ul>" + "".join(f"<li><b>{escape(k)}</b>: {escape(v)}</li>" for k, v in desc.items()) + "</ul>"
    if res.get("post"):
        out += img(fig_roc(res), "ROC curves, deleted vs audit set (log-log)")
        out += img(fig_hist(res, "post"), "score histograms after deletion: deleted / audit / retained")
    if res.get("pre"):
        out += img(fig_hist(res, "pre"), "score histograms before deletion (positive control)")
    return out


def section_canary(can: Mapping[str, Any] | None) -> str:
    out = "<h2>Backdoor canaries</h2>"
    if not isinstance(can, Mapping):
        return out + '<p class="note">not run (no trigger supplied)</p>'
    out += f"<p>{pill(can.get('verdict'))} {escape(can.get('reason'))}</p>"
    trig = can.get("trigger") or {}
    out += (
        f"<p>Trigger: {len(trig.get('indices') or [])} features, target class {escape(trig.get('target'))}; "
        f"{num(can.get('queries'), 'd')} triggered audit records; base rate bound {num(can.get('base_rate'))} "
        f"({escape(can.get('base_rate_rule'))}); {escape(can.get('test'))} at alpha = {num(can.get('alpha'), 'g')}.</p>"
    )
    rows = [
        [escape(s["shard"]), f'{num(s["pre_hits"], "d")}/{num(s["queries"], "d")} ({num(s["pre_rate"], ".1%")})',
         f'{num(s["post_hits"], "d")}/{num(s["queries"], "d")} ({num(s["post_rate"], ".1%")})',
         num(s["p_control_holm"]), num(s["p_residual_holm"]), num(s["p_post_below_pre"])]
        for s in can.get("shards") or []
    ]
    out += table(["shard", "before deletion", "after deletion", "control p (Holm)", "residual p (Holm)",
                   "p (after < before)"], rows)
    base = can.get("base") or []
    if base:
        out += '<p class="note">unmarked shards: ' + ", ".join(
            f"shard {escape(b['shard'])}: {num(b['hits'], 'd')} hits" for b in base) + "</p>"
    if can.get("shards"):
        out += img(fig_canary(can), "trigger success rates before and after deletion")
    return out


def section_temporal(temps: Any) -> str:
    out = "<h2>Temporal residual memory (informative)</h2>"
    if not isinstance(temps, Sequence) or not temps:
        return out + '<p class="note">not measured</p>'
    out += ("<p>How much of the original training's movement, stage by stage after the rollback point, came from "
            "the deleted records (DeepObliviate): the difference of the two lineages' stage updates, relative to the "
            "original update, and the distance between the lineages. Not part of the verdict.</p>")
    rows = [
        [escape(t.get("shard")), escape(p["stage"]), num(p["residual_l1"]), num(p["residual_rel"], ".3f"),
         num(p["distance_rel"], ".3f"), num(p.get("margin_nats"), ".3f")]
        for t in temps for p in t.get("points") or []
    ]
    out += table(["shard", "stage", "residual L1", "residual (relative)", "lineage distance", "margin (nats)"], rows)
    if rows:
        out += img(fig_temporal(temps), "temporal residual memory per stage")
    return out
