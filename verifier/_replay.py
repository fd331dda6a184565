"""Step 18: replay sampled segments with the shared training step (imports torch).

For each sampled segment: load its start checkpoint (content digest already checked), build the
model from the logged model spec, run the logged steps in the logged batch order with the logged
seeds and the committed hyper-parameters, and compare the result with the logged end checkpoint:

* **bit-exact** when the bundle's platform matches this one (CPU, same torch version; the
  thread count is set to the logged one): the replayed checkpoint's content digest must equal the
  logged digest;
* **distance** otherwise: ``checkpoint_distance(replayed, logged) <= DISTANCE_THRESHOLD`` (relative
  L2 distance of the parameters; calibration in specs/09-verification.md).

:func:`replay_segment` replays one segment (a pure function of its :class:`SegmentPlan`);
:func:`replay` runs it for every segment, here or as one Ray task per segment
(``backend="ray"``, :mod:`verifier._ray`), and takes the results in plan order, so the report
and the first failure are the same whatever the backend.
"""

from __future__ import annotations

import contextlib
import importlib
import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any

from verifiable_mu import _platform
from verifiable_mu._errors import InvalidBundle, MalformedInput
from verifiable_mu._records import RecordOpening
from verifiable_mu._sampling import SegmentRef

from ._errors import ReplayMismatch

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

#: Largest relative L2 parameter distance accepted when replay cannot be bit-exact. Calibrated by
#: benchmarks/calibrate_distance.py (numbers in specs/09-verification.md, step 18): honest drift
#: (another thread count; float64 arithmetic rounded to float32) stayed at or below 2.1e-7 per
#: segment, one substituted record in one batch moved the end checkpoint by at least 1.8e-5. The
#: threshold sits near their geometric mean, about 10x from each.
DISTANCE_THRESHOLD = 2e-6
BUILTIN_MODELS = ("mlp", "logreg", "cnn")
#: Where segments are replayed: in this process, or one Ray task per segment.
BACKENDS = ("local", "ray")
_MAX_PARAMS = 1 << 28


@dataclass(frozen=True, slots=True, kw_only=True)
class SegmentWork:
    ref: SegmentRef
    steps: tuple[tuple[int, tuple[bytes, ...]], ...]  # (seed, batch commitments) in log order
    hints: tuple[tuple[tuple[int, int, int], ...] | None, ...] = ()  # per step: its rounding hints (portable)
    start_file: bytes
    start_digest: bytes
    end_file: bytes
    end_digest: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayPlan:
    model: Mapping[str, Any]
    hyper: Mapping[str, Any]
    platform: Mapping[str, Any]
    segments: tuple[SegmentWork, ...]
    openings: Mapping[bytes, RecordOpening]
    mode: str = "auto"  # auto | exact | distance
    allow_factories: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SegmentPlan:
    """Everything the replay of one segment needs, and nothing else (what one Ray task gets)."""

    model: Mapping[str, Any]
    hyper: Mapping[str, Any]
    threads: int
    mode: str  # exact | distance (resolved from auto by the caller)
    allow_factories: tuple[str, ...]
    work: SegmentWork
    openings: Mapping[bytes, RecordOpening]  # exactly the records this segment's batches use


def platform_differences(platform: Mapping[str, Any]) -> list[str]:
    """The bit-relevant platform fields on which the bundle's logged ``platform`` differs from
    this machine replaying on the CPU with the logged thread count (empty: bit-exact expected)."""
    import torch

    training = importlib.import_module("verifiable_mu.training")
    here = training.platform_info(torch.device("cpu"), int(platform["threads"]))
    return _platform.platform_differences(platform, here)


def platform_matches(platform: Mapping[str, Any]) -> bool:
    return not platform_differences(platform)


def _load(data: bytes, what: str) -> dict[str, Any]:
    from safetensors.torch import load

    try:
        t = load(data)
    except Exception as e:  # safetensors raises its own error types
        raise InvalidBundle(f"{what} cannot be loaded: {e}") from e
    return {k: t[k] for k in sorted(t)}


def _spec_checked(model: Mapping[str, Any], allow_factories: tuple[str, ...]) -> Any:
    """Parse the logged model spec; refuse a factory the verifier did not allow, or a huge model."""
    training = importlib.import_module("verifiable_mu.training")
    spec = training.ModelSpec.from_json(dict(model))
    if spec.name not in BUILTIN_MODELS and spec.name not in allow_factories:
        raise InvalidBundle(
            f"the bundle's model is the factory {spec.name!r}; replaying it runs that code: pass "
            f"--allow-factory {spec.name} if you trust it"
        )
    if spec.name == "mlp" and spec.hidden * (spec.n_features + spec.n_classes) > _MAX_PARAMS:
        raise InvalidBundle("the bundle's model is too large to replay")
    return spec


def _where(ref: SegmentRef) -> str:
    return f"segment ending at entry {ref.end_index} (shard {ref.shard}, generation {ref.generation})"


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
        ))  # fmt: skip
    return out


