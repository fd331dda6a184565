"""Tools for data subjects: unlearnable examples (Huang et al., ICLR 2021).

A data subject who must hand records to a model owner can first add *error-minimizing noise*:
a perturbation within an L-infinity bound ``epsilon`` (in the units of the features; on the
project's digits, pixels scaled to [0, 1], ``epsilon = 0.25`` is 4 of the 16 grey levels and the
paper's 8/255 is half a grey level), chosen so that a model trained on the perturbed records
already has (near) zero loss on them and has little reason to learn their real features. Two
forms, as in the paper:

- ``kind="sample"``: one ``delta_i`` per record;
- ``kind="class"``: one ``delta_c`` per class, added to every record of that class (then clipped
  to ``[low, high]``, so a record's noise may be smaller than its class's).

This sits beside the canary marking of :mod:`verifiable_mu._canary` (which makes a record's *use*
detectable); here the record is made (partly) useless to learn from.

The noise is the min-min solution of the paper's bi-level problem
``min_theta E[min_delta L(f_theta(x + delta), y)]``, ``||delta||_inf <= epsilon``: rounds that
alternate ``pgd_steps`` of projected sign-gradient *descent* on the noise
(``delta <- clip(delta - step_size * sign(grad), -epsilon, epsilon)``, ``x + delta`` kept in
``[low, high]``; for class-wise noise the gradient of a class is summed over its records) with
``train_steps`` SGD steps of a source model on the perturbed records, until the source model
classifies at least ``stop_accuracy`` of the perturbed records correctly (the paper's error
threshold lambda) or ``max_rounds`` have run.

One departure, measured (benchmarks/bench_unlearnable.py): the paper trains the source model
first in each round. On digits an MLP learns the real features within those first steps, and
noise that then minimizes its loss *reinforces* them (class-wise at epsilon 0.25, a model trained on
the protected records keeps 91% clean test accuracy this way, 78% in the default order). So by default (``train_first=False``) each
round starts with the noise step, against a freshly initialised linear source model
(``hidden=0``): the noise becomes a pattern the source model separates at once, the stop
threshold is met before it has learned anything from the real features, and a model trained on
the protected records latches onto that pattern. ``train_first=True, hidden=128`` is the
paper's order and source model.

What it achieves on digits is modest (the README and the benchmark have the table): the 64
coarse pixels carry so much signal that even at epsilon 0.5 a model trained on the protected
records keeps about 34%. :func:`make_adversarial_poison` is *not* Huang et al.: class-targeted
error-maximizing noise (Fowl et al. 2021), which on digits brings that model to chance (about 10%)
at epsilon 0.375.

Everything is seeded: the same inputs and ``seed`` give the same noise (on the same platform).
It needs torch (the ``full`` extra); it is never imported by the verifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ._errors import MalformedInput

if TYPE_CHECKING:
    import torch

__all__ = ["KINDS", "UnlearnableResult", "learnability", "make_adversarial_poison", "make_unlearnable"]

KINDS = ("sample", "class")


@dataclass(frozen=True)
class UnlearnableResult:
    """The protected records and how they were made."""

    X: np.ndarray  # the protected records, same shape and dtype as the input
    noise: np.ndarray  # X - input, every entry within [-epsilon, epsilon]
    epsilon: float
    kind: str  # "sample" or "class" (make_unlearnable), "adversarial" (make_adversarial_poison)
    patterns: np.ndarray | None  # class-wise: the (n_classes, features) noise of each class before clipping
    rounds: int  # min-min rounds run
    surrogate_accuracy: float  # the source model's accuracy on the protected records at the end


def _check(X: Any, y: Any, epsilon: float, low: float, high: float, kind: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(X, np.ndarray) or X.ndim < 2 or not np.issubdtype(X.dtype, np.floating):
        raise MalformedInput("X must be a float numpy array of shape (n, features...)")
    if not isinstance(y, np.ndarray) or y.shape != (X.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise MalformedInput("y must be an integer numpy array with one label per row of X")
    if len(y) == 0:
        raise MalformedInput("there are no records to protect")
    if not (np.isfinite(epsilon) and 0 < epsilon <= (high - low)):
        raise MalformedInput(f"epsilon must be in (0, {high - low}] (the L-infinity bound of the noise)")
    if kind not in KINDS:
        raise MalformedInput(f"kind must be one of {', '.join(KINDS)} (sample-wise or class-wise noise), not {kind!r:.40}")
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
    kind: str = "sample",
    n_classes: int | None = None,
    low: float = 0.0,
    high: float = 1.0,
    hidden: int = 0,
    train_first: bool = False,
    train_steps: int = 10,
    pgd_steps: int = 20,
    step_size: float | None = None,
    batch_size: int = 128,
    lr: float = 0.1,
    stop_accuracy: float = 0.99,
    max_rounds: int = 30,
    seed: int = 0,
) -> UnlearnableResult:
    """Error-minimizing noise (``kind`` ``"sample"`` or ``"class"``) for the records ``X`` (labels
    ``y``) within ``||delta||_inf <= epsilon``, on a source model that is linear (``hidden=0``) or
    an MLP with one hidden layer of ``hidden`` units; the module docstring has the algorithm.
    ``step_size`` defaults to ``epsilon / 10``."""
    X, y = _check(X, y, epsilon, low, high, kind)
    k = int(n_classes if n_classes is not None else y.max() + 1)
    if k <= int(y.max()):
        raise MalformedInput(f"a label ({int(y.max())}) is outside the {k} classes")
    game = _MinMin(X, y, k=k, kind=kind, epsilon=epsilon, alpha=float(step_size if step_size is not None else epsilon / 10),
                   low=low, high=high, hidden=hidden, lr=lr, batch_size=batch_size, seed=seed)
    rounds = 0
    acc = game.accuracy()
    while rounds < max_rounds and (rounds == 0 or acc < stop_accuracy):
        rounds += 1
        if train_first:
            game.train(train_steps)
            game.noise_steps(pgd_steps)
        else:
            game.noise_steps(pgd_steps)
            acc = game.accuracy()
            if acc >= stop_accuracy:
                break
            game.train(train_steps)
        acc = game.accuracy()
    protected = np.clip(game.protected().reshape(X.shape), low, high).astype(X.dtype)
    noise = protected - X  # exactly what was added, after the cast
    patterns = game.delta.numpy().reshape((k, *X.shape[1:])).astype(X.dtype) if kind == "class" else None
    return UnlearnableResult(X=protected, noise=noise, epsilon=float(epsilon), kind=kind, patterns=patterns,
                             rounds=rounds, surrogate_accuracy=acc)


class _MinMin:
    """The two players of :func:`make_unlearnable`: a source model (linear, or an MLP with one
    hidden layer) and the noise ``delta`` (one row per record, or per class), each minimising
    the same cross-entropy on the perturbed records."""

    def __init__(
        self, X: np.ndarray, y: np.ndarray, *, k: int, kind: str, epsilon: float, alpha: float, low: float,
        high: float, hidden: int, lr: float, batch_size: int, seed: int,
    ) -> None:
        import torch
        from torch import nn

        self.kind, self.epsilon, self.alpha, self.low, self.high = kind, epsilon, alpha, low, high
        self.batch_size = batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.x0 = torch.from_numpy(X.reshape(len(X), -1).astype(np.float32))
        self.labels = torch.from_numpy(y.astype(np.int64))
        torch.manual_seed(seed)
        self.model = (nn.Sequential(nn.Linear(self.x0.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, k)) if hidden
                      else nn.Linear(self.x0.shape[1], k))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=0.9)
        self.n = len(self.x0)
        self.delta = torch.zeros((k if kind == "class" else self.n, self.x0.shape[1]))
        self.loss_fn = nn.functional.cross_entropy

    def perturbed(self, rows: slice | torch.Tensor) -> torch.Tensor:
        xb = self.x0[rows]
        d = self.delta[self.labels[rows]] if self.kind == "class" else self.delta[rows]
        return (xb + d).clamp(self.low, self.high)

    def protected(self) -> np.ndarray:
        """Every record with its noise, as float32 rows."""
        import torch

        with torch.no_grad():
            return self.perturbed(slice(None)).numpy()

    def accuracy(self) -> float:
        import torch

        with torch.no_grad():
            return float((self.model(self.perturbed(slice(None))).argmax(1) == self.labels).float().mean())

    def train(self, steps: int) -> None:
        """The model's turn: minimise the loss on the perturbed records."""
        import torch

        self.model.train()
        for _ in range(steps):
            idx = torch.randint(0, self.n, (min(self.batch_size, self.n),), generator=self.gen)
            self.opt.zero_grad()
            self.loss_fn(self.model(self.perturbed(idx)), self.labels[idx]).backward()
            self.opt.step()

    def noise_steps(self, steps: int) -> None:
        """The noise's turn: minimise the same loss, the model frozen."""
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        for _ in range(steps):
            if self.kind == "class":
                self._class_step()
            else:
                self._sample_step()
        for p in self.model.parameters():
            p.requires_grad_(True)

    def _class_step(self) -> None:
        """One step per class, on the gradient summed over its records."""
        import torch

        bs, low, high = self.batch_size, self.low, self.high
        d = self.delta.clone().requires_grad_(True)
        g = torch.zeros_like(self.delta)
        for b in range(0, self.n, bs):
            xb, yb = self.x0[b : b + bs], self.labels[b : b + bs]
            g += torch.autograd.grad(self.loss_fn(self.model((xb + d[yb]).clamp(low, high)), yb, reduction="sum"), d)[0]
        self.delta = (self.delta - self.alpha * g.sign()).clamp_(-self.epsilon, self.epsilon)

    def _sample_step(self) -> None:
        """One step per record, a batch at a time."""
        import torch

        bs = self.batch_size
        for b in range(0, self.n, bs):
            xb, yb = self.x0[b : b + bs], self.labels[b : b + bs]
            d = self.delta[b : b + bs].clone().requires_grad_(True)
            g = torch.autograd.grad(self.loss_fn(self.model(xb + d), yb, reduction="sum"), d)[0]
            with torch.no_grad():
                d = (d - self.alpha * g.sign()).clamp_(-self.epsilon, self.epsilon)
                self.delta[b : b + bs] = (xb + d).clamp_(self.low, self.high) - xb


