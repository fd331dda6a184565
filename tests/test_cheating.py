"""Cheating provers (issue 4): each forgery is caught exactly when a forged segment is sampled.

The cheater holds the signing key, so every signature and Merkle proof in its bundles is valid
(``conftest_verifier.forge``); it keeps its log internally consistent (every other segment is an
honest continuation of the forged one), so the only evidence is the replay of forged segments.

(a) retrains with a deleted record still in a batch while logging the clean manifest;
(b) skips retraining and logs the old (pre-deletion) checkpoints for the retraining;
(c) logs fabricated checkpoints for a fraction f of all segments -- detection rate vs 1-(1-f)^k;
(d) chooses its own retraining batches and trains on them: no replay catches it, the committed
    order does.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from conftest_verifier import bundle_for, cheat, forge, honest, lineage_map, skip_retraining

from verifiable_mu._sampling import escape_probability
from verifier import VerifyOptions, verify


def _entries_of(ctx: Any, kind: str, **m: Any) -> list[int]:
    return [i for i, (k, b) in enumerate(ctx.entries) if k == kind and all(b.get(x) == y for x, y in m.items())]


def _find_challenges(ws_dir: str, forged: set[int], k: int, want_hit: bool, limit: int = 60) -> tuple[bytes, bytes]:
    for i in range(limit):
        ch = i.to_bytes(16, "big")
        data, sampled = bundle_for(ws_dir, challenge=ch, replay=k)
        if bool(forged & set(sampled)) == want_hit:
            return ch, data
    raise AssertionError("no challenge found")


def _forge_keep(mutate: Any) -> tuple[str, dict[str, Any]]:
    h = honest()
    keep: list[str] = []
    state: dict[str, Any] = {}

    def m(ctx: Any) -> None:
        state.update(mutate(ctx) or {})

    forge(h, m, keep=keep, replay=1)
    return keep[0], state


def test_cheater_a_deleted_record_kept_in_retraining_batches() -> None:
    def mutate(ctx: Any) -> dict[str, Any]:
        d1 = _entries_of(ctx, "deletion", request="1")[0]
        deleted = ctx.entries[d1][1]["commitments"][0]
        m1 = _entries_of(ctx, "model", request="1")[0]
        ck = [i for i in _entries_of(ctx, "checkpoint") if d1 < i < m1]
        target = ck[0]
        # train step 2 of that segment with the deleted record in place of batch position 0
        changed = cheat(ctx, {target: {"substitute": {2: (0, deleted)}}})
        assert target in changed
        return {"forged": {target}}

    ws_dir, st = _forge_keep(mutate)
    forged = st["forged"]
    # sampled: rejected by replay, with the segment named
    ch, data = _find_challenges(ws_dir, forged, 3, True)
    v = verify(data, VerifyOptions(challenge=ch))
    assert v.exit_code == 1 and v.failed_step == 18, repr(v.failure)
    assert "does not reproduce" in str(v.failure) and f"entry {min(forged)}" in str(v.failure)
    # every earlier step passed: the manifests are clean, the proofs valid
    assert all(r.status == "pass" for r in v.results if r.step < 18)
    # the calibrated distance mode (other platforms) catches the one substituted record too
    v = verify(data, VerifyOptions(challenge=ch, replay_mode="distance"))
    assert v.exit_code == 1 and v.failed_step == 18 and "distance" in str(v.failure)
    # not sampled: the forgery escapes (this is what (1-f)^k quantifies)
    ch, data = _find_challenges(ws_dir, forged, 3, False)
    assert verify(data, VerifyOptions(challenge=ch)).exit_code == 0


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
    for hit in (True, False):
        ch, data = _find_challenges(ws_dir, st["forged"], 3, hit)
        v = verify(data, VerifyOptions(challenge=ch, replay=3))
        assert v.exit_code == 1 and v.failed_step == 14, repr(v.failure)
        assert type(v.failure).__name__ == "BatchNotCommitted" and "committed batch" in str(v.failure)
        assert all(r.status == "pass" for r in v.results if r.step < 14)


def test_cheater_b_skips_retraining_always_caught() -> None:
    """Logged retraining checkpoints are the old ones: every retraining segment is forged, and the
    sample always holds one segment of each deletion's retraining."""

    ws_dir, st = _forge_keep(skip_retraining)
    for i in range(3):
        ch = (1000 + i).to_bytes(16, "big")
        data, sampled = bundle_for(ws_dir, challenge=ch, replay=2)
        assert st["forged"] & set(sampled)
        v = verify(data, VerifyOptions(challenge=ch))
        assert v.exit_code == 1 and v.failed_step == 18 and "does not reproduce" in str(v.failure)
    # Fiat-Shamir bundle too
    data, _ = bundle_for(ws_dir, replay=2)
    assert verify(data).failed_step == 18


