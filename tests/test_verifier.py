"""End to end: train on digits, forget, bundle, vmu-verify accepts with replay on (specs/09)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest_verifier import honest_fixture  # noqa: F401  (session fixture)

from verifiable_mu._errors import InvalidBundle
from verifiable_mu._keys import SigningKey
from verifier import STEPS, VerifyOptions, read_bundle, to_json, verify
from verifier._checks import step_seed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "verifier.cli", *args], capture_output=True, text=True, env=ENV,
                          timeout=300)


def test_end_to_end_cli_accepts_with_replay(honest_fixture, tmp_path) -> None:  # noqa: F811
    out = tmp_path / "report.json"
    r = _cli(honest_fixture.bundle_path, "--trust-key", honest_fixture.pub_pem, "--json", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "verdict: ACCEPTED" in r.stdout
    for n, name, _ in STEPS:
        assert f"{n:2d}. {name}" in r.stdout
    assert "escape probability outside the deletion lineage per owner try (SAMPLED BY THE OWNER)" in r.stdout
    assert "k=8, N=8" in r.stdout and "f=5%" in r.stdout
    rep = json.loads(out.read_text())
    assert rep["type"] == "vmu.verification-report" and rep["version"] == 1
    assert rep["verdict"] == "accepted" and rep["exit_code"] == 0 and rep["failure"] is None
    assert [c["step"] for c in rep["checks"]] == list(range(1, 20))
    assert all(c["status"] == "pass" for c in rep["checks"][:18])
    # step 19 ran the residual tests: too few deleted records for power, so inconclusive, not a pass
    assert rep["checks"][18]["status"] in ("pass", "inconclusive")
    assert rep["residual"]["verdict"] in ("pass", "inconclusive")
    assert (rep["checks"][18]["status"] == "inconclusive") == (rep["residual"]["verdict"] == "inconclusive")
    assert rep["trust"]["pinned"] is True
    samp = rep["sampling"]
    assert rep["replay"]["mode"] == "exact" and len(rep["replay"]["segments"]) == samp["complete"] + 8
    assert all(s["bit_exact"] for s in rep["replay"]["segments"])
    assert set(rep["escape_probability"]) == {"0.01", "0.05", "0.1"}
    assert abs(rep["escape_probability"]["0.1"] - 0.9**8) < 1e-12
    assert rep["challenge"]["sampled_by"] == samp["sampled_by"] == "owner" and "SAMPLED BY THE OWNER" in samp["statement"]
    # every deletion's retraining is replayed in full (complete), with the original lineage before it
    comp = [s for s in samp["segments"] if s["complete"]]
    assert {s["retraining_of_request"] for s in comp} == {None, 1, 2}  # None: the original lineage before it


def test_unpinned_key_warns(honest_fixture) -> None:  # noqa: F811
    r = _cli(honest_fixture.bundle_path, "--replay", "0", "--no-residual")
    assert r.returncode == 0
    assert "UNPINNED KEY" in r.stdout and "NO SAMPLED REPLAY" in r.stdout


def test_step_04_pinned_key_mismatch_rejected(honest_fixture, tmp_path) -> None:  # noqa: F811
    other = tmp_path / "other.pub.pem"
    other.write_bytes(SigningKey.generate().public_key.to_pem())
    r = _cli(honest_fixture.bundle_path, "--trust-key", str(other))
    assert r.returncode == 1
    assert "step 4" in r.stderr and "not the pinned key" in r.stderr


def test_unusable_inputs_exit_2(tmp_path) -> None:
    assert _cli(str(tmp_path / "missing.zip")).returncode == 2
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"hello")
    r = _cli(str(bad))
    assert r.returncode == 2 and "not a zip archive" in r.stderr
    assert _cli(str(bad), "--challenge", "xyz").returncode == 2
    assert _cli(str(bad), "--replay", "-1").returncode == 2
    assert _cli(str(bad), "--trust-key", str(tmp_path / "nokey.pem")).returncode == 2


def test_fewer_replays_than_disclosed(honest_fixture) -> None:  # noqa: F811
    v = verify(honest_fixture.bundle, VerifyOptions(replay=2, residual=False))
    assert v.exit_code == 0 and v.replayed == len(v.complete) + 2 and v.uniform_replayed == 2


def test_step_17_interactive_challenge(honest_fixture, tmp_path) -> None:  # noqa: F811
    from prover import Workspace
    from prover._bundle import write_bundle

    ch = bytes(range(32))
    path = str(tmp_path / "inter.zip")
    with Workspace.open(honest_fixture.ws_dir) as ws:
        write_bundle(ws, path, challenge=ch, replay=4)
    v = verify(path, VerifyOptions(challenge=ch, replay=4, residual=False))
    assert v.exit_code == 0 and v.sampled_by == "verifier" and any("UNPINNED HEAD" in w for w in v.warnings)
    v = verify(path, VerifyOptions(challenge=bytes(32)))
    assert v.exit_code == 1 and v.failed_step == 17 and "does not answer this verifier's challenge" in str(v.failure)
    v = verify(path)
    assert v.exit_code == 1 and v.failed_step == 17 and "pass the challenge" in str(v.failure)
    v = verify(honest_fixture.bundle, VerifyOptions(challenge=ch))
    assert v.exit_code == 1 and v.failed_step == 17 and "Fiat-Shamir" in str(v.failure)


def test_step_18_distance_mode_accepts_honest(honest_fixture) -> None:  # noqa: F811
    v = verify(honest_fixture.bundle, VerifyOptions(replay=3, replay_mode="distance"))
    assert v.exit_code == 0
    assert v.replay_report["mode"] == "distance"
    assert all(s["distance"] == 0.0 for s in v.replay_report["segments"])
    assert any("DISTANCE REPLAY" in w for w in v.warnings)


def test_report_json_for_rejection_names_step(honest_fixture, tmp_path) -> None:  # noqa: F811
    v = verify(b"PK\x03\x04broken")
    rep = to_json(v)
    assert rep["verdict"] == "unusable" and rep["exit_code"] == 2
    assert rep["failure"]["step"] == 1 and rep["failure"]["error"] == "InvalidBundle"
    assert [c["status"] for c in rep["checks"]][:2] == ["error", "skipped"]


def test_step_seed_follows_spec_06() -> None:
    """The verifier's (torch-free) step seed is the training module's, and both follow the
    formula of specs/06-training.md section 3, recomputed here with hashlib alone."""
    import hashlib
    import struct

    from verifiable_mu.training import step_seed as ts

    for args in [(0, 0, 0, 1, 0, 0), (7, 2, 3, 4, 5, 123456), (2**62, 1, 1, 1, 1, 2**40)]:
        run, shard, gen, stage, epoch, step = args
        kw = dict(shard=shard, generation=gen, stage=stage, epoch=epoch, step=step)
        want = hashlib.sha256(b"vmu:step-seed:v1\x00" + struct.pack(">QIIIIQ", *args)).digest()
        assert step_seed(run, **kw) == ts(run, **kw) == int.from_bytes(want[:8], "big") >> 1


def test_checkpoint_digest_without_torch_matches(honest_fixture) -> None:  # noqa: F811
    from verifiable_mu.training import checkpoint_digest, load_checkpoint
    from verifier._bundle import checkpoint_content_digest

    store = os.path.join(honest_fixture.ws_dir, "checkpoints")
    for name in sorted(os.listdir(store))[:5]:
        p = os.path.join(store, name)
        with open(p, "rb") as f:
            data = f.read()
        assert checkpoint_content_digest(data) == checkpoint_digest(load_checkpoint(p)) == bytes.fromhex(name[:64])


def test_read_bundle_api(honest_fixture) -> None:  # noqa: F811
    b = read_bundle(honest_fixture.bundle_path)
    assert b.manifest.origin.startswith("verifiable-mu.local/")
    assert len(b.transcripts) == 2 and len(b.consistency) == 2
    with pytest.raises(InvalidBundle, match="^not a proof bundle: the file is not a zip archive$") as e:
        read_bundle(b"nope")
    assert e.value.step is None  # read outside verify(): no step of the checklist raised it
