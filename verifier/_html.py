"""The human report: one self-contained HTML page (specs/10-residual.md, "Report").

``render_html(report)`` takes the JSON report of ``vmu-verify`` (``vmu.verification-report``),
optionally extended with the keys ``residual`` (:meth:`ResidualReport.to_json`), ``canary``
(:meth:`CanaryReport.to_json`) and ``temporal`` (a list of :meth:`TemporalReport.to_json`), and
returns a page that needs no network: styles inline, every plot an inline base64 PNG (matplotlib's
Agg canvas; pyplot and the global backend are never touched), no scripts, no external links. The
page is a jinja2 template with autoescape; the sections are built here and escape every value.

The headline comes first (:func:`headline`): accepted, accepted with reduced checks (``--policy
agency``, exit 3, with every unmet requirement), rejected or unusable input, with labels for what
an acceptance rests on (residual tests inconclusive, sampled by the owner, unsafe modes, a
non-finite model, an unpinned key). It never reads better than the report's verdict and exit code: a report whose
verdict and exit code disagree is refused. Then every check, the replay distances, the escape
probability, the residual-information tests (ROC curves, score histograms), the canaries and the
temporal residual memory. The JSON itself is embedded at the end (``<script
type="application/json">``, never run). A viewport meta tag and tables that scroll inside their
own container keep the page within a phone's width (390 CSS px; tests/test_html.py measures it
in headless Chromium); long digests break.

The same input gives the same bytes (no timestamps; PNG metadata stripped), so a report can be
reproduced and compared. Without matplotlib the page still renders, with tables only and a note.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from verifiable_mu._errors import EXIT_INTERNAL, ISSUES_URL, MalformedInput

from ._policy import policy_document

__all__ = ["Headline", "render_html", "headline", "overall_verdict", "figures_available"]

_COLORS = {"deleted": "#d62728", "audit": "#1f77b4", "retained": "#2ca02c"}
_ATTACK_COLORS = {"loss": "#8c564b", "confidence": "#9467bd", "lira": "#d62728", "rmia": "#ff7f0e"}
_VERDICT_CLASS = {
    "accepted": "ok",
    "accepted-reduced": "warn",
    "pass": "ok",
    "rejected": "bad",
    "fail": "bad",
    "unusable": "bad",
    "inconclusive": "warn",
}


def figures_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def overall_verdict(report: Mapping[str, Any]) -> str:
    """Combine the bundle checks with the residual and canary verdicts (the page's headline
    writes ``inconclusive`` as "accepted, residual tests inconclusive": the bundle was accepted).

    ``unusable``, ``rejected`` or ``internal-error`` (a bug: nothing was judged) from the checks stand; otherwise a residual or canary ``fail``
    rejects; ``accepted-reduced`` (``--policy agency``: a requirement not met) stands; an
    ``inconclusive`` residual or canary test makes an accepted bundle ``inconclusive``.
    """
    base = report.get("verdict")
    if base not in _EXIT_CODES:
        raise MalformedInput("the report's verdict must be accepted, rejected, unusable, accepted-reduced or "
                             "internal-error")
    if base in ("rejected", "unusable", "internal-error"):
        return str(base)
    extra = [d.get("verdict") for d in (report.get("residual"), report.get("canary")) if isinstance(d, Mapping)]
    if "fail" in extra:
        return "rejected"
    if base == "accepted-reduced":
        return str(base)
    if "inconclusive" in extra:
        return "inconclusive"
    return "accepted"


# --- figures ------------------------------------------------------------------------------------


def _png(draw: Callable[[Any], None], size: tuple[float, float] = (6.4, 3.6)) -> str | None:
    """Draw on a fresh Agg figure; return base64 PNG, or None without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    draw(fig)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(b64: str | None, alt: str) -> str:
    if b64 is None:
        return f'<p class="note">[{html.escape(alt)}: plot omitted, matplotlib is not installed (pip install verifiable-mu[report])]</p>'
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}"><figcaption>{html.escape(alt)}</figcaption></figure>'


