"""Disclosure bounded per segment (issue 17): ``vmu init --checkpoint-every auto`` with
``--max-segment-records N`` keeps every replayed segment's openings at most N records, and
``--lineage sampled`` (bundle and verifier) replays K draws from the deletion lineage instead of
all of it, with the escape probability of a forged lineage segment stated; the verifier decides,
and ``--policy agency`` keeps requiring the complete lineage."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

import pytest
from conftest_verifier import bundle_for, forge, honest, members_of, skip_retraining

from prover import BadInput, Workspace
from prover._bundle import write_bundle
from prover.cli import _resolve_checkpoint_every
from verifiable_mu._sampling import lineage_seed, sample_segments, single_escape
from verifier import VerifyOptions, to_json, verify

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sampled_bundle(replay: int = 2) -> bytes:
    h = honest()
    out = os.path.join(h.root, f"sampled-{replay}.vmu")
    with Workspace.open(h.ws_dir) as ws:
        info = write_bundle(ws, out, replay=replay, lineage="sampled")
    assert len(info.complete) <= replay
    with open(out, "rb") as f:
        return f.read()


# --- segment bounds -----------------------------------------------------------------------------


def test_auto_checkpoint_every_bounds_the_records_a_segment_opens() -> None:
    assert _resolve_checkpoint_every("auto", None, 32) == 128  # the default N = 4096
    assert _resolve_checkpoint_every("auto", 256, 32) == 8
    assert _resolve_checkpoint_every("auto", 10, 32) == 1  # at least one step
    assert _resolve_checkpoint_every("auto", 0, 32) == 0  # slice ends only
    assert _resolve_checkpoint_every(16, None, 32) == 16  # an explicit K is kept
    with pytest.raises(BadInput, match="not both"):
        _resolve_checkpoint_every(16, 256, 32)
    with pytest.raises(BadInput, match="--max-segment-records must be >= 0"):
        _resolve_checkpoint_every("auto", -1, 32)


def test_cli_init_logs_the_bound_and_every_segment_opens_at_most_n_records(tmp_path: Any) -> None:
    """A workspace made with --max-segment-records 96 (batch 32: 3 steps a segment) never has a
    segment whose batches use more than 96 records, so a replayed segment opens at most that."""
    d = os.path.join(os.fspath(tmp_path), "ws")
    env = dict(os.environ, PYTHONPATH=ROOT)
    run = [sys.executable, "-m", "prover.cli"]
    r = subprocess.run([*run, "init", d, "--shards", "2", "--slices", "2", "--epochs", "2", "--workers", "1",
                        "--max-segment-records", "96"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "a replayed segment opens at most 96 records" in r.stdout
    r = subprocess.run([*run, "train", d], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    with Workspace.open(d) as ws:
        assert ws.log.entry(0).body["checkpoint_every"] == 3
        entries = list(ws.log.entries())
        used: set[bytes] = set()
        longest = 0
        for e in entries:
            if e.kind == "checkpoint":
                longest = max(longest, len(used))
                used = set()
            elif e.kind == "step":
                used |= set(ws.batch_of(e))
        assert 0 < longest <= 96
    r = subprocess.run([*run, "init", d + "2", "--checkpoint-every", "4", "--max-segment-records", "96"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode == 2 and "not both" in r.stderr


# --- sampled lineage ----------------------------------------------------------------------------


def test_sampled_lineage_bundle_verifies_under_sampled_and_discloses_less() -> None:
    h = honest()
    data = _sampled_bundle(2)
    full = verify(h.bundle, VerifyOptions(residual=False, replay=2))
    v = verify(data, VerifyOptions(residual=False, replay=2, lineage="sampled"))
    assert v.exit_code == 0, repr(v.failure)
    assert len(v.complete) == 2 < v.lineage_population == len(full.complete)
    # the verifier drew the lineage segments itself, from its own seed
    want = sample_segments(v.lineage_population, 2, lineage_seed(v.seed))
    assert [r.end_index for r in v.complete] == [full.complete[i].end_index for i in want]
    rep = to_json(v)
    assert rep["sampling"]["lineage"] == "sampled"
    assert rep["sampling"]["lineage_segment_escape"] == pytest.approx(single_escape(v.lineage_population, 2))
    assert any(w.startswith("SAMPLED DELETION LINEAGE: 2 of its") for w in v.warnings), v.warnings
    assert "one forged lineage segment escapes with probability" in rep["sampling"]["statement"]
    # disclosure by kind of replay: the manifest's figures are the verifier's own counts
    manifest = json.loads(members_of(data)["manifest.json"])["disclosure"]
    assert manifest["replay"]["lineage_mode"] == "sampled"
    assert rep["disclosure"] == manifest
    # its draws are a subset of what the complete bundle opens (lineage draws from the complete set,
    # the uniform draws a prefix of the 8 the honest bundle holds); with no draws it opens nothing
    assert manifest["training"] <= json.loads(members_of(h.bundle)["manifest.json"])["disclosure"]["training"]
    none = json.loads(members_of(_sampled_bundle(0))["manifest.json"])["disclosure"]
    assert none["training"] == 0 and none["replay"] == {"lineage_mode": "sampled", "lineage": 0, "sampled": 0}
    complete0 = json.loads(members_of(bundle_for(h.ws_dir, replay=0)[0])["manifest.json"])["disclosure"]
    assert complete0["replay"]["lineage"] > 0  # the complete lineage is disclosed even with 0 draws
    assert to_json(full)["disclosure"]["replay"]["lineage_mode"] == "complete"
    assert to_json(full)["sampling"]["lineage_segment_escape"] == 0.0


def test_step_17_a_sampled_bundle_is_rejected_by_a_verifier_asking_for_the_complete_lineage() -> None:
    """0 draws: the bundle opens no training record, so no lineage segment can be replayed. (With
    a few draws the other disclosures -- stage-end checkpoints, a later stage's records -- can
    happen to cover every lineage segment of a small workspace; then the bundle is complete.)"""
    v = verify(_sampled_bundle(0), VerifyOptions(residual=False, replay=0))
    assert v.exit_code == 1 and v.failed_step == 17, (v.failed_step, repr(v.failure))
    assert type(v.failure).__name__ == "SegmentMissing"
    assert "segment of the deletion lineage ending at entry" in str(v.failure)


def test_step_17_more_lineage_draws_than_the_bundle_discloses() -> None:
    v = verify(_sampled_bundle(0), VerifyOptions(residual=False, replay=1, lineage="sampled"))
    assert v.exit_code == 1 and v.failed_step == 17, (v.failed_step, repr(v.failure))
    assert type(v.failure).__name__ == "SegmentMissing"
    assert re.search(r"(segment of the deletion lineage|sampled segment) ending at entry \d+", str(v.failure))


def test_agency_policy_requires_the_complete_lineage() -> None:
    v = verify(_sampled_bundle(8), VerifyOptions(residual=False, lineage="sampled", policy="agency"))
    assert v.exit_code == 3 and v.verdict == "accepted-reduced"
    assert any(u.startswith("complete-replay: --lineage sampled") for u in v.unmet), v.unmet


def test_step_18_a_skipped_retraining_is_caught_when_its_segments_are_drawn() -> None:
    """A prover that skips retraining forges every retraining segment of the lineage; with K at
    least the lineage's size every lineage segment is drawn and step 18 rejects."""
    h = honest()
    data = forge(h, skip_retraining, name="skip-sampled")
    v = verify(data, VerifyOptions(residual=False, replay=64, lineage="sampled"))
    assert v.exit_code == 1 and v.failed_step == 18, (v.failed_step, repr(v.failure))
    assert type(v.failure).__name__ == "ReplayMismatch"


