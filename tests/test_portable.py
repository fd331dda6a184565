"""The portable-v1 step (specs/06 section 3a; issue 18, item 2): float64 gradients rounded to a
per-tensor grid with logged hints, so replay is bit-exact on any platform.

The grid rounding is tested against an obviously correct version in exact rational arithmetic,
and for its one invariant: with the prover's hints, any value within the platform error of the
prover's rounds to the same grid point. Whole bundles are verified bit for bit under every
simulated platform of tests/test_platform.py.
"""

from __future__ import annotations

import math
import os
import tempfile
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
import torch
from conftest_verifier import build_honest, forge
from hypothesis import given, settings
from hypothesis import strategies as st
from test_platform import NATIVE, VERIFY_SETTINGS, _probe, _train_bundle, _verify

from verifiable_mu import training as T
from verifiable_mu._platform import platform_differences
from verifier import VerifyOptions, verify


def _slow_grid_round(values: list[float]) -> tuple[list[float], list[tuple[int, int]], int | None]:
    """The rule of specs/06 section 3a in exact rationals: (rounded values, element hints
    (index, grid integer), exponent hint or None)."""
    m = max((abs(Fraction(x)) for x in values), default=Fraction(0))
    if m < Fraction(2) ** -900:
        return [0.0] * len(values), [], None
    e = 0
    while Fraction(2) ** (e - 1) > m:
        e -= 1
    while Fraction(2) ** e <= m:
        e += 1
    exp_hint = None
    if m / Fraction(2) ** (e - 1) - 1 < Fraction(1, 2**30) or 1 - m / Fraction(2) ** e < Fraction(1, 2**30):
        exp_hint = e
    unit = Fraction(2) ** (e - 24)
    out, hints = [], []
    for i, x in enumerate(values):
        s = Fraction(x) / unit
        fl = math.floor(s)
        frac = s - fl
        q = fl + 1 if frac > Fraction(1, 2) or frac == Fraction(1, 2) and fl % 2 == 1 else fl
        if abs(frac - Fraction(1, 2)) < Fraction(1, 2**14):
            hints.append((i, q))
        out.append(float(q * unit))
    return out, hints, exp_hint


_floats = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=200, deadline=None)
@given(st.lists(_floats, min_size=1, max_size=40), st.data())
def test_grid_round_matches_the_exact_rule(values: list[float], data: Any) -> None:
    # plant values on and next to grid midpoints, where the hints matter
    if data.draw(st.booleans()):
        m = max(abs(v) for v in values) or 1.0
        e = math.frexp(m)[1]
        k = data.draw(st.integers(-(2**23), 2**23 - 1))
        values = [*values, math.ldexp(k + 0.5, e - 24), math.ldexp(k + 0.5 + 2.0**-20, e - 24)]
    g = torch.tensor(values, dtype=torch.float64)
    out: list[T.Hint] = []
    got = T._grid_round(g, 3, None, out)
    want, hints, exp_hint = _slow_grid_round(values)
    assert got.tolist() == want
    assert [(i, v) for _, i, v in out if i >= 0] == hints
    assert [v for _, i, v in out if i == -1] == ([] if exp_hint is None else [exp_hint])
    assert all(t == 3 for t, _, _ in out)


@settings(max_examples=200, deadline=None)
@given(st.lists(_floats, min_size=1, max_size=40), st.integers(0, 2**32), st.data())
def test_with_the_provers_hints_another_platforms_values_round_the_same(values: list[float], seed: int, data: Any) -> None:
    """The invariant that makes replay portable: a value off by the platform error (here up to
    2^-20 grid units; measured: 2^-23.8) rounds to the prover's grid point, given its hints."""
    m = max(abs(v) for v in values)
    if m < 2.0**-900:
        return
    e = math.frexp(m)[1]
    k = data.draw(st.integers(-(2**23), 2**23 - 1))
    values = [*values, math.ldexp(k + 0.5, e - 24)]  # a tie on the prover's side
    g = torch.tensor(values, dtype=torch.float64)
    hints: list[T.Hint] = []
    want = T._grid_round(g, 0, None, hints)
    rng = np.random.default_rng(seed)
    noise = torch.from_numpy(rng.uniform(-1, 1, len(values))) * math.ldexp(1.0, e - 24 - 20)
    other = g + noise
    if math.frexp(float(other.abs().max()))[1] != e and not any(i == -1 for _, i, _ in hints):
        return  # the largest value moved across a power of two by more than the exponent zone
    got = T._grid_round(other, 0, [h for h in hints], [])
    assert torch.equal(got, want)


