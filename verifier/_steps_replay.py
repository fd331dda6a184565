"""Steps 17-18 of specs/09-verification.md: sampling, replay (torch is imported by step 18
only, when it runs)."""

from __future__ import annotations

from verifiable_mu._disclosure import replay_records
from verifiable_mu._extras import require
from verifiable_mu._sampling import (
    AUDIT_DISCLOSE_MAX,
    SegmentRef,
    challenge_seed,
    fiat_shamir_seed,
    grinding_note,
    head_body,
    lineage_note,
    lineage_seed,
    sample_audit,
    sample_segments,
    split_population,
)

from ._entries import CheckpointBody, StepBody
from ._errors import ChallengeMismatch, SegmentMissing
from ._state import Outcome, Verification, need_entry
from ._steps_schedule import batch_of, check_batch, check_step


def step_17(v: Verification) -> None:
    """The sample: the seed (the verifier's challenge, or Fiat-Shamir), the deletion lineage (all
    of it, or the verifier's draws from it), the uniform draws from the other segments, and every
    step, record and checkpoint of them disclosed."""
    b = v.bundle
    assert b is not None
    _sampling_seed(v)
    complete, rest = _split_population(v)
    if v.options.lineage == "sampled":  # the verifier's choice (specs/08 section 5, "Sampled lineage")
        complete = [complete[i] for i in sample_segments(len(complete), v.options.replay, lineage_seed(v.seed))]
        if not v.options.unsafe_no_replay:
            v.warnings.append(lineage_note(v.lineage_population, len(complete), v.sampled_by))
    v.complete, v.sampled_population = complete, len(rest)
    op = b.openings
    if op.audit_proof is not None:
        assert v.audit is not None
        want_audit = sample_audit(v.seed, v.audit.size, AUDIT_DISCLOSE_MAX)
        if list(op.audit_proof.positions) != want_audit:
            raise ChallengeMismatch("the bundle's audit-set sample is not the one the challenge selects "
                                    f"({len(op.audit_proof.positions)} records disclosed, {len(want_audit)} selected)")
    # k is the verifier's policy (VerifyOptions.replay); the manifest's replay/sample are ignored.
    drawn = [rest[i] for i in sample_segments(len(rest), v.options.replay, v.seed)]
    v.sample = drawn
    if v.sampled_by == "owner":
        v.warnings.append(grinding_note(v.sampled_population, 0 if v.options.unsafe_no_replay else len(drawn)))
    if not drawn and rest and not v.options.unsafe_no_replay:
        v.warnings.append(f"NO SAMPLED REPLAY: none of the {len(rest)} segments outside the deletion lineage is "
                          "replayed (--replay 0)")
    if not v.options.unsafe_no_replay:
        _check_disclosed(v, complete, drawn)


def _sampling_seed(v: Verification) -> None:
    """``v.seed``: the verifier's challenge, which the bundle must answer, or else Fiat-Shamir."""
    b = v.bundle
    assert b is not None and v.final is not None
    m = b.manifest
    want = v.options.challenge
    # The seed binds the requests (their deletion entries, fixed by the log) and the final head's
    # body: not the free timestamp/extension lines or signatures the owner can redo for free.
    deletions = [t.deletion.entry.leaf_hash for t in v.transcripts]
    body = head_body(v.final.origin, v.final.size, v.final.root_hash)
    if want is not None:
        if m.challenge_mode != "interactive" or m.challenge != want:
            raise ChallengeMismatch("the bundle does not answer this verifier's challenge (it was built for "
                                    f"{'Fiat-Shamir' if m.challenge is None else 'challenge ' + m.challenge.hex()[:16] + '...'})")
        v.seed = challenge_seed(want, deletions, body)
        if v.options.expect_head is None:
            v.warnings.append("UNPINNED HEAD: the owner could pick the final tree head after seeing the challenge "
                              "(one new head per retry); pass --expect-head with the head you saw before the challenge")
        if v.options.requests is None:
            v.warnings.append("UNPINNED REQUESTS: the owner could pick how many requests the bundle holds after seeing "
                              "the challenge; pass --requests with the count you expect")
    else:
        if m.challenge_mode == "interactive":
            raise ChallengeMismatch("the bundle answers an interactive challenge; pass the challenge you issued with --challenge")
        v.seed = fiat_shamir_seed(deletions, body)


