"""Unlearnable examples for data subjects (issue 14): the noise, sample-wise or class-wise, stays
within its bound, is seeded, refuses bad input, and a model trained on protected digits ends far
below the same model trained on the clean digits (benchmarks/bench_unlearnable.py has the table
by form and bound)."""

from __future__ import annotations

import numpy as np
import pytest

from verifiable_mu._errors import MalformedInput
from verifiable_mu.subject import learnability, make_adversarial_poison, make_unlearnable


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return (X / 16.0).astype(np.float32), y


@pytest.mark.parametrize("kind", ["sample", "class"])
@pytest.mark.parametrize("eps", [8 / 255, 0.25])
def test_noise_within_its_bound_inside_the_range_and_seeded(eps: float, kind: str) -> None:
    X, y = _digits()
    X, y = X[:300], y[:300]
    r = make_unlearnable(X, y, epsilon=eps, kind=kind, max_rounds=3, seed=5)
    assert r.kind == kind
    assert r.X.shape == X.shape and r.X.dtype == X.dtype
    assert np.abs(r.noise).max() <= eps + 1e-6  # float32 rounding of x + delta
    assert np.abs(r.noise).max() > eps / 2  # the bound is used, not a no-op
    assert r.X.min() >= 0.0 and r.X.max() <= 1.0
    np.testing.assert_array_equal(r.X - X, r.noise)
    again = make_unlearnable(X, y, epsilon=eps, kind=kind, max_rounds=3, seed=5)
    np.testing.assert_array_equal(again.X, r.X)
    other = make_unlearnable(X, y, epsilon=eps, kind=kind, max_rounds=3, seed=6)
    assert not np.array_equal(other.X, r.X)