def _reject(g: torch.Tensor, hints: list[T.Hint], fragment: str) -> None:
    with pytest.raises(T.RoundingHintInvalid, match=fragment):
        T._grid_round(g, 0, hints, [])


def test_hints_that_do_not_fit_are_rejected() -> None:
    g = torch.tensor([0.75, -0.3, 0.1], dtype=torch.float64)  # nothing near a midpoint, 0.75 not near 2^k
    assert T._grid_round(g, 0, [], []).tolist() == T._grid_round(g, 0, None, []).tolist()
    _reject(g, [(0, 1, 5)], "element 1 of parameter 0 is not near a grid midpoint")
    _reject(g, [(0, 3, 0)], "element 3 of parameter 0, which has 3")
    _reject(g, [(0, -1, 7)], "grid-exponent hint 7 of parameter 0 is not near its largest gradient")
    _reject(torch.zeros(3, dtype=torch.float64), [(0, 0, 0)], "parameter 0, whose gradient is zero")
    with pytest.raises(FloatingPointError, match="not finite"):
        T._grid_round(torch.tensor([1.0, float("nan")], dtype=torch.float64), 0, None, [])
    with pytest.raises(T.RoundingHintInvalid, match="strictly increasing"):
        T._hints_by_tensor([(0, 2, 1), (0, 1, 1)], 2)
    with pytest.raises(T.RoundingHintInvalid, match="parameter 5; the model has 2"):
        T._hints_by_tensor([(5, 0, 1)], 2)


def test_a_tie_can_be_hinted_either_way_and_nothing_else() -> None:
    """The owner's freedom, stated in specs/06: at a grid midpoint both neighbours are accepted."""
    e = math.frexp(0.75)[1]
    tie = math.ldexp(1001 + 0.5, e - 24)
    g = torch.tensor([0.75, tie], dtype=torch.float64)
    hints: list[T.Hint] = []
    T._grid_round(g, 0, None, hints)
    assert hints == [(0, 1, 1002)]  # ties to even
    for v in (1001, 1002):
        assert T._grid_round(g, 0, [(0, 1, v)], [])[1] == math.ldexp(v, e - 24)
    _reject(g, [(0, 1, 1000)], "not near a grid midpoint")


def test_float32_step_with_hints_is_rejected() -> None:
    spec = T.ModelSpec(name="logreg", n_features=4, n_classes=2, input_shape=(4,), hidden=0)
    model = T.build_model(spec, init_seed=0)
    with pytest.raises(T.RoundingHintInvalid, match="float32 step carries rounding hints"):
        T.train_step(model, T.zero_momentum(model), torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), T.Hyper(), 1,
                     [(0, 0, 1)])  # fmt: skip


