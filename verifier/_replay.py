"""Step 18: replay sampled segments with the shared training step (imports torch).

For each sampled segment: load its start checkpoint (content digest already checked), build the
model from the logged model spec, run the logged steps in the logged batch order with the logged
seeds and the committed hyper-parameters, and compare the result with the logged end checkpoint:

* **bit-exact** when the bundle's platform matches this one (CPU, same torch version; the
  thread count is set to the logged one): the replayed checkpoint's content digest must equal the
  logged digest;
* **distance** otherwise: ``checkpoint_distance(replayed, logged) <= DISTANCE_THRESHOLD`` (relative
  L2 distance of the parameters; calibration in specs/09-verification.md).

:func:`verifier._segment.replay_segment` replays one segment (a pure function of its
:class:`SegmentPlan`); :func:`replay` runs it for every segment -- in this process, or as one
Ray task per segment (``backend="ray"``, :mod:`verifier._ray`) -- and takes the results in plan
order, so the report and the first failure are the same whatever runs them.
"""

from __future__ import annotations

import contextlib
import importlib
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

from verifiable_mu import _platform
from verifiable_mu._errors import MalformedInput
from verifiable_mu._records import RecordOpening

from ._errors import ReplayMismatch
from ._segment import (
    BUILTIN_MODELS,
    DISTANCE_THRESHOLD,
    SegmentPlan,
    SegmentWork,
    model_factory,
    replay_segment,
    segment_name,
)

__all__ = [
    "BACKENDS",
    "BUILTIN_MODELS",
    "DISTANCE_THRESHOLD",
    "ReplayPlan",
    "SegmentPlan",
    "SegmentWork",
    "platform_differences",
    "platform_matches",
    "replay",
    "replay_segment",
    "segment_plans",
]

#: Where segments are replayed: in this process, or one Ray task per segment.
BACKENDS = ("local", "ray")

@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayPlan:
    model: Mapping[str, Any]
    hyper: Mapping[str, Any]
    platform: Mapping[str, Any]
    segments: tuple[SegmentWork, ...]
    openings: Mapping[bytes, RecordOpening]
    mode: str = "auto"  # auto | exact | distance
    allow_factories: tuple[str, ...] = ()
    model_source: Mapping[str, bytes] = field(default_factory=dict)  # the bundle's model/source/ files
    scaling: Mapping[str, Any] | None = None  # the signed config entry's feature scaling, or None


def platform_differences(platform: Mapping[str, Any]) -> list[str]:
    """The bit-relevant platform fields on which the bundle's logged ``platform`` differs from
    this machine replaying on the CPU with the logged thread count (empty: bit-exact expected)."""
    import torch

    training = importlib.import_module("verifiable_mu.training")
    here = training.platform_info(torch.device("cpu"), int(platform["threads"]))
    return _platform.platform_differences(platform, here)


def platform_matches(platform: Mapping[str, Any]) -> bool:
    return not platform_differences(platform)


def segment_plans(plan: ReplayPlan, mode: str) -> list[SegmentPlan]:
    """One :class:`SegmentPlan` per segment of ``plan``, in plan order; ``mode`` is resolved
    (``exact`` or ``distance``). Each carries only the openings its own batches use."""
    out = []
    for w in plan.segments:
        commits = sorted({c for _, batch in w.steps for c in batch})
        out.append(SegmentPlan(
            model=dict(plan.model),
            hyper=dict(plan.hyper),
            threads=int(plan.platform["threads"]),
            mode=mode,
            allow_factories=tuple(plan.allow_factories),
            work=w,
            openings={c: plan.openings[c] for c in commits},
            model_source=dict(plan.model_source),
            scaling=plan.scaling,
        ))  # fmt: skip
    return out


def _mismatch(sp: SegmentPlan, seg: Mapping[str, Any]) -> ReplayMismatch:
    how = (
        f"rounding hint rejected: {seg['hint_error']}" if seg.get("hint_error")
        else "bit-exact digest differs" if sp.mode == "exact"
        else f"distance {seg['distance']:.3g} > {DISTANCE_THRESHOLD:g}"
    )  # fmt: skip
    return ReplayMismatch(
        f"{segment_name(sp.work.ref)}: replaying {seg['steps']} steps does not reproduce the logged checkpoint ({how})"
    )


