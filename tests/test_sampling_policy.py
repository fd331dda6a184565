"""Issue 10: the verifier, not the bundle, decides what is replayed (specs/08 section 5, specs/09
steps 5, 7, 17 and 18).

* the manifest's ``replay``/``sample`` are ignored: editing them downgrades nothing;
* a bundle that lacks what the verifier's own sample needs is rejected at step 17;
* nothing replayed gives exit 0 only with ``--unsafe-no-replay`` (and a warning);
* an offline (Fiat-Shamir) seed covers the final head's checkpoint body only, and every verdict
  says the sample was drawn by the owner;
* an interactive verifier pins the request count (``--requests``, step 7) and the final head
  (``--expect-head``, step 5): a bundle answering the challenge with another prefix or head fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from conftest_verifier import bundle_for, forge, honest, honest_fixture, members_of, rezip, skip_retraining  # noqa: F401

from verifiable_mu._note import Checkpoint, sign_checkpoint
from verifier import VerifyOptions, render_html, to_json, verify
from verifier._checks import ExpectedHead

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT}
CH = bytes(range(16, 48))

_FORGED: dict[str, bytes] = {}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "verifier.cli", *args, "--no-residual"], capture_output=True,
                          text=True, env=ENV, timeout=300)


def _skipped_retraining() -> bytes:
    """A Fiat-Shamir bundle of a cheater who never retrained (test_cheating (b))."""
    if "b" not in _FORGED:
        _FORGED["b"] = forge(honest(), lambda ctx: skip_retraining(ctx) and None, name="noretrain")
    return _FORGED["b"]


def _manifest_edit(data: bytes, **fields: Any) -> bytes:
    m = members_of(data)
    man = json.loads(m["manifest.json"])
    man.update(fields)
    m["manifest.json"] = json.dumps(man).encode()
    return rezip(m)


# --- downgrade through the manifest ------------------------------------------------------------


def test_manifest_replay_zero_downgrades_nothing(honest_fixture) -> None:  # noqa: F811
    """Issue 10 attack 3: a manifest edited to "replay": 0 and an empty sample no longer turns the
    replay off; the verifier draws its own k (default 8) and the deletion lineage in full."""
    edited = _manifest_edit(honest_fixture.bundle, replay=0, sample=[])
    v = verify(edited, VerifyOptions(residual=False))
    assert v.exit_code == 0, repr(v.failure)
    assert v.uniform_replayed == min(8, v.sampled_population) > 0
    assert v.replayed == len(v.complete) + v.uniform_replayed and v.complete
    # the same edit on a cheater's bundle: still rejected by the replay
    v = verify(_manifest_edit(_skipped_retraining(), replay=0, sample=[]), VerifyOptions(residual=False))
    assert v.exit_code == 1 and v.failed_step == 18 and type(v.failure).__name__ == "ReplayMismatch"
    assert "does not reproduce" in str(v.failure)


def test_step_17_bundle_lacking_the_verifiers_sample_is_rejected(honest_fixture) -> None:  # noqa: F811
    """A bundle written with fewer draws than the verifier's policy asks for is rejected (exit 1)."""
    data, _ = bundle_for(honest_fixture.ws_dir, replay=1)
    v = verify(data, VerifyOptions(residual=False))
    assert v.exit_code == 1 and v.failed_step == 17 and type(v.failure).__name__ == "SegmentMissing"
    assert "sampled segment ending at entry" in str(v.failure)
    # the verifier may ask for fewer (the sample for k is a prefix of the sample for k' > k)
    assert verify(data, VerifyOptions(replay=1, residual=False)).exit_code == 0