def test_vmu_verify_cli_lineage_flag(tmp_path: Any) -> None:
    p = tmp_path / "s.vmu"
    p.write_bytes(_sampled_bundle(0))
    from verifier.cli import main

    assert main([str(p), "--no-residual", "--replay", "0", "--lineage", "sampled", "--quiet"]) == 0
    assert main([str(p), "--no-residual", "--replay", "0", "--quiet"]) == 1  # the complete lineage is not there
    with pytest.raises(SystemExit) as e:
        main([str(p), "--lineage", "some"])
    assert e.value.code == 2


def test_write_bundle_refuses_an_unknown_lineage_mode() -> None:
    h = honest()
    with Workspace.open(h.ws_dir) as ws, pytest.raises(BadInput, match="--lineage must be one of complete, sampled"):
        write_bundle(ws, os.path.join(h.root, "x.vmu"), lineage="most")


def test_vmu_bundle_prints_the_records_each_kind_of_replay_opens(tmp_path: Any,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from prover.cli import main as vmu_main

    h = honest()
    out = tmp_path / "s.vmu"
    assert vmu_main(["bundle", h.ws_dir, "--out", str(out), "--lineage", "sampled", "--replay", "2"]) == 0
    text = capsys.readouterr().out
    d = json.loads(members_of(out.read_bytes())["manifest.json"])["disclosure"]
    assert "(2 of the deletion lineage, sampled; 2 sampled)" in text
    assert (f"replay opened {d['replay']['lineage']} for the deletion lineage (sampled) and "
            f"{d['replay']['sampled']} more for the sampled segments") in text
    assert d["replay"]["lineage"] + d["replay"]["sampled"] == d["training"]
