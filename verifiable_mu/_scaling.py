"""Feature scaling committed in the signed config entry (specs/06-training.md section 5c).

``vmu init --standardize`` fits one mean and one standard deviation per feature on the training
split only; the config entry of the log carries them, and every model input -- the prover's
steps, its predictions, the verifier's replay and its residual tests -- is ``(x - mean) / std``,
computed in float32 from exactly those logged values. The verifier takes the values from the
signed config entry and from nowhere else. numpy only: the proof-only install imports this.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._errors import MalformedInput

__all__ = ["SCALING_KIND", "Scaling", "fit_standardize"]

SCALING_KIND = "standardize-v1"
_FIT_ROWS = 8_192  # rows per chunk when fitting: a few MB of float64 temporaries, whatever the data size
_TINY = float(np.finfo(np.float32).tiny)


@dataclass(frozen=True, slots=True)
class Scaling:
    """Per-feature float32 ``mean`` and ``std`` (over the features flattened row-major)."""

    mean: np.ndarray
    std: np.ndarray

    def to_json(self) -> dict[str, Any]:
        """``{"kind": "standardize-v1", "mean": hex, "std": hex}``: each value the lower-case hex of
        the array's IEEE 754 binary32 little-endian bytes (8 hex digits a feature)."""
        return {
            "kind": SCALING_KIND,
            "mean": np.ascontiguousarray(self.mean, dtype="<f4").tobytes().hex(),
            "std": np.ascontiguousarray(self.std, dtype="<f4").tobytes().hex(),
        }

    @classmethod
    def from_json(cls, d: Any, n_features: int) -> Scaling:
        """Parse and check a logged scaling: known kind, ``n_features`` values each, every mean
        finite, every std a finite normal positive float32. :class:`MalformedInput` otherwise."""
        if not isinstance(d, Mapping) or set(d) != {"kind", "mean", "std"}:
            raise MalformedInput("scaling must be an object with exactly the fields kind, mean, std")
        if d["kind"] != SCALING_KIND:
            raise MalformedInput(f"scaling kind {str(d['kind'])[:40]!r} is not supported (only {SCALING_KIND!r})")
        arrays = []
        for k in ("mean", "std"):
            v = d[k]
            if not isinstance(v, str) or len(v) != 8 * n_features:
                raise MalformedInput(f"scaling {k} must be {8 * n_features} hex digits ({n_features} float32 values)")
            try:
                raw = bytes.fromhex(v)
            except ValueError as e:
                raise MalformedInput(f"scaling {k} is not hex: {e}") from None
            if raw.hex() != v:
                raise MalformedInput(f"scaling {k} must be lower-case hex")
            arrays.append(np.frombuffer(raw, dtype="<f4").astype(np.float32))
        mean, std = arrays
        if not np.isfinite(mean).all():
            raise MalformedInput("scaling mean holds a value that is not finite")
        if not (np.isfinite(std) & (std >= _TINY)).all():
            raise MalformedInput("scaling std must hold finite, positive, normal float32 values")
        return cls(mean=mean, std=std)

    def apply(self, X: Any) -> np.ndarray:
        """``(x - mean) / std`` per feature in float32 (two correctly rounded IEEE operations per
        value: the same bits on every platform); the result has ``X``'s shape."""
        Xf = np.asarray(X, dtype=np.float32)
        flat = Xf.reshape(len(Xf), -1) if Xf.ndim > 1 else Xf.reshape(1, -1)
        out = np.subtract(flat, self.mean, dtype=np.float32)
        np.divide(out, self.std, out=out, dtype=np.float32)
        result: np.ndarray = out.reshape(Xf.shape)
        return result


def fit_standardize(X: np.ndarray, rows: np.ndarray) -> Scaling:
    """The mean and standard deviation (population, ddof 0) of each feature over ``X[rows]``,
    accumulated in float64 over chunks and rounded to float32; a feature whose std rounds below
    the smallest normal float32 (a constant feature) gets std 1."""
    n = len(rows)
    if n == 0:
        raise MalformedInput("cannot fit a scaling on an empty training split")
    width = int(np.prod(X.shape[1:]))
    total = np.zeros(width, dtype=np.float64)
    for a in range(0, n, _FIT_ROWS):
        total += X[rows[a : a + _FIT_ROWS]].reshape(-1, width).sum(axis=0, dtype=np.float64)
    mean = total / n
    sq = np.zeros(width, dtype=np.float64)
    for a in range(0, n, _FIT_ROWS):
        dev = X[rows[a : a + _FIT_ROWS]].reshape(-1, width).astype(np.float64) - mean
        sq += (dev * dev).sum(axis=0)
    std = np.sqrt(sq / n).astype(np.float32)
    std[~(np.isfinite(std) & (std >= _TINY))] = np.float32(1.0)
    return Scaling(mean=mean.astype(np.float32), std=std)
