"""Privacy accounting of DP-SGD under SISA (specs/06 section 3b), by opacus's RDP accountant.

A record of shard ``s`` in slice ``j`` is trained on in every stage ``r > j`` (stage ``r`` trains
slices ``0..r-1`` for ``stage_epochs`` epochs); the worst-placed record is in slice 0 and is used
by every stage. For stage ``r`` of shard ``s`` with ``n`` records and batch size ``B``, each step
samples ``B`` of ``n`` records: sampling rate ``q = B / n`` for ``stage_epochs * ceil(n / B)``
steps. The accountant composes the stages of a shard (its RDP history) and converts to
``(epsilon, delta)``; a model's epsilon is the largest over its shards (each record is in one
shard). The accountant assumes Poisson sampling; the SISA schedule shuffles each epoch instead
(sampling without replacement, as opacus's own shuffling data loaders do), which the analysis
approximates, as is common practice -- stated in every report.

Both sides use this module: the prover to choose the noise multiplier for a target epsilon, the
verifier to recompute epsilon from the signed configuration and the committed slice sizes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ._errors import MalformedInput

__all__ = ["ACCOUNTANT", "schedule", "epsilon", "noise_for_epsilon"]

ACCOUNTANT = "opacus RDP accountant (Poisson-sampling analysis of a shuffled schedule)"


def schedule(slice_sizes: Sequence[int], stage_epochs: int, batch_size: int) -> list[tuple[float, int]]:
    """``(sampling rate, steps)`` per stage of one shard whose slices hold ``slice_sizes``."""
    out = []
    n = 0
    for size in slice_sizes:
        n += int(size)
        if n == 0:
            continue
        out.append((min(1.0, batch_size / n), stage_epochs * math.ceil(n / batch_size)))
    return out


def epsilon(noise_multiplier: float, delta: float, shards: Mapping[int, Sequence[tuple[float, int]]]) -> float:
    """The largest epsilon over the shards' schedules, at ``delta``."""
    from opacus.accountants import RDPAccountant

    if not (noise_multiplier > 0 and 0 < delta < 1):
        raise MalformedInput("epsilon needs a noise multiplier > 0 and 0 < delta < 1")
    worst = 0.0
    for sched in shards.values():
        acc = RDPAccountant()
        acc.history = [(float(noise_multiplier), float(q), int(steps)) for q, steps in sched]
        worst = max(worst, float(acc.get_epsilon(delta=delta)))
    return worst


def noise_for_epsilon(target: float, delta: float, shards: Mapping[int, Sequence[tuple[float, int]]]) -> float:
    """The smallest noise multiplier (to 0.1%) whose epsilon is at most ``target``."""
    if not (math.isfinite(target) and target > 0 and 0 < delta < 1):
        raise MalformedInput("--dp-epsilon must be > 0 and --dp-delta in (0, 1)")
    lo, hi = 0.05, 1.0
    while epsilon(hi, delta, shards) > target:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise MalformedInput(f"no noise multiplier up to 10^4 reaches epsilon {target:g} at delta {delta:g}")
    while hi - lo > 1e-3 * hi:
        mid = (lo + hi) / 2
        if epsilon(mid, delta, shards) > target:
            lo = mid
        else:
            hi = mid
    return hi
