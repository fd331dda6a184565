"""The HTML report's figures (verifier/_html.py): each a PNG drawn with matplotlib and inlined as a
data URL."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

_COLORS = {"deleted": "#d62728", "audit": "#1f77b4", "retained": "#2ca02c"}


_ATTACK_COLORS = {"loss": "#8c564b", "confidence": "#9467bd", "lira": "#d62728", "rmia": "#ff7f0e"}


def figures_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


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


def img(b64: str | None, alt: str) -> str:
    if b64 is None:
        return f'<p class="note">[{html.escape(alt)}: plot omitted, matplotlib is not installed (pip install verifiable-mu[report])]</p>'
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}"><figcaption>{html.escape(alt)}</figcaption></figure>'


def fig_replay(segs: Sequence[Mapping[str, Any]], threshold: float | None) -> str | None:
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


def fig_escape(k: int, marks: Mapping[str, Any]) -> str | None:
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


def fig_roc(res: Mapping[str, Any]) -> str | None:
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


def fig_hist(res: Mapping[str, Any], phase: str) -> str | None:
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


def fig_canary(can: Mapping[str, Any]) -> str | None:
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


def fig_temporal(temps: Sequence[Mapping[str, Any]]) -> str | None:
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
