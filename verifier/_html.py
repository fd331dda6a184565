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

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from verifiable_mu._errors import EXIT_INTERNAL, ISSUES_URL, MalformedInput

from ._html_figures import (
    figures_available,
)
from ._html_sections import (
    escape,
    num,
    pill,
    section_canary,
    section_checks,
    section_replay,
    section_residual,
    section_temporal,
    table,
)
from ._policy import policy_document

__all__ = ["Headline", "render_html", "headline", "overall_verdict", "figures_available"]



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
    autoescaped; the sections are built by verifier/_html_sections.py, which escapes every value)."""
    from jinja2 import Environment, StrictUndefined
    from markupsafe import Markup

    if not isinstance(report, Mapping):
        raise MalformedInput("the report must be a JSON object")
    h = headline(report)
    bundle = report.get("bundle") or {}
    by = (report.get("challenge") or {}).get("sampled_by") if isinstance(report.get("challenge"), Mapping) else None
    trust: Mapping[str, Any] = t if isinstance(t := report.get("trust"), Mapping) else {}
    identity = table(["bundle", "value"], [  # one field a row: fits a phone's width
        ["path", escape(bundle.get("path"))],
        ["sha256", f'<code class="digest">{escape(bundle.get("sha256"))}</code>'],
        ["origin", escape(bundle.get("origin"))],
        ["requests", escape(", ".join(str(x) for x in bundle.get("requests") or []))],
        ["final tree size", escape(bundle.get("final_tree_size"))],
        ["signed by", f'<code class="digest">{escape(trust.get("vkey"))}</code>'],
        ["key id", f'<code class="digest">{escape(trust.get("key_id"))}</code>'],
        ["pinned key", num(trust.get("pinned"))],
        ["sampled by", escape(by)],
    ])
    sections: list[tuple[str, Callable[[], str]]] = [
        ("checks", lambda: section_checks(report)),
        ("replay", lambda: section_replay(report)),
        ("residual", lambda: section_residual(report.get("residual"))),
        ("canary", lambda: section_canary(report.get("canary"))),
        ("temporal", lambda: section_temporal(report.get("temporal"))),
    ]
    parts = []
    for name, section in sections:
        try:
            parts.append(Markup(section()))  # noqa: S704 - the sections escape every value with escape()
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise MalformedInput(f"the report's {name} section is malformed: {type(e).__name__}: {e}") from e
    try:
        blob = json.dumps(report, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise MalformedInput(f"the report cannot be embedded as JSON: {e}") from e
    blob = blob.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    # pill escapes its text
    extra = [(label, Markup(pill(d.get("verdict"))))  # noqa: S704
             for key, label in (("residual", "residual information"), ("canary", "canaries"))
             if isinstance(d := report.get(key), Mapping)]
    reasons = [(key.capitalize(), d.get("reason")) for key in ("residual", "canary")
               if isinstance(d := report.get(key), Mapping) and d.get("verdict") != "pass"]
    env = Environment(autoescape=True, undefined=StrictUndefined, keep_trailing_newline=True)
    return env.from_string(_PAGE).render(
        # our own constant CSS, escaped pills and identity, and JSON with <, > and & escaped above
        title=title, css=Markup(_CSS), h=h, bundle_pill=Markup(pill(report.get("verdict"))),  # noqa: S704
        exit_code=report.get("exit_code"), extra_pills=extra, reasons=reasons, sampled_by=by,
        identity=Markup(identity), sections=parts, blob=Markup(blob),  # noqa: S704
        report_type=report.get("type"), report_version=report.get("version"),
    )