def replay_segment(sp: SegmentPlan) -> dict[str, Any]:
    """Replay one segment; return its report entry (``match`` says whether it reproduced).

    A pure function of ``sp`` (it builds its own model from the logged spec), so it gives the
    same entry, bit for bit, in this process or in a Ray task on a node with the same torch.
    It raises :class:`InvalidBundle` when a checkpoint cannot be loaded or does not fit the model;
    a mismatch is not raised here but reported (``match`` false) for the caller to raise.
    """
    import numpy as np
    import torch

    t0 = time.perf_counter()
    training = importlib.import_module("verifiable_mu.training")
    if sp.mode not in ("exact", "distance"):
        raise MalformedInput(f"replay mode must be exact or distance here, not {sp.mode!r}")
    spec = _spec_checked(sp.model, sp.allow_factories)
    hyper = training.Hyper.from_json(dict(sp.hyper))
    training.configure_determinism(sp.threads)
    device = torch.device("cpu")
    model = training.prepare_model(training.build_model(spec, init_seed=0), hyper)
    w = sp.work
    where = _where(w.ref)
    try:
        momentum = training.load_into_model(model, _load(w.start_file, f"{where} start checkpoint"), device)
    except MalformedInput as e:
        raise InvalidBundle(f"{where}: start checkpoint does not fit the model: {e}") from e
    commits = sorted({c for _, batch in w.steps for c in batch})
    pos = {c: i for i, c in enumerate(commits)}
    ops = [sp.openings[c] for c in commits]
    X = torch.from_numpy(np.ascontiguousarray(np.stack([o.features for o in ops]), dtype=np.float32)) if ops else None
    y = torch.from_numpy(np.asarray([o.label for o in ops], dtype=np.int64))
    hints = w.hints or (None,) * len(w.steps)
    if len(hints) != len(w.steps):
        raise MalformedInput(f"{where}: {len(hints)} hint lists for {len(w.steps)} steps")
    bad_hint = None
    for j, ((seed, batch), h) in enumerate(zip(w.steps, hints, strict=True)):
        idx = torch.from_numpy(np.asarray([pos[c] for c in batch], dtype=np.int64))
        if hyper.portable and h is None:
            bad_hint = f"step {j + 1} of the segment carries no rounding hints, which a portable-v1 step must"
            break
        try:
            training.train_step(model, momentum, X[idx], y[idx], hyper, seed, h)  # type: ignore[index]
        except training.RoundingHintInvalid as e:
            bad_hint = f"step {j + 1} of the segment: {e}"
            break
        except FloatingPointError as e:  # a portable step's gradient is not finite: nothing to round
            bad_hint = f"step {j + 1} of the segment: {e}"
            break
    got = training.checkpoint_from_model(model, momentum)
    digest = training.checkpoint_digest(got)
    dist = training.checkpoint_distance(got, _load(w.end_file, f"{where} end checkpoint"))
    exact = digest == w.end_digest and bad_hint is None
    ok = exact if sp.mode == "exact" else (dist <= DISTANCE_THRESHOLD and bad_hint is None)
    return {
        "shard": w.ref.shard,
        "generation": w.ref.generation,
        "stage": w.ref.stage,
        "start_index": w.ref.start_index,
        "end_index": w.ref.end_index,
        "steps": len(w.steps),
        "bit_exact": exact,
        "distance": dist,
        "match": ok,
        "hint_error": bad_hint,
        "seconds": time.perf_counter() - t0,
    }


def _mismatch(sp: SegmentPlan, seg: Mapping[str, Any]) -> ReplayMismatch:
    how = (
        f"rounding hint rejected: {seg['hint_error']}" if seg.get("hint_error")
        else "bit-exact digest differs" if sp.mode == "exact"
        else f"distance {seg['distance']:.3g} > {DISTANCE_THRESHOLD:g}"
    )  # fmt: skip
    return ReplayMismatch(
        f"{_where(sp.work.ref)}: replaying {seg['steps']} steps does not reproduce the logged checkpoint ({how})"
    )


def replay(
    plan: ReplayPlan, *, backend: str = "local", ray_address: str | None = None, max_parallel: int = 0
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

    if backend not in BACKENDS:
        raise MalformedInput(f"unknown replay backend {backend!r} (use {' or '.join(BACKENDS)})")
    if ray_address is not None and backend != "ray":
        raise MalformedInput("--ray-address needs --backend ray")
    training = importlib.import_module("verifiable_mu.training")
    _spec_checked(plan.model, plan.allow_factories)
    training.Hyper.from_json(dict(plan.hyper))
    threads = int(plan.platform["threads"])
    training.configure_determinism(threads)
    differences = platform_differences(plan.platform)
    match = not differences
    portable = training.Hyper.from_json(dict(plan.hyper)).portable
    mode = plan.mode
    if mode == "auto":
        mode = "exact" if match or portable else "distance"
    warning = None
    if mode == "distance":
        why = "; ".join(differences) if differences else "distance mode was asked for"
        warning = (
            f"DISTANCE REPLAY: segments are compared within relative distance {DISTANCE_THRESHOLD:g}, not bit for "
            f"bit ({why})"
        )
    plans = segment_plans(plan, mode)
    segs = []
    total_steps = 0
    t_all = time.perf_counter()
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
            if not seg["match"]:
                err = _mismatch(sp, seg)
                if mode == "distance" and differences:
                    err = ReplayMismatch(
                        f"{err}; the log was written on another platform ({'; '.join(differences)}), and float32 "
                        "drift between platforms can exceed the threshold over long segments: verify on the logged "
                        "platform, or ask the owner for a portable log (specs/09, step 18)"
                    )
                raise err
    secs = time.perf_counter() - t_all
    return {
        "mode": mode,
        "platform_match": match,
        "platform_differences": differences,
        "arithmetic": "portable-v1" if portable else "float32",
        "threshold": DISTANCE_THRESHOLD if mode == "distance" else None,
        "torch": torch.__version__,
        "threads": threads,
        "segments": segs,
        "steps": total_steps,
        "seconds": secs,
        "steps_per_second": total_steps / secs if secs > 0 else None,
        "warning": warning,
    }
