"""The disclosure summary (issue 16): the bundle's manifest, ``vmu bundle``'s output and the
verdict say how many records the bundle opens, by kind and as a fraction of the training set, and
whether the deleted records' features are included and why; the counts are the bundle's actual
openings, and the bundle opens no training record that replay does not use."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest_verifier import bundle_for, honest, members_of

from verifiable_mu._records import RecordOpening
from verifier import VerifyOptions, _replay, to_json, verify


def _openings(data: bytes) -> dict[str, Any]:
    return json.loads(members_of(data)["records/openings.json"])


def test_manifest_report_and_openings_agree() -> None:
    h = honest()
    manifest = json.loads(members_of(h.bundle)["manifest.json"])["disclosure"]
    op = _openings(h.bundle)
    counted = {k: len(op[k]) for k in ("deleted", "audit", "training")}
    assert {k: manifest[k] for k in counted} == counted
    assert manifest["deleted_features"] is True and "residual tests" in manifest["why"]["deleted"]
    assert all(o["features"] for o in op["deleted"])
    v = verify(h.bundle, VerifyOptions(residual=False))
    report = to_json(v)["disclosure"]
    assert report == manifest  # the verifier counts the openings it read, and finds the same
    assert report["training_fraction"] == pytest.approx(counted["training"] / report["train_records"], abs=1e-6)


def test_report_counts_the_openings_not_the_manifest() -> None:
    """The manifest is unsigned: a lying summary changes nothing the verifier reports."""
    from conftest_verifier import rezip

    h = honest()
    members = members_of(h.bundle)
    m = json.loads(members["manifest.json"])
    m["disclosure"]["training"] = 0
    members["manifest.json"] = json.dumps(m).encode()
    v = verify(rezip(members), VerifyOptions(residual=False, unsafe_no_replay=True))
    assert v.exit_code == 0
    assert to_json(v)["disclosure"]["training"] == len(_openings(h.bundle)["training"]) > 0


def test_the_training_records_opened_are_exactly_those_replay_uses() -> None:
    """Counted: the union of the batches of every segment step 18 replays, less the deleted
    records, is the set of training openings; fewer segments replayed open fewer records."""
    h = honest()
    plans: list[Any] = []
    real = _replay.replay

    def capture(plan: Any, **kw: Any) -> Any:
        plans.append(plan)
        return real(plan, **kw)

    counts = {}
    for k in (0, 8):
        data, _ = bundle_for(h.ws_dir, replay=k)
        plans.clear()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(_replay, "replay", capture)
            v = verify(data, VerifyOptions(residual=False, replay=k))
        assert v.exit_code == 0, v.failure
        used = {c for w in plans[0].segments for _, batch in w.steps for c in batch}
        op = _openings(data)
        deleted = {RecordOpening.from_json(o).commitment() for o in op["deleted"]}
        training = {RecordOpening.from_json(o).commitment() for o in op["training"]}
        assert training == used - deleted
        counts[k] = len(training)
    assert counts[0] < counts[8]


def test_vmu_bundle_prints_the_summary(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from prover.cli import main as vmu_main

    h = honest()
    assert vmu_main(["bundle", h.ws_dir, "--out", str(tmp_path / "b.vmu"), "--all"]) == 0
    out = capsys.readouterr().out
    assert "  disclosed: " in out and "with their features (the residual tests score them)" in out
    assert "training records (" in out and "% of the " in out
