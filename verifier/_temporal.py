"""Temporal residual memory (DeepObliviate; He et al.) -- informative only (specs/10-residual.md).

SISA retrains a shard from the checkpoint taken before the deleted records' slice. The original
training went on from that checkpoint *with* the records; the retraining goes on *without* them.
For every later stage ``r`` both lineages logged a checkpoint, so the verifier can measure how much
of the original training's movement came from the deleted records:

* ``residual_l1`` -- DeepObliviate's temporal residual memory
  ``|| (O_r - O_{r-1}) - (N_r - N_{r-1}) ||_1``: the stage-``r`` update of the original lineage ``O``
  minus that of the retrained lineage ``N`` (``N_{start-1} = O_{start-1}``, the rollback point);
* ``residual_rel`` -- the same divided by ``|| O_r - O_{r-1} ||_1``;
* ``distance_rel`` -- ``|| O_r - N_r ||_2 / || O_r ||_2``, how far apart the two lineages are;
* ``margin_nats`` (when stage models and the deleted records are given) -- mean over the deleted
  records of ``log p_y(O_r) - log p_y(N_r)``: how much more the original lineage believes their
  labels, in nats.

Nothing here decides a verdict. Parameters come in as flat arrays or as checkpoints (mappings of
name to array; ``param/*`` entries are used when present, momentum buffers are ignored).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from verifiable_mu._errors import MalformedInput
from verifiable_mu._memory import flatten_params, stage_residual

from ._residual_attacks import checked_labels, checked_proba
from ._residual_report import rounded

__all__ = ["TemporalPoint", "TemporalReport", "temporal_memory", "flatten_params"]

TEMPORAL_REPORT_TYPE = "vmu.temporal-report"
TEMPORAL_REPORT_VERSION = 1

ProbaFn = Callable[[np.ndarray], Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class TemporalPoint:
    stage: int
    t: int
    residual_l1: float
    residual_rel: float
    distance_rel: float
    margin_nats: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "t": self.t,
            "residual_l1": rounded(self.residual_l1),
            "residual_rel": rounded(self.residual_rel),
            "distance_rel": rounded(self.distance_rel),
            "margin_nats": None if self.margin_nats is None else rounded(self.margin_nats),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class TemporalReport:
    shard: int
    start_stage: int
    points: tuple[TemporalPoint, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "type": TEMPORAL_REPORT_TYPE,
            "version": TEMPORAL_REPORT_VERSION,
            "shard": self.shard,
            "start_stage": self.start_stage,
            "informative_only": True,
            "points": [p.to_json() for p in self.points],
        }


def temporal_memory(
    *,
    original: Mapping[int, Any],
    retrained: Mapping[int, Any],
    start_stage: int,
    shard: int = 0,
    original_models: Mapping[int, ProbaFn] | None = None,
    retrained_models: Mapping[int, ProbaFn] | None = None,
    deleted_X: Any = None,
    deleted_y: Any = None,
) -> TemporalReport:
    """Residual memory of one retrained shard, stage by stage.

    ``original[r]``: parameters after stage ``r`` of the original lineage (``r = start_stage - 1``
    .. last, where stage 0 is the initial model); ``retrained[r]``: the retrained lineage's, for
    ``r = start_stage`` .. last (``retrained[start_stage - 1]`` may be given and must then equal the
    rollback point). ``original_models``/``retrained_models`` (stage -> ``predict_proba``) with
    ``deleted_X``/``deleted_y`` add the per-stage margin on the deleted records.
    """
    if not isinstance(start_stage, int) or start_stage < 1:
        raise MalformedInput("start_stage must be a stage number >= 1 (the first stage retrained)")
    if start_stage - 1 not in original:
        raise MalformedInput(f"the original lineage lacks the rollback checkpoint (stage {start_stage - 1})")
    stages = sorted(r for r in retrained if r >= start_stage)
    if not stages or stages != list(range(start_stage, stages[-1] + 1)):
        raise MalformedInput(f"the retrained lineage must have every stage from {start_stage} on, without gaps")
    missing = [r for r in stages if r not in original]
    if missing:
        raise MalformedInput(f"the original lineage lacks stage {missing[0]}")
    rollback = flatten_params(original[start_stage - 1])
    if start_stage - 1 in retrained and not np.array_equal(flatten_params(retrained[start_stage - 1]), rollback):
        raise MalformedInput("the retrained lineage does not start from the original lineage's rollback checkpoint")
    margins = original_models is not None or retrained_models is not None
    if margins:
        if original_models is None or retrained_models is None or deleted_X is None:
            raise MalformedInput("per-stage margins need original_models, retrained_models, deleted_X and deleted_y")
        Xd = np.asarray(deleted_X, dtype=np.float32)
        if Xd.ndim < 2 or Xd.shape[0] == 0:
            raise MalformedInput("deleted_X must have one row per deleted record")
        yd = checked_labels(deleted_y, Xd.shape[0], "deleted_y")
    points = []
    prev_o = prev_n = rollback
    for r in stages:
        o = flatten_params(original[r])
        nv = flatten_params(retrained[r])
        if o.shape != rollback.shape or nv.shape != rollback.shape:
            raise MalformedInput(f"stage {r}: checkpoints of the two lineages have different sizes")
        res, rel = stage_residual(prev_o, o, prev_n, nv)
        margin = None
        if margins:
            try:
                fo, fn = original_models[r], retrained_models[r]  # type: ignore[index]
            except KeyError as e:
                raise MalformedInput(f"no model for stage {r} in both lineages") from e
            po = checked_proba(fo, Xd, None, f"original stage {r} model")[np.arange(len(yd)), yd]
            pn = checked_proba(fn, Xd, None, f"retrained stage {r} model")[np.arange(len(yd)), yd]
            margin = float(np.mean(np.log(np.maximum(po, 1e-300)) - np.log(np.maximum(pn, 1e-300))))
        points.append(
            TemporalPoint(
                stage=r,
                t=r - start_stage,
                residual_l1=res,
                residual_rel=rel,
                distance_rel=float(np.linalg.norm(o - nv)) / max(float(np.linalg.norm(o)), 1e-300),
                margin_nats=margin,
            )
        )
        prev_o, prev_n = o, nv
    return TemporalReport(shard=int(shard), start_stage=start_stage, points=tuple(points))
