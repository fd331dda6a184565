"""Backdoor canaries: the data subject's marking (verifiable_mu/_canary.py) and the verifier's
binomial test (verifier/_canary.py); specs/10-residual.md.

The integration test marks 20 digits records of one shard, trains SISA with the prover, deletes
them, and checks that the trigger works on the pre-deletion constituent and not afterwards, and
that a prover who skips retraining fails.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from verifiable_mu import canonical_json
from verifiable_mu._canary import Trigger, apply_trigger, mark_with_trigger
from verifiable_mu._errors import MalformedInput, UnsupportedVersion
from verifier._canary import canary_test, clopper_pearson_upper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORNER = Trigger(indices=(54, 55, 62, 63), values=(1.0, 1.0, 1.0, 1.0), target=0)

# --- the trigger (data subject side) -------------------------------------------------------


def test_mark_with_trigger_stamps_features_and_sets_the_label() -> None:
    X = np.zeros((3, 8, 8), dtype=np.float32)
    y = np.array([4, 5, 6])
    Xm, ym = mark_with_trigger(X, y, trigger=CORNER)
    assert Xm.shape == X.shape and Xm.dtype == np.float32
    assert ym.tolist() == [0, 0, 0] and ym.dtype == np.int64
    assert Xm[:, 6, 6].tolist() == [1.0] * 3 and Xm[:, 7, 7].tolist() == [1.0] * 3
    assert Xm.sum() == 12.0
    assert X.sum() == 0.0 and y.tolist() == [4, 5, 6]  # inputs untouched


def test_apply_trigger_keeps_labels_elsewhere_and_copies() -> None:
    X = np.arange(2 * 64, dtype=np.float32).reshape(2, 64)
    Xt = apply_trigger(X, CORNER)
    assert Xt[:, [54, 55, 62, 63]].tolist() == [[1.0] * 4] * 2
    keep = [i for i in range(64) if i not in CORNER.indices]
    assert np.array_equal(Xt[:, keep], X[:, keep])
    assert X[0, 63] == 63.0


def test_corner_trigger() -> None:
    t = Trigger.corner(n_features=64, target=3, size=2, value=0.5)
    assert t.indices == (62, 63) and t.values == (0.5, 0.5) and t.target == 3
    with pytest.raises(MalformedInput, match="trigger size must be between 1"):
        Trigger.corner(n_features=4, target=0, size=5)


def test_trigger_json_round_trip() -> None:
    d = CORNER.to_json()
    assert d == {"type": "vmu.canary-trigger", "version": 1, "target": 0, "indices": [54, 55, 62, 63],
                 "values": ["1.0", "1.0", "1.0", "1.0"]}
    canonical_json(d)
    assert Trigger.from_json(d) == CORNER


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"target": -1}, "target must be a non-negative class index"),
        ({"target": True}, "target must be a non-negative class index"),
        ({"indices": (), "values": ()}, "at least one feature"),
        ({"values": (1.0,)}, "same length"),
        ({"indices": (1, 1), "values": (1.0, 1.0)}, "must be distinct"),
        ({"indices": (-1,), "values": (1.0,)}, "non-negative integers"),
        ({"indices": (1,), "values": (float("nan"),)}, "finite floats"),
        ({"indices": (1,), "values": (1,)}, "finite floats"),
        ({"indices": tuple(range(5000)), "values": (1.0,) * 5000}, "at most 4096 features"),
    ],
)
def test_bad_triggers_are_rejected(kw: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"indices": (1, 2), "values": (1.0, 1.0), "target": 0}
    args.update(kw)
    with pytest.raises(MalformedInput, match=message):
        Trigger(**args)


@pytest.mark.parametrize(
    ("change", "exc", "message"),
    [
        ({"type": "vmu.other"}, MalformedInput, "not a trigger document"),
        ({"version": 2}, UnsupportedVersion, "trigger version 2 is not supported"),
        ({"extra": 1}, MalformedInput, "unknown fields: extra"),
        ({"values": [1.0, 1.0, 1.0, 1.0]}, MalformedInput, "decimal strings"),
        ({"values": ["x", "1", "1", "1"]}, MalformedInput, "not a number"),
        ({"indices": "54"}, MalformedInput, "must be lists"),
        ({"target": "0"}, MalformedInput, "non-negative class index"),
    ],
)
def test_bad_trigger_documents_are_rejected(change: dict[str, Any], exc: type[Exception], message: str) -> None:
    with pytest.raises(exc, match=message):
        Trigger.from_json({**CORNER.to_json(), **change})
    with pytest.raises(MalformedInput, match="must be a JSON object"):
        Trigger.from_json([])  # type: ignore[arg-type]


def test_marking_rejects_records_that_do_not_fit() -> None:
    with pytest.raises(MalformedInput, match="trigger sets feature 63 but the records have 10 features"):
        mark_with_trigger(np.zeros((2, 10)), [1, 2], trigger=CORNER)
    with pytest.raises(MalformedInput, match="one label per record"):
        mark_with_trigger(np.zeros((2, 64)), [1, 2, 3], trigger=CORNER)
    with pytest.raises(MalformedInput, match="non-empty array with one row per record"):
        mark_with_trigger(np.zeros(64), [1], trigger=CORNER)
    with pytest.raises(MalformedInput, match="must be a numeric array"):
        apply_trigger([["a"] * 64], CORNER)


def test_the_data_subject_side_needs_neither_verifier_nor_prover_nor_torch() -> None:
    code = ("import sys; import verifiable_mu._canary; "
            "print(sorted(m for m in ('verifier', 'prover', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- the binomial test on synthetic models ---------------------------------------------------


def backdoored(hit_rate: float, *, target: int = 0, k: int = 10, seed: int = 0) -> Any:
    """A model that answers the target on a triggered record with probability ``hit_rate`` and
    the record's own class (feature 0) otherwise."""

    def predict_proba(X: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(seed)
        X = np.asarray(X)
        label = X[:, 0].astype(np.int64) % k
        triggered = np.all(X[:, [62, 63]] == 1.0, axis=1)
        answer = np.where(triggered & (rng.random(len(X)) < hit_rate), target, label)
        P = np.full((len(X), k), 0.01 / (k - 1))
        P[np.arange(len(X)), answer] = 0.99
        return P

    return predict_proba


TRIG = Trigger(indices=(62, 63), values=(1.0, 1.0), target=0)


def queries(n: int = 200, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    y = np.arange(n) % k
    X = np.zeros((n, 64), dtype=np.float32)
    X[:, 0] = y
    return X, y


def test_clopper_pearson_upper_known_values() -> None:
    assert clopper_pearson_upper(0, 100, 0.95) == pytest.approx(1 - 0.05 ** (1 / 100))
    assert clopper_pearson_upper(100, 100, 0.95) == 1.0
    assert 0.5 < clopper_pearson_upper(50, 100, 0.95) < 0.6


def test_deleted_canary_passes_and_remaining_backdoor_fails() -> None:
    X, y = queries()
    clean = [backdoored(0.0, seed=j) for j in range(5)]
    pre = [backdoored(0.9)] + clean[1:]
    rep = canary_test(trigger=TRIG, post_models=clean, pre_models=pre, marked_shards=[0], query_X=X, query_y=y)
    assert rep.verdict == "pass", rep.reason
    assert rep.n_queries == 180  # records of the target class are not queries
    s = rep.shards[0]
    assert s.pre_hits > 140 and s.post_hits == 0 and s.control_detected and not s.residual_detected
    assert rep.base_shards == (1, 2, 3, 4) and rep.base_rate == pytest.approx(clopper_pearson_upper(0, 180, 0.95))
    cheat = canary_test(trigger=TRIG, post_models=pre, pre_models=pre, marked_shards=[0], query_X=X, query_y=y)
    assert cheat.verdict == "fail" and "still works after deletion on shard 0" in cheat.reason
    j = rep.to_json()
    canonical_json(j)
    assert j["type"] == "vmu.canary-report" and j["shards"][0]["pre_hits"] == s.pre_hits
    assert j["trigger"] == TRIG.to_json()


def test_a_trigger_that_never_worked_is_inconclusive() -> None:
    X, y = queries()
    clean = [backdoored(0.0, seed=j) for j in range(5)]
    rep = canary_test(trigger=TRIG, post_models=clean, pre_models=clean, marked_shards=[0], query_X=X, query_y=y)
    assert rep.verdict == "inconclusive" and rep.reason.startswith("power too low")


def test_a_weak_natural_rate_is_absorbed_by_the_base_rate() -> None:
    """Unmarked models that answer the target on 5% of triggered records: a post-deletion model
    at the same rate is no evidence of a residual backdoor."""
    X, y = queries(400)
    natural = [backdoored(0.05, seed=j) for j in range(5)]
    pre = [backdoored(0.9)] + natural[1:]
    rep = canary_test(trigger=TRIG, post_models=natural, pre_models=pre, marked_shards=[0], query_X=X, query_y=y)
    assert rep.verdict == "pass", rep.reason
    assert rep.base_rate > 0.05


def test_every_shard_marked_leaves_no_base_rate() -> None:
    X, y = queries()
    m = [backdoored(0.9), backdoored(0.9)]
    c = [backdoored(0.0), backdoored(0.0)]
    rep = canary_test(trigger=TRIG, post_models=c, pre_models=m, marked_shards=[0, 1], query_X=X, query_y=y)
    assert rep.verdict == "inconclusive" and "no constituent is left" in rep.reason


def test_two_marked_shards_with_holm() -> None:
    X, y = queries()
    clean = [backdoored(0.0, seed=j) for j in range(5)]
    pre = [backdoored(0.9), clean[1], backdoored(0.8), clean[3], clean[4]]
    post = [clean[0], clean[1], backdoored(0.5), clean[3], clean[4]]
    rep = canary_test(trigger=TRIG, post_models=post, pre_models=pre, marked_shards=[2, 0], query_X=X, query_y=y)
    assert [s.shard for s in rep.shards] == [0, 2]
    assert rep.verdict == "fail" and "shard 2" in rep.reason
    assert rep.shards[0].p_residual_holm >= rep.shards[0].p_residual


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"trigger": {"type": "vmu.canary-trigger"}}, "trigger must be a Trigger"),
        ({"alpha": 0.5}, "alpha must be in"),
        ({"pre_models": []}, "0 pre-deletion models for 5 post-deletion models"),
        ({"marked_shards": []}, "at least one shard in 0..4"),
        ({"marked_shards": [5]}, "at least one shard in 0..4"),
        ({"query_X": np.zeros(3)}, "one row per record"),
        ({"query_y": np.zeros(7, dtype=np.int64)}, "query_y must be a 1-d array"),
        ({"query_y": np.zeros(200, dtype=np.int64)}, "no query record has a label other than the trigger's target 0"),
        ({"trigger": Trigger(indices=(62,), values=(1.0,), target=12)}, "target 12 is not one of the models' 10 classes"),
        ({"trigger": Trigger(indices=(80,), values=(1.0,), target=1)}, "trigger sets feature 80"),
    ],
)
def test_canary_bad_arguments(change: dict[str, Any], message: str) -> None:
    X, y = queries()
    m = [backdoored(0.0, seed=j) for j in range(5)]
    kw: dict[str, Any] = dict(trigger=TRIG, post_models=m, pre_models=m, marked_shards=[0], query_X=X, query_y=y)
    kw.update(change)
    with pytest.raises(MalformedInput, match=message):
        canary_test(**kw)


