"""Robustness before and after a deletion (specs/10-residual.md section 7b) -- informative only.

The aggregated model (the mean of the constituents' softmax) is attacked with L-infinity PGD
(Madry et al. 2018) on audit records, which no constituent was trained on: a random start in the
epsilon ball, ``STEPS`` signed-gradient ascent steps of ``STEP_SIZE`` on the cross-entropy of the
aggregate, each projected back into the ball and into the records' value range. Robust accuracy
is the share of records still classified correctly. The verifier fixes every parameter; the
bundle chooses nothing. Nothing here decides a verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["EPSILON", "STEPS", "MAX_RECORDS", "RobustnessReport", "robustness"]

ROBUSTNESS_REPORT_TYPE = "vmu.robustness-report"
ROBUSTNESS_REPORT_VERSION = 1
EPSILON = 0.1  # L-infinity radius, in the units of the features (digits: pixels scaled to [0, 1])
STEPS = 10
STEP_SIZE = EPSILON / 4
MAX_RECORDS = 500  # audit records attacked at most (the first, in commitment order): bounded cost
SEED = 0x9D6


@dataclass(frozen=True, slots=True, kw_only=True)
class RobustnessReport:
    n_records: int
    clean_before: float
    robust_before: float
    clean_after: float
    robust_after: float
    low: float
    high: float
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "type": ROBUSTNESS_REPORT_TYPE,
            "version": ROBUSTNESS_REPORT_VERSION,
            "informative_only": True,
            "attack": (f"L-infinity PGD on the aggregated model (mean softmax): epsilon {EPSILON:g}, {STEPS} steps of "
                       f"{STEP_SIZE:g}, random start, values clipped to [{self.low:g}, {self.high:g}]"),
            "epsilon": EPSILON,
            "steps": STEPS,
            "step_size": STEP_SIZE,
            "records": self.n_records,
            "records_are": "audit records (no constituent trained on them)",
            "before": {"clean_accuracy": round(self.clean_before, 6), "robust_accuracy": round(self.robust_before, 6)},
            "after": {"clean_accuracy": round(self.clean_after, 6), "robust_accuracy": round(self.robust_after, 6)},
            "seconds": round(self.seconds, 6),
        }


def _pgd(modules: Sequence[Any], X: Any, y: Any, low: float, high: float, gen: Any) -> tuple[float, float]:
    import torch

    def agg(x: Any) -> Any:
        return torch.stack([torch.softmax(m(x), dim=1) for m in modules]).mean(dim=0)

    with torch.no_grad():
        clean = float((agg(X).argmax(1) == y).float().mean())
    delta = (torch.rand(X.shape, generator=gen, dtype=X.dtype) * 2 - 1) * EPSILON
    x = (X + delta).clamp(low, high)
    for _ in range(STEPS):
        x = x.detach().requires_grad_(True)
        loss = torch.nn.functional.nll_loss(torch.log(agg(x).clamp_min(1e-12)), y)
        (g,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            x = torch.minimum(torch.maximum(x + STEP_SIZE * g.sign(), X - EPSILON), X + EPSILON).clamp(low, high)
    with torch.no_grad():
        robust = float((agg(x).argmax(1) == y).float().mean())
    return clean, robust


def robustness(pre: Sequence[Any], post: Sequence[Any], X: np.ndarray, y: np.ndarray) -> RobustnessReport | None:
    """Clean and PGD robust accuracy of the aggregated pre- and post-deletion constituents
    (``torch.nn.Module`` in eval mode, same input layout as ``X``) on at most ``MAX_RECORDS``
    rows of ``X``; None without records. The value range is that of the records attacked."""
    import time

    import torch

    t0 = time.perf_counter()
    if len(X) == 0 or not pre or not post or any(m is None for m in [*pre, *post]):
        return None
    X, y = X[:MAX_RECORDS], y[:MAX_RECORDS]
    xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    low, high = float(min(0.0, X.min())), float(max(1.0, X.max()))
    grads = [p.requires_grad for m in [*pre, *post] for p in m.parameters()]
    for m in [*pre, *post]:
        m.requires_grad_(False)  # gradients with respect to the input only
    try:
        cb, rb = _pgd(pre, xt, yt, low, high, torch.Generator().manual_seed(SEED))
        ca, ra = _pgd(post, xt, yt, low, high, torch.Generator().manual_seed(SEED))
    finally:
        it = iter(grads)
        for m in [*pre, *post]:
            for p in m.parameters():
                p.requires_grad_(next(it))
    return RobustnessReport(n_records=len(X), clean_before=cb, robust_before=rb, clean_after=ca, robust_after=ra,
                            low=low, high=high, seconds=time.perf_counter() - t0)