def test_nothing_replayed_only_with_unsafe_option(tmp_path) -> None:
    """--replay 0 still replays the deletion lineage (the cheater is caught); only
    --unsafe-no-replay turns replay off, with a warning on stderr and in the verdict."""
    path = tmp_path / "noretrain.zip"
    path.write_bytes(_skipped_retraining())
    r = _cli(str(path), "--replay", "0")
    assert r.returncode == 1 and "step 18" in r.stderr and "does not reproduce" in r.stderr
    out = tmp_path / "r.json"
    r = _cli(str(path), "--unsafe-no-replay", "--json", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "--unsafe-no-replay" in r.stderr and "UNSAFE NO REPLAY" in r.stdout
    rep = json.loads(out.read_text())
    assert rep["checks"][17]["status"] == "skipped" and rep["sampling"]["replayed"] == 0
    assert any("UNSAFE NO REPLAY" in w for w in rep["warnings"])


# --- offline (Fiat-Shamir) ---------------------------------------------------------------------


def _resign_final_head(h: Any, data: bytes, **changes: Any) -> bytes:
    """The owner re-signs the final head with other free lines (timestamp, extensions)."""
    from prover import Workspace

    m = members_of(data)
    old = Checkpoint.from_text(m["heads/final.note"].decode().split("\n\n", 1)[0] + "\n")
    new = Checkpoint(origin=old.origin, size=old.size, root_hash=old.root_hash,
                     timestamp=changes.get("timestamp", old.timestamp), extensions=changes.get("extensions", ()))
    with Workspace.open(h.ws_dir) as ws:
        m["heads/final.note"] = sign_checkpoint(new, ws._note_signer)
    assert m["heads/final.note"] != members_of(data)["heads/final.note"]
    return rezip(m)


def test_fiat_shamir_seed_ignores_the_heads_free_lines(honest_fixture) -> None:  # noqa: F811
    """Issue 10 attack 4: re-signing the final head with another timestamp (one signature) no
    longer re-draws the sample; only a new checkpoint body (a new tree head) does."""
    base = verify(honest_fixture.bundle, VerifyOptions(replay=3, residual=False))
    assert base.exit_code == 0
    for ts in (1, 2**40):
        v = verify(_resign_final_head(honest_fixture, honest_fixture.bundle, timestamp=ts),
                   VerifyOptions(replay=3, residual=False))
        assert v.exit_code == 0, repr(v.failure)
        assert v.seed == base.seed
        assert [r.end_index for r in v.sample] == [r.end_index for r in base.sample]


def test_fiat_shamir_verdicts_say_sampled_by_the_owner(honest_fixture) -> None:  # noqa: F811
    v = verify(honest_fixture.bundle, VerifyOptions(replay=3, residual=False))
    assert v.exit_code == 0 and v.sampled_by == "owner"
    from verifier import render_text

    text = render_text(v)
    assert "SAMPLED BY THE OWNER" in text and "one new tree head" in text
    assert "SAMPLED BY THE OWNER" in text.splitlines()[-1]  # the verdict line (all that --quiet prints)
    rep = to_json(v)
    assert rep["challenge"]["sampled_by"] == rep["sampling"]["sampled_by"] == "owner"
    assert "SAMPLED BY THE OWNER" in rep["sampling"]["statement"] and "g tries" in rep["sampling"]["statement"]
    assert rep["sampling"]["single_segment_escape"] == pytest.approx(1 - 3 / v.sampled_population)
    assert any("SAMPLED BY THE OWNER" in w for w in rep["warnings"])
    page = render_html(rep)
    assert "Sampled by the owner" in page and "<td>owner</td>" in page


# --- interactive ---------------------------------------------------------------------------------


def _interactive(h: Any, **kw: Any) -> bytes:
    return bundle_for(h.ws_dir, challenge=CH, **kw)[0]


def test_interactive_seed_binds_the_request_prefix(honest_fixture) -> None:  # noqa: F811
    """Issue 10 attack 5: the same challenge gives another seed for another request prefix, and a
    verifier who fixed the request count (--requests) rejects the shorter prefix at step 7."""
    from prover import Workspace
    from prover._bundle import write_bundle

    full = _interactive(honest_fixture)
    p = os.path.join(honest_fixture.root, "prefix.zip")
    with Workspace.open(honest_fixture.ws_dir) as ws:
        write_bundle(ws, p, challenge=CH, transcript=1)
    with open(p, "rb") as f:
        prefix = f.read()
    a = verify(full, VerifyOptions(challenge=CH, residual=False))
    b = verify(prefix, VerifyOptions(challenge=CH, residual=False))
    assert a.exit_code == b.exit_code == 0 and a.seed != b.seed and a.sampled_by == "verifier"
    v = verify(prefix, VerifyOptions(challenge=CH, requests=(2,), residual=False))
    assert v.exit_code == 1 and v.failed_step == 7 and type(v.failure).__name__ == "HeadMismatch"
    assert "holds requests 1..1" in str(v.failure) and "expects 2 request(s)" in str(v.failure)
    v = verify(full, VerifyOptions(challenge=CH, requests=(2,), residual=False))
    assert v.exit_code == 0 and not any("UNPINNED REQUESTS" in w for w in v.warnings)


def test_step_05_expect_head(honest_fixture, tmp_path) -> None:  # noqa: F811
    """--expect-head pins the final head: another root, size or origin is rejected at step 5; a
    re-signed head with other free lines is still the expected head."""
    data = _interactive(honest_fixture)
    note = members_of(data)["heads/final.note"]
    ck = Checkpoint.from_text(note.decode().split("\n\n", 1)[0] + "\n")
    ok = verify(data, VerifyOptions(challenge=CH, expect_head=ExpectedHead(root=ck.root_hash, size=ck.size,
                                                                            origin=ck.origin), residual=False))
    assert ok.exit_code == 0 and not any("UNPINNED HEAD" in w for w in ok.warnings)
    assert any("UNPINNED REQUESTS" in w for w in ok.warnings)
    for bad in (ExpectedHead(root=bytes(32)), ExpectedHead(root=ck.root_hash, size=ck.size - 1),
                ExpectedHead(root=ck.root_hash, origin="other.example/log")):
        v = verify(data, VerifyOptions(challenge=CH, expect_head=bad, residual=False))
        assert v.exit_code == 1 and v.failed_step == 5 and type(v.failure).__name__ == "HeadMismatch"
        assert "not the head the verifier expects" in str(v.failure)
    # the CLI: a note file or a hex root
    nf = tmp_path / "head.note"
    nf.write_bytes(note)
    bp = tmp_path / "b.zip"
    bp.write_bytes(_resign_final_head(honest_fixture, data, timestamp=7))
    r = _cli(str(bp), "--challenge", CH.hex(), "--expect-head", str(nf), "--requests", "1-2")
    assert r.returncode == 0, r.stdout + r.stderr
    r = _cli(str(bp), "--challenge", CH.hex(), "--expect-head", "00" * 32)
    assert r.returncode == 1 and "step 5" in r.stderr
    r = _cli(str(bp), "--challenge", CH.hex(), "--requests", "1,3")
    assert r.returncode == 1 and "step 7" in r.stderr and "1 or 3 request(s)" in r.stderr


@pytest.mark.parametrize("bad", ["0", "x", "3-1", "2,,4"])
def test_cli_rejects_bad_requests(bad: str, tmp_path) -> None:
    r = _cli(str(tmp_path / "none.zip"), "--requests", bad)
    assert r.returncode == 2 and "--requests must be" in r.stderr


def test_cli_rejects_bad_expect_head(tmp_path) -> None:
    r = _cli(str(tmp_path / "none.zip"), "--expect-head", str(tmp_path / "missing.note"))
    assert r.returncode == 2 and "--expect-head" in r.stderr
    junk = tmp_path / "junk.note"
    junk.write_bytes(b"not a note")
    r = _cli(str(tmp_path / "none.zip"), "--expect-head", str(junk))
    assert r.returncode == 2 and "not a tree head note" in r.stderr
