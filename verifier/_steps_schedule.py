"""Steps 12-14 of specs/09-verification.md: ordering, schedule, clean-manifests; and the
lineage helpers later steps use (a step's committed batch)."""

from __future__ import annotations

from typing import Any

from verifiable_mu._seeds import epoch_order, step_seed
from verifiable_mu._wire_bundle import CommitBlock

from ._entries import CheckpointBody, SliceBody, StepBody, Transcript
from ._errors import BatchNotCommitted, ManifestContainsDeleted, OrderingViolation, ScheduleViolation, SegmentMissing
from ._state import Lineage, Verification, need_entry, parse_claimed
from ._steps_claims import records_of


def _stage_plan(
    v: Verification, start_step: int, stages: list[tuple[int, int]], what: str = "schedule"
) -> tuple[list[tuple[int, int]], dict[int, int]]:
    """Expected (stage, step) of every checkpoint after the start, and each stage's base step."""
    cfg = v.config
    assert cfg is not None
    B, E, K = cfg.batch_size, cfg.stage_epochs, cfg.checkpoint_every
    # The signed config sizes this list: bound it by what the bundle discloses before building it
    # (every planned checkpoint must be a disclosed log entry of its own).
    planned = sum((max(E * -(-n // B) - 1, 0) // K if K else 0) + 1 for _, n in stages)
    if planned > len(v.entries):
        raise ScheduleViolation(f"{what}: the committed schedule has {planned} checkpoints, more than the "
                                f"{len(v.entries)} log entries the bundle discloses")
    out: list[tuple[int, int]] = []
    base: dict[int, int] = {}
    step = start_step
    for r, n in stages:
        base[r] = step
        total = E * (-(-n // B))
        if K:
            out += [(r, step + j) for j in range(K, total, K)]
        out.append((r, step + total))
        step += total
    return out, base


def check_step(v: Verification, st: StepBody, lin: Lineage, counter: int, what: str) -> None:
    """A step entry of ``lin`` with global counter ``counter`` (step 13 rules)."""
    cfg = v.config
    assert cfg is not None
    if (st.shard, st.generation) != (lin.shard, lin.generation):
        raise ScheduleViolation(f"{what}: step entry {st.index} is for shard {st.shard} generation {st.generation}")
    if st.step != counter:
        raise ScheduleViolation(f"{what}: step entry {st.index} has step counter {st.step}, expected {counter}")
    stage = max((r for r, b in lin.stage_base.items() if b <= counter), default=None)
    if stage is None or st.stage != stage:
        raise ScheduleViolation(f"{what}: step entry {st.index} is logged in stage {st.stage}, expected {stage}")
    n = lin.stage_n[stage]
    nb = -(-n // cfg.batch_size)
    j = counter - lin.stage_base[stage]
    epoch, b = divmod(j, nb)
    if st.epoch != epoch:
        raise ScheduleViolation(f"{what}: step entry {st.index} is in epoch {st.epoch}, expected {epoch}")
    want = min(cfg.batch_size, n - b * cfg.batch_size)
    if cfg.compact != (st.batch is None):
        raise ScheduleViolation(
            f"{what}: step entry {st.index} " + ("lists a batch, which a format-2 log's steps do not" if cfg.compact
                                                 else "lacks its batch list, which a format-1 log's steps carry")
        )  # fmt: skip
    if st.batch is not None and len(st.batch) != want:
        raise ScheduleViolation(f"{what}: step entry {st.index} has a batch of {len(st.batch)} records, expected {want}")
    if st.batch is not None and len(set(st.batch)) != len(st.batch):
        raise ScheduleViolation(f"{what}: step entry {st.index} uses a record twice in one batch")
    if st.lr != cfg.lr:
        raise ScheduleViolation(f"{what}: step entry {st.index} logs learning rate {st.lr}, the config says {cfg.lr}")
    seed = step_seed(cfg.seed, shard=lin.shard, generation=lin.generation, stage=stage, epoch=epoch, step=counter)
    if st.seed != seed:
        raise ScheduleViolation(f"{what}: step entry {st.index} has seed {st.seed}, the committed derivation gives {seed}")


def _batch_position(v: Verification, st: StepBody, lin: Lineage) -> int:
    """``b``: a step that passed :func:`check_step` trains on batch ``b`` of its epoch."""
    cfg = v.config
    assert cfg is not None
    return st.step - lin.stage_base[st.stage] - st.epoch * -(-lin.stage_n[st.stage] // cfg.batch_size)


def _committed_batch(v: Verification, st: StepBody, lin: Lineage, what: str) -> tuple[bytes, ...]:
    """The batch the committed seed and the stage's slice records fix for a step that passed
    :func:`check_step` (batch :func:`_batch_position` of epoch ``st.epoch`` of its stage)."""
    cfg = v.config
    assert cfg is not None
    b = _batch_position(v, st, lin)
    order = _epoch_order(v, lin, st.stage, st.epoch, what)
    return order[b * cfg.batch_size : (b + 1) * cfg.batch_size]


def batch_of(v: Verification, st: StepBody, what: str) -> tuple[bytes, ...]:
    """A step's batch: listed in a format-1 entry; recomputed from the committed order for a
    format-2 entry, whose lineage steps 11-13 have built (specs/06 section 5)."""
    if st.batch is not None:
        return st.batch
    lin = next((x for x in v.lineages if (x.shard, x.generation) == (st.shard, st.generation)), None)
    if lin is None or st.stage not in lin.stage_base:
        raise ScheduleViolation(f"{what}: step entry {st.index} (shard {st.shard}, generation {st.generation}, stage "
                                f"{st.stage}) lies in no lineage the bundle establishes")
    return _committed_batch(v, st, lin, what)


def check_batch(v: Verification, st: StepBody, lin: Lineage, what: str) -> None:
    """A step that passed :func:`check_step` trains on exactly the batch the committed seed and
    the stage's slice records fix (step 14; step 17 again for sampled steps). A format-2 step has
    no other batch: this checks that the bundle holds the slice records that fix it."""
    committed = _committed_batch(v, st, lin, what)
    if st.batch is not None and tuple(st.batch) != committed:
        b = _batch_position(v, st, lin)
        raise BatchNotCommitted(
            f"{what}: step entry {st.index} does not train on its committed batch (batch {b} of epoch {st.epoch} of "
            f"stage {st.stage}, fixed by the committed seed and the stage's slice records)"
        )


def _epoch_order(v: Verification, lin: Lineage, stage: int, epoch: int, what: str) -> tuple[bytes, ...]:
    """The commitments of stage ``stage``'s records in the order epoch ``epoch`` visits them:
    slices 0..stage-1 as the lineage trained on them (records in key order, from the bundle's
    slice members, whose roots step 3 checked, or rebuilt from the openings in step 11), permuted
    by the committed epoch seed."""
    got = lin.orders.get((stage, epoch))
    if got is not None:
        return got
    cfg, b = v.config, v.bundle
    assert cfg is not None and b is not None
    rows: list[bytes] = []
    for j in range(stage):
        root = lin.slice_roots[j]
        found = records_of(v, root)
        if found is None:
            raise SegmentMissing(f"{what}: the bundle does not disclose the records of slice {j} (root "
                                 f"{root.hex()[:16]}...), which fix the batches of stage {stage}")
        rows += found[1]
    if len(rows) != lin.stage_n[stage]:
        raise BatchNotCommitted(f"{what}: stage {stage} trains on {lin.stage_n[stage]} records, its slices hold {len(rows)}")
    perm = epoch_order(cfg.seed, shard=lin.shard, generation=lin.generation, stage=stage, epoch=epoch, n=len(rows))
    got = lin.orders[(stage, epoch)] = tuple(rows[i] for i in perm.tolist())
    return got


def lineage_checkpoints(v: Verification, lin: Lineage, stages: list[tuple[int, int]], what: str) -> list[tuple[int, int]]:
    expected, base = _stage_plan(v, lin.start.step, stages, what)
    lin.stage_base = base
    lin.stage_n = dict(stages)
    return expected


def _original_lineages(v: Verification) -> None:
    cfg, b = v.config, v.bundle
    assert cfg is not None and b is not None
    if sorted(b.manifest.original) != list(range(cfg.shards)):
        raise ScheduleViolation(f"the manifest must list the original lineage of every shard 0..{cfg.shards - 1}")
    for s in range(cfg.shards):
        idx = b.manifest.original[s]
        what = f"original training of shard {s}"
        cks = [v.body(CheckpointBody.parse, need_entry(v, i, what)) for i in idx]
        first = CommitBlock(shards=cfg.shards, slices=cfg.slices).checkpoint(s)
        if idx[0] != first:
            raise ScheduleViolation(f"{what}: the lineage must start at the initial checkpoint (entry "
                                    f"{first}), not entry {idx[0]}")
        if any(a >= c for a, c in zip(idx, idx[1:], strict=False)):
            raise ScheduleViolation(f"{what}: checkpoint entries are not in log order")
        lin = Lineage(shard=s, generation=0, stratum=None, start=cks[0], checkpoints=cks[1:], stage_base={}, stage_n={},
                       slice_roots=tuple(v.slices0[(s, j)].root for j in range(cfg.slices)))
        n_r = [sum(v.slices0[(s, j)].size for j in range(r)) for r in range(1, cfg.slices + 1)]
        expected = lineage_checkpoints(v, lin, [(r, n_r[r - 1]) for r in range(1, cfg.slices + 1)], what)
        got = [(c.stage, c.step) for c in cks[1:]]
        for c in cks[1:]:
            if (c.shard, c.generation) != (s, 0):
                raise ScheduleViolation(f"{what}: entry {c.index} is a checkpoint of shard {c.shard} generation {c.generation}")
        if got != expected:
            raise ScheduleViolation(f"{what}: checkpoints at (stage, step) {got[:4]}... do not follow the committed "
                                    f"schedule {expected[:4]}...")
        v.lineages.append(lin)


def _current(v: Verification, shard: int) -> list[Lineage]:
    return [lin for lin in v.lineages if lin.shard == shard]


def step_12(v: Verification) -> None:
    """Ordering rule, and which checkpoint each rollback must be, request by request.

    A rollback is judged against the lineages current before its request, so this walk also
    establishes them, under the schedule rules of step 13 (the spec interleaves the two): the
    generation-0 lineages first, then each request's retraining once its ordering passed. What the
    walk finds other than an ordering violation is step 13's finding (a schedule violation, an
    entry missing, a bug): the walk stops and step 13 reports it."""
    try:
        _original_lineages(v)
        _walk_requests(v)
    except OrderingViolation:
        raise
    except Exception as e:
        v.schedule_finding = e


def step_13(v: Verification) -> None:
    """Schedule: step 12's walk checked every lineage it established (the original training of
    every shard, each retraining) against the committed SISA schedule; this reports its finding."""
    if v.schedule_finding is not None:
        raise v.schedule_finding


def _walk_requests(v: Verification) -> None:
    cfg = v.config
    assert cfg is not None
    gens: dict[int, int] = {s: 0 for s in range(cfg.shards)}
    for ti, (t, (before, after)) in enumerate(zip(v.transcripts, v.heads, strict=False)):
        w = f"request {t.request}"
        d = t.deletion.entry.index
        if not before.size <= d < after.size:
            raise OrderingViolation(f"{w}: the deletion entry {d} is not between head_before ({before.size}) and head_after")
        _check_first_uses(v, t, w)
        for sc in t.shards:
            rb = _check_rollback(v, t, sc, gens)
            _retraining_lineage(v, t, ti, sc, rb)
            gens[sc.shard] = sc.generation


def _check_first_uses(v: Verification, t: Transcript, w: str) -> None:
    """Each deleted record's first use is a step of its shard and stage that uses it, after the
    shard's rollback checkpoint."""
    for i, r in enumerate(t.records):
        fu = parse_claimed(v, StepBody.parse, r.first_use.entry, f"{w} records[{i}] first_use", OrderingViolation)
        sc = next(x for x in t.shards if x.shard == r.shard)
        rb = parse_claimed(v, CheckpointBody.parse, sc.rollback.entry, f"{w} shard {sc.shard} rollback", OrderingViolation)
        if r.commitment not in batch_of(v, fu, f"{w} records[{i}] first_use"):
            raise OrderingViolation(f"{w}: the first-use step {fu.index} does not use record {r.commitment.hex()[:16]}")
        if fu.shard != r.shard or fu.stage != r.slice + 1:
            raise OrderingViolation(f"{w}: record {r.commitment.hex()[:16]} of slice {r.slice} is first used in "
                                    f"shard {fu.shard} stage {fu.stage}, expected stage {r.slice + 1}")
        if not (rb.index < fu.index and rb.step <= fu.step and rb.stage <= r.slice):
            raise OrderingViolation(f"{w}: rollback checkpoint {rb.index} (stage {rb.stage}, step {rb.step}) does not "
                                    f"precede the first use {fu.index} (step {fu.step}) of {r.commitment.hex()[:16]}")


def _check_rollback(v: Verification, t: Transcript, sc: Any, gens: dict[int, int]) -> CheckpointBody:
    """The shard's rollback is the stage-(from_stage - 1) checkpoint of its current lineage, its
    generation the next one, and the log order rollback < deletion < retraining <= model_after."""
    ws = f"request {t.request} shard {sc.shard}"
    d = t.deletion.entry.index
    rb = parse_claimed(v, CheckpointBody.parse, sc.rollback.entry, f"{ws} rollback", OrderingViolation)
    if rb.shard != sc.shard or rb.stage != sc.from_stage - 1:
        raise OrderingViolation(f"{ws}: rollback checkpoint {rb.index} is shard {rb.shard} stage {rb.stage}, "
                                f"expected stage {sc.from_stage - 1}")
    if sc.generation != gens[sc.shard] + 1:
        raise OrderingViolation(f"{ws}: retraining is generation {sc.generation}, expected {gens[sc.shard] + 1}")
    # The checkpoint of stage from_stage-1 in the lineage current before this request.
    want = None
    for lin in _current(v, sc.shard):  # generation 0 first, then each earlier request in order
        c = lin.at_stage_end(rb.stage)
        if c is not None:
            want = c
    if want is None or want.index != rb.index:
        raise OrderingViolation(f"{ws}: rollback to entry {rb.index} is not the stage-{rb.stage} checkpoint of the "
                                f"shard's current lineage (entry {None if want is None else want.index})")
    if not rb.index < d < sc.retraining_start < sc.retraining_end <= t.model_after.entry.index:
        raise OrderingViolation(f"{ws}: rollback {rb.index}, deletion {d}, retraining [{sc.retraining_start}, "
                                f"{sc.retraining_end}) and model {t.model_after.entry.index} are out of order")
    return rb


def _retraining_lineage(v: Verification, t: Transcript, ti: int, sc: Any, rb: CheckpointBody) -> None:
    """Schedule of one retraining: the disclosed range is exactly its steps and checkpoints."""
    cfg = v.config
    assert cfg is not None
    w = f"request {t.request} shard {sc.shard} retraining"
    bodies = [v.body(SliceBody.parse, x.slice.entry) for x in sc.slices]
    sizes = [sb.size for sb in bodies]
    stages = [(r, sum(sizes[:r])) for r in range(sc.from_stage, cfg.slices + 1)]
    lin = Lineage(shard=sc.shard, generation=sc.generation, stratum=ti, start=rb, checkpoints=[], stage_base={}, stage_n={},
                   slice_roots=tuple(sb.root for sb in bodies))
    expected = lineage_checkpoints(v, lin, stages, w)
    pos = sc.retraining_start
    counter = rb.step
    for stage, step in expected:
        while counter < step:
            st = v.body(StepBody.parse, need_entry(v, pos, w))
            check_step(v, st, lin, counter, w)
            pos += 1
            counter += 1
        c = v.body(CheckpointBody.parse, need_entry(v, pos, w))
        if (c.shard, c.generation, c.stage, c.step) != (sc.shard, sc.generation, stage, step):
            raise ScheduleViolation(f"{w}: entry {pos} is checkpoint (shard {c.shard}, generation {c.generation}, stage "
                                    f"{c.stage}, step {c.step}), expected stage {stage} step {step}")
        lin.checkpoints.append(c)
        pos += 1
    if pos != sc.retraining_end:
        raise ScheduleViolation(f"{w}: the schedule ends at entry {pos}, the transcript says {sc.retraining_end}")
    fc = sc.final_checkpoint.entry
    if fc.index != pos - 1 or fc.leaf_hash != need_entry(v, pos - 1, w).leaf_hash:
        raise ScheduleViolation(f"{w}: the final checkpoint {fc.index} is not the last entry of the retraining")
    v.lineages.append(lin)


def step_14(v: Verification) -> None:
    deleted: set[bytes] = set()
    lin_of = {(lin.shard, lin.generation): lin for lin in v.lineages}
    for t in v.transcripts:
        deleted |= {r.commitment for r in t.records}
        for sc in t.shards:
            lin = lin_of[(sc.shard, sc.generation)]
            w = f"request {t.request} shard {sc.shard} retraining"
            for i in range(sc.retraining_start, sc.retraining_end):
                e = v.entries[i]
                if e.kind == "step":
                    st = v.body(StepBody.parse, e)
                    bad = deleted.intersection(batch_of(v, st, w))
                    if bad:
                        raise ManifestContainsDeleted(
                            f"request {t.request}: retraining step entry {i} of shard {sc.shard} uses deleted record "
                            f"{sorted(bad)[0].hex()[:16]}..."
                        )
                    check_batch(v, st, lin, w)
    _check_original_batches(v)


def _check_original_batches(v: Verification) -> None:
    """Every disclosed step of the original training (generation 0) lies where its lineage's
    schedule puts it, passes the step rules of step 13, and trains on its committed batch: records
    of its own shard's slices 0..stage-1, in the committed order (so a record of another shard, or
    of a later slice, in a batch is rejected)."""
    lin_of = {lin.shard: lin for lin in v.lineages if lin.generation == 0}
    for i in sorted(v.entries):
        e = v.entries[i]
        if e.kind != "step":
            continue
        st = v.body(StepBody.parse, e)
        if st.generation != 0:
            continue
        lin = lin_of.get(st.shard)
        w = f"original training of shard {st.shard}"
        if lin is None:
            raise ScheduleViolation(f"{w}: step entry {i} is for shard {st.shard}, the config has {len(lin_of)} shards")
        end = next((c for c in lin.checkpoints if c.step > st.step), None)
        if end is None or i != end.index - (end.step - st.step):
            raise ScheduleViolation(f"{w}: step entry {i} (step {st.step}) is not where the shard's lineage has its "
                                    f"step {st.step}")
        check_step(v, st, lin, st.step, w)
        check_batch(v, st, lin, w)


