"""Sizes the signed config asks for, bounded by the bundle's own sizes before anything is allocated
(specs/09-verification.md, "Resource bounds"). Torch-free.

The config names the model (``mlp``, ``logreg``, ``cnn`` or a ``module:factory``) and its sizes;
replaying a segment (step 18) or loading the final model (step 19) allocates what they say. For a
built-in model the parameter shapes follow from the config by arithmetic alone, so step 15 checks
them against the tensors of every checkpoint file the bundle carries, whose sizes step 1 bounded:
a config asking for a model larger than its own checkpoints is refused before any model is built.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from verifiable_mu._errors import InvalidBundle

from ._bundle import checkpoint_shapes
from ._errors import ModelMismatch

__all__ = ["builtin_param_shapes", "check_model_fits"]


def builtin_param_shapes(model: Mapping[str, Any]) -> dict[str, tuple[int, ...]] | None:
    """The ``named_parameters`` shapes :func:`verifiable_mu.training.build_model` gives a built-in
    model, computed without building it; ``None`` for a ``module:factory`` model."""
    name = model["name"]
    f, c, h = int(model["n_features"]), int(model["n_classes"]), int(model["hidden"])
    if name == "mlp":
        return {"1.weight": (h, f), "1.bias": (h,), "3.weight": (c, h), "3.bias": (c,)}
    if name == "logreg":
        return {"1.weight": (c, f), "1.bias": (c,)}
    if name == "cnn":
        n = math.prod(int(x) for x in model["input_shape"])
        side = math.isqrt(n)
        if side * side != n:
            raise InvalidBundle(f"the config's cnn model needs square single-channel inputs, not {n} features")
        return {"conv1.weight": (16, 1, 3, 3), "conv1.bias": (16,), "conv2.weight": (32, 16, 3, 3),
                "conv2.bias": (32,), "fc.weight": (c, 32 * (side // 2) ** 2), "fc.bias": (c,)}
    return None


def check_model_fits(model: Mapping[str, Any], checkpoints: Mapping[bytes, bytes]) -> None:
    """Every checkpoint file of the bundle holds exactly the parameters and momentum buffers of the
    config's built-in model (step 15). Raises :class:`ModelMismatch` otherwise."""
    shapes = builtin_param_shapes(model)
    if shapes is None:  # a factory: trusted code (--allow-factory) decides its own size
        return
    want = {f"{kind}/{n}": s for n, s in shapes.items() for kind in ("param", "momentum")}
    params = sum(math.prod(s) for s in shapes.values())
    for digest, data in checkpoints.items():
        what = f"checkpoint {digest.hex()[:16]}..."
        got = checkpoint_shapes(data, what=what)
        if got != want:
            have = sum(math.prod(s) for n, s in got.items() if n.startswith("param/"))
            raise ModelMismatch(
                f"{what} does not hold the committed model: the config's {model['name']} model has {params} "
                f"parameters in {len(shapes)} tensors, the file {have} in {sum(n.startswith('param/') for n in got)}"
            )


def checkpoint_is_finite(data: bytes) -> bool:
    """Every value of a checkpoint file (content digest already checked in step 3) is finite.
    Torch-free: the float32 tensors are read with safetensors' numpy loader."""
    import numpy as np
    from safetensors.numpy import load

    return all(bool(np.isfinite(a).all()) for a in load(data).values())
