"""``vmu-verify --policy agency`` (specs/09-verification.md, "Policies"): exit 0 only when every
requirement is met and every check ran and passed; any reduced check gives exit 3 ("accepted with
reduced checks") naming what was not met; a rejection stays 1 and unusable input 2.

The bundles are honest, and no step is stubbed: ``honest_50()`` deletes 50 records, enough for
step 19 to pass with a powered control, so each reduced case below changes one flag and nothing
else; ``honest()`` deletes 3 records, too few for step 19 to decide (inconclusive).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from conftest_verifier import bundle_for, honest, honest_50, members_of

from verifiable_mu._keys import SigningKey
from verifier.cli import main

CH = "5a" * 16
GOLDEN = Path(__file__).resolve().parent / "golden"


def _interactive(ws_dir: str, d: Path, name: str, requests: int, pub: str) -> dict[str, Any]:
    """An interactive bundle (challenge CH) of the workspace and the flags that pin everything."""
    data, _ = bundle_for(ws_dir, challenge=bytes.fromhex(CH))
    bundle = d / f"{name}.vmu"
    bundle.write_bytes(data)
    head = d / f"{name}.note"
    head.write_bytes(members_of(data)["heads/final.note"])
    return {"bundle": str(bundle), "dir": d, "bootstrap": "200",
            "pins": {"--trust-key": pub, "--challenge": CH, "--expect-head": str(head), "--requests": str(requests)}}


@pytest.fixture(scope="module")
def agency(tmp_path_factory) -> dict[str, Any]:
    h = honest_50()
    d = tmp_path_factory.mktemp("agency")
    a = _interactive(h.ws_dir, d, "h50", 1, h.pub)
    fs_head = d / "fs.note"
    with open(h.bundle, "rb") as f:
        fs_head.write_bytes(members_of(f.read())["heads/final.note"])
    return {**a, "fs_bundle": h.bundle, "fs_head": str(fs_head)}


def run(a: dict[str, Any], capsys, *extra: str, bundle: str | None = None, drop: tuple[str, ...] = (),
        **override: str) -> tuple[int, str, dict[str, Any]]:
    pins = {**a["pins"], **override}
    argv = [bundle or a["bundle"], "--policy", "agency", "--bootstrap", a["bootstrap"], "--json", str(a["dir"] / "r.json")]
    for flag, val in pins.items():
        if flag not in drop:
            argv += [flag, val]
    rc = main([*argv, *extra])
    out = capsys.readouterr()
    return rc, out.out + out.err, json.loads((a["dir"] / "r.json").read_text())


def test_agency_exit_0_only_when_every_check_ran_and_passed(agency, capsys, tmp_path) -> None:
    key = tmp_path / "k.pem"
    SigningKey.generate().save(str(key))
    vsa = tmp_path / "v.json"
    rc, out, rep = run(agency, capsys, "--quiet", "--attest", str(vsa), "--signing-key", str(key))
    assert rc == 0, out
    assert out == "verdict: ACCEPTED\n"
    assert rep["verdict"] == "accepted" and rep["policy"]["name"] == "agency" and rep["policy"]["unmet"] == []
    assert [c["status"] for c in rep["checks"]] == ["pass"] * 19  # step 19 included: the real residual tests
    assert rep["residual"]["verdict"] == "pass"
    assert rep["challenge"]["sampled_by"] == "verifier" and rep["trust"]["pinned"] and not rep["warnings"]
    st = json.loads(base64.b64decode(json.loads(vsa.read_bytes())["payload"]))
    p = st["predicate"]
    assert p["verificationResult"] == "PASSED" and p["verifiedLevels"] == ["VMU_UNLEARNING_VERIFIED_AGENCY"]
    assert p["policy"]["uri"].endswith("/policy/agency") and p["vmuVerification"]["keyPinned"] is True


@pytest.mark.parametrize(
    ("case", "extra", "drop", "fragment"),
    [
        ("unpinned-key", (), ("--trust-key",), "pinned-key: no --trust-key"),
        ("unpinned-head", (), ("--expect-head",), "interactive-challenge: no --expect-head"),
        ("unpinned-requests", (), ("--requests",), "interactive-challenge: no --requests"),
        ("replay-reduced", ("--replay", "2"), (), "complete-replay: --replay 2 is below the default 8"),
        ("no-replay", ("--unsafe-no-replay",), (), "complete-replay: --unsafe-no-replay"),
        ("residual-skipped", ("--no-residual",), (), "residual-passed: step 19 was skipped (--no-residual)"),
    ],
)
def test_agency_reduced_check_exit_3(agency, capsys, tmp_path, case, extra, drop, fragment) -> None:
    key = tmp_path / "k.pem"
    SigningKey.generate().save(str(key))
    vsa = tmp_path / "v.json"
    rc, out, rep = run(agency, capsys, "--quiet", "--attest", str(vsa), "--signing-key", str(key), *extra, drop=drop)
    assert rc == 3, out
    assert out.startswith("verdict: ACCEPTED WITH REDUCED CHECKS (policy agency; not met: ") and fragment in out
    assert rep["verdict"] == "accepted-reduced" and rep["exit_code"] == 3 and rep["failure"] is None
    assert len(rep["policy"]["unmet"]) == 1 and rep["policy"]["unmet"][0].startswith(fragment)
    # the signed verdict says FAILED (the policy was not met) and names what was not met
    p = json.loads(base64.b64decode(json.loads(vsa.read_bytes())["payload"]))["predicate"]
    assert p["verificationResult"] == "FAILED" and p["verifiedLevels"] == ["FAILED"]
    assert p["vmuVerification"]["verdict"] == "accepted-reduced" and p["vmuVerification"]["exitCode"] == 3
    assert p["vmuVerification"]["unmetRequirements"] == rep["policy"]["unmet"]


def test_agency_no_challenge_exit_3(agency, capsys) -> None:
    """The offline (Fiat-Shamir) bundle of the same workspace, every other pin given: the owner
    drew the sample."""
    rc, out, rep = run(agency, capsys, "--quiet", bundle=agency["fs_bundle"], drop=("--challenge",),
                       **{"--expect-head": agency["fs_head"]})
    assert rc == 3, out
    assert rep["policy"]["unmet"] == ["interactive-challenge: no --challenge (the owner drew the sample: Fiat-Shamir)"]
    assert "interactive-challenge: no --challenge" in out and rep["checks"][18]["status"] == "pass"


def test_agency_residual_inconclusive_exit_3(tmp_path, capsys) -> None:
    """3 deleted records are too few for step 19 to decide: inconclusive, never a pass."""
    h = honest()
    a = _interactive(h.ws_dir, tmp_path, "h3", 2, h.pub_pem)
    rc, out, rep = run(a, capsys, "--quiet")
    assert rc == 3, out
    assert rep["checks"][18]["status"] == "inconclusive"
    assert "residual-passed: step 19 was inconclusive" in out
    assert rep["policy"]["unmet"] == ["residual-passed: step 19 was inconclusive"]


def test_agency_rejection_stays_1_and_unusable_stays_2(capsys) -> None:
    """Missing pins do not turn a rejection or unusable input into exit 3."""
    rc = main([str(GOLDEN / "bundle_batch_not_committed.vmu"), "--policy", "agency", "--no-residual", "--quiet"])
    out = capsys.readouterr()
    assert rc == 1 and "verdict: REJECTED -- step 14" in out.out
    rc = main([str(GOLDEN / "bundle_unsupported_version.vmu"), "--policy", "agency", "--quiet"])
    out = capsys.readouterr()
    assert rc == 2 and "version 2 is not supported" in out.err


def test_default_policy_keeps_exit_0_for_reduced_checks(capsys) -> None:
    rc = main([str(GOLDEN / "bundle_honest.vmu"), "--replay", "0", "--no-residual", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith("verdict: ACCEPTED")