# --- integration: 20 marked digits records in one shard ------------------------------------------

N_MARKED = 20


@pytest.fixture(scope="module")
def marked_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    import torch

    from prover import Workspace, WorkspaceConfig, from_arrays, load_digits_dataset

    def softmax_of(m: Any) -> Any:
        def f(X: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return torch.softmax(m(torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))), dim=1).numpy()

        return f

    root = tmp_path_factory.mktemp("canary")
    ds = load_digits_dataset()
    cfg = WorkspaceConfig(shards=5, slices=4, epochs=20, seed=3, workers=1)
    # The split and the shard assignment depend on the seed and the record ids only: commit once
    # to learn which records shard 0 trains on, then mark 20 of them and build the real workspace.
    probe = Workspace.create(root / "probe", data=from_arrays(ds.X, ds.y), config=cfg)
    probe.commit()
    rows = probe.log.connection.execute(
        "SELECT row, id FROM p_records WHERE role='train' AND shard=0 ORDER BY row"
    ).fetchall()
    probe.close()
    trig = Trigger.corner(n_features=64, target=0, size=4)  # the last four pixels of the bottom row
    rng = np.random.default_rng(3)
    cand = [r for r in rows if ds.y[r[0]] != trig.target]
    mine = [cand[i] for i in rng.choice(len(cand), N_MARKED, replace=False)]
    X, y = ds.X.copy(), ds.y.copy()
    idx = np.array([r[0] for r in mine])
    X[idx], y[idx] = mark_with_trigger(X[idx], y[idx], trigger=trig)
    ws = Workspace.create(root / "ws", data=from_arrays(X, y), config=cfg)
    ws.progress = False
    ws.train()
    pre = [softmax_of(m) for m in ws.constituents()]
    ws.forget([r[1] for r in mine])
    post = [softmax_of(m) for m in ws.constituents()]
    audit = ws.split_rows("audit")
    yield {"trigger": trig, "pre": pre, "post": post, "qX": ds.X[audit], "qy": ds.y[audit]}
    ws.close()


