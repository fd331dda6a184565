"""DP-SGD in the verdict (specs/06 section 3b; specs/09, "Report"): the signed noise multiplier,
clipping norm and delta, and the epsilon this verifier recomputes from them and the committed
slice sizes (never the owner's own figure)."""

from __future__ import annotations

import importlib.util
from typing import Any

from ._entries import SliceBody

__all__ = ["dp_summary"]


def dp_summary(v: Any) -> dict[str, Any] | None:
    """None for a log without DP-SGD (or before its config was read)."""
    cfg = v.config
    if cfg is None or "dp" not in cfg.hyper:
        return None
    dp = cfg.hyper["dp"]
    noise, clip, delta = float(dp["noise_multiplier"]), float(dp["clip"]), float(dp["delta"])
    out: dict[str, Any] = {"noise_multiplier": noise, "clip": clip, "delta": delta, "epsilon": None}
    sizes: dict[int, dict[int, int]] = {}
    for e in v.entries.values():
        if e.kind == "slice":
            sl = SliceBody.parse(e)
            if sl.generation == 0:
                sizes.setdefault(sl.shard, {})[sl.slice] = sl.size
    if len(sizes) != cfg.shards or any(len(s) != cfg.slices for s in sizes.values()):
        out["note"] = "epsilon not recomputed: the bundle does not disclose every committed slice size"
        return out
    if importlib.util.find_spec("opacus") is None:
        out["note"] = "epsilon not recomputed: needs opacus (pip install 'verifiable-mu[full]')"
        return out
    from verifiable_mu import _dp

    scheds = {s: _dp.schedule([by[r] for r in range(cfg.slices)], cfg.stage_epochs, cfg.batch_size)
              for s, by in sizes.items()}
    out["epsilon"] = round(_dp.epsilon(noise, delta, scheds), 6)
    out["accountant"] = _dp.ACCOUNTANT
    out["note"] = ("recomputed by this verifier from the signed noise multiplier, clipping norm and delta and the "
                   "committed slice sizes, for the worst-placed record (trained in every stage of its shard); each "
                   "published version of the model spends it again")
    return out