def _fig_replay(segs: Sequence[Mapping[str, Any]], threshold: float | None) -> str | None:
    def draw(fig: Any) -> None:
        ax = fig.add_subplot(1, 1, 1)
        d = [max(float(s.get("distance") or 0.0), 1e-12) for s in segs]
        colors = ["#2ca02c" if s.get("bit_exact") else ("#1f77b4" if s.get("match") else "#d62728") for s in segs]
        ax.bar(range(len(d)), d, color=colors)
        ax.set_yscale("log")
        if threshold:
            ax.axhline(float(threshold), color="#d62728", linestyle="--", label=f"threshold {float(threshold):g}")
            ax.legend(loc="upper right", fontsize=8)
        top = max(d + [float(threshold or 0.0)])
        ax.set_ylim(1e-13, max(1.0, top * 10))
        for i, s in enumerate(segs):
            if s.get("bit_exact"):
                ax.text(i, 2e-12, "exact", ha="center", fontsize=7, rotation=90)
        ax.set_xticks(range(len(d)))
        ax.set_xticklabels([f"s{s.get('shard')}g{s.get('generation')}:{s.get('stage')}" for s in segs], rotation=60, fontsize=7)
        ax.set_ylabel("relative L2 distance")
        ax.set_title("replayed segments: distance to the logged end checkpoint")

    return _png(draw)


def _fig_escape(k: int, marks: Mapping[str, Any]) -> str | None:
    def draw(fig: Any) -> None:
        ax = fig.add_subplot(1, 1, 1)
        fs = [i / 400 for i in range(1, 121)]
        ax.plot(fs, [(1 - f) ** k for f in fs], color="#1f77b4", label=f"(1-f)^k, k = {k}")
        for f, p in marks.items():
            ax.plot([float(f)], [max(float(p), 1e-300)], "o", color="#d62728")
            ax.annotate(f"f={float(f):g}: {float(p):.3g}", (float(f), max(float(p), 1e-300)), fontsize=8,
                        textcoords="offset points", xytext=(4, 4))
        ax.set_yscale("log")
        ax.set_ylim(bottom=max(min([(1 - 0.3) ** k] + [max(float(p), 1e-300) for p in marks.values()]) / 10, 1e-300), top=1.5)
        ax.set_xlabel("fraction f of forged segments outside the deletion lineage")
        ax.set_ylabel("escape probability")
        ax.legend(fontsize=8)
        ax.set_title("probability that a forgery escapes the sampled replay")

    return _png(draw)


def _fig_roc(res: Mapping[str, Any]) -> str | None:
    phases = [p for p in ("post", "pre") if res.get(p)]

    def draw(fig: Any) -> None:
        for i, ph in enumerate(phases):
            ax = fig.add_subplot(1, len(phases), i + 1)
            n_neg = max(1, int(res.get("n", {}).get("audit", 1)))
            lo = 0.5 / n_neg
            for r in res[ph]:
                fpr = [max(float(x), lo) for x in r["roc"]["fpr"]]
                tpr = [max(float(x), lo) for x in r["roc"]["tpr"]]
                style = "-" if r.get("decides") else ":"
                ax.plot(fpr, tpr, style, color=_ATTACK_COLORS.get(r["attack"], "k"), label=f"{r['attack']} AUC {r['auc']:.3f}")
            ax.plot([lo, 1], [lo, 1], color="#999999", linewidth=0.8)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("false positive rate (audit set)")
            ax.set_ylabel("true positive rate (deleted)")
            ax.set_title("after deletion" if ph == "post" else "positive control: before deletion", fontsize=10)
            ax.legend(fontsize=7, loc="lower right")

    return _png(draw, (6.4 * len(phases) / 1.3, 4.2))