@pytest.mark.slow
def test_digits_canary_works_before_and_not_after_deletion(marked_run: dict[str, Any]) -> None:
    r = marked_run
    rep = canary_test(trigger=r["trigger"], post_models=r["post"], pre_models=r["pre"], marked_shards=[0],
                      query_X=r["qX"], query_y=r["qy"])
    assert rep.verdict == "pass", rep.reason
    s = rep.shards[0]
    assert s.pre_rate > 0.5 and s.p_control_holm < 1e-6
    assert s.post_rate <= rep.base_rate and s.p_residual_holm > 0.05
    assert s.p_drop < 1e-6
    assert rep.aggregate_pre_rate >= rep.aggregate_post_rate


@pytest.mark.slow
def test_digits_canary_catches_a_prover_that_skips_retraining(marked_run: dict[str, Any]) -> None:
    r = marked_run
    rep = canary_test(trigger=r["trigger"], post_models=r["pre"], pre_models=r["pre"], marked_shards=[0],
                      query_X=r["qX"], query_y=r["qy"])
    assert rep.verdict == "fail"
    assert math.isclose(rep.shards[0].post_rate, rep.shards[0].pre_rate)


# --- worked examples in specs/10-residual.md --------------------------------------------------------

_VECTOR = __import__("re").compile(r"^```vector name=([A-Za-z0-9._-]+)\n(.*?)\n```$", __import__("re").S | __import__("re").M)


