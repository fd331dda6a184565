"""Temporal residual memory (DeepObliviate, He et al.): the shared arithmetic (torch-free).

Used by the verifier's informative temporal report (``verifier/_temporal.py``) and by the prover's
DeepObliviate-style approximate unlearning (``prover/_approx.py``), so both sides measure the same
quantity with the same definition:

* ``flatten_params`` -- a checkpoint (mapping name -> array; only ``param/*`` entries when there
  are any, names sorted) or an array, as one float64 vector;
* ``stage_residual`` -- for one stage ``r``, with ``O`` the original lineage and ``N`` the lineage
  trained without the deleted records: ``|| (O_r - O_{r-1}) - (N_r - N_{r-1}) ||_1`` and the same
  divided by ``|| O_r - O_{r-1} ||_1`` (the relative residual memory).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ._errors import MalformedInput

__all__ = ["flatten_params", "stage_residual"]


def flatten_params(p: Any) -> np.ndarray:
    """A checkpoint (mapping name -> array) or an array, as one float64 vector (names sorted;
    only ``param/*`` entries when there are any)."""
    if isinstance(p, Mapping):
        names = sorted(p)
        if any(n.startswith("param/") for n in names):
            names = [n for n in names if n.startswith("param/")]
        if not names:
            raise MalformedInput("a checkpoint without tensors cannot be compared")
        try:
            parts = [np.asarray(p[n], dtype=np.float64).ravel() for n in names]
        except (TypeError, ValueError) as e:
            raise MalformedInput(f"checkpoint tensors must be numeric: {e}") from e
        return np.concatenate(parts)
    try:
        v = np.asarray(p, dtype=np.float64).ravel()
    except (TypeError, ValueError) as e:
        raise MalformedInput(f"parameters must be numeric: {e}") from e
    if v.size == 0:
        raise MalformedInput("empty parameter vector")
    return v


def stage_residual(
    o_prev: np.ndarray, o: np.ndarray, n_prev: np.ndarray, n: np.ndarray
) -> tuple[float, float]:
    """``(residual_l1, residual_rel)`` of one stage: the original lineage's update ``o - o_prev``
    against the other lineage's ``n - n_prev`` (flat float64 vectors of one size)."""
    if not (o_prev.shape == o.shape == n_prev.shape == n.shape):
        raise MalformedInput("checkpoints of the two lineages have different sizes")
    inf_o = o - o_prev
    res = float(np.abs(inf_o - (n - n_prev)).sum())
    return res, res / max(float(np.abs(inf_o).sum()), 1e-300)