def _split_population(v: Verification) -> tuple[list[SegmentRef], list[SegmentRef]]:
    """Every segment of every lineage (``v.population``), split into the deletion lineage and the rest."""
    pop: list[SegmentRef] = []
    for lin in v.lineages:
        chain = [lin.start, *lin.checkpoints]
        for a, c in zip(chain, chain[1:], strict=False):
            pop.append(SegmentRef(shard=lin.shard, generation=lin.generation, stage=c.stage, start_index=a.index,
                                  end_index=c.index, start_step=a.step, end_step=c.step, stratum=lin.stratum))
    pop.sort(key=lambda r: r.end_index)
    v.population = pop
    gen0_rollback: dict[int, int] = {}
    for t in v.transcripts:
        for sc in t.shards:
            rb = v.body(CheckpointBody.parse, sc.rollback.entry)
            if rb.generation == 0:
                gen0_rollback[sc.shard] = max(gen0_rollback.get(sc.shard, -1), rb.index)
    complete, rest = split_population(pop, gen0_rollback)
    v.lineage_population = len(complete)
    return complete, rest


def _check_disclosed(v: Verification, complete: list[SegmentRef], drawn: list[SegmentRef]) -> None:
    """Every step of the segments to replay passes the step rules and trains on its committed
    batch, every record it uses is opened, and both checkpoints' files are in the bundle."""
    b = v.bundle
    assert b is not None
    lin_of = {(lin.shard, lin.generation): lin for lin in v.lineages}
    complete_ends = {r.end_index for r in complete}
    opened: dict[str, set[bytes]] = {"lineage": set(), "sampled": set()}
    for r in [*complete, *drawn]:
        kind = "segment of the deletion lineage" if r.end_index in complete_ends else "sampled segment"
        w = f"{kind} ending at entry {r.end_index} (shard {r.shard}, generation {r.generation}, stage {r.stage})"
        lin = lin_of[(r.shard, r.generation)]
        for j in range(r.steps):
            idx = r.end_index - r.steps + j
            st = v.body(StepBody.parse, need_entry(v, idx, w))
            check_step(v, st, lin, r.start_step + j, w)
            check_batch(v, st, lin, w)  # original training too: its slices' records are in the bundle
            batch = batch_of(v, st, w)
            for rec in batch:
                if rec not in v.openings:
                    raise SegmentMissing(f"{w}: the bundle does not open record {rec.hex()[:16]}... used by step {idx}")
            opened["lineage" if r.end_index in complete_ends else "sampled"].update(batch)
        for idx in (r.start_index, r.end_index):
            dg = v.body(CheckpointBody.parse, need_entry(v, idx, w)).digest
            if dg not in b.checkpoints:
                raise SegmentMissing(f"{w}: the bundle lacks checkpoint {dg.hex()[:16]}... (entry {idx})")
    deleted = {o.commitment() for o in b.openings.deleted}
    v.replay_records = replay_records(v.options.lineage, opened["lineage"], opened["sampled"], deleted)


def step_18(v: Verification) -> Outcome:
    if v.options.unsafe_no_replay:
        v.warnings.append("UNSAFE NO REPLAY: no segment was replayed (--unsafe-no-replay); the training, the "
                          "retraining included, was not checked, only the proofs")
        v.replay_report = {"segments": [], "mode": None}
        return "skipped", "turned off (--unsafe-no-replay)"
    require(("torch",), "replaying segments", "pass --unsafe-no-replay to check the proofs only (steps 1-17)")
    from . import _replay  # torch is imported here, and only here

    b, cfg = v.bundle, v.config
    assert b is not None and cfg is not None
    work = []
    for r in [*v.complete, *v.sample]:
        steps = [v.body(StepBody.parse, v.entries[r.end_index - r.steps + j]) for j in range(r.steps)]
        start = v.body(CheckpointBody.parse, v.entries[r.start_index])
        end = v.body(CheckpointBody.parse, v.entries[r.end_index])
        work.append(_replay.SegmentWork(
            ref=r,
            steps=tuple((s.seed, batch_of(v, s, "replay")) for s in steps),
            hints=tuple(s.hints for s in steps),
            start_file=b.checkpoints[start.digest],
            start_digest=start.digest,
            end_file=b.checkpoints[end.digest],
            end_digest=end.digest,
        ))
    plan = _replay.ReplayPlan(
        model=cfg.model, hyper=cfg.hyper, platform=cfg.platform, segments=tuple(work), openings=v.openings,
        scaling=cfg.scaling,
        mode=v.options.replay_mode, allow_factories=v.options.allow_factories, model_source=dict(b.model_source),
    )
    if v.options.backend == "local":
        v.replay_report = _replay.replay(plan, progress=v.progress)
    else:
        v.replay_report = _replay.replay(plan, backend=v.options.backend, ray_address=v.options.ray_address,
                                         progress=v.progress)
    if v.replay_report.get("warning"):
        v.warnings.append(v.replay_report["warning"])
    return "pass", (f"{len(v.complete)} segments of the deletion lineage (complete) and {len(v.sample)} of "
                    f"{v.sampled_population} other segments (sampled by the {v.sampled_by}) reproduce")


