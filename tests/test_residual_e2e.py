"""Issue 5 end to end through the bundle: honest deletion of 50 records of one shard on digits
(5 shards x 4 slices); vmu-verify's step 19 passes with a positive control that has power, and
the HTML report is self-contained."""

from __future__ import annotations

import base64
import json
import re

import conftest_verifier
import pytest

from prover import Workspace, WorkspaceConfig
from prover._bundle import write_bundle
from verifier import VerifyOptions, verify
from verifier._report import to_json
from verifier.cli import main as verify_main


@pytest.fixture(scope="module")
def honest_50() -> tuple[str, str]:
    h = conftest_verifier.honest_50()
    return h.bundle, h.pub


def test_step_19_honest_deletion_of_50_records_passes_with_a_powered_control(honest_50: tuple[str, str]) -> None:
    bundle, _ = honest_50
    v = verify(bundle, VerifyOptions())
    assert v.exit_code == 0, v.failure
    rep = to_json(v)
    res = rep["residual"]
    assert res["verdict"] == "pass", res["reason"]
    # the positive control (pre-deletion models) detects membership: some deciding attack's AUC
    # has its lower 95% bound above 0.5
    assert any(a["decides"] and a["auc_ci95"][0] > 0.5 for a in res["pre"])
    assert rep["checks"][18] == {**rep["checks"][18], "step": 19, "status": "pass"}
    assert rep["temporal"], "the temporal residual memory of the retrained shard is reported"


def test_step_19_no_residual_and_html_report(honest_50: tuple[str, str], tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    bundle, pub = honest_50
    html = tmp_path / "report.html"
    out = tmp_path / "report.json"
    assert verify_main([bundle, "--trust-key", pub, "--html", str(html), "--json", str(out), "--bootstrap", "200"]) == 0
    page = html.read_text(encoding="utf-8")
    imgs = re.findall(r'<img[^>]+src="([^"]+)"', page)
    assert len(imgs) >= 4  # ROC curves, histograms, replay distances, escape probability, ...
    for src in imgs:
        assert src.startswith("data:image/png;base64,")
        assert len(base64.b64decode(src.split(",", 1)[1])) > 1000
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched from the network
    assert page.index("Verdict: ACCEPTED") < page.index("<img")  # the verdict comes first
    assert json.loads(out.read_text())["residual"]["verdict"] == "pass"
    capsys.readouterr()
    assert verify_main([bundle, "--trust-key", pub, "--no-residual", "--quiet"]) == 0
    rep = verify(bundle, VerifyOptions(residual=False))
    assert [r.status for r in rep.results if r.step == 19] == ["skipped"]
    assert any("NO RESIDUAL TESTS" in w for w in rep.warnings)


def test_two_deleted_records_are_inconclusive_never_a_pass(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Two deleted records: fewer than the verifier decides on (MIN_RECORDS), never a pass."""
    import numpy as np
    import torch

    from verifier import residual_tests

    def proba(models):  # type: ignore[no-untyped-def]
        def wrap(m):  # type: ignore[no-untyped-def]
            def f(X):  # type: ignore[no-untyped-def]
                with torch.no_grad():
                    return torch.softmax(m(torch.from_numpy(np.asarray(X, dtype=np.float32))), 1).double().numpy()

            return f

        return [wrap(m) for m in models]

    ws = Workspace.create(str(tmp_path / "ws"), data="digits", config=WorkspaceConfig(workers=1, seed=0))
    ws.progress = False
    ws.train()
    pre = proba(ws.constituents())
    rows = [r for (r,) in ws.log.connection.execute("SELECT row FROM p_records WHERE role='train' AND shard=0 LIMIT 2")]
    ws.forget([ws.data.ids[r] for r in rows])
    post = proba(ws.constituents())
    audit = ws.split_rows("audit")
    X, y = ws.data.X, ws.data.y
    rep = residual_tests(
        post_models=post, pre_models=pre, shard_of_deleted=[0, 0], deleted_X=X[rows], deleted_y=y[rows],
        audit_X=X[audit], audit_y=y[audit], n_boot=200,
    )
    ws.close()
    assert rep.verdict == "inconclusive" and rep.reason.startswith("too few references or records: 2 deleted record(s)")


def test_step_19_issue_15_class_sorted_deletion_in_two_requests(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Issue 15 through vmu-verify: digits sorted by label, 4 shards x 3 slices, the first 4 records
    (all of class 0) deleted as a request of 1 and then of 3. Step 19 must not reject; with 4
    records it is inconclusive and says why and what to do. The residual seed is a function of the
    deleted set, not of how it was split into requests."""
    import numpy as np

    from prover._data import from_arrays, load_digits_dataset
    from verifier._steps_residual import residual_seed

    ds = load_digits_dataset()
    order = np.argsort(ds.y, kind="stable")
    ws = Workspace.create(str(tmp_path / "ws"), data=from_arrays(ds.X[order], ds.y[order]),
                          config=WorkspaceConfig(workers=1, seed=3, shards=4, slices=3))
    ws.progress = False
    ws.train()
    first4 = [i for (i,) in ws.log.connection.execute("SELECT id FROM p_records WHERE role='train' ORDER BY row LIMIT 4")]
    ws.forget(first4[:1])
    ws.forget(first4[1:])
    bundle = str(tmp_path / "b.vmu")
    write_bundle(ws, bundle)
    ws.close()
    v = verify(bundle, VerifyOptions(n_boot=200))
    assert v.exit_code == 0, v.failure  # accepted (with a warning), never rejected
    res = to_json(v)["residual"]
    assert res["verdict"] == "inconclusive"
    assert res["reason"].startswith("too few references or records: 4 deleted record(s)")
    assert res["calibration"]["labels"] == [0] and "verify more deleted records together" in res["reason"]
    from verifier._bundle import read_bundle

    dels = read_bundle(bundle).openings.deleted
    assert res["bootstrap"]["seed"] == residual_seed(dels) == residual_seed(list(reversed(dels)))


def test_deletion_inference_exposure_is_reported_from_the_bundles_models(honest_50: tuple[str, str]) -> None:
    """Issue 14: the exposure of publishing both versions, computed in step 19 on the proven
    pre- and post-deletion constituents: the pre-deletion models trained on the deleted records,
    the post-deletion ones did not, so the deleted records lose more belief in their labels than
    the retained ones (the same model twice would give every record a drop of exactly 0 and an
    AUC of 0.5)."""
    bundle, _ = honest_50
    rep = to_json(verify(bundle, VerifyOptions(n_boot=200)))
    di = rep["residual"]["deletion_inference"]
    assert di["n"]["deleted"] == rep["residual"]["n"]["deleted"] == 50
    assert di["n"]["retained"] == rep["residual"]["n"]["retained"] > 0
    assert di["mean_drop_nats"]["deleted"] > di["mean_drop_nats"]["retained"]
    assert di["auc_ci95"][0] > 0.5 and di["auc"] > 0.6
    assert "privacy cost of publishing both versions" in di["meaning"]
