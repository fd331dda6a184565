"""Unlearnable examples for data subjects (issue 14): the noise stays within its bound, is
seeded, refuses bad input, and protected training learns less from the real features than
clean training (benchmarks/bench_unlearnable.py has the table by bound)."""

from __future__ import annotations

import numpy as np
import pytest

from verifiable_mu._errors import MalformedInput
from verifiable_mu.subject import learnability, make_unlearnable


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return (X / 16.0).astype(np.float32), y


@pytest.mark.parametrize("eps", [8 / 255, 0.25])
def test_noise_within_its_bound_inside_the_range_and_seeded(eps: float) -> None:
    X, y = _digits()
    X, y = X[:300], y[:300]
    r = make_unlearnable(X, y, epsilon=eps, max_rounds=3, seed=5)
    assert r.X.shape == X.shape and r.X.dtype == X.dtype
    assert np.abs(r.noise).max() <= eps + 1e-6  # float32 rounding of x + delta
    assert np.abs(r.noise).max() > eps / 2  # the bound is used, not a no-op
    assert r.X.min() >= 0.0 and r.X.max() <= 1.0
    np.testing.assert_array_equal(r.X - X, r.noise)
    again = make_unlearnable(X, y, epsilon=eps, max_rounds=3, seed=5)
    np.testing.assert_array_equal(again.X, r.X)
    other = make_unlearnable(X, y, epsilon=eps, max_rounds=3, seed=6)
    assert not np.array_equal(other.X, r.X)


@pytest.mark.parametrize(
    ("kw", "fragment"),
    [
        ({"X": np.zeros((3, 4), np.int64)}, "X must be a float numpy array"),
        ({"y": np.zeros(2, np.int64)}, "one label per row"),
        ({"y": np.zeros(3, np.float32)}, "one label per row"),
        ({"epsilon": 0.0}, "epsilon must be in"),
        ({"epsilon": float("nan")}, "epsilon must be in"),
        ({"epsilon": 2.0}, "epsilon must be in"),
        ({"X": np.full((3, 4), 2.0, np.float32)}, "within [0.0, 1.0]"),
        ({"y": np.array([0, 1, -1])}, "class indices"),
        ({"n_classes": 1, "y": np.array([0, 1, 0])}, "outside the 1 classes"),
        ({"X": np.zeros((0, 4), np.float32), "y": np.zeros(0, np.int64)}, "no records"),
    ],
)
def test_bad_input_is_refused_with_one_line(kw: dict, fragment: str) -> None:
    args = {"X": np.zeros((3, 4), np.float32), "y": np.array([0, 1, 0]), **kw}
    X, y = args.pop("X"), args.pop("y")
    with pytest.raises(MalformedInput, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        make_unlearnable(X, y, **args)


def test_protected_training_learns_less_of_the_real_features_at_a_stated_bound() -> None:
    """At epsilon = 0.25 (of the [0, 1] pixel range) with a random linear surrogate, one round:
    a model trained on the protected training split is at least 10 points worse on clean test
    records than the same model trained on the clean split (measured: 75% vs 99%). At the
    paper's 8/255 digits stay learnable (98.5%): the 64 coarse pixels carry too much signal
    (benchmarks/bench_unlearnable.py)."""
    X, y = _digits()
    rng = np.random.default_rng(0)
    p = rng.permutation(len(y))
    tr, te = p[:1400], p[1400:]
    (clean,) = learnability(X[tr], y[tr], [(X[te], y[te])])
    r = make_unlearnable(X[tr], y[tr], epsilon=0.25, hidden=0, train_steps=0, max_rounds=1, seed=0)
    (protected,) = learnability(r.X, y[tr], [(X[te], y[te])])
    assert clean > 0.95
    assert protected < clean - 0.10, (protected, clean)
