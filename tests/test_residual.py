"""Residual-information tests (verifier/_residual.py, verifier/_temporal.py; specs/10-residual.md).

Unit tests use synthetic "models" (tables of logits indexed by a record id in feature 0) so that
membership is known exactly. The integration tests train SISA on digits with the prover:
an honest deletion passes with a working positive control, a prover that skips retraining fails,
and honest deletions over 20 seeds raise at most alpha * 20 false alarms.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verifiable_mu import canonical_json
from verifiable_mu._errors import MalformedInput
from verifier._residual import (
    ATTACKS,
    DECISION_ATTACKS,
    Reference,
    auc_score,
    bootstrap_metrics,
    deletion_inference,
    holm,
    min_detectable_auc,
    residual_tests,
    tpr_at_fpr,
)
from verifier._temporal import flatten_params, temporal_memory

# --- synthetic world -------------------------------------------------------------------------


class TableModel:
    """predict_proba for records whose feature 0 is an integer id: softmax of a logit table."""

    def __init__(self, logits: np.ndarray) -> None:
        self.logits = logits

    def __call__(self, X: np.ndarray) -> np.ndarray:
        z = self.logits[np.asarray(X)[:, 0].astype(np.int64)]
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


N_TRAIN, N_AUDIT, S, K = 500, 200, 5, 5


def world(seed: int = 0, *, boost: float = 1.5, n_del: int = 40) -> dict[str, Any]:
    """Records 0..499 are training records of shard id % 5, 500..699 the audit set. A model's
    true-class logit is the record's difficulty + model noise + ``boost`` if it trained on it.
    Deleted: the first ``n_del`` records of shard 0."""
    rng = np.random.default_rng(seed)
    n = N_TRAIN + N_AUDIT
    y = rng.integers(0, K, n)
    difficulty = rng.normal(2.0, 1.0, n)
    shard = np.full(n, -1)
    shard[:N_TRAIN] = np.arange(N_TRAIN) % S
    deleted = np.flatnonzero(shard == 0)[:n_del]

    def model(j: int, *, without: np.ndarray | None = None) -> TableModel:
        z = rng.normal(0.0, 0.5, (n, K))
        member = (shard == j).astype(float)
        if without is not None:
            member[without] = 0.0
        z[np.arange(n), y] += difficulty + boost * member
        return TableModel(z)

    pre = [model(j) for j in range(S)]
    post = [model(0, without=deleted)] + pre[1:]
    X = np.stack([np.arange(n), np.zeros(n)], axis=1).astype(np.float32)
    audit = np.arange(N_TRAIN, n)
    retained = np.setdiff1d(np.arange(N_TRAIN), deleted)[::5]
    return {
        "X": X, "y": y, "pre": pre, "post": post, "deleted": deleted, "audit": audit, "retained": retained, "shard": shard,
        "retrain": model,
    }


def kwargs(w: dict[str, Any], **over: Any) -> dict[str, Any]:
    X, y, d, a, r = w["X"], w["y"], w["deleted"], w["audit"], w["retained"]
    kw = dict(
        post_models=w["post"], pre_models=w["pre"], shard_of_deleted=w["shard"][d], deleted_X=X[d], deleted_y=y[d],
        audit_X=X[a], audit_y=y[a], retained_X=X[r], retained_y=y[r], retained_shard=w["shard"][r], n_boot=200, seed=1,
    )
    kw.update(over)
    return kw


@pytest.fixture(scope="module")
def synth() -> dict[str, Any]:
    return world(0)


# --- statistics ------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(-5, 5), min_size=1, max_size=30),
    st.lists(st.integers(-5, 5), min_size=1, max_size=30),
)
def test_auc_matches_sklearn_with_ties(pos: list[int], neg: list[int]) -> None:
    from sklearn.metrics import roc_auc_score

    labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    assert auc_score(np.array(pos), np.array(neg)) == pytest.approx(roc_auc_score(labels, np.r_[pos, neg]))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(-8, 8), min_size=1, max_size=40),
    st.lists(st.integers(-8, 8), min_size=1, max_size=200),
    st.sampled_from([0.001, 0.01, 0.1, 0.5]),
)
def test_tpr_at_fpr_is_the_best_roc_point_under_the_fpr(pos: list[int], neg: list[int], f: float) -> None:
    from sklearn.metrics import roc_curve

    labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    fpr, tpr, _ = roc_curve(labels, np.r_[pos, neg], drop_intermediate=False)
    expected = max(t for x, t in zip(fpr, tpr, strict=True) if x <= f + 1e-12)
    assert tpr_at_fpr(np.array(pos), np.array(neg), f) == pytest.approx(expected)


def test_holm_known_values() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([0.02]) == pytest.approx([0.02])


def test_bootstrap_is_seeded_and_brackets_the_estimate() -> None:
    rng = np.random.default_rng(3)
    pos, neg = rng.normal(0.5, 1, 60), rng.normal(0, 1, 200)
    a = bootstrap_metrics(pos, neg, n_boot=300, rng=np.random.default_rng(9))
    b = bootstrap_metrics(pos, neg, n_boot=300, rng=np.random.default_rng(9))
    assert np.array_equal(a["auc"], b["auc"]) and np.array_equal(a["tpr@0.01"], b["tpr@0.01"])
    lo, hi = np.percentile(a["auc"], [2.5, 97.5])
    assert lo < auc_score(pos, neg) < hi
    # a TPR is a count of the 60 positives; a stricter FPR never admits more of them (same resamples)
    for f in ("tpr@0.001", "tpr@0.01"):
        assert np.array_equal(a[f] * 60, np.round(a[f] * 60)) and a[f].std() > 0, f
    assert np.all(a["tpr@0.001"] <= a["tpr@0.01"]) and np.any(a["tpr@0.001"] < a["tpr@0.01"])


def test_vectorised_bootstrap_equals_the_plain_loop() -> None:
    rng = np.random.default_rng(4)
    pos, neg = np.round(rng.normal(0.3, 1, 30), 1), np.round(rng.normal(0, 1, 120), 1)  # with ties
    got = bootstrap_metrics(pos, neg, n_boot=50, rng=np.random.default_rng(8))
    draw = np.random.default_rng(8)
    ip, ineg = draw.integers(0, 30, (50, 30)), draw.integers(0, 120, (50, 120))
    for b in range(50):
        assert got["auc"][b] == pytest.approx(auc_score(pos[ip[b]], neg[ineg[b]]))
        assert got["tpr@0.01"][b] == pytest.approx(tpr_at_fpr(pos[ip[b]], neg[ineg[b]], 0.01))
        assert got["tpr@0.001"][b] == pytest.approx(tpr_at_fpr(pos[ip[b]], neg[ineg[b]], 0.001))


def test_min_detectable_auc_shrinks_with_more_records() -> None:
    assert min_detectable_auc(50, 180, 0.025) > min_detectable_auc(500, 1800, 0.025) > 0.5
    assert min_detectable_auc(5, 5, 0.001) == 1.0


# --- decisions on synthetic models ------------------------------------------------------------


def test_honest_deletion_passes_with_a_working_control(synth: dict[str, Any]) -> None:
    rep = residual_tests(**kwargs(synth))
    assert rep.verdict == "pass", rep.reason
    assert rep.control_detected is True and rep.post_reject is False
    assert "positive control detects them" in rep.reason
    for a in DECISION_ATTACKS:
        assert rep.result(a, "pre").auc_ci[0] > 0.5
        assert rep.result(a, "post").reject is False
        # the retained sample is still a member of the post-deletion models
        assert rep.result(a, "post").retained_auc > 0.7  # type: ignore[operator]
    # synthetic models are predictions only: the white-box attack says why it did not run
    assert rep.attacks == tuple(a for a in ATTACKS if a not in ("gradnorm", "shadow"))
    assert rep.decision_attacks == DECISION_ATTACKS
    assert ("gradnorm", "needs the constituents' weights (torch modules), not only their predictions") in rep.skipped
    assert ("shadow", "needs shadow models (step 19 trains them on the audit and retained records)") in rep.skipped


def test_skipped_retraining_fails(synth: dict[str, Any]) -> None:
    rep = residual_tests(**kwargs(synth, post_models=synth["pre"]))
    assert rep.verdict == "fail"
    assert "still singled out by the models" in rep.reason
    assert rep.post_reject and any(r.reject for r in rep.post)


def test_no_signal_in_the_control_is_inconclusive_not_pass() -> None:
    w = world(1, boost=0.0)
    rep = residual_tests(**kwargs(w))
    assert rep.verdict == "inconclusive"
    assert rep.reason.startswith("power too low")
    assert rep.control_detected is False


def test_without_pre_models_the_verdict_is_inconclusive(synth: dict[str, Any]) -> None:
    rep = residual_tests(**kwargs(synth, pre_models=None))
    assert rep.verdict == "inconclusive" and "no positive control" in rep.reason
    assert rep.pre == () and rep.control_detected is None


def test_population_attacks_are_reported_but_do_not_decide(synth: dict[str, Any]) -> None:
    rep = residual_tests(**kwargs(synth))
    for a in ("loss", "confidence"):
        r = rep.result(a)
        assert r.decides is False and r.p_adj is None and r.reject is False
        # a permutation p-value: (1 + hits) / (1 + B) by Monte Carlo, hits / arrangements when exact
        cal = rep.calibration
        assert cal.smallest_p <= r.p_value <= 1
        if not cal.exact:
            hits = r.p_value * (1 + cal.n_perm)
            assert abs(hits - round(hits)) < 1e-6 and round(hits) >= 1
    # A decision family made of population attacks only is possible, but must be asked for.
    rep2 = residual_tests(**kwargs(synth, decision_attacks=("loss",)))
    assert rep2.decision_attacks == ("loss",)


def test_population_attacks_would_fail_an_honest_deletion_of_easy_records() -> None:
    """Why loss/confidence do not decide: deleting the easiest records of a shard makes them look
    'member-like' to a plain loss threshold although no model trained on them any more."""
    w = world(2)
    d = w["deleted"]
    for m in w["pre"] + w["post"][:1]:
        m.logits[d, w["y"][d]] += 3.0  # the deleted records are easy for every model
    rep = residual_tests(**kwargs(w, decision_attacks=("loss", "lira", "rmia")))
    assert rep.result("loss").reject is True  # false alarm of the population attack
    for a in DECISION_ATTACKS:
        assert rep.result(a).reject is False


def test_several_affected_shards() -> None:
    w = world(3)
    d = np.r_[np.flatnonzero(w["shard"] == 0)[:20], np.flatnonzero(w["shard"] == 2)[:20]]
    post = [w["retrain"](0, without=d), w["pre"][1], w["retrain"](2, without=d), w["pre"][3], w["pre"][4]]
    kw = kwargs(w, post_models=post, shard_of_deleted=w["shard"][d], deleted_X=w["X"][d], deleted_y=w["y"][d])
    rep = residual_tests(**kw)
    assert rep.shards == (0, 2)
    assert rep.verdict == "pass", rep.reason
    cheat = residual_tests(**{**kw, "post_models": w["pre"]})
    assert cheat.verdict == "fail"


def test_extra_references_with_a_two_fold_split(synth: dict[str, Any]) -> None:
    w = synth
    rng = np.random.default_rng(11)
    n = w["X"].shape[0]
    fold = np.arange(N_AUDIT) % 2
    refs = []
    for k in (0, 1):
        z = rng.normal(0.0, 0.5, (n, K))
        z[np.arange(n), w["y"]] += 2.0
        seen = fold == k
        z[w["audit"][seen], w["y"][w["audit"][seen]]] += 1.5  # trained on its fold
        refs.append(Reference(predict_proba=TableModel(z), seen_audit=tuple(bool(s) for s in seen), name=f"fold{k}"))
    rep = residual_tests(**kwargs(w, extra_references=refs))
    assert rep.references == {"siblings": 4, "extra_per_record": 1, "extra_models": 2}
    assert rep.verdict == "pass", rep.reason
    # An audit record seen by a reference must not be scored against it: if it were, audit
    # records would look less member-like and the deleted ones more (a false alarm).
    assert rep.result("lira").auc < 0.65


def test_extra_references_must_cover_audit_records_evenly(synth: dict[str, Any]) -> None:
    seen = [True] * 10 + [False] * (N_AUDIT - 10)
    ref = Reference(predict_proba=synth["pre"][1], seen_audit=tuple(seen))
    with pytest.raises(MalformedInput, match="same number of them"):
        residual_tests(**kwargs(synth, extra_references=[ref, Reference(predict_proba=synth["pre"][2], seen_audit=(False,) * N_AUDIT)]))
    with pytest.raises(MalformedInput, match="one flag per audit record"):
        residual_tests(**kwargs(synth, extra_references=[Reference(predict_proba=synth["pre"][1], seen_audit=(False,) * 3)]))


def test_too_few_references_skip_lira_and_then_rmia() -> None:
    w = world(4)
    two = kwargs(w, post_models=w["post"][:2], pre_models=w["pre"][:2])
    keep = w["retained"][w["shard"][w["retained"]] < 2]
    two.update(retained_X=w["X"][keep], retained_y=w["y"][keep], retained_shard=w["shard"][keep])
    rep = residual_tests(**two)
    assert rep.attacks == ("loss", "confidence", "rmia", "shard", "label")
    assert rep.skipped == (("lira", "needs at least 2 reference models per record, has 1"),
                           ("gradnorm", "needs the constituents' weights (torch modules), not only their predictions"),
                           ("shadow", "needs shadow models (step 19 trains them on the audit and retained records)"))
    assert rep.decision_attacks == ("shard",)
    one = kwargs(w, post_models=w["post"][:1], pre_models=w["pre"][:1], retained_X=None)
    rep1 = residual_tests(**one)
    assert rep1.verdict == "inconclusive" and "no calibrated attack could run" in rep1.reason


def test_report_json_is_canonical_and_complete(synth: dict[str, Any]) -> None:
    rep = residual_tests(**kwargs(synth))
    j = rep.to_json()
    canonical_json(j)  # no NaN, no infinity
    assert j["type"] == "vmu.residual-report" and j["version"] == 2
    assert j["verdict"] == "pass" and j["correction"] == "holm"
    assert j["n"] == {"deleted": 40, "audit": N_AUDIT, "retained": len(synth["retained"])}
    ran = [a for a in ATTACKS if a not in ("gradnorm", "shadow")]  # synthetic models: predictions only
    assert [r["attack"] for r in j["post"]] == ran == [r["attack"] for r in j["pre"]]
    r = j["post"][2]
    for key in ("auc", "auc_ci95", "tpr_at_fpr_1pct", "tpr_at_fpr_1pct_ci95", "tpr_at_fpr_0.1pct", "tpr_at_fpr_0.1pct_ci95",
                "p_value", "p_adjusted", "reject", "decides", "roc", "scores", "retained_vs_audit_auc", "matched_auc", "matched_auc_ci95"):
        assert key in r
    assert len(r["scores"]["deleted"]) == 40 and len(r["scores"]["audit"]) == N_AUDIT
    assert r["roc"]["fpr"][0] == 0 and r["roc"]["fpr"][-1] == 1
    assert j["control"]["detected"] is True and j["control"]["best_attack"] in DECISION_ATTACKS


def test_results_are_deterministic(synth: dict[str, Any]) -> None:
    a = residual_tests(**kwargs(synth)).to_json()
    b = residual_tests(**kwargs(synth)).to_json()
    a.pop("seconds"), b.pop("seconds")
    assert a == b


# --- bad input ---------------------------------------------------------------------------------


def _bad_probs(X: np.ndarray) -> np.ndarray:
    return np.full((X.shape[0], K), 0.5)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"alpha": 0.0}, "alpha must be in"),
        ({"alpha": 0.7}, "alpha must be in"),
        ({"n_boot": 0}, "n_boot must be between"),
        ({"seed": -1}, "seed must be a non-negative 63-bit integer"),
        ({"rmia_a": 1.5}, "rmia_a must be in"),
        ({"gamma": 0.5}, "gamma at least 1"),
        ({"attacks": ("loss", "nope")}, "attacks must be distinct names"),
        ({"attacks": ("loss", "loss")}, "attacks must be distinct names"),
        ({"decision_attacks": ()}, "decision_attacks must be a non-empty subset"),
        ({"attacks": ("loss",), "decision_attacks": ("lira",)}, "decision_attacks must be a non-empty subset"),
        ({"post_models": []}, "at least one post-deletion model"),
        ({"pre_models": "3 models"}, "pre-deletion models for 5 post-deletion models"),
        ({"deleted_X": np.zeros(3, dtype=np.float32)}, "deleted_X must have one row per record"),
        ({"deleted_X": [["a", "b"]]}, "deleted_X must be a numeric array"),
        ({"audit_X": np.zeros((0, 2), dtype=np.float32), "audit_y": np.zeros(0, dtype=np.int64)}, "at least one deleted record and one audit record"),
        ({"deleted_y": np.zeros(3, dtype=np.int64)}, "deleted_y must be a 1-d array"),
        ({"deleted_y": np.full(40, 0.5)}, "deleted_y must be non-negative integer"),
        ({"shard_of_deleted": np.full(40, 7)}, "names a shard outside 0..4"),
        ({"shard_of_deleted": np.zeros(3, dtype=np.int64)}, "shard_of_deleted must be a 1-d array"),
        ({"retained_shard": None}, "retained_shard must be a 1-d array"),
        ({"audit_X": np.zeros((N_AUDIT, 3), dtype=np.float32)}, "same feature shape"),
    ],
)
def test_bad_arguments_are_rejected(synth: dict[str, Any], change: dict[str, Any], message: str) -> None:
    with pytest.raises(MalformedInput, match=message):
        residual_tests(**kwargs(synth, **change))


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (lambda X: np.full((X.shape[0], K), 0.5), "did not return class probabilities"),
        (lambda X: np.full((X.shape[0], K), np.nan), "did not return class probabilities"),
        (lambda X: np.full((X.shape[0],), 1.0), "returned an array of shape"),
        (lambda X: np.full((X.shape[0], 3), 1 / 3), "returned 3 classes, the other models 5"),
        (lambda X: "oops", "could not score the records"),
        (lambda X: (_ for _ in ()).throw(RuntimeError("mat1 and mat2 shapes cannot be multiplied")), "could not score the records: mat1"),
    ],
)
def test_models_that_do_not_return_probabilities_are_rejected(synth: dict[str, Any], model: Any, message: str) -> None:
    post = list(synth["post"])
    post[3] = model
    with pytest.raises(MalformedInput, match=message):
        residual_tests(**kwargs(synth, post_models=post))


def test_label_outside_the_models_classes(synth: dict[str, Any]) -> None:
    y = synth["y"][synth["deleted"]].copy()
    y[0] = K + 3
    with pytest.raises(MalformedInput, match="outside the models' 5 classes"):
        residual_tests(**kwargs(synth, deleted_y=y))


# --- temporal residual memory ---------------------------------------------------------------------


def test_temporal_memory_on_vectors() -> None:
    o = {0: np.zeros(4), 1: np.ones(4), 2: np.full(4, 3.0), 3: np.full(4, 4.0)}
    n = {2: np.full(4, 2.0), 3: np.full(4, 2.5)}
    rep = temporal_memory(original=o, retrained=n, start_stage=2, shard=3)
    assert [p.stage for p in rep.points] == [2, 3] and [p.t for p in rep.points] == [0, 1]
    # stage 2: original update 2, retrained update 1 -> |2-1| * 4
    assert rep.points[0].residual_l1 == pytest.approx(4.0)
    assert rep.points[0].residual_rel == pytest.approx(0.5)
    # stage 3: original update 1, retrained 0.5 -> 0.5 * 4
    assert rep.points[1].residual_l1 == pytest.approx(2.0)
    assert rep.points[1].distance_rel == pytest.approx(1.5 / 4.0)
    j = rep.to_json()
    canonical_json(j)
    assert j["informative_only"] is True and j["shard"] == 3


def test_temporal_memory_with_checkpoints_and_margins() -> None:
    ck = lambda v: {"param/w": np.full((2, 2), v, dtype=np.float32), "momentum/w": np.full((2, 2), 99.0)}  # noqa: E731
    assert flatten_params(ck(1.0)).tolist() == [1.0] * 4  # momentum ignored
    models = {s: (lambda X, s=s: np.tile([0.5 + 0.1 * s, 0.5 - 0.1 * s], (len(X), 1))) for s in range(4)}
    flat = {s: (lambda X: np.tile([0.5, 0.5], (len(X), 1))) for s in range(4)}
    rep = temporal_memory(
        original={1: ck(0), 2: ck(1), 3: ck(2)}, retrained={1: ck(0), 2: ck(0.5), 3: ck(1.5)}, start_stage=2,
        original_models=models, retrained_models=flat, deleted_X=np.zeros((3, 2)), deleted_y=[0, 0, 0],
    )
    assert rep.points[0].margin_nats == pytest.approx(math.log(0.7 / 0.5))
    assert rep.points[1].margin_nats == pytest.approx(math.log(0.8 / 0.5))


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"start_stage": 0}, "start_stage must be a stage number"),
        ({"original": {2: np.zeros(3), 3: np.zeros(3)}}, "lacks the rollback checkpoint"),
        ({"retrained": {3: np.zeros(3)}}, "every stage from 2 on"),
        ({"retrained": {2: np.zeros(3), 4: np.zeros(3)}}, "every stage from 2 on"),
        ({"retrained": {2: np.zeros(3), 3: np.zeros(3), 4: np.zeros(3)}}, "original lineage lacks stage 4"),
        ({"retrained": {1: np.ones(3), 2: np.zeros(3), 3: np.zeros(3)}}, "does not start from the original"),
        ({"retrained": {2: np.zeros(5), 3: np.zeros(5)}}, "different sizes"),
        ({"original_models": {}}, "per-stage margins need"),
        ({"original": {1: {}, 2: np.zeros(3), 3: np.zeros(3)}}, "without tensors"),
        ({"original": {1: np.zeros(0), 2: np.zeros(3), 3: np.zeros(3)}}, "empty parameter vector"),
    ],
)
def test_temporal_memory_rejects_bad_lineages(kw: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {
        "original": {1: np.zeros(3), 2: np.zeros(3), 3: np.zeros(3)},
        "retrained": {2: np.zeros(3), 3: np.zeros(3)},
        "start_stage": 2,
    }
    args.update(kw)
    with pytest.raises(MalformedInput, match=message):
        temporal_memory(**args)


def test_the_residual_module_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys; import verifier._residual, verifier._canary, verifier._temporal, verifier._html; print('torch' in sys.modules)"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- integration: SISA on digits with the prover ---------------------------------------------------

DIGITS = dict(shards=5, slices=4, epochs=20, workers=1)
N_DELETED = 50


def softmax_of(module: Any) -> Any:
    import torch

    def predict_proba(X: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(module(torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))), dim=1).numpy()

    predict_proba.module = module  # type: ignore[attr-defined]  # the white-box attack needs the weights
    return predict_proba


def digits_run(seed: int, root: str, *, keep: bool = False) -> dict[str, Any]:
    """Train, delete 50 random records of shard 0 honestly; return what the verifier would see
    (also the setup of benchmarks/bench_residual.py)."""
    from prover import Workspace, WorkspaceConfig

    ws = Workspace.create(os.path.join(root, f"ws{seed}"), data="digits", config=WorkspaceConfig(seed=seed, **DIGITS))
    ws.progress = False
    ws.train()
    pre = [softmax_of(m) for m in ws.constituents()]
    X, y = ws.data.X, ws.data.y
    audit = ws.split_rows("audit")
    train = ws.log.connection.execute("SELECT row, id, shard FROM p_records WHERE role='train' ORDER BY row").fetchall()
    rng = np.random.default_rng(seed + 1000)
    shard0 = [r for r in train if r[2] == 0]
    deleted = [shard0[i] for i in rng.choice(len(shard0), N_DELETED, replace=False)]
    t0 = time.perf_counter()
    ws.forget([r[1] for r in deleted])
    forget_s = time.perf_counter() - t0
    post = [softmax_of(m) for m in ws.constituents()]
    gone = {r[0] for r in deleted}
    kept = [r for r in train if r[0] not in gone]
    kept = [kept[i] for i in rng.choice(len(kept), 200, replace=False)]
    d = np.array([r[0] for r in deleted])
    k = np.array([r[0] for r in kept])
    out = {
        "kw": dict(
            pre_models=pre, shard_of_deleted=np.zeros(N_DELETED, dtype=np.int64), deleted_X=X[d], deleted_y=y[d],
            audit_X=X[audit], audit_y=y[audit], retained_X=X[k], retained_y=y[k],
            retained_shard=np.array([r[2] for r in kept]), seed=seed,
        ),
        "post": post,
        "pre": pre,
        "forget_s": forget_s,  # the retraining the residual tests check (benchmarks/bench_residual.py)
    }
    if keep:
        out["ws"] = ws
    else:
        ws.close()
    return out


@pytest.fixture(scope="module")
def digits_root() -> Iterator[str]:
    root = tempfile.mkdtemp(prefix="vmu-residual-")
    yield root
    shutil.rmtree(root, ignore_errors=True)


# Seed 0 of the sweep in specs/10-residual.md (control AUC about 0.69); any seed with a working
# control passes an honest deletion, see test_false_alarm_rate_over_20_seeds.
MAIN_SEED = 0


@pytest.fixture(scope="module")
def digits_main(digits_root: str) -> Iterator[dict[str, Any]]:
    run = digits_run(MAIN_SEED, digits_root, keep=True)
    yield run
    run["ws"].close()


@pytest.mark.slow
def test_digits_honest_deletion_passes_and_the_control_detects(digits_main: dict[str, Any]) -> None:
    rep = residual_tests(post_models=digits_main["post"], n_boot=1000, **digits_main["kw"])
    assert rep.verdict == "pass", rep.reason
    best = max((r for r in rep.pre if r.decides), key=lambda r: r.auc_ci[0])
    assert best.auc_ci[0] > 0.5, best  # the positive control's lower 95% bound
    assert best.auc > 0.6
    for r in rep.post:
        if r.decides:
            assert r.auc < best.auc_ci[0]


@pytest.mark.slow
def test_digits_prover_that_skips_retraining_fails(digits_main: dict[str, Any]) -> None:
    rep = residual_tests(post_models=digits_main["pre"], n_boot=200, **digits_main["kw"])
    assert rep.verdict == "fail"
    assert "still singled out" in rep.reason


@pytest.mark.slow
def test_digits_temporal_memory_from_logged_checkpoints(digits_main: dict[str, Any]) -> None:
    from verifiable_mu.training import load_checkpoint

    ws = digits_main["ws"]
    lineages: dict[int, dict[int, Any]] = {}
    for e in ws.log.entries():
        if e.kind == "checkpoint" and e.body["shard"] == 0:
            path = os.path.join(ws.store, e.body["digest"] + ".safetensors")
            lineages.setdefault(e.body["generation"], {})[e.body["stage"]] = load_checkpoint(path)
    start = min(lineages[1])
    rep = temporal_memory(original=lineages[0], retrained=lineages[1], start_stage=start)
    assert [p.stage for p in rep.points] == list(range(start, 5))
    assert all(p.residual_l1 > 0 and 0 < p.distance_rel < 1 for p in rep.points)


def _honest_and_cheating_verdicts(seed: int) -> tuple[str, str | None]:
    """One honest run (a worker of the false-alarm test): the honest verdict and, when the
    control has power, the verdict for a prover that skipped retraining."""
    root = tempfile.mkdtemp(prefix="vmu-fa-")
    try:
        run = digits_run(seed, root)
        honest = residual_tests(post_models=run["post"], n_boot=20, **run["kw"])
        cheat = residual_tests(post_models=run["pre"], n_boot=20, **run["kw"]) if honest.control_detected else None
        return honest.verdict, None if cheat is None else cheat.verdict
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_false_alarm_rate_over_20_seeds() -> None:
    """Honest deletions with 20 different seeds: at most alpha * 20 = 1 'fail' (alpha = 0.05, the
    default); and the cheating variant of the same runs fails whenever the control has power."""
    results = [_honest_and_cheating_verdicts(seed) for seed in range(20)]
    verdicts = [h for h, _ in results]
    assert verdicts.count("fail") <= math.floor(0.05 * len(verdicts)), verdicts
    with_power = [c for h, c in results if c is not None]
    assert len(with_power) >= 15, verdicts  # the control has power in most runs (measured: 174 of 200)
    assert with_power == ["fail"] * len(with_power)
    assert all(h == "pass" for h, c in results if c is not None)


# --- worked examples in specs/10-residual.md ------------------------------------------------------

_VECTOR = __import__("re").compile(r"^```vector name=([A-Za-z0-9._-]+)\n(.*?)\n```$", __import__("re").S | __import__("re").M)


def spec_vectors() -> dict[str, Any]:
    import json

    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "specs", "10-residual.md")) as f:
        text = f.read()
    return {name: json.loads(body) for name, body in _VECTOR.findall(text)}


def test_spec_vector_residual_scores() -> None:
    v = spec_vectors()
    inp, exp = v["residual-1-input"], v["residual-1-expected"]
    P = np.array(inp["probabilities"])
    models = [(lambda X, m=m: P[m][np.asarray(X)[:, 0].astype(np.int64)]) for m in range(len(P))]
    X = np.arange(P.shape[1], dtype=np.float32)[:, None]
    y = np.array(inp["labels"])
    d, a = inp["deleted"], inp["audit"]
    rep = residual_tests(post_models=models, pre_models=None, shard_of_deleted=np.array(inp["shard_of_deleted"]),
                         deleted_X=X[d], deleted_y=y[d], audit_X=X[a], audit_y=y[a], n_boot=10)
    # strata (label 0: 1 deleted, 2 audit; label 1: 1 deleted, 1 audit) admit 3 x 2 arrangements
    assert rep.verdict == "inconclusive" and rep.reason.startswith("too few references or records")
    assert rep.calibration.smallest_p == pytest.approx(exp["smallest_p"], rel=1e-8)
    assert "label" in rep.attacks  # reported; its noisy queries have no vector (the models here are lookup tables)
    for attack in ("loss", "confidence", "lira", "rmia", "shard"):
        r = rep.result(attack)
        assert list(r.scores_deleted) == pytest.approx(exp[attack]["deleted"], rel=1e-8, abs=1e-9)
        assert list(r.scores_audit) == pytest.approx(exp[attack]["audit"], rel=1e-8, abs=1e-9)
        assert r.auc == pytest.approx(exp[attack]["auc"])
        assert r.matched_auc == pytest.approx(exp[attack]["matched_auc"])
        assert r.p_value == pytest.approx(exp[attack]["p_value"], rel=1e-8)
    for attack, q in exp["adjusted"].items():
        assert rep.result(attack).p_adj == pytest.approx(q, rel=1e-8)


def test_spec_vector_holm() -> None:
    v = spec_vectors()["holm-1"]
    assert holm(v["p"]) == pytest.approx(v["adjusted"])


def test_deletion_inference_separates_forgotten_records_and_is_blind_without_a_change() -> None:
    """Issue 14: deletion-inference exposure. A pre-deletion model that memorised the deleted
    records and a post-deletion model that did not: AUC 1 (the drop is large for deleted records
    only). The same model before and after: every drop is 0, AUC 0.5 and TPR at 1% FPR 0."""
    rng = np.random.default_rng(3)
    nd, nr = 30, 60
    d_idx, r_idx = np.arange(nd), np.arange(nd, nd + nr)
    post = np.log(rng.uniform(0.3, 0.6, nd + nr))
    pre = post.copy()
    pre[d_idx] = np.log(0.99)
    di = deletion_inference(pre, post, d_idx, r_idx, 200, np.random.default_rng(0))
    assert di is not None and di.auc == 1.0 and di.tpr_1pct == 1.0 and di.auc_ci[0] > 0.9
    assert di.mean_drop_deleted > 0.4 and di.mean_drop_retained == 0.0
    same = deletion_inference(post, post, d_idx, r_idx, 200, np.random.default_rng(0))
    assert same is not None and same.auc == 0.5 and same.tpr_1pct == 0.0
    assert deletion_inference(pre, post, d_idx, np.arange(0), 200, np.random.default_rng(0)) is None
    j = di.to_json()
    assert j["auc"] == 1.0 and j["n"] == {"deleted": nd, "retained": nr} and "reported" in j["meaning"]


def test_models_that_give_every_label_probability_zero_keep_the_report_finite() -> None:
    """A model destroyed by DP noise (or any model) may give a record's label probability exactly
    0 under every reference: the RMIA ratio must not divide by zero, and the report stays finite
    (canonical JSON refuses NaN and infinity)."""
    rng = np.random.default_rng(2)
    X = rng.random((120, 4)).astype(np.float32)
    y = rng.integers(0, 3, 120)

    def wrong(Xq: np.ndarray) -> np.ndarray:
        P = np.zeros((len(Xq), 3))
        P[:, 0] = 1.0  # class 0 with certainty: every other label gets probability exactly 0
        return P

    import warnings

    models = [wrong, wrong, wrong]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no division by zero on the way
        rep = residual_tests(post_models=models, pre_models=models, shard_of_deleted=np.arange(20) % 3,
                             deleted_X=X[:20], deleted_y=y[:20], audit_X=X[20:], audit_y=y[20:], n_boot=20, n_perm=99)
    canonical_json(rep.to_json())
    assert np.all(np.isfinite(rep.result("rmia").scores_deleted))