def make_adversarial_poison(
    X: np.ndarray,
    y: np.ndarray,
    *,
    epsilon: float = 0.375,
    n_classes: int | None = None,
    low: float = 0.0,
    high: float = 1.0,
    epochs: int = 20,
    pgd_steps: int = 200,
    step_size: float | None = None,
    seed: int = 0,
) -> UnlearnableResult:
    """Not Huang et al.: class-targeted *error-maximizing* noise (adversarial poisoning, Fowl et
    al., NeurIPS 2021), for comparison, since on digits it protects far more at the same bound.
    A source model (the :func:`learnability` MLP, ``epochs`` epochs on the clean records) is
    trained; then each record gets ``pgd_steps`` of projected sign-gradient descent on the loss
    towards the *next* class ``(y + 1) mod n_classes`` within ``||delta||_inf <= epsilon``
    (``x + delta`` in ``[low, high]``; ``step_size`` defaults to ``epsilon / 10``). A model
    trained on the result learns to call features of class ``c + 1`` class ``c``.
    ``surrogate_accuracy`` is the source model's accuracy on the protected records under their
    true labels (low: the records now look like their target class)."""
    X, y = _check(X, y, epsilon, low, high, "sample")
    import torch
    from torch import nn

    k = int(n_classes if n_classes is not None else y.max() + 1)
    if k <= int(y.max()):
        raise MalformedInput(f"a label ({int(y.max())}) is outside the {k} classes")
    alpha = float(step_size if step_size is not None else epsilon / 10)
    x0 = torch.from_numpy(X.reshape(len(X), -1).astype(np.float32))
    labels = torch.from_numpy(y.astype(np.int64))
    model = _train_mlp(x0, labels, k, epochs, seed)
    for p in model.parameters():
        p.requires_grad_(False)
    target = (labels + 1) % k
    delta = torch.zeros_like(x0)
    for _ in range(pgd_steps):
        d = delta.clone().requires_grad_(True)
        g = torch.autograd.grad(nn.functional.cross_entropy(model(x0 + d), target, reduction="sum"), d)[0]
        with torch.no_grad():
            delta = (x0 + (delta - alpha * g.sign()).clamp_(-epsilon, epsilon)).clamp_(low, high) - x0
    with torch.no_grad():
        acc = float((model(x0 + delta).argmax(1) == labels).float().mean())
    protected = np.clip((x0 + delta).numpy().reshape(X.shape), low, high).astype(X.dtype)
    return UnlearnableResult(X=protected, noise=protected - X, epsilon=float(epsilon), kind="adversarial",
                             patterns=None, rounds=1, surrogate_accuracy=acc)