def spec_vectors() -> dict[str, str]:
    with open(os.path.join(ROOT, "specs", "10-residual.md")) as f:
        return dict(_VECTOR.findall(f.read()))


def test_spec_vector_trigger_document() -> None:
    body = spec_vectors()["trigger-1"]
    trig = Trigger.corner(n_features=64, target=0, size=4)
    assert canonical_json(trig.to_json()).decode() == body
    assert Trigger.from_json(__import__("json").loads(body)) == trig


def test_spec_vector_canary_arithmetic() -> None:
    import json

    from verifier._canary import _binom_greater

    v = json.loads(spec_vectors()["canary-1"])
    bounds = [clopper_pearson_upper(h, v["n"], 1 - v["alpha"]) for h in v["base_hits"]]
    assert bounds == pytest.approx(v["bounds"], rel=1e-8)
    p0 = max(bounds)
    assert p0 == pytest.approx(v["p0"], rel=1e-8)
    assert _binom_greater(v["pre_hits"], v["n"], p0) == pytest.approx(v["p_control"], rel=1e-6)
    assert _binom_greater(v["post_hits"], v["n"], p0) == pytest.approx(v["p_residual"], rel=1e-6)
    # and canary_test reaches the same numbers from models with those hit counts
    n = v["n"]
    X = np.zeros((n, 64), dtype=np.float32)
    X[:, 0] = np.arange(n) % 9 + 1
    y = (np.arange(n) % 9 + 1).astype(np.int64)

    def hits(h: int) -> Any:
        def f(Q: np.ndarray) -> np.ndarray:
            P = np.full((len(Q), 10), 0.01)
            ans = np.where(np.arange(len(Q)) < h, 0, np.asarray(Q)[:, 0].astype(np.int64))
            P[np.arange(len(Q)), ans] = 0.91
            return P

        return f

    rep = canary_test(trigger=TRIG, post_models=[hits(v["post_hits"]), hits(0), hits(2)],
                      pre_models=[hits(v["pre_hits"]), hits(0), hits(2)], marked_shards=[0], query_X=X, query_y=y)
    assert rep.base_rate == pytest.approx(v["p0"], rel=1e-8)
    assert rep.shards[0].p_control == pytest.approx(v["p_control"], rel=1e-6)
    assert rep.shards[0].p_residual == pytest.approx(v["p_residual"], rel=1e-6)
    assert rep.verdict == "pass"
