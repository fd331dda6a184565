"""Step 18, one segment: replay it with the shared training step (imports torch when run).

A segment starts from a logged checkpoint (content digest already checked): build the model from
the logged model spec, run the logged steps in the logged batch order with the logged seeds and
the committed hyper-parameters, and compare the result with the logged end checkpoint, bit for
bit (``exact``) or within :data:`DISTANCE_THRESHOLD` (``distance``).

:func:`replay_segment` is a pure function of its :class:`SegmentPlan` (nothing is read from
disk), so every backend -- this process (:mod:`verifier._replay`) or Ray tasks
(:mod:`verifier._ray`) -- runs the same function and gets the same entry. This module is what
they share; it imports neither.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from verifiable_mu._errors import InvalidBundle, MalformedInput
from verifiable_mu._records import RecordOpening
from verifiable_mu._sampling import SegmentRef
from verifiable_mu._scaling import Scaling

__all__ = [
    "BUILTIN_MODELS",
    "DISTANCE_THRESHOLD",
    "SegmentPlan",
    "SegmentWork",
    "replay_segment",
    "model_factory",
    "spec_checked",
    "segment_name",
]

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
    hints: tuple[tuple[tuple[int, int, int], ...] | None, ...] = ()  # per step: its rounding hints (portable)
    start_file: bytes
    start_digest: bytes
    end_file: bytes
    end_digest: bytes


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
    model_source: Mapping[str, bytes] = dataclasses.field(default_factory=dict)  # the bundle's model/source/ files
    scaling: Mapping[str, Any] | None = None  # the signed config's feature scaling (specs/06 section 5c)


def _load(data: bytes, what: str) -> dict[str, Any]:
    from safetensors.torch import load

    try:
        t = load(data)
    except Exception as e:  # safetensors raises its own error types
        raise InvalidBundle(f"{what} cannot be loaded: {e}") from e
    return {k: t[k] for k in sorted(t)}


def spec_checked(model: Mapping[str, Any], allow_factories: Sequence[str], doing: str = "replaying") -> Any:
    """Parse the logged model spec; refuse a factory the verifier did not allow (``doing`` it would
    run that code), or a huge model."""
    training = importlib.import_module("verifiable_mu.training")
    spec = training.ModelSpec.from_json(dict(model))
    if spec.name not in BUILTIN_MODELS and spec.name not in allow_factories:
        raise InvalidBundle(
            f"the bundle's model is the factory {spec.name!r}; {doing} it runs that code: pass "
            f"--allow-factory {spec.name} if you trust it"
        )
    if spec.name == "mlp" and spec.hidden * (spec.n_features + spec.n_classes) > _MAX_PARAMS:
        raise InvalidBundle("the bundle's model is too large to replay")
    return spec


#: Factories loaded (and checked) in this process: (model spec JSON, source digest) -> factory.
_FACTORIES: dict[tuple[bytes, bytes], Any] = {}
CODE_DIFFERS = "unusable input: model code differs from the committed code"


def model_factory(
    model: Mapping[str, Any],
    allow_factories: Sequence[str],
    source: Mapping[str, bytes] | None = None,
    doing: str = "replaying",
) -> tuple[Any, Any]:
    """``(spec, factory)`` for the logged model (specs/09 step 18, "Committed model code"):
    ``factory`` is ``None`` for a built-in model; for a ``module:factory`` model it is the
    factory loaded only after (1) ``--allow-factory`` names it, (2) the code it would run -- the
    bundle's shipped source (``source``, path -> bytes) when present, else the module importable
    on this machine -- has the config's committed source digest, file by file, and (3) the model
    it builds has the committed structure digest. Every failure is :class:`ModelCodeError`
    (unusable input, exit 2). The code is imported from exactly the bytes hashed
    (:func:`verifiable_mu._modelcode.isolated_import`)."""
    from verifiable_mu._canonical import canonical_json
    from verifiable_mu._modelcode import (
        ModelCodeError,
        compare_files,
        file_list,
        isolated_import,
        locate_source,
        source_digest,
        split_factory,
    )

    spec = spec_checked(model, allow_factories, doing)
    if spec.name in BUILTIN_MODELS:
        return spec, None
    code = model.get("code")
    if code is None:
        raise ModelCodeError(
            f"the config commits no digest of the code of the factory {spec.name!r} (a log written before model code "
            "was committed): the code this machine would run cannot be checked against the owner's"
        )
    mod_name, fn_name = split_factory(spec.name)
    if source:
        files, where = dict(source), "the bundle's model/source/ files"
    else:
        try:
            files = locate_source(mod_name)
        except ModelCodeError as e:
            raise ModelCodeError(
                f"{e}; the bundle ships no model source either (the owner can include it: vmu bundle "
                "--include-model-source)"
            ) from e
        where = f"the module {mod_name.split('.')[0]!r} on this machine"
    why = compare_files(code["files"], files)
    if why is not None:
        raise ModelCodeError(f"{CODE_DIFFERS}: {why} (in {where})")
    # Cached only once these very files matched (a later call with other files checks them anew).
    key = (canonical_json(dict(model)), source_digest(file_list(files)))
    if key in _FACTORIES:
        return spec, _FACTORIES[key]
    module = isolated_import(mod_name, files)
    factory = getattr(module, fn_name, None)
    if not callable(factory):
        raise ModelCodeError(f"model factory {spec.name!r}: the committed module has no function {fn_name!r}")
    training = importlib.import_module("verifiable_mu.training")
    built = training.build_model(spec, init_seed=0, factory=factory)
    got = training.structure_digest_of(built)
    if got.hex() != code["structure"]:
        raise ModelCodeError(
            f"{CODE_DIFFERS}: the built model's structure (parameter names, shapes, dtypes) differs: structure digest "
            f"{got.hex()[:16]}..., the committed {code['structure'][:16]}... (the source matches; the factory builds "
            "another model here)"
        )
    _FACTORIES[key] = factory
    return spec, factory


def segment_name(ref: SegmentRef) -> str:
    return f"segment ending at entry {ref.end_index} (shard {ref.shard}, generation {ref.generation})"


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
    spec, factory = model_factory(sp.model, sp.allow_factories, sp.model_source)
    hyper = training.Hyper.from_json(dict(sp.hyper))
    training.configure_determinism(sp.threads)
    device = torch.device("cpu")
    model = training.prepare_model(training.build_model(spec, init_seed=0, factory=factory), hyper)
    w = sp.work
    where = segment_name(w.ref)
    try:
        momentum = training.load_into_model(model, _load(w.start_file, f"{where} start checkpoint"), device)
    except MalformedInput as e:
        raise InvalidBundle(f"{where}: start checkpoint does not fit the model: {e}") from e
    commits = sorted({c for _, batch in w.steps for c in batch})
    pos = {c: i for i, c in enumerate(commits)}
    ops = [sp.openings[c] for c in commits]
    X = None
    if ops:
        Xn = np.ascontiguousarray(np.stack([o.features for o in ops]), dtype=np.float32)
        if sp.scaling is not None:  # from the signed config entry only (ReplayPlan.scaling)
            Xn = Scaling.from_json(sp.scaling, spec.n_features).apply(Xn)
        X = torch.from_numpy(Xn)
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
    # Equal content digests mean equal tensors, so distance 0 without loading the logged end.
    dist = 0.0 if digest == w.end_digest else training.checkpoint_distance(got, _load(w.end_file, f"{where} end checkpoint"))
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