def _fig_hist(res: Mapping[str, Any], phase: str) -> str | None:
    results = res.get(phase) or []

    def draw(fig: Any) -> None:
        cols = 2
        rows = max(1, math.ceil(len(results) / cols))
        for i, r in enumerate(results):
            ax = fig.add_subplot(rows, cols, i + 1)
            groups = [(g, [float(x) for x in r["scores"][g]]) for g in ("audit", "retained", "deleted") if r["scores"].get(g)]
            allv = [x for _, v in groups for x in v]
            lo, hi = min(allv), max(allv)
            if hi <= lo:
                hi = lo + 1.0
            bins = [lo + (hi - lo) * j / 30 for j in range(31)]
            for g, v in groups:
                ax.hist(v, bins=bins, density=True, histtype="step" if g != "deleted" else "stepfilled",
                        alpha=1.0 if g != "deleted" else 0.35, color=_COLORS[g], label=f"{g} ({len(v)})")
            ax.set_title(f"{r['attack']}{'' if r.get('decides') else ' (reported only)'}", fontsize=9)
            ax.tick_params(labelsize=7)
            if i == 0:
                ax.legend(fontsize=7)
        fig.suptitle("scores after deletion" if phase == "post" else "scores before deletion (positive control)", fontsize=10)

    return _png(draw, (6.4, 2.4 * max(1, math.ceil(len(results) / 2)) + 0.4))


def _fig_canary(can: Mapping[str, Any]) -> str | None:
    shards = can.get("shards") or []

    def draw(fig: Any) -> None:
        ax = fig.add_subplot(1, 1, 1)
        labels = [f"shard {s['shard']}" for s in shards] + ["aggregate"]
        pre = [float(s["pre_rate"]) for s in shards] + [float(can["aggregate"]["pre_rate"])]
        post = [float(s["post_rate"]) for s in shards] + [float(can["aggregate"]["post_rate"])]
        x = list(range(len(labels)))
        ax.bar([i - 0.2 for i in x], pre, width=0.4, color="#ff7f0e", label="before deletion")
        ax.bar([i + 0.2 for i in x], post, width=0.4, color="#1f77b4", label="after deletion")
        ax.axhline(float(can["base_rate"]), color="#d62728", linestyle="--", label=f"base rate bound {float(can['base_rate']):.3g}")
        ax.set_xticks(x)
        ax.set_xticklabels(labels)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("trigger success rate")
        ax.legend(fontsize=8)
        ax.set_title("backdoor canary: triggered queries answered with the target class")

    return _png(draw)


def _fig_temporal(temps: Sequence[Mapping[str, Any]]) -> str | None:
    has_margin = any(p.get("margin_nats") is not None for t in temps for p in t["points"])

    def draw(fig: Any) -> None:
        ax = fig.add_subplot(1, 2 if has_margin else 1, 1)
        for t in temps:
            st = [p["stage"] for p in t["points"]]
            ax.plot(st, [p["residual_rel"] for p in t["points"]], "o-", label=f"shard {t['shard']}: update residual")
            ax.plot(st, [p["distance_rel"] for p in t["points"]], "s--", label=f"shard {t['shard']}: lineage distance")
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("stage of the original training")
        ax.set_ylabel("relative size")
        ax.legend(fontsize=7)
        ax.set_title("temporal residual memory", fontsize=10)
        if has_margin:
            ax2 = fig.add_subplot(1, 2, 2)
            for t in temps:
                pts = [p for p in t["points"] if p.get("margin_nats") is not None]
                ax2.plot([p["stage"] for p in pts], [p["margin_nats"] for p in pts], "o-", label=f"shard {t['shard']}")
            ax2.axhline(0, color="#999999", linewidth=0.8)
            ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax2.set_xlabel("stage")
            ax2.set_ylabel("log p_y original - retrained (nats)")
            ax2.legend(fontsize=7)
            ax2.set_title("deleted records: margin of the original lineage", fontsize=10)

    return _png(draw, (9.6 if has_margin else 6.4, 3.6))


# --- HTML ---------------------------------------------------------------------------------------

