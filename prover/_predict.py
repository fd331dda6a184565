"""Prediction: the aggregated SISA model, its constituents loaded from the store, and its accuracy
on the held-out test split."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from verifiable_mu._scaling import Scaling

from ._errors import BadInput

__all__ = ["constituents", "predict_proba", "accuracy", "PREDICT_ROWS", "EVAL_BLOCK"]

#: Rows per forward pass when predicting: bounds the activations held at once, and is faster
#: than one large pass (the CNN on 16x16 images, 6,800 rows: 1.3-2.2 s in one pass, 0.8 s in
#: passes of 128-256 rows; the digits MLP: the same either way).
PREDICT_ROWS = 256
EVAL_BLOCK = 65_536  # test rows scored per predict_proba call in evaluate()


def constituents(spec: Any, store: str, digests: Sequence[bytes]) -> list[Any]:
    """The constituent models (torch modules, eval mode, CPU), one per checkpoint digest."""
    import torch

    from verifiable_mu.training import build_model, load_checkpoint, load_into_model

    models = []
    for d in digests:
        m = build_model(spec, init_seed=0)
        load_into_model(m, load_checkpoint(os.path.join(store, d.hex() + ".safetensors"), expected_digest=d), torch.device("cpu"))
        m.eval()
        models.append(m)
    return models


def predict_proba(models: Sequence[Any], scaling: Scaling | None, X: np.ndarray, *, aggregation: str = "mean") -> np.ndarray:
    """Aggregated class probabilities: mean of softmax (default) or majority vote."""
    import torch

    # the models were trained on scaled features: scale the input the same way
    xt = torch.from_numpy(np.ascontiguousarray(X if scaling is None else scaling.apply(X), dtype=np.float32))
    # In blocks of rows: one forward pass over a whole test split holds every activation of
    # every row at once (the CNN on 16x16 images: 1.6 GB for 20,000 rows, linear in rows).
    with torch.no_grad():
        probs = np.stack(
            [
                np.concatenate(
                    [
                        torch.softmax(m(xt[a : a + PREDICT_ROWS]), dim=1).numpy()
                        for a in range(0, max(len(xt), 1), PREDICT_ROWS)
                    ]
                )
                for m in models
            ]
        )
    if aggregation == "mean":
        return probs.mean(axis=0)  # type: ignore[no-any-return]
    if aggregation == "vote":
        votes = probs.argmax(axis=2)
        k = probs.shape[2]
        counts = np.stack([(votes == c).sum(axis=0) for c in range(k)], axis=1).astype(np.float64)
        return counts / len(models)  # type: ignore[no-any-return]
    raise BadInput(f"unknown aggregation {aggregation!r} (use mean or vote)")


def accuracy(models: Sequence[Any], scaling: Scaling | None, X: np.ndarray, y: np.ndarray, *, aggregation: str = "mean") -> float:
    """The aggregated model's accuracy on ``X``, ``y`` (at least one row), scored in blocks of rows
    (bounded memory: the scaled copy is one block)."""
    right = 0
    for a in range(0, len(y), EVAL_BLOCK):
        p = predict_proba(models, scaling, X[a : a + EVAL_BLOCK], aggregation=aggregation)
        right += int((p.argmax(axis=1) == y[a : a + EVAL_BLOCK]).sum())
    return right / len(y)
