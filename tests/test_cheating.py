"""Cheating provers (issues 4 and 10): a forged segment of the deletion lineage is always caught;
one elsewhere exactly when it is sampled.

The cheater holds the signing key, so every signature and Merkle proof in its bundles is valid
(``conftest_verifier.forge``); it keeps its log internally consistent (every other segment is an
honest continuation of the forged one), so the only evidence is the replay of forged segments.

(a) retrains with a deleted record still in a batch while logging the clean manifest;
(b) skips retraining and logs the old (pre-deletion) checkpoints for the retraining;
(c) logs fabricated checkpoints for segments outside the deletion lineage -- detection rate k/N
    for one of N, at least 1-(1-f)^k for a fraction f;
(d) chooses its own retraining batches and trains on them: no replay catches it, the committed
    order does;
(e) trains on a deleted record in the original training before the rollback point.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from conftest_verifier import bundle_for, cheat, forge, honest, skip_retraining

from verifiable_mu._sampling import escape_probability
from verifier import VerifyOptions, verify


def _entries_of(ctx: Any, kind: str, **m: Any) -> list[int]:
    return [i for i, (k, b) in enumerate(ctx.entries) if k == kind and all(b.get(x) == y for x, y in m.items())]


def _forge_keep(mutate: Any) -> tuple[str, dict[str, Any]]:
    h = honest()
    keep: list[str] = []
    state: dict[str, Any] = {}

    def m(ctx: Any) -> None:
        state.update(mutate(ctx) or {})

    forge(h, m, keep=keep, replay=1)
    return keep[0], state


def _rollbacks(ctx: Any) -> dict[int, list[int]]:
    """Request n -> the log indices of its rollback checkpoints (from the workspace's plans)."""
    import json

    out: dict[int, list[int]] = {}
    for n, plan in ctx.ws._db().execute("SELECT n, plan FROM p_requests ORDER BY n"):
        out[n] = sorted(json.loads(plan)["rollback"].values())
    return out


def _challenges_verdicts(ws_dir: str, forged: set[int], k: int = 3) -> list[Any]:
    """Verify bundles of a forged workspace for three verifier challenges and the Fiat-Shamir seed."""
    out = []
    for ch in [bytes([i]) * 16 for i in (1, 2, 3)] + [None]:
        data, replayed = bundle_for(ws_dir, challenge=ch, replay=k)
        assert forged <= set(replayed)  # the deletion lineage is disclosed in full, whatever the challenge
        out.append(verify(data, VerifyOptions(challenge=ch, replay=k, residual=False)))
    return out


def _deleted_record_trained_at(pick: Callable[[Any], int], step: int) -> tuple[str, set[int]]:
    """Forge the segment ending at checkpoint ``pick(ctx)``: its step ``step`` trains on a record
    deleted by request 1 (batch position 0) while the log keeps the clean batch."""

    def mutate(ctx: Any) -> dict[str, Any]:
        d1 = _entries_of(ctx, "deletion", request="1")[0]
        deleted = ctx.entries[d1][1]["commitments"][0]
        target = pick(ctx)
        assert target in cheat(ctx, {target: {"substitute": {step: (0, deleted)}}})
        return {"forged": {target}}

    ws_dir, st = _forge_keep(mutate)
    return ws_dir, st["forged"]


def _always_rejected_at_replay(ws_dir: str, forged: set[int]) -> None:
    """Three challenges and Fiat-Shamir reject at step 18 naming the forged segment, every earlier
    step passing (the proofs are valid); so does --replay 0 (no sampled draws at all)."""
    for v in _challenges_verdicts(ws_dir, forged):
        assert v.exit_code == 1 and v.failed_step == 18, repr(v.failure)
        assert "does not reproduce" in str(v.failure) and f"entry {min(forged)}" in str(v.failure)
        assert all(r.status == "pass" for r in v.results if r.step < 18)
        assert {r.end_index for r in v.complete} >= forged
    data, _ = bundle_for(ws_dir, replay=0)
    v = verify(data, VerifyOptions(replay=0, residual=False))
    assert v.exit_code == 1 and v.failed_step == 18 and f"entry {min(forged)}" in str(v.failure)


def test_cheater_a_deleted_record_kept_in_retraining_batches() -> None:
    """A retraining segment trains on a deleted record while logging the clean batch. The retraining
    is part of the deletion lineage, replayed in full: rejected at step 18 whatever the challenge."""

    def first_retraining_checkpoint(ctx: Any) -> int:
        d1 = _entries_of(ctx, "deletion", request="1")[0]
        m1 = _entries_of(ctx, "model", request="1")[0]
        return [i for i in _entries_of(ctx, "checkpoint") if d1 < i < m1][0]

    ws_dir, forged = _deleted_record_trained_at(first_retraining_checkpoint, 2)
    _always_rejected_at_replay(ws_dir, forged)
    # the calibrated distance mode (other platforms) catches the one substituted record too
    data, _ = bundle_for(ws_dir, replay=0)
    v = verify(data, VerifyOptions(replay=0, replay_mode="distance", residual=False))
    assert v.exit_code == 1 and v.failed_step == 18 and "distance" in str(v.failure)


def test_cheater_e_forged_original_segment_before_the_rollback_always_caught() -> None:
    """The original training's segment that ends at a rollback checkpoint trains on a deleted
    record (logging the clean batch), so the retraining starts from weights that already saw it.
    The whole lineage up to the rollback point is replayed: rejected at step 18 whatever the
    challenge, Fiat-Shamir included, and even with --replay 0 (no sampled draws)."""

    def gen0_rollback(ctx: Any) -> int:
        targets = [i for i in _rollbacks(ctx)[1] if ctx.entries[i][1]["stage"] >= 1 and ctx.entries[i][1]["generation"] == 0]
        assert targets, "request 1 must roll back past stage 0 for this test"
        return targets[0]

    ws_dir, forged = _deleted_record_trained_at(gen0_rollback, 0)
    _always_rejected_at_replay(ws_dir, forged)


def test_cheater_d_chooses_its_own_batches_always_caught() -> None:
    """The freedom forging attacks need: the cheater picks which records share a batch (here two
    retraining steps trade a record) and trains on exactly what it logs, so every checkpoint
    replays. The committed seed and the disclosed slice records fix every batch: step 14
    rejects it whatever the sample."""

    def mutate(ctx: Any) -> dict[str, Any]:
        d1 = _entries_of(ctx, "deletion", request="1")[0]
        m1 = _entries_of(ctx, "model", request="1")[0]
        steps = [i for i in _entries_of(ctx, "step") if d1 < i < m1]
        i, j = steps[0], steps[1]
        bi, bj = ctx.entries[i][1], ctx.entries[j][1]
        assert (bi["stage"], bi["epoch"]) == (bj["stage"], bj["epoch"])
        bi["batch"], bj["batch"] = bj["batch"][:64] + bi["batch"][64:], bi["batch"][:64] + bj["batch"][64:]
        target = next(c for c in _entries_of(ctx, "checkpoint") if c > j)
        changed = cheat(ctx, {target: {}})  # trained honestly on the chosen batches
        assert target in changed
        return {"forged": {target}}

    ws_dir, st = _forge_keep(mutate)
    for v in _challenges_verdicts(ws_dir, st["forged"]):
        assert v.exit_code == 1 and v.failed_step == 14, repr(v.failure)
        assert type(v.failure).__name__ == "BatchNotCommitted" and "committed batch" in str(v.failure)
        assert all(r.status == "pass" for r in v.results if r.step < 14)


def test_cheater_b_skips_retraining_always_caught() -> None:
    """Logged retraining checkpoints are the old ones: every retraining segment is forged, and the
    retraining is replayed in full, whatever the challenge."""

    ws_dir, st = _forge_keep(skip_retraining)
    for v in _challenges_verdicts(ws_dir, st["forged"], k=2):
        assert v.exit_code == 1 and v.failed_step == 18 and "does not reproduce" in str(v.failure)


def test_cheater_c_fabricated_checkpoints_detection_rate() -> None:
    """Segments outside the deletion lineage (original training of shards no request touched) end
    in fabricated checkpoints. Sampled: caught at step 18; not sampled: accepted -- the escape the
    verdict states. Over many verifier challenges one forged segment among N is caught with rate
    k/N, and m forged ones at least 1-(1-f)^k."""
    from verifier import verify as _verify

    h = honest()
    hv = _verify(h.bundle, VerifyOptions(unsafe_no_replay=True, residual=False))
    lineage = {r.end_index for r in hv.complete}
    outside = sorted(r.end_index for r in hv.population if r.end_index not in lineage)
    rnd = random.Random(4)
    chosen = set(rnd.sample(outside, 2))

    def mutate(ctx: Any) -> dict[str, Any]:
        cheat(ctx, {i: {"noise": 1e-3} for i in chosen})
        return {"forged": chosen}

    ws_dir, st = _forge_keep(mutate)
    forged, N, k = st["forged"], len(outside), 3
    # (1) end to end: verdicts match "a forged segment was sampled", both ways
    seen = {True: 0, False: 0}
    for i in range(40):
        ch = (5000 + i).to_bytes(16, "big")
        data, replayed = bundle_for(ws_dir, challenge=ch, replay=k)
        hit = bool(forged & set(replayed))
        if seen[hit] >= 2:
            continue
        v = verify(data, VerifyOptions(challenge=ch, replay=k, residual=False))
        assert v.exit_code == (1 if hit else 0), (hit, repr(v.failure))
        if hit:
            assert v.failed_step == 18
        else:
            assert v.sampled_population == N and v.single_escape() == pytest.approx(1 - k / N)
        seen[hit] += 1
        if min(seen.values()) >= 2:
            break
    assert min(seen.values()) >= 2
    # (2) detection rate over many challenges, with the verifier's own sampler and seed
    from verifiable_mu._sampling import challenge_seed, head_body, sample_segments

    data, _ = bundle_for(ws_dir, challenge=bytes(16), replay=k)
    v = verify(data, VerifyOptions(challenge=bytes(16), replay=k, residual=False))
    rest = [r for r in v.population if r not in v.complete]
    assert len(rest) == N and v.sampled_population == N
    dels = [t.deletion.entry.leaf_hash for t in v.transcripts]
    assert v.final is not None
    body = head_body(v.final.origin, v.final.size, v.final.root_hash)
    trials = 3000
    caught = one = 0
    one_forged = min(forged)
    for i in range(trials):
        draw = {rest[j].end_index for j in sample_segments(N, k, challenge_seed(i.to_bytes(16, "big"), dels, body))}
        caught += bool(draw & forged)
        one += one_forged in draw
    from math import comb

    f = len(forged) / N
    rate, exact = caught / trials, 1 - comb(N - len(forged), k) / comb(N, k)
    print(f"f={f:.3f} k={k} N={N}: detection {rate:.3f}; 1-(1-f)^k = {1 - escape_probability(f, k):.3f}; exact {exact:.3f}")
    assert rate >= 1 - escape_probability(f, k) - 0.03 and abs(rate - exact) < 0.04
    assert abs(one / trials - k / N) < 0.04  # one forged segment: caught with probability k/N
    assert caught < trials  # some challenges miss every forged segment: the escape is real


@pytest.mark.parametrize("k", [1, 2, 4])
def test_detection_bound_formula_matches_uniform_sampling(k: int) -> None:
    """Pure sampler check on a large population: rate ~ 1-(1-f)^k when f*P forged, P large."""
    from verifiable_mu._sampling import sample_segments

    P, forged = 400, set(range(0, 400, 10))  # f = 10%
    trials = 2000
    caught = sum(any(j in forged for j in sample_segments(P, k, i.to_bytes(32, "big"))) for i in range(trials))
    assert abs(caught / trials - (1 - 0.9**k)) < 0.04