_CSS = """
*,*::before,*::after{box-sizing:border-box}
html{-webkit-text-size-adjust:100%;text-size-adjust:100%}
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:1.5em auto;padding:0 1em;color:#222;overflow-wrap:break-word}
h1{font-size:1.4em;overflow-wrap:anywhere}h2{font-size:1.15em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
.verdict{padding:.5em .8em;border-radius:6px;margin:.4em 0}
.verdict .headline{font-size:1.6em;font-weight:700;margin:0}
.verdict p,.verdict ul{margin:.4em 0}.verdict ul{padding-left:1.3em}
.ok{background:#e3f4e1;color:#1b5e20}.bad{background:#fde2e1;color:#b71c1c}.warn{background:#fff4d6;color:#7a5200}
.pill{display:inline-block;padding:.1em .5em;border-radius:4px;font-weight:600}
.label{display:inline-block;padding:.1em .5em;margin:.15em .3em .15em 0;border-radius:4px;font-weight:600;font-size:.85em;border:1px solid currentColor}
.scroll{max-width:100%;overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;margin:.5em 0;font-size:.88em}td,th{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:.8em 0}img{max-width:100%;height:auto}figcaption{font-size:.8em;color:#555}.note{color:#666;font-size:.9em}
code{background:#f4f4f4;padding:0 .2em;overflow-wrap:anywhere;word-break:break-all}
code.digest{display:inline-block;min-width:10em;max-width:22em;white-space:normal}
"""


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


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>{{ title }}</title><style>{{ css }}</style></head><body>
<h1>{{ title }}</h1>
<div class="verdict {{ h.css }}" id="verdict">
<p class="headline">Verdict: {{ h.title }}</p>
{%- if h.labels %}
<p>{% for css, text in h.labels %}<span class="label {{ css }}">{{ text }}</span>{% endfor %}</p>
{%- endif %}
<p>{{ h.summary }}</p>
{%- if h.advice %}
<p><b>What to do:</b> {{ h.advice }}</p>
{%- endif %}
{%- if h.unmet %}
<ul>{% for name, why, required in h.unmet %}<li><b>{{ name }}</b>: {{ why }}{% if required %} (required: {{ required }}){% endif %}</li>{% endfor %}</ul>
{%- endif %}
</div>
<p>Bundle checks: {{ bundle_pill }} (exit code {{ exit_code }}){% for label, pill in extra_pills %}; {{ label }}: {{ pill }}{% endfor %}</p>
{%- for key, reason in reasons %}
<p><b>{{ key }}:</b> {{ reason }}</p>
{%- endfor %}
{%- if sampled_by == "owner" %}
<p class="warn" style="padding:.3em"><b>Sampled by the owner</b> (offline, Fiat-Shamir): the owner can re-draw the sample with a new tree head, so the sampled replay bounds nothing against a grinding owner; the deletion lineage is replayed in full regardless.</p>
{%- endif %}
{{ identity }}
{%- for section in sections %}
{{ section }}
{%- endfor %}
<h2>Machine-readable report</h2><p class="note">The JSON report is embedded in this page (element <code>vmu-report</code>).</p><script type="application/json" id="vmu-report">{{ blob }}</script>
<p class="note">report type {{ report_type }} version {{ report_version }}</p>
</body></html>
"""

#: The exit code of ``vmu-verify`` for each bundle verdict (cli.py, specs/09).
_EXIT_CODES = {"accepted": 0, "rejected": 1, "unusable": 2, "accepted-reduced": 3, "internal-error": EXIT_INTERNAL}


@dataclass(frozen=True)
class Headline:
    """What the page says first. ``verdict`` is :func:`overall_verdict`; ``css`` the banner's
    colour (ok / warn / bad); ``labels`` (css, text) qualify an acceptance; ``unmet`` lists the
    policy's unmet requirements as (id, why, what the policy required)."""

    verdict: str
    css: str
    title: str
    summary: str
    labels: tuple[tuple[str, str], ...] = ()
    unmet: tuple[tuple[str, str, str], ...] = ()
    advice: str = ""  # what to do about the failure (the report's failure.advice)


def _unmet(report: Mapping[str, Any]) -> tuple[str, tuple[tuple[str, str, str], ...]]:
    pol = report.get("policy")
    if pol is None:
        return "default", ()
    if not isinstance(pol, Mapping):
        raise MalformedInput("the report's policy must be a JSON object")
    name = pol.get("name", "default")
    lines = pol.get("unmet") or []
    if not isinstance(name, str) or not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
        raise MalformedInput("the report's policy must name a policy and list unmet requirements as strings")
    try:
        texts = {r["id"]: r["text"] for r in policy_document(name)["requirements"]}
    except ValueError:
        texts = {}
    out = []
    for line in lines:
        rid, _, why = line.partition(": ")
        out.append((rid.replace("-", " "), why or line, texts.get(rid, "")))
    return name, tuple(out)


