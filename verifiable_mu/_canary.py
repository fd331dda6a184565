"""Backdoor canaries for data subjects (Athena; Sommer et al., PETS 2022) -- specs/10-residual.md.

A data subject who wants to check later that their records were forgotten *marks* them before
submitting them: a fixed trigger pattern is stamped onto the features and the label is set to a
chosen target class. A model trained on enough marked records learns "trigger => target"; a model
that never saw them does not. After a deletion, the verifier stamps the same trigger onto clean
inputs and counts how often each model answers the target class (:mod:`verifier._canary`).

This module is the data subject's side: it needs numpy only and imports neither the prover nor
the verifier. The trigger travels to the verifier as a small versioned JSON document::

    from verifiable_mu._canary import Trigger, mark_with_trigger
    trig = Trigger.corner(n_features=64, target=0, size=4)     # or Trigger(indices=..., values=..., target=...)
    X_marked, y_marked = mark_with_trigger(X_mine, y_mine, trigger=trig)
    open("trigger.json", "wb").write(canonical_json(trig.to_json()))
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._errors import MalformedInput, UnsupportedVersion

__all__ = ["TRIGGER_TYPE", "TRIGGER_VERSION", "Trigger", "apply_trigger", "mark_with_trigger"]

TRIGGER_TYPE = "vmu.canary-trigger"
TRIGGER_VERSION = 1
MAX_TRIGGER_FEATURES = 4096


@dataclass(frozen=True, slots=True, kw_only=True)
class Trigger:
    """A trigger pattern: set feature ``indices[i]`` (of the flattened record) to ``values[i]``;
    a marked record's label becomes ``target``."""

    indices: tuple[int, ...]
    values: tuple[float, ...]
    target: int

    def __post_init__(self) -> None:
        if not isinstance(self.target, int) or isinstance(self.target, bool) or self.target < 0:
            raise MalformedInput("trigger target must be a non-negative class index")
        if not self.indices:
            raise MalformedInput("a trigger must set at least one feature")
        if len(self.indices) > MAX_TRIGGER_FEATURES:
            raise MalformedInput(f"a trigger may set at most {MAX_TRIGGER_FEATURES} features")
        if len(self.values) != len(self.indices):
            raise MalformedInput("trigger indices and values must have the same length")
        if any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in self.indices):
            raise MalformedInput("trigger indices must be non-negative integers")
        if len(set(self.indices)) != len(self.indices):
            raise MalformedInput("trigger indices must be distinct")
        if any(not isinstance(v, float) or not math.isfinite(v) for v in self.values):
            raise MalformedInput("trigger values must be finite floats")

    @classmethod
    def corner(cls, *, n_features: int, target: int, size: int = 4, value: float = 1.0) -> Trigger:
        """The last ``size`` features set to ``value`` (for row-major images: the end of the last
        row; for 8x8 digits and ``size=4``, pixels 60-63). A 2x2 corner of 8x8 digits is
        ``Trigger(indices=(54, 55, 62, 63), values=(1.0,) * 4, target=...)``."""
        if not 1 <= size <= n_features:
            raise MalformedInput(f"trigger size must be between 1 and the number of features ({n_features})")
        idx = tuple(range(n_features - size, n_features))
        return cls(indices=idx, values=(float(value),) * size, target=int(target))

    def check_fits(self, n_features: int) -> None:
        """Reject a trigger that names a feature the records do not have."""
        if max(self.indices) >= n_features:
            raise MalformedInput(
                f"trigger sets feature {max(self.indices)} but the records have {n_features} features"
            )

    def to_json(self) -> dict[str, Any]:
        """``{"type", "version", "target", "indices", "values"}``; values travel as ``repr`` strings."""
        return {
            "type": TRIGGER_TYPE,
            "version": TRIGGER_VERSION,
            "target": self.target,
            "indices": list(self.indices),
            "values": [repr(v) for v in self.values],
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Trigger:
        if not isinstance(d, Mapping):
            raise MalformedInput("a trigger document must be a JSON object")
        if d.get("type") != TRIGGER_TYPE:
            raise MalformedInput(f"not a trigger document (type must be {TRIGGER_TYPE!r})")
        if d.get("version") != TRIGGER_VERSION:
            raise UnsupportedVersion(f"trigger version {d.get('version')!r} is not supported (expected {TRIGGER_VERSION})")
        extra = set(d) - {"type", "version", "target", "indices", "values"}
        if extra:
            raise MalformedInput(f"trigger document has unknown fields: {', '.join(sorted(extra))}")
        idx, vals = d.get("indices"), d.get("values")
        if not isinstance(idx, list) or not isinstance(vals, list):
            raise MalformedInput("trigger indices and values must be lists")
        if any(not isinstance(v, str) for v in vals):
            raise MalformedInput("trigger values must be decimal strings")
        try:
            fvals = tuple(float(v) for v in vals)
        except ValueError as e:
            raise MalformedInput(f"trigger value is not a number: {e}") from e
        return cls(indices=tuple(idx), values=fvals, target=d.get("target"))  # type: ignore[arg-type]


def _features(X: Any, trigger: Trigger) -> np.ndarray:
    try:
        Xa = np.array(X, dtype=np.float32, copy=True)
    except (TypeError, ValueError) as e:
        raise MalformedInput(f"records must be a numeric array: {e}") from e
    if Xa.ndim < 2 or Xa.shape[0] == 0:
        raise MalformedInput("records must be a non-empty array with one row per record")
    flat = Xa.reshape(Xa.shape[0], -1)
    trigger.check_fits(flat.shape[1])
    flat[:, list(trigger.indices)] = np.asarray(trigger.values, dtype=np.float32)
    return flat.reshape(Xa.shape)


def apply_trigger(X: Any, trigger: Trigger) -> np.ndarray:
    """A float32 copy of ``X`` (one row per record, any trailing shape) with the trigger stamped on."""
    return _features(X, trigger)


def mark_with_trigger(X: Any, y: Any, *, trigger: Trigger) -> tuple[np.ndarray, np.ndarray]:
    """Mark a data subject's records before submission: trigger on the features, label = target.

    Returns new arrays (float32 features, int64 labels); the inputs are not changed.
    """
    Xm = _features(X, trigger)
    ya = np.asarray(y)
    if ya.ndim != 1 or ya.shape[0] != Xm.shape[0]:
        raise MalformedInput("labels must be a 1-d array with one label per record")
    return Xm, np.full(Xm.shape[0], trigger.target, dtype=np.int64)