def replay(
    plan: ReplayPlan,
    *,
    backend: str = "local",
    ray_address: str | None = None,
    max_parallel: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Replay every segment; raise :class:`ReplayMismatch` on the first (in plan order) that does
    not reproduce.

    ``backend="local"`` replays in this process, one segment after the other; ``"ray"`` runs one
    Ray task per segment (:mod:`verifier._ray`; ``ray_address`` as for ``ray.init``, default a
    private local instance; ``max_parallel`` > 0 bounds the tasks in flight) and takes the results
    in plan order. Both run :func:`replay_segment`, so the report (timings aside) and the error
    raised are the same whatever the backend.
    """
    import torch

    threads, mode, differences, portable = _prepare(plan, backend, ray_address)
    plans = segment_plans(plan, mode)
    t_all = time.perf_counter()
    segs = _run_in_order(plans, mode, differences, backend, ray_address, max_parallel, progress)
    total_steps = sum(seg["steps"] for seg in segs)
    secs = time.perf_counter() - t_all
    return {
        "mode": mode,
        "platform_match": not differences,
        "platform_differences": differences,
        "arithmetic": "portable-v1" if portable else "float32",
        "threshold": DISTANCE_THRESHOLD if mode == "distance" else None,
        "torch": torch.__version__,
        "threads": threads,
        "segments": segs,
        "steps": total_steps,
        "seconds": secs,
        "steps_per_second": total_steps / secs if secs > 0 else None,
        "warning": _distance_warning(differences) if mode == "distance" else None,
        "model_code": _code_report(plan),
    }


def _prepare(plan: ReplayPlan, backend: str, ray_address: str | None) -> tuple[int, str, list[str], bool]:
    """Check the options and the committed model code, pin the logged thread count, and resolve
    the mode: ``(threads, mode, platform differences, portable)``."""
    if backend not in BACKENDS:
        raise MalformedInput(f"unknown replay backend {backend!r} (use {' or '.join(BACKENDS)})")
    if ray_address is not None and backend != "ray":
        raise MalformedInput("--ray-address needs --backend ray")
    training = importlib.import_module("verifiable_mu.training")
    model_factory(plan.model, plan.allow_factories, plan.model_source)  # the committed-code checks, before any segment
    portable = bool(training.Hyper.from_json(dict(plan.hyper)).portable)
    threads = int(plan.platform["threads"])
    training.configure_determinism(threads)
    differences = platform_differences(plan.platform)
    mode = plan.mode
    if mode == "auto":
        mode = "exact" if not differences or portable else "distance"
    return threads, mode, differences, portable


def _distance_warning(differences: list[str]) -> str:
    why = "; ".join(differences) if differences else "distance mode was asked for"
    return (
        f"DISTANCE REPLAY: segments are compared within relative distance {DISTANCE_THRESHOLD:g}, not bit for "
        f"bit ({why})"
    )


def _run_in_order(
    plans: list[SegmentPlan],
    mode: str,
    differences: list[str],
    backend: str,
    ray_address: str | None,
    max_parallel: int,
    progress: Callable[[str], None] | None,
) -> list[dict[str, Any]]:
    """Each segment's report entry, in plan order; raise :class:`ReplayMismatch` for the first
    that does not reproduce (the rest are stopped, and on Ray cancelled)."""
    segs: list[dict[str, Any]] = []
    total_steps = 0
    if backend == "ray" and plans:
        from . import _ray  # Ray is an optional extra

        results: Generator[dict[str, Any], None, None] = _ray.run_segments(
            plans, address=ray_address, max_parallel=max_parallel
        )
    else:
        results = (replay_segment(sp) for sp in plans)
    with contextlib.closing(results):  # stops (and on Ray cancels) the rest after a mismatch
        for sp, seg in zip(plans, results, strict=False):  # results stop early only by raising
            segs.append(seg)
            total_steps += seg["steps"]
            if progress is not None:
                progress(f"step 18: replayed segment {len(segs)} of {len(plans)} ({total_steps} steps)")
            if not seg["match"]:
                err = _mismatch(sp, seg)
                if mode == "distance" and differences:
                    err = ReplayMismatch(
                        f"{err}; the log was written on another platform ({'; '.join(differences)}), and float32 "
                        "drift between platforms can exceed the threshold over long segments: verify on the logged "
                        "platform, or ask the owner for a portable log (specs/09, step 18)"
                    )
                raise err
    return segs


def _code_report(plan: ReplayPlan) -> dict[str, Any] | None:
    """What step 18 checked of a factory model's code (``None`` for a built-in model): the
    committed digests and where the code that ran came from (specs/09, step 18)."""
    code = plan.model.get("code")
    if code is None:
        return None
    return {"name": plan.model["name"], "source": code["source"], "structure": code["structure"],
            "files": len(code["files"]), "from": "bundle" if plan.model_source else "verifier"}