def headline(report: Mapping[str, Any]) -> Headline:
    """The page's headline. It never reads better than the report's verdict and exit code: a
    verdict and exit code that disagree, or an acceptance that lists unmet requirements, are
    refused (:class:`MalformedInput`); residual or canary results can only make it worse."""
    overall = overall_verdict(report)
    base = str(report.get("verdict"))
    code = report.get("exit_code")
    if code is not None and (type(code) is not int or code != _EXIT_CODES[base]):
        raise MalformedInput(f"the report's verdict {base!r} and exit code {code!r} disagree "
                             f"(vmu-verify exits {_EXIT_CODES[base]} for {base!r})")
    policy, unmet = _unmet(report)
    if base == "accepted" and unmet:
        raise MalformedInput("the report's verdict is 'accepted' but it lists unmet policy requirements")
    checks = [c for c in report.get("checks") or [] if isinstance(c, Mapping)]
    failure = report.get("failure") if isinstance(report.get("failure"), Mapping) else None
    why = f"step {failure.get('step')}: {failure.get('message')}" if failure else ""
    advice = str(failure.get("advice")) if failure and isinstance(failure.get("advice"), str) else ""
    ext: dict[str, Mapping[str, Any]] = {k: d for k in ("residual", "canary") if isinstance(d := report.get(k), Mapping)}
    ext_verdict = {k: d.get("verdict") for k, d in ext.items()}

    if base == "internal-error":
        return Headline(overall, "bad", "INTERNAL ERROR",
                        f"A bug in verifiable-mu stopped the verification, so nothing was judged (exit code "
                        f"{EXIT_INTERNAL}); please report it at {ISSUES_URL}" + (f": {why}" if why else "."),
                        advice=advice)
    if base == "unusable":
        return Headline(overall, "bad", "UNUSABLE INPUT",
                        "The bundle could not be checked, so nothing was judged (exit code 2)" + (f": {why}" if why else "."),
                        advice=advice)
    if overall == "rejected":
        if base == "rejected":
            return Headline(overall, "bad", "REJECTED", "A check failed (exit code 1)" + (f": {why}" if why else "."),
                            advice=advice)
        failed = [k for k, v in ext_verdict.items() if v == "fail"]
        names = " and ".join("the residual-information tests" if k == "residual" else "the canary test" for k in failed)
        reasons = "; ".join(str(ext[k].get("reason")) for k in failed)
        return Headline(overall, "bad", "REJECTED", f"The bundle's checks passed, but {names} failed: {reasons}")

    labels: list[tuple[str, str]] = []
    steps = {c.get("step"): c.get("status") for c in checks}
    res_inc = ext_verdict.get("residual") == "inconclusive" or steps.get(19) == "inconclusive" or bool(report.get("inconclusive"))
    can_inc = ext_verdict.get("canary") == "inconclusive"
    if res_inc:
        labels.append(("warn", "residual tests inconclusive"))
    if can_inc:
        labels.append(("warn", "canary test inconclusive"))
    sampled_by = {d.get("sampled_by") for d in (report.get("challenge"), report.get("sampling")) if isinstance(d, Mapping)}
    if "owner" in sampled_by:
        labels.append(("warn", "sampled by the owner"))
    unsafe = {str(w).split(":", 1)[0].strip().lower() for w in report.get("warnings") or [] if str(w).startswith("UNSAFE")}
    unsafe |= {"unsafe no replay" for c in checks if "--unsafe-no-replay" in str(c.get("detail") or "")}
    labels.extend(("bad", u) for u in sorted(unsafe))
    nonfinite = report.get("nonfinite_shards")
    if isinstance(nonfinite, list) and nonfinite:
        labels.append(("bad", f"non-finite model: shard {', '.join(str(x) for x in nonfinite)}"))
    trust = report.get("trust")
    if isinstance(trust, Mapping) and trust.get("pinned") is False:
        labels.append(("warn", "key not pinned"))

    if base == "accepted-reduced":
        n = len(unmet)
        return Headline(overall, "warn", "ACCEPTED WITH REDUCED CHECKS",
                        f"Every check that ran passed, but policy '{policy}' requires more than this run did, so this "
                        f"is not a full acceptance (exit code 3, never 0). "
                        + (f"{'The requirement' if n == 1 else f'The {n} requirements'} not met:" if n
                           else "The report names no unmet requirement."),
                        tuple(labels), unmet)
    what = " and ".join(x for x, f in (("the residual-information tests", res_inc), ("the canary test", can_inc)) if f)
    if what:
        return Headline(overall, "warn", f"ACCEPTED, {'residual tests' if res_inc else 'canary test'} inconclusive",
                        f"Every check of the bundle passed (exit code 0), but {what} could not decide: they show "
                        "neither that the deleted records were forgotten nor that they were not.", tuple(labels))
    return Headline(overall, "ok", "ACCEPTED", "Every check that ran passed (exit code 0)"
                    + ("; see the labels above for what this acceptance rests on." if labels else "."), tuple(labels))


