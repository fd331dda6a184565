"""Which model a log trains and in what arithmetic (specs/06-training.md): the model spec, the
hyper-parameters, the built-in models and ``module:factory`` models, and the model's structure.

Part of :mod:`verifiable_mu.training`, which re-exports every name; import it from there.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ._errors import MalformedInput

_BUILTIN_MODELS = ("mlp", "logreg", "cnn")

FLOAT32 = "float32"
PORTABLE = "portable-v1"
ARITHMETICS = (FLOAT32, PORTABLE)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """Which model to build: a built-in name or ``module:factory``.

    A factory is called as ``factory(n_features=..., n_classes=..., input_shape=...)`` and must
    return a ``torch.nn.Module`` mapping a float32 batch of ``input_shape`` to logits.
    """

    name: str
    n_features: int
    n_classes: int
    input_shape: tuple[int, ...]
    hidden: int = 128

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "n_features": self.n_features,
            "n_classes": self.n_classes,
            "input_shape": list(self.input_shape),
            "hidden": self.hidden,
        }

    @classmethod
    def from_json(cls, d: Any) -> ModelSpec:
        try:
            return cls(
                name=str(d["name"]),
                n_features=int(d["n_features"]),
                n_classes=int(d["n_classes"]),
                input_shape=tuple(int(x) for x in d["input_shape"]),
                hidden=int(d["hidden"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise MalformedInput(f"model spec is not valid: {e}") from e


@dataclass(frozen=True, slots=True, kw_only=True)
class Hyper:
    """Hyper-parameters of every step; all logged (floats travel as decimal strings)."""

    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 32
    #: ``float32`` (bit-exact only on the same platform) or ``portable-v1`` (specs/06 section 3a:
    #: float64 gradients on a fixed grid with rounding hints, bit-exact on any platform)
    arithmetic: str = "float32"
    #: DP-SGD (specs/06 section 3b): per-example gradients clipped to L2 norm ``dp_clip``, summed,
    #: plus Gaussian noise of standard deviation ``dp_noise * dp_clip`` drawn from the step seed;
    #: both 0 for plain SGD
    dp_clip: float = 0.0
    dp_noise: float = 0.0
    dp_delta: float = 0.0  # the delta the owner's epsilon is stated at (reporting only)

    def __post_init__(self) -> None:
        if self.arithmetic not in ARITHMETICS:
            raise MalformedInput(f"unknown arithmetic {self.arithmetic!r} (use {' or '.join(ARITHMETICS)})")
        if (self.dp_clip or self.dp_noise) and not (
            math.isfinite(self.dp_clip) and math.isfinite(self.dp_noise) and self.dp_clip > 0 and self.dp_noise > 0
        ):
            raise MalformedInput("DP-SGD needs a finite clipping norm > 0 and a finite noise multiplier > 0")
        if self.dp and not 0 < self.dp_delta < 1:
            raise MalformedInput("DP-SGD needs a delta in (0, 1)")
        if self.dp and self.portable:
            raise MalformedInput("DP-SGD is defined for float32 arithmetic only")

    @property
    def portable(self) -> bool:
        return self.arithmetic == PORTABLE

    @property
    def dp(self) -> bool:
        return self.dp_clip > 0

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "lr": repr(self.lr),
            "momentum": repr(self.momentum),
            "weight_decay": repr(self.weight_decay),
            "batch_size": self.batch_size,
        }
        if self.portable:  # float32 logs keep the fields they always had
            d["arithmetic"] = self.arithmetic
        if self.dp:
            d["dp"] = {"clip": repr(self.dp_clip), "noise_multiplier": repr(self.dp_noise), "delta": repr(self.dp_delta)}
        return d

    @classmethod
    def from_json(cls, d: Any) -> Hyper:
        try:
            return cls(
                lr=float(d["lr"]),
                momentum=float(d["momentum"]),
                weight_decay=float(d["weight_decay"]),
                batch_size=int(d["batch_size"]),
                arithmetic=str(d.get("arithmetic", FLOAT32)),
                **_dp_fields(d.get("dp")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise MalformedInput(f"hyper-parameters are not valid: {e}") from e


def _dp_fields(d: Any) -> dict[str, float]:
    if d is None:
        return {}
    if not isinstance(d, dict) or set(d) != {"clip", "noise_multiplier", "delta"}:
        raise ValueError("'dp' must hold exactly 'clip', 'noise_multiplier' and 'delta'")
    if not all(isinstance(v, str) for v in d.values()):
        raise ValueError("DP parameters travel as decimal strings")
    return {"dp_clip": float(d["clip"]), "dp_noise": float(d["noise_multiplier"]), "dp_delta": float(d["delta"])}


class _CNN(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], n_classes: int) -> None:
        super().__init__()
        side = int(round(float(np.prod(input_shape)) ** 0.5))
        if side * side != int(np.prod(input_shape)):
            raise MalformedInput("the cnn model needs square single-channel inputs")
        self.side = side
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * (side // 2) * (side // 2), n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], 1, self.side, self.side)
        x = torch.relu(self.conv1(x))
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        out: torch.Tensor = self.fc(x.flatten(1))
        return out


def build_model(spec: ModelSpec, *, init_seed: int, factory: Callable[..., Any] | None = None) -> nn.Module:
    """Build the model with a deterministic initialisation from ``init_seed``.

    ``factory``: for a ``module:factory`` model, the factory to call instead of importing it by
    name (the verifier passes the one it loaded from the checked source files)."""
    # What torch.manual_seed does, without queueing a lazy CUDA seeding (which formats a stack
    # trace, ~3 ms) on a machine that has no CUDA device.
    torch.default_generator.manual_seed(init_seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(init_seed)
    if spec.name == "mlp":
        model: nn.Module = nn.Sequential(
            nn.Flatten(), nn.Linear(spec.n_features, spec.hidden), nn.ReLU(), nn.Linear(spec.hidden, spec.n_classes)
        )
    elif spec.name == "logreg":
        model = nn.Sequential(nn.Flatten(), nn.Linear(spec.n_features, spec.n_classes))
    elif spec.name == "cnn":
        model = _CNN(spec.input_shape, spec.n_classes)
    elif ":" in spec.name:
        mod_name, _, fn_name = spec.name.partition(":")
        if factory is None:
            try:
                factory = getattr(importlib.import_module(mod_name), fn_name)
            except Exception as e:  # ImportError, AttributeError, or the module's own code raising
                raise MalformedInput(f"cannot import model factory {spec.name!r}: {type(e).__name__}: {e}") from e
        if not callable(factory):
            raise MalformedInput(f"model factory {spec.name!r} is not callable")
        try:
            model = factory(n_features=spec.n_features, n_classes=spec.n_classes, input_shape=spec.input_shape)
        except Exception as e:  # the owner's code: any exception is a model that cannot be built
            raise MalformedInput(f"model factory {spec.name!r} raised {type(e).__name__}: {e}") from e
        if not isinstance(model, nn.Module):
            raise MalformedInput(f"model factory {spec.name!r} did not return a torch.nn.Module")
    else:
        raise MalformedInput(f"unknown model {spec.name!r} (use {', '.join(_BUILTIN_MODELS)} or module:factory)")
    return model.float()


def model_structure(model: nn.Module) -> list[tuple[str, tuple[int, ...], str]]:
    """``(name, shape, dtype)`` of every parameter, in name order (specs/06 section 5b)."""
    return sorted((n, tuple(int(x) for x in p.shape), str(p.dtype).removeprefix("torch."))
                  for n, p in model.named_parameters())


def structure_digest_of(model: nn.Module) -> bytes:
    """The structure digest of a built model (specs/06 section 5b)."""
    from ._modelcode import structure_digest

    return structure_digest(model_structure(model))


def commit_model_code(spec: ModelSpec) -> dict[str, Any] | None:
    """The config's ``model.code`` for ``spec`` (``None`` for a built-in model): locate the
    factory's source files, import it, build it and digest both (specs/06 section 5b). Raises
    :class:`MalformedInput` with one line on a bad path, a missing module or function, a factory
    that raises or returns no ``torch.nn.Module``."""
    from ._modelcode import code_json, locate_source, split_factory

    if spec.name in _BUILTIN_MODELS:
        return None
    split_factory(spec.name)
    files = locate_source(spec.name.partition(":")[0])
    model = build_model(spec, init_seed=0)
    return code_json(files, structure_digest_of(model))


def prepare_model(model: nn.Module, hyper: Hyper) -> nn.Module:
    """The model in the arithmetic the steps run in: float64 for portable-v1 (build the model,
    load a float32 checkpoint, then call this; every value stays float32-representable)."""
    return model.double() if hyper.portable else model


def zero_momentum(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: torch.zeros_like(p) for n, p in model.named_parameters()}
