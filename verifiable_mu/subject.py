"""Tools for data subjects: unlearnable examples (Huang et al., ICLR 2021).

A data subject who must hand records to a model owner can first add *sample-wise
error-minimizing noise*: a perturbation ``delta_i`` per record, within an L-infinity bound
``epsilon``, chosen so that a model trained on ``x_i + delta_i`` already has (near) zero loss on
it. Training then has nothing left to learn from the record's real features, and a model
trained on protected records does little better than chance on the clean records. This sits
beside the canary marking of :mod:`verifiable_mu._canary` (which makes a record's *use*
detectable); here the record is made useless to learn from.

The noise is the min-min solution of the paper (its Algorithm 1): alternate ``train_steps`` of
SGD on a surrogate model over the perturbed records with ``pgd_steps`` of projected sign-gradient
*descent* on every ``delta_i`` (``delta <- clip(delta - step_size * sign(grad), -epsilon,
epsilon)``, and ``x + delta`` kept in ``[low, high]``), until the surrogate classifies at least
``stop_accuracy`` of the perturbed records correctly or ``max_rounds`` have run.

Everything is seeded: the same inputs and ``seed`` give the same noise (on the same platform).
It needs torch (the ``full`` extra); it is never imported by the verifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._errors import MalformedInput

__all__ = ["UnlearnableResult", "learnability", "make_unlearnable"]


@dataclass(frozen=True)
class UnlearnableResult:
    """The protected records and how they were made."""

    X: np.ndarray  # the protected records, same shape and dtype as the input
    noise: np.ndarray  # X - input, every entry within [-epsilon, epsilon]
    epsilon: float
    rounds: int  # min-min rounds run
    surrogate_accuracy: float  # the surrogate's accuracy on the protected records at the end


def _check(X: Any, y: Any, epsilon: float, low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(X, np.ndarray) or X.ndim < 2 or not np.issubdtype(X.dtype, np.floating):
        raise MalformedInput("X must be a float numpy array of shape (n, features...)")
    if not isinstance(y, np.ndarray) or y.shape != (X.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise MalformedInput("y must be an integer numpy array with one label per row of X")
    if len(y) == 0:
        raise MalformedInput("there are no records to protect")
    if not (np.isfinite(epsilon) and 0 < epsilon <= (high - low)):
        raise MalformedInput(f"epsilon must be in (0, {high - low}] (the L-infinity bound of the noise)")
    if y.min() < 0:
        raise MalformedInput("labels must be class indices >= 0")
    if not np.all(np.isfinite(X)) or X.min() < low or X.max() > high:
        raise MalformedInput(f"X must be finite and within [{low}, {high}]")
    return X, y


def make_unlearnable(
    X: np.ndarray,
    y: np.ndarray,
    *,
    epsilon: float = 8 / 255,
    n_classes: int | None = None,
    low: float = 0.0,
    high: float = 1.0,
    hidden: int = 128,
    train_steps: int = 10,
    pgd_steps: int = 20,
    step_size: float | None = None,
    batch_size: int = 128,
    lr: float = 0.1,
    stop_accuracy: float = 0.99,
    max_rounds: int = 30,
    seed: int = 0,
) -> UnlearnableResult:
    """Sample-wise error-minimizing noise for the records ``X`` (labels ``y``) within
    ``||delta||_inf <= epsilon``, on a surrogate MLP with one hidden layer of ``hidden`` units
    (the module docstring has the algorithm). ``step_size`` defaults to ``epsilon / 10``."""
    X, y = _check(X, y, epsilon, low, high)
    import torch
    from torch import nn

    k = int(n_classes if n_classes is not None else y.max() + 1)
    if k <= int(y.max()):
        raise MalformedInput(f"a label ({int(y.max())}) is outside the {k} classes")
    alpha = float(step_size if step_size is not None else epsilon / 10)
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.from_numpy(X.reshape(len(X), -1).astype(np.float32))
    labels = torch.from_numpy(y.astype(np.int64))
    torch.manual_seed(seed)
    model = (nn.Sequential(nn.Linear(x0.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, k)) if hidden
             else nn.Linear(x0.shape[1], k))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    delta = torch.zeros_like(x0)
    n = len(x0)
    loss_fn = nn.functional.cross_entropy

    def accuracy() -> float:
        with torch.no_grad():
            return float((model(x0 + delta).argmax(1) == labels).float().mean())

    rounds = 0
    acc = accuracy()
    while rounds < max_rounds and (rounds == 0 or acc < stop_accuracy):
        rounds += 1
        model.train()
        for _ in range(train_steps):  # the model: minimise the loss on the perturbed records
            idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
            opt.zero_grad()
            loss_fn(model(x0[idx] + delta[idx]), labels[idx]).backward()
            opt.step()
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        for b in range(0, n, batch_size):  # the noise: minimise the same loss, record by record
            xb, yb = x0[b : b + batch_size], labels[b : b + batch_size]
            d = delta[b : b + batch_size].clone()
            for _ in range(pgd_steps):
                d.requires_grad_(True)
                g, = torch.autograd.grad(loss_fn(model(xb + d), yb, reduction="sum"), d)
                with torch.no_grad():
                    d = (d - alpha * g.sign()).clamp_(-epsilon, epsilon)
                    d = (xb + d).clamp_(low, high) - xb
            delta[b : b + batch_size] = d.detach()
        for p in model.parameters():
            p.requires_grad_(True)
        acc = accuracy()
    noise = delta.numpy().reshape(X.shape).astype(X.dtype)
    protected = np.clip(X + noise, low, high).astype(X.dtype)
    noise = protected - X  # exactly what was added, after the cast
    return UnlearnableResult(X=protected, noise=noise, epsilon=float(epsilon), rounds=rounds, surrogate_accuracy=acc)


def learnability(
    X_train: np.ndarray,
    y_train: np.ndarray,
    evaluations: list[tuple[np.ndarray, np.ndarray]],
    *,
    n_classes: int | None = None,
    epochs: int = 20,
    seed: int = 1,
) -> list[float]:
    """How much a plain model learns from ``X_train``: an MLP(128) trained on it (SGD with
    momentum 0.9, lr 0.05, batch 32, ``epochs`` epochs, seeded), then its accuracy on each
    ``(X, y)`` of ``evaluations`` -- for protected records, the clean test set and the clean
    versions of the protected records."""
    import torch
    from torch import nn

    k = int(n_classes if n_classes is not None else y_train.max() + 1)
    torch.manual_seed(seed)
    flat = X_train.reshape(len(X_train), -1)
    m = nn.Sequential(nn.Linear(flat.shape[1], 128), nn.ReLU(), nn.Linear(128, k))
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    xt, yt = torch.from_numpy(flat.astype(np.float32)), torch.from_numpy(y_train.astype(np.int64))
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        for b in range(0, len(xt), 32):
            i = perm[b : b + 32]
            opt.zero_grad()
            nn.functional.cross_entropy(m(xt[i]), yt[i]).backward()
            opt.step()
    with torch.no_grad():
        return [float((m(torch.from_numpy(A.reshape(len(A), -1).astype(np.float32))).argmax(1).numpy() == B).mean())
                for A, B in evaluations]
