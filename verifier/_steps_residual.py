"""Step 19 of specs/09-verification.md: residual (statistical; torch is imported only when it
runs)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from verifiable_mu._errors import MalformedInput
from verifiable_mu._extras import require
from verifiable_mu._records import RecordOpening
from verifiable_mu._scaling import Scaling
from verifiable_mu._tags import TAG_CHALLENGE, tagged_hash

from ._entries import CheckpointBody, ModelBody, StepBody
from ._errors import ResidualTraceFound, SegmentMissing
from ._state import Outcome, Verification
from ._steps_schedule import batch_of


def residual_seed(deleted: Sequence[RecordOpening]) -> int:
    """Step 19's generator seed (specs/10-residual.md section 4): a function of the set of deleted
    records only, so that a deletion split over several requests is tested exactly as one request
    holding the same records (the Fiat-Shamir seed depends on the transcripts)."""
    digest = tagged_hash(TAG_CHALLENGE, b"residual\x00", *sorted(o.commitment() for o in deleted))
    return int.from_bytes(digest[:8], "big") >> 1


def _shadow_attack(v: Verification, pool: Sequence[RecordOpening], seed: int) -> Any:
    """The shadow-model attack of step 19 (reported only; verifier/_shadow.py): two shadows of the
    logged model and hyper-parameters on halves of the audit and retained records, ``epochs``
    epochs (the config's). None (the attack is skipped, with the reason) for a pool too small."""
    import numpy as np

    from verifiable_mu.training import Hyper, build_model

    from . import _shadow
    from ._segment import model_factory

    cfg, b = v.config, v.bundle
    assert cfg is not None and b is not None
    if len(pool) < _shadow.MIN_POOL:
        return None
    spec, factory = model_factory(cfg.model, v.options.allow_factories, dict(b.model_source), "loading")
    X = np.stack([np.asarray(o.features, dtype=np.float32).reshape(-1) for o in pool])
    y = np.asarray([o.label for o in pool], dtype=np.int64)
    return _shadow.train_shadow_attack(lambda s: build_model(spec, init_seed=s, factory=factory),
                                       Hyper.from_json(cfg.hyper), X, y, epochs=cfg.epochs, seed=seed % 2**31)


def step_19(v: Verification) -> Outcome | None:
    """Residual-information tests (specs/10-residual.md) on the models whose provenance steps
    1-18 established: post = the final constituents, pre = the constituents before the first
    request in the bundle (the positive control)."""
    if not v.options.residual:
        v.warnings.append("NO RESIDUAL TESTS: step 19 was turned off (--no-residual)")
        return "skipped", "turned off (--no-residual)"
    require(("torch", "scipy", "sklearn"), "the residual tests", "pass --no-residual to skip them")
    from . import _canary, _residual, _robust  # torch: imported by _models' loader

    b, cfg = v.bundle, v.config
    assert b is not None and cfg is not None and v.transcripts
    if not any(t.records for t in v.transcripts):
        # Only held-out records were deleted: no model was trained on them, so there is no
        # residual to measure (step 11 proved them absent from every slice). Never a pass.
        return _inconclusive(v, "no trained record was deleted: the bundled requests delete only held-out (test or "
                                "audit) records, which no model was trained on, so there is nothing to test")
    pre, post = _models_before_and_after(v)
    shard_of = {r.commitment: r.shard for t in v.transcripts for r in t.records}
    op = b.openings
    # Held-out deleted records were never trained on: they are neither deleted records of the
    # residual tests nor audit records any more (specs/09 step 19).
    held = {h.commitment for t in v.transcripts for h in t.held_out_records()}
    dels = sorted((o for o in op.deleted if o.commitment() in shard_of), key=lambda o: o.commitment())
    audit_open = [o for o in op.audit if o.commitment() not in held]
    retained_shard: dict[bytes, int] = {}
    for e in v.entries.values():
        if e.kind == "step":
            st = v.body(StepBody.parse, e)
            for c in batch_of(v, st, "residual"):
                retained_shard.setdefault(c, st.shard)
    retained = [o for o in op.training if o.commitment() in retained_shard and o.commitment() not in shard_of]
    dX, dy = _stack(v, dels)
    aX, ay = _stack(v, audit_open)
    rX, ry = _stack(v, retained)
    if v.progress is not None:
        v.progress(f"step 19: membership tests on {len(dels)} deleted and {len(op.audit)} audit records "
                   f"({len(post)} models after, {len(pre)} before)")
    shadow = _shadow_attack(v, [*audit_open, *retained], residual_seed(dels))
    rep = _residual.residual_tests(
        shadow=shadow,
        post_models=post,
        pre_models=pre,
        shard_of_deleted=[shard_of[o.commitment()] for o in dels],
        deleted_X=dX,
        deleted_y=dy,
        audit_X=aX,
        audit_y=ay,
        retained_X=rX,
        retained_y=ry,
        retained_shard=[retained_shard[o.commitment()] for o in retained] if retained else None,
        alpha=v.options.alpha,
        n_boot=v.options.n_boot,
        seed=residual_seed(dels),
    )
    v.residual_report = rep.to_json()
    # Informative only: robust accuracy under PGD on the audit records, before and after.
    rob = _robust.robustness([getattr(f, "module", None) for f in pre], [getattr(f, "module", None) for f in post],
                             aX, ay) if aX is not None else None
    v.residual_report["robustness"] = rob.to_json() if rob else None
    if v.options.canary is not None:
        can = _canary.canary_test(
            trigger=v.options.canary,
            post_models=post,
            pre_models=pre,
            marked_shards=sorted(set(shard_of.values())),
            query_X=aX,
            query_y=ay,
            alpha=v.options.alpha,
        )
        v.canary_report = can.to_json()
    _temporal_reports(v)
    verdict = rep.verdict
    if v.canary_report is not None and v.canary_report.get("verdict") == "fail":
        verdict = "fail"
    if verdict == "fail":
        raise ResidualTraceFound(f"the deleted records still leave a measurable trace: {rep.reason}")
    return None if verdict == "pass" else _inconclusive(v, rep.reason)


def _inconclusive(v: Verification, reason: str) -> Outcome:
    """An inconclusive step 19: a warning, never a pass; a rejection under --require-residual."""
    v.inconclusive = f"residual tests inconclusive: {reason}"
    if v.options.require_residual:
        raise ResidualTraceFound(f"{v.inconclusive} (and --require-residual was given)")
    v.warnings.append(f"INCONCLUSIVE: {reason}")
    return "inconclusive", v.inconclusive


def _models_before_and_after(v: Verification) -> tuple[list[Any], list[Any]]:
    """The constituents before the first bundled request and after the last one, loaded."""
    from . import _models

    b, cfg = v.bundle, v.config
    assert b is not None and cfg is not None

    def files(digests: Sequence[bytes], what: str) -> list[tuple[bytes, bytes]]:
        missing = [d for d in digests if d not in b.checkpoints]
        if missing:
            raise SegmentMissing(f"the bundle lacks the {what} checkpoint {missing[0].hex()[:16]}... needed by step 19")
        return [(d, b.checkpoints[d]) for d in digests]

    pre_d = v.body(ModelBody.parse, v.transcripts[0].model_before.entry).shards
    post_d = v.body(ModelBody.parse, v.transcripts[-1].model_after.entry).shards
    src = dict(b.model_source)
    post = _models.load_models(cfg.model, files(post_d, "final"), allow_factories=v.options.allow_factories,
                               model_source=src)
    pre = _models.load_models(cfg.model, files(pre_d, "pre-deletion"), allow_factories=v.options.allow_factories,
                              model_source=src)
    return pre, post


def _stack(v: Verification, lst: Sequence[RecordOpening]) -> tuple[Any, Any]:
    """Features (scaled as the constituents were trained on them, by the signed config) and labels."""
    import numpy as np

    cfg = v.config
    assert cfg is not None
    if not lst:
        return None, None
    X = np.stack([np.asarray(o.features, dtype=np.float32).reshape(-1) for o in lst])
    if cfg.scaling is not None:
        X = Scaling.from_json(cfg.scaling, X.shape[1]).apply(X)
    return X, np.asarray([o.label for o in lst], dtype=np.int64)


def _temporal_reports(v: Verification) -> None:
    """Informative only: how the deleted slices' influence decayed over the original lineage."""
    from . import _models, _temporal

    b = v.bundle
    assert b is not None
    for t in v.transcripts:
        for sc in t.shards:
            by_stage: dict[int, dict[int, tuple[int, bytes]]] = {0: {}, 1: {}}
            for e in v.entries.values():
                if e.kind != "checkpoint":
                    continue
                ck = v.body(CheckpointBody.parse, e)
                if ck.shard != sc.shard or ck.generation not in (0, sc.generation):
                    continue
                lin = 0 if ck.generation == 0 else 1
                prev = by_stage[lin].get(ck.stage)
                if prev is None or ck.index > prev[0]:
                    by_stage[lin][ck.stage] = (ck.index, ck.digest)
            orig = {r: d for r, (_, d) in by_stage[0].items()}
            new = {r: d for r, (_, d) in by_stage[1].items() if r >= sc.from_stage}
            if sc.generation == 0 or not new or any(d not in b.checkpoints for d in [*orig.values(), *new.values()]):
                continue
            try:
                tr = _temporal.temporal_memory(
                    original={r: _models.load_params(d, b.checkpoints[d]) for r, d in orig.items()},
                    retrained={r: _models.load_params(d, b.checkpoints[d]) for r, d in new.items()},
                    start_stage=sc.from_stage,
                    shard=sc.shard,
                )
            except MalformedInput as e:
                v.warnings.append(f"temporal residual memory of shard {sc.shard} not computed: {e}")
                continue
            v.temporal_reports.append({"request": t.request, **tr.to_json()})