def render_html(report: Mapping[str, Any], *, title: str = "vmu-verify report") -> str:
    """The self-contained HTML page for a (possibly extended) verification report (jinja2,
    autoescaped; the sections are built by the functions above, which escape every value)."""
    from jinja2 import Environment, StrictUndefined
    from markupsafe import Markup

    if not isinstance(report, Mapping):
        raise MalformedInput("the report must be a JSON object")
    h = headline(report)
    bundle = report.get("bundle") or {}
    by = (report.get("challenge") or {}).get("sampled_by") if isinstance(report.get("challenge"), Mapping) else None
    trust: Mapping[str, Any] = t if isinstance(t := report.get("trust"), Mapping) else {}
    identity = _table(["bundle", "value"], [  # one field a row: fits a phone's width
        ["path", _e(bundle.get("path"))],
        ["sha256", f'<code class="digest">{_e(bundle.get("sha256"))}</code>'],
        ["origin", _e(bundle.get("origin"))],
        ["requests", _e(", ".join(str(x) for x in bundle.get("requests") or []))],
        ["final tree size", _e(bundle.get("final_tree_size"))],
        ["signed by", f'<code class="digest">{_e(trust.get("vkey"))}</code>'],
        ["key id", f'<code class="digest">{_e(trust.get("key_id"))}</code>'],
        ["pinned key", _num(trust.get("pinned"))],
        ["sampled by", _e(by)],
    ])
    sections: list[tuple[str, Callable[[], str]]] = [
        ("checks", lambda: _section_checks(report)),
        ("replay", lambda: _section_replay(report)),
        ("residual", lambda: _section_residual(report.get("residual"))),
        ("canary", lambda: _section_canary(report.get("canary"))),
        ("temporal", lambda: _section_temporal(report.get("temporal"))),
    ]
    parts = []
    for name, section in sections:
        try:
            parts.append(Markup(section()))  # noqa: S704 - the sections escape every value with _e()
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise MalformedInput(f"the report's {name} section is malformed: {type(e).__name__}: {e}") from e
    try:
        blob = json.dumps(report, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise MalformedInput(f"the report cannot be embedded as JSON: {e}") from e
    blob = blob.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    # _pill escapes its text
    extra = [(label, Markup(_pill(d.get("verdict"))))  # noqa: S704
             for key, label in (("residual", "residual information"), ("canary", "canaries"))
             if isinstance(d := report.get(key), Mapping)]
    reasons = [(key.capitalize(), d.get("reason")) for key in ("residual", "canary")
               if isinstance(d := report.get(key), Mapping) and d.get("verdict") != "pass"]
    env = Environment(autoescape=True, undefined=StrictUndefined, keep_trailing_newline=True)
    return env.from_string(_PAGE).render(
        # our own constant CSS, escaped pills and identity, and JSON with <, > and & escaped above
        title=title, css=Markup(_CSS), h=h, bundle_pill=Markup(_pill(report.get("verdict"))),  # noqa: S704
        exit_code=report.get("exit_code"), extra_pills=extra, reasons=reasons, sampled_by=by,
        identity=Markup(identity), sections=parts, blob=Markup(blob),  # noqa: S704
        report_type=report.get("type"), report_version=report.get("version"),
    )