def test_cheater_c_fabricated_checkpoints_detection_rate() -> None:
    """A fraction f of segments end in fabricated checkpoints. Sampled: caught; the detection rate
    over many verifier challenges is at least 1-(1-f)^k (sampling without replacement does better)."""
    rnd = random.Random(4)

    def mutate(ctx: Any) -> dict[str, Any]:
        segs = sorted(lineage_map(ctx))
        forged = set(rnd.sample(segs, 3))
        cheat(ctx, {i: {"noise": 1e-3} for i in forged})
        return {"forged": forged, "population": len(segs)}

    ws_dir, st = _forge_keep(mutate)
    forged, P = st["forged"], st["population"]
    f = len(forged) / P
    k = 3
    # (1) end to end: verdicts match "a forged segment was sampled", both ways
    seen = {True: 0, False: 0}
    for i in range(40):
        ch = (5000 + i).to_bytes(16, "big")
        data, sampled = bundle_for(ws_dir, challenge=ch, replay=k)
        hit = bool(forged & set(sampled))
        if seen[hit] >= 2:
            continue
        v = verify(data, VerifyOptions(challenge=ch))
        assert v.exit_code == (1 if hit else 0), (hit, repr(v.failure))
        if hit:
            assert v.failed_step == 18
        seen[hit] += 1
        if min(seen.values()) >= 2:
            break
    assert min(seen.values()) >= 2
    # (2) detection rate over many challenges, with the verifier's own sampler
    from verifiable_mu._sampling import challenge_seed, sample_segments

    data, _ = bundle_for(ws_dir, challenge=bytes(16), replay=k)
    v = verify(data, VerifyOptions(challenge=bytes(16), replay=0))
    pop = v.population
    assert len(pop) == P
    strata = [[j for j, r in enumerate(pop) if r.stratum == t] for t in range(len(v.transcripts))]
    trials = 3000
    caught = 0
    for i in range(trials):
        draw = sample_segments(len(pop), strata, k, challenge_seed(i.to_bytes(16, "big")))
        caught += any(pop[j].end_index in forged for j in draw)
    rate = caught / trials
    bound = 1 - escape_probability(f, k)
    # exact for uniform sampling without replacement of k from P (ignoring strata)
    from math import comb

    exact = 1 - comb(P - len(forged), k) / comb(P, k)
    print(f"f={f:.3f} k={k} P={P}: detection {rate:.3f}; 1-(1-f)^k = {bound:.3f}; without replacement {exact:.3f}")
    assert rate >= bound - 0.03
    assert rate <= 1.0 and caught < trials  # some challenges miss every forged segment: the escape is real


@pytest.mark.parametrize("k", [1, 2, 4])
def test_detection_bound_formula_matches_uniform_sampling(k: int) -> None:
    """Pure sampler check on a large population: rate ~ 1-(1-f)^k when f*P forged, P large."""
    from verifiable_mu._sampling import sample_segments

    P, forged = 400, set(range(0, 400, 10))  # f = 10%
    trials = 2000
    caught = sum(any(j in forged for j in sample_segments(P, [], k, i.to_bytes(32, "big"))) for i in range(trials))
    assert abs(caught / trials - (1 - 0.9**k)) < 0.04
