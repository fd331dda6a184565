"""Constituent models from a bundle's checkpoints, as ``predict_proba`` callables (imports torch).

Used by step 19 (residual-information tests). Checkpoint files are the bundle's, whose content
digests were checked against proven log entries in steps 15 and 16; here they are checked again
as they are loaded, so a caller cannot pass an unverified file by mistake.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from verifiable_mu._errors import InvalidBundle

from ._segment import model_factory

__all__ = ["ProbaFn", "load_models", "load_params"]

ProbaFn = Callable[[np.ndarray], np.ndarray]
#: Rows per forward pass (bounds memory; faster than one large pass on the CPU).
PROBA_ROWS = 256


def _tensors(data: bytes, digest: bytes, what: str) -> dict[str, Any]:
    from safetensors.torch import load

    training = importlib.import_module("verifiable_mu.training")
    try:
        t = load(data)
    except Exception as e:  # safetensors raises its own error types
        raise InvalidBundle(f"{what} cannot be loaded: {e}") from e
    ckpt = {k: t[k] for k in sorted(t)}
    if training.checkpoint_digest(ckpt) != digest:
        raise InvalidBundle(f"{what} does not have the content digest its log entry names")
    return ckpt


def load_models(
    model: Mapping[str, Any],
    files: Sequence[tuple[bytes, bytes]],
    *,
    allow_factories: Sequence[str] = (),
    model_source: Mapping[str, bytes] | None = None,
) -> list[ProbaFn]:
    """One ``predict_proba`` per ``(digest, safetensors bytes)``, in order. A factory model is
    loaded only after the committed-code checks (:func:`verifier._segment.model_factory`)."""
    import torch

    training = importlib.import_module("verifiable_mu.training")
    spec, factory = model_factory(model, allow_factories, model_source, "loading")
    out: list[ProbaFn] = []
    for i, (digest, data) in enumerate(files):
        m = training.build_model(spec, init_seed=0, factory=factory)
        training.load_into_model(m, _tensors(data, digest, f"checkpoint {digest.hex()[:16]}"), torch.device("cpu"))
        m.eval()

        def proba(X: np.ndarray, _m: Any = m) -> np.ndarray:
            # In blocks of rows, as the prover predicts: one pass over every opened record holds
            # all their activations at once (the CNN on 16x16 images: 1.6 GB per 20,000 rows).
            with torch.no_grad():
                xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
                return np.concatenate(
                    [
                        torch.softmax(_m(xt[a : a + PROBA_ROWS]), dim=1).double().numpy()
                        for a in range(0, max(len(xt), 1), PROBA_ROWS)
                    ]
                )

        proba.module = m  # type: ignore[attr-defined]  # the torch module, for the robustness figures (_robust)
        out.append(proba)
        del i
    return out


def load_params(digest: bytes, data: bytes) -> dict[str, np.ndarray]:
    """The ``param/...`` tensors of a checkpoint as numpy arrays (for the temporal analysis)."""
    ckpt = _tensors(data, digest, f"checkpoint {digest.hex()[:16]}")
    return {k: v.numpy() for k, v in ckpt.items() if k.startswith("param/")}