def test_class_wise_noise_is_one_pattern_per_class_clipped_to_the_range() -> None:
    X, y = _digits()
    X, y = X[:300], y[:300]
    r = make_unlearnable(X, y, epsilon=0.25, kind="class", seed=0)
    assert r.patterns is not None and r.patterns.shape == (10, 64)
    assert np.abs(r.patterns).max() <= 0.25
    np.testing.assert_array_equal(r.X, np.clip(X + r.patterns[y], 0.0, 1.0))
    assert len({r.patterns[c].tobytes() for c in range(10)}) == 10  # a pattern of its own for each class
    assert make_unlearnable(X, y, epsilon=0.25, kind="sample", seed=0).patterns is None


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
        ({"kind": "pixel"}, "kind must be one of sample, class"),
    ],
)
def test_bad_input_is_refused_with_one_line(kw: dict, fragment: str) -> None:
    args = {"X": np.zeros((3, 4), np.float32), "y": np.array([0, 1, 0]), **kw}
    X, y = args.pop("X"), args.pop("y")
    with pytest.raises(MalformedInput, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        make_unlearnable(X, y, **args)


def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    X, y = _digits()
    p = np.random.default_rng(0).permutation(len(y))
    tr, te = p[:1400], p[1400:]
    return X[tr], y[tr], X[te], y[te]


@pytest.mark.parametrize("kind", ["sample", "class"])
def test_a_model_trained_on_protected_digits_ends_far_below_one_trained_on_clean_digits(kind: str) -> None:
    """epsilon 0.5 of the [0, 1] pixel range (8 of the 16 grey levels), the project's default model
    and recipe, fixed seeds: clean training reaches > 95% on the clean test split, training on the
    protected split at most 50% and at least 45 points less (measured 28-42% over three seeds,
    benchmarks/bench_unlearnable.py). At 8/255 and 0.25 digits stay far more learnable (the table)."""
    Xtr, ytr, Xte, yte = _split()
    (clean,) = learnability(Xtr, ytr, [(Xte, yte)], seed=1)
    r = make_unlearnable(Xtr, ytr, epsilon=0.5, kind=kind, seed=0)
    (protected,) = learnability(r.X, ytr, [(Xte, yte)], seed=1)
    assert clean > 0.95
    assert protected < 0.50 and protected < clean - 0.45, (protected, clean)


def test_adversarial_poisoning_brings_digits_to_near_chance_at_a_stated_bound() -> None:
    """Not Huang et al. (subject.make_adversarial_poison, Fowl et al. 2021): class-targeted
    error-maximizing noise at epsilon 0.375 (6 of the 16 grey levels) leaves the default model
    trained on the protected split near chance on the clean test split (measured 7-11% over three
    seeds; chance is 10%), where error-minimizing noise at that bound leaves 51-63%."""
    Xtr, ytr, Xte, yte = _split()
    (clean,) = learnability(Xtr, ytr, [(Xte, yte)], seed=1)
    r = make_adversarial_poison(Xtr, ytr, epsilon=0.375, seed=0)
    assert r.kind == "adversarial" and np.abs(r.noise).max() <= 0.375 + 1e-6
    assert r.X.min() >= 0.0 and r.X.max() <= 1.0
    assert r.surrogate_accuracy < 0.05  # the source model now sees the next class in almost every record
    (protected,) = learnability(r.X, ytr, [(Xte, yte)], seed=1)
    assert clean > 0.95
    assert protected < 0.20 and protected < clean - 0.75, (protected, clean)
    np.testing.assert_array_equal(make_adversarial_poison(Xtr[:50], ytr[:50], epsilon=0.375, seed=3).X,
                                  make_adversarial_poison(Xtr[:50], ytr[:50], epsilon=0.375, seed=3).X)
    with pytest.raises(MalformedInput, match="epsilon must be in"):
        make_adversarial_poison(Xtr, ytr, epsilon=0.0)


def test_protection_survives_standardized_features() -> None:
    """vmu init --standardize fits its scaling on the (protected) training split: the noise on the
    near-constant border pixels is magnified, and error-minimizing protection ends lower still
    (measured 17-26% over three seeds at epsilon 0.5, class-wise; 78-86% even at 8/255, against
    98% clean); adversarial poisoning at 0.375 stays near chance."""
    from verifiable_mu._scaling import fit_standardize

    Xtr, ytr, Xte, yte = _split()
    r = make_unlearnable(Xtr, ytr, epsilon=0.5, kind="class", seed=0)
    s = fit_standardize(r.X, np.arange(len(r.X)))
    (protected,) = learnability(s.apply(r.X), ytr, [(s.apply(Xte), yte)], seed=1)
    c = fit_standardize(Xtr, np.arange(len(Xtr)))
    (clean,) = learnability(c.apply(Xtr), ytr, [(c.apply(Xte), yte)], seed=1)
    assert clean > 0.95
    assert protected < 0.35 and protected < clean - 0.60, (protected, clean)
    a = make_adversarial_poison(Xtr, ytr, epsilon=0.375, seed=0)
    s = fit_standardize(a.X, np.arange(len(a.X)))
    (adversarial,) = learnability(s.apply(a.X), ytr, [(s.apply(Xte), yte)], seed=1)
    assert adversarial < 0.25, adversarial  # measured 8-16% over three seeds


def test_the_papers_order_reinforces_the_real_features_on_digits() -> None:
    """Why the default order differs from the paper's (subject.py): with the MLP source model
    trained first in each round, class-wise noise at epsilon 0.5 leaves a model trained on the
    protected split well above what the default order leaves (measured 82% against 34%)."""
    Xtr, ytr, Xte, yte = _split()
    paper = make_unlearnable(Xtr, ytr, epsilon=0.5, kind="class", hidden=128, train_first=True, seed=0)
    default = make_unlearnable(Xtr, ytr, epsilon=0.5, kind="class", seed=0)
    (a,), (b,) = (learnability(r.X, ytr, [(Xte, yte)], seed=1) for r in (paper, default))
    assert a > b + 0.25, (a, b)


def test_the_provers_sisa_model_trained_on_poisoned_digits_is_near_chance(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Through the prover itself (prover.Workspace, SISA 5x4, committed and logged): the aggregated
    model trained on the adversarially poisoned split (epsilon 0.375) is near chance on the clean
    test split (measured 11-13% over three seeds), where the same workspace on the clean split
    reaches about 97%."""
    pytest.importorskip("torch")
    from prover import Workspace, WorkspaceConfig
    from prover._data import Dataset

    Xtr, ytr, Xte, yte = _split()

    def sisa(X: np.ndarray, name: str) -> float:
        ds = Dataset(ids=tuple(f"r{i}" for i in range(len(ytr))), X=X.astype(np.float32), y=ytr.astype(np.int64))
        with Workspace.create(str(tmp_path / name), data=ds, config=WorkspaceConfig(shards=5, slices=4, workers=1)) as ws:
            ws.progress = False
            ws.train(workers=1)
            return float((ws.predict_proba(Xte).argmax(axis=1) == yte).mean())

    clean = sisa(Xtr, "clean")
    protected = sisa(make_adversarial_poison(Xtr, ytr, epsilon=0.375, seed=0).X, "poisoned")
    assert clean > 0.9
    assert protected < 0.2 and protected < clean - 0.7, (protected, clean)
