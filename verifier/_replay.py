"""Step 18: replay sampled segments with the shared training step (imports torch).

For each sampled segment: load its start checkpoint (content digest already checked), build the
model from the logged model spec, run the logged steps in the logged batch order with the logged
seeds and the committed hyper-parameters, and compare the result with the logged end checkpoint:

* **bit-exact** when the bundle's platform matches this one (CPU, same torch version; the
  thread count is set to the logged one): the replayed checkpoint's content digest must equal the
  logged digest;
* **distance** otherwise: ``checkpoint_distance(replayed, logged) <= DISTANCE_THRESHOLD`` (relative
  L2 distance of the parameters; calibration in specs/09-verification.md).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from verifiable_mu._errors import InvalidBundle, MalformedInput
from verifiable_mu._records import RecordOpening
from verifiable_mu._sampling import SegmentRef

from ._errors import ReplayMismatch

__all__ = ["BUILTIN_MODELS", "DISTANCE_THRESHOLD", "ReplayPlan", "SegmentWork", "platform_matches", "replay"]

#: Largest relative L2 parameter distance accepted when replay cannot be bit-exact. Calibrated by
#: benchmarks/calibrate_distance.py (numbers in specs/09-verification.md, step 18): honest drift
#: (another thread count; float64 arithmetic rounded to float32) stayed at or below 2.1e-7 per
#: segment, one substituted record in one batch moved the end checkpoint by at least 1.8e-5. The
#: threshold sits near their geometric mean, about 10x from each.
DISTANCE_THRESHOLD = 2e-6
BUILTIN_MODELS = ("mlp", "logreg", "cnn")
_MAX_PARAMS = 1 << 28


@dataclass(frozen=True, slots=True, kw_only=True)
class SegmentWork:
    ref: SegmentRef
    steps: tuple[tuple[int, tuple[bytes, ...]], ...]  # (seed, batch commitments) in log order
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


def platform_matches(platform: Mapping[str, Any]) -> bool:
    import torch

    return platform.get("torch") == torch.__version__ and platform.get("device") == "cpu"


def _load(data: bytes, what: str) -> dict[str, Any]:
    from safetensors.torch import load

    try:
        t = load(data)
    except Exception as e:  # safetensors raises its own error types
        raise InvalidBundle(f"{what} cannot be loaded: {e}") from e
    return {k: t[k] for k in sorted(t)}


def replay(plan: ReplayPlan) -> dict[str, Any]:
    """Replay every segment; raise :class:`ReplayMismatch` on the first that does not reproduce."""
    import numpy as np
    import torch

    training = importlib.import_module("verifiable_mu.training")
    spec = training.ModelSpec.from_json(dict(plan.model))
    if spec.name not in BUILTIN_MODELS and spec.name not in plan.allow_factories:
        raise InvalidBundle(
            f"the bundle's model is the factory {spec.name!r}; replaying it runs that code: pass "
            f"--allow-factory {spec.name} if you trust it"
        )
    if spec.name == "mlp" and spec.hidden * (spec.n_features + spec.n_classes) > _MAX_PARAMS:
        raise InvalidBundle("the bundle's model is too large to replay")
    hyper = training.Hyper.from_json(dict(plan.hyper))
    threads = int(plan.platform["threads"])
    training.configure_determinism(threads)
    match = platform_matches(plan.platform)
    mode = plan.mode
    if mode == "auto":
        mode = "exact" if match else "distance"
    warning = None
    if mode == "distance":
        warning = (
            f"DISTANCE REPLAY: the bundle was trained on {plan.platform.get('device')} with torch "
            f"{plan.platform.get('torch')}; this verifier runs torch {torch.__version__} on cpu, so segments are "
            f"compared within relative distance {DISTANCE_THRESHOLD:g}, not bit for bit"
        )
    device = torch.device("cpu")
    model = training.build_model(spec, init_seed=0)
    segs = []
    total_steps = 0
    t_all = time.perf_counter()
    for w in plan.segments:
        t0 = time.perf_counter()
        where = f"segment ending at entry {w.ref.end_index} (shard {w.ref.shard}, generation {w.ref.generation})"
        try:
            momentum = training.load_into_model(model, _load(w.start_file, f"{where} start checkpoint"), device)
        except MalformedInput as e:
            raise InvalidBundle(f"{where}: start checkpoint does not fit the model: {e}") from e
        commits = sorted({c for _, batch in w.steps for c in batch})
        pos = {c: i for i, c in enumerate(commits)}
        ops = [plan.openings[c] for c in commits]
        X = torch.from_numpy(np.ascontiguousarray(np.stack([o.features for o in ops]), dtype=np.float32)) if ops else None
        y = torch.from_numpy(np.asarray([o.label for o in ops], dtype=np.int64))
        for seed, batch in w.steps:
            idx = torch.from_numpy(np.asarray([pos[c] for c in batch], dtype=np.int64))
            training.sgd_step(model, momentum, X[idx], y[idx], hyper, seed)  # type: ignore[index]
        got = training.checkpoint_from_model(model, momentum)
        digest = training.checkpoint_digest(got)
        dist = training.checkpoint_distance(got, _load(w.end_file, f"{where} end checkpoint"))
        exact = digest == w.end_digest
        ok = exact if mode == "exact" else dist <= DISTANCE_THRESHOLD
        seg = {
            "shard": w.ref.shard,
            "generation": w.ref.generation,
            "stage": w.ref.stage,
            "start_index": w.ref.start_index,
            "end_index": w.ref.end_index,
            "steps": len(w.steps),
            "bit_exact": exact,
            "distance": dist,
            "match": ok,
            "seconds": time.perf_counter() - t0,
        }
        segs.append(seg)
        total_steps += len(w.steps)
        if not ok:
            how = "bit-exact digest differs" if mode == "exact" else f"distance {dist:.3g} > {DISTANCE_THRESHOLD:g}"
            raise ReplayMismatch(f"{where}: replaying {len(w.steps)} steps does not reproduce the logged checkpoint ({how})")
    secs = time.perf_counter() - t_all
    return {
        "mode": mode,
        "platform_match": match,
        "threshold": DISTANCE_THRESHOLD if mode == "distance" else None,
        "torch": torch.__version__,
        "threads": threads,
        "segments": segs,
        "steps": total_steps,
        "seconds": secs,
        "steps_per_second": total_steps / secs if secs > 0 else None,
        "warning": warning,
    }