def test_portable_training_is_close_to_float32() -> None:
    """Same data, same schedule: the portable step's rounding changes accuracy by little."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.from_numpy((X / 16).astype(np.float32))
    y = torch.from_numpy(y.astype(np.int64))
    spec = T.ModelSpec(name="mlp", n_features=64, n_classes=10, input_shape=(64,), hidden=64)
    acc = {}
    for arith in T.ARITHMETICS:
        hyper = T.Hyper(arithmetic=arith)
        model = T.prepare_model(T.build_model(spec, init_seed=0), hyper)
        mom = T.zero_momentum(model)
        rng = np.random.default_rng(0)
        for t in range(300):
            idx = torch.from_numpy(rng.choice(len(X), 32, replace=False))
            T.train_step(model, mom, X[idx], y[idx], hyper, t)
        with torch.no_grad():
            pred = model(X.to(next(model.parameters()).dtype)).argmax(1)
        acc[arith] = float((pred == y).float().mean())
    assert acc[T.PORTABLE] > 0.9 and abs(acc[T.PORTABLE] - acc[T.FLOAT32]) < 0.02, acc


# --- whole bundles ----------------------------------------------------------------------------


@pytest.mark.parametrize("train", [0, 1], ids=["native-2threads", "default-compatible"])
@pytest.mark.parametrize("where", VERIFY_SETTINGS, ids=lambda s: "+".join(f"{k}={v}" for k, v in s.items()) or "native")
def test_portable_bundle_replays_bit_exactly_on_every_simulated_platform(train: int, where: dict[str, str]) -> None:
    bundle, trained_on = _train_bundle(train, "portable", model="mlp")
    code, report, out = _verify(bundle, **where)
    assert code == 0, out
    replay = report["replay"]
    assert replay["mode"] == "exact" and replay["arithmetic"] == "portable-v1", replay
    assert replay["segments"] and all(s["bit_exact"] for s in replay["segments"]), replay["segments"]
    here = dict(_probe(**where), threads=trained_on["threads"])
    assert replay["platform_differences"] == platform_differences(trained_on, here)
    assert not any("DISTANCE REPLAY" in w for w in report["warnings"])


def test_portable_log_carries_few_hints() -> None:
    bundle, _ = _train_bundle(0, "portable", model="mlp")
    import sqlite3

    db = sqlite3.connect(os.path.join(os.path.dirname(bundle), "ws", "state.db"))
    import json

    steps = [json.loads(b) for (b,) in db.execute("SELECT body FROM log_entries WHERE kind='step'")]
    n_hints = sum(len(s["hints"]) for s in steps)
    # about one hint per 2^13 gradient values (the MLP has ~19k): a few per step at most
    assert steps and n_hints / len(steps) < 8, n_hints / len(steps)
    assert NATIVE["device"] == "cpu"


_PORTABLE: dict[str, Any] = {}


def _portable_honest() -> Any:
    if "h" not in _PORTABLE:
        _PORTABLE["h"] = build_honest(tempfile.mkdtemp(prefix="vmu-portable-"), arithmetic="portable")
    return _PORTABLE["h"]


def test_portable_honest_bundle_verifies_bit_exactly() -> None:
    h = _portable_honest()
    v = verify(h.bundle, VerifyOptions(residual=False))
    assert v.exit_code == 0, repr(v.failure)
    assert v.replay_report and v.replay_report["arithmetic"] == "portable-v1"
    assert all(s["bit_exact"] for s in v.replay_report["segments"])


def test_step_18_rejects_a_rounding_hint_that_does_not_fit() -> None:
    """An owner who logs a hint where no value is near a grid midpoint (to steer a rounding it
    may not choose) is rejected at step 18, whatever segment is drawn."""
    h = _portable_honest()

    def mutate(ctx: Any) -> None:
        for kind, body in ctx.entries:
            if kind == "step" and body["generation"] >= 1:
                body["hints"] = [[0, 0, 1 << 30]] + [x for x in body["hints"] if (x[0], x[1]) > (0, 0)]

    data = forge(h, mutate, replay=2, name="bad-hint")
    v = verify(data, VerifyOptions(residual=False, replay=2))  # the retraining lineage is replayed in full
    assert v.exit_code == 1 and v.failed_step == 18, repr(v.failure)
    assert type(v.failure).__name__ == "ReplayMismatch"
    assert "rounding hint rejected" in str(v.failure) and "not near a grid midpoint" in str(v.failure)


def test_step_18_rejects_a_portable_step_without_hints() -> None:
    h = _portable_honest()

    def mutate(ctx: Any) -> None:
        for kind, body in ctx.entries:
            if kind == "step" and body["generation"] >= 1:
                del body["hints"]

    data = forge(h, mutate, replay=2, name="no-hints")
    v = verify(data, VerifyOptions(residual=False, replay=2))
    assert v.exit_code == 1 and v.failed_step == 18, repr(v.failure)
    assert "carries no rounding hints" in str(v.failure)


# --- the worked examples of specs/06 section 3a ------------------------------------------------

_SPEC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "specs", "06-training.md")


def _spec_vectors() -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    import json
    import re

    text = open(_SPEC, encoding="utf-8").read()
    out = {}
    for m in re.finditer(r"^```vector name=(?P<name>grid-[\w-]+)\n(?P<body>.*?)^```$", text, re.M | re.S):
        first, second = m["body"].strip("\n").split("\n")
        out[m["name"]] = (json.loads(first), json.loads(second))
    return out


def test_spec_has_the_grid_vectors() -> None:
    assert sorted(_spec_vectors()) == ["grid-1", "grid-2", "grid-3"]


@pytest.mark.parametrize("name", ["grid-1", "grid-2", "grid-3"])
def test_spec_grid_vector(name: str) -> None:
    inp, want = _spec_vectors()[name]
    values = [float(x) for x in inp["gradient"]]
    rounded = [float(x) for x in want["rounded"]]
    # the exact rule, independent of the implementation
    slow, hints, exp_hint = _slow_grid_round(values)
    assert slow == rounded
    assert [[inp["tensor"], -1, exp_hint]] * (exp_hint is not None) + [[inp["tensor"], i, v] for i, v in hints] == want["hints"]
    # the implementation, as prover and as verifier (with the vector's hints)
    out: list[T.Hint] = []
    g = torch.tensor(values, dtype=torch.float64)
    assert T._grid_round(g, inp["tensor"], None, out).tolist() == rounded
    assert [list(h) for h in out] == want["hints"]
    assert T._grid_round(g, inp["tensor"], [tuple(h) for h in want["hints"]], []).tolist() == rounded