def _train_mlp(xt: Any, yt: Any, k: int, epochs: int, seed: int) -> Any:
    """The project's default model and recipe (``vmu init`` defaults): an MLP with 128 hidden
    units, SGD with momentum 0.9, lr 0.05, batch 32, ``epochs`` epochs, seeded."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(xt.shape[1], 128), nn.ReLU(), nn.Linear(128, k))
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        for b in range(0, len(xt), 32):
            i = perm[b : b + 32]
            opt.zero_grad()
            nn.functional.cross_entropy(m(xt[i]), yt[i]).backward()
            opt.step()
    return m


def learnability(
    X_train: np.ndarray,
    y_train: np.ndarray,
    evaluations: list[tuple[np.ndarray, np.ndarray]],
    *,
    n_classes: int | None = None,
    epochs: int = 20,
    seed: int = 1,
) -> list[float]:
    """How much a plain model learns from ``X_train``: the project's default model and recipe
    (an MLP(128), SGD with momentum 0.9, lr 0.05, batch 32, ``epochs`` epochs, seeded) trained on
    it, then its accuracy on each ``(X, y)`` of ``evaluations`` -- for protected records, the
    clean test set and the clean versions of the protected records."""
    import torch

    k = int(n_classes if n_classes is not None else y_train.max() + 1)
    flat = X_train.reshape(len(X_train), -1)
    xt, yt = torch.from_numpy(flat.astype(np.float32)), torch.from_numpy(y_train.astype(np.int64))
    m = _train_mlp(xt, yt, k, epochs, seed)
    with torch.no_grad():
        return [float((m(torch.from_numpy(A.reshape(len(A), -1).astype(np.float32))).argmax(1).numpy() == B).mean())
                for A, B in evaluations]
