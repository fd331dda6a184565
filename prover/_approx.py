"""Approximate unlearning methods -- UNPROVEN (issue 13; specs/12-audit-package.md).

Every method here produces post-deletion constituent models *without* a proof: no deletion
transcript, no log entry, no change to the workspace's committed state. The only evidence an
agency can get for them is a statistical residual audit of an audit package
(``prover/_audit_package.py``, ``vmu-audit``). The exact method, ``retrain``, is
:meth:`prover.Workspace.forget` (SISA retraining under commitments, with a transcript).

Methods (each on the shards that trained a deleted record; the other shards keep their models):

* ``finetune`` -- continue the shard's model on its retained records (catastrophic forgetting);
* ``neggrad`` -- gradient ascent on the deleted records together with descent on the retained
  ones (NegGrad+; the ascent term is clipped at ``neggrad_cap`` nats so it cannot diverge);
* ``fisher`` -- Fisher forgetting (Golatkar et al. 2020): Gaussian noise with per-parameter
  variance ``fisher_alpha / (F_i + 1e-8)``, ``F`` the diagonal (empirical) Fisher information of the
  retained records, the standard deviation capped at ``fisher_max_std``;
* ``distill`` -- a freshly initialised student trained on the teacher's (the shard's model)
  temperature-``T`` soft labels of the retained records only;
* ``oblivi`` -- DeepObliviate-style (He et al. 2021): from the rollback point (the checkpoint before
  the first deleted record's slice) retrain stage by stage, exactly as SISA's exact retraining
  would (same seeds, same order), while the temporal residual memory of the deleted records
  (``verifiable_mu._memory.stage_residual``: the relative L1 of the stage update difference, the
  quantity the verifier reports) exceeds ``oblivi_epsilon``; then stitch the remaining original
  updates: ``N_R = N_k + (O_R - O_k)``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from verifiable_mu._memory import flatten_params, stage_residual

from ._errors import BadInput

__all__ = [
    "METHODS",
    "APPROXIMATE",
    "UNPROVEN_LABEL",
    "ApproxParams",
    "ApproxResult",
    "approximate_forget",
    "mean_loss",
    "accuracy",
]

METHODS = ("retrain", "finetune", "neggrad", "fisher", "distill", "oblivi")
APPROXIMATE = METHODS[1:]
UNPROVEN_LABEL = "unproven: approximate unlearning"


@dataclass(frozen=True, slots=True, kw_only=True)
class ApproxParams:
    """Each method's knobs (defaults: those measured in README's compare table)."""

    finetune_epochs: int = 2
    neggrad_epochs: int = 2
    neggrad_beta: float = 1.0
    neggrad_cap: float = 5.0
    fisher_alpha: float = 1e-6
    fisher_max_std: float = 0.05
    distill_epochs: int = 8
    distill_temperature: float = 2.0
    oblivi_epsilon: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (1 <= self.finetune_epochs <= 1000, "finetune_epochs must be between 1 and 1000"),
            (1 <= self.neggrad_epochs <= 1000, "neggrad_epochs must be between 1 and 1000"),
            (self.neggrad_beta > 0 and self.neggrad_cap > 0, "neggrad_beta and neggrad_cap must be > 0"),
            (self.fisher_alpha > 0 and self.fisher_max_std > 0, "fisher_alpha and fisher_max_std must be > 0"),
            (1 <= self.distill_epochs <= 1000, "distill_epochs must be between 1 and 1000"),
            (self.distill_temperature > 0, "distill_temperature must be > 0"),
            (self.oblivi_epsilon > 0, "oblivi_epsilon must be > 0"),
            (0 <= self.seed < 2**63, "seed must be a non-negative 63-bit integer"),
        ]
        for ok, msg in checks:
            if not ok:
                raise BadInput(msg)

    def to_json(self) -> dict[str, Any]:
        return {k: (repr(float(v)) if isinstance(v, float) else v) for k, v in
                ((k, getattr(self, k)) for k in self.__dataclass_fields__)}


@dataclass(slots=True, kw_only=True)
class ApproxResult:
    """Models before and after one request, as checkpoints (``param/*``, ``momentum/*`` tensors)."""

    method: str
    label: str
    ids: tuple[str, ...]
    deleted_rows: np.ndarray  # data rows of the deleted *training* records, in request order
    shard_of_deleted: np.ndarray
    held_out_ids: tuple[str, ...]  # deleted test/audit records: never trained on, nothing to undo
    shards_changed: tuple[int, ...]
    pre: list[dict[str, Any]]  # one checkpoint per shard
    post: list[dict[str, Any]]
    seconds: float
    params: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)


# --- torch helpers ---------------------------------------------------------------------------------


def _load(ws: Any, digest: bytes) -> dict[str, Any]:
    import os

    from verifiable_mu.training import load_checkpoint

    return load_checkpoint(os.path.join(ws.store, digest.hex() + ".safetensors"), expected_digest=digest)


def _model(ws: Any, ckpt: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    import torch

    from verifiable_mu.training import build_model, load_into_model

    m = build_model(ws._model_spec(), init_seed=0)
    mom = load_into_model(m, ckpt, torch.device("cpu"))
    return m, mom


def _ckpt(model: Any, momentum: dict[str, Any] | None = None) -> dict[str, Any]:
    from verifiable_mu.training import checkpoint_from_model, zero_momentum

    return checkpoint_from_model(model, momentum if momentum is not None else zero_momentum(model))


def _proba(model: Any, X: np.ndarray) -> np.ndarray:
    import torch

    model.eval()
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))), dim=1).double().numpy()


def mean_loss(ws: Any, ckpt: dict[str, Any], X: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy of one checkpoint's model on ``(X, y)`` (nats)."""
    m, _ = _model(ws, ckpt)
    p = _proba(m, X)[np.arange(len(y)), np.asarray(y, dtype=np.int64)]
    return float(-np.log(np.maximum(p, 1e-300)).mean())


def accuracy(ws: Any, ckpt: dict[str, Any], X: np.ndarray, y: np.ndarray) -> float:
    m, _ = _model(ws, ckpt)
    return float((_proba(m, X).argmax(axis=1) == np.asarray(y)).mean())


def _batches(n: int, B: int, rng: np.random.Generator) -> list[np.ndarray]:
    perm = rng.permutation(n)
    return [perm[a : a + B] for a in range(0, n, B)]


def _sgd(model: Any, hyper: Any) -> Any:
    import torch

    return torch.optim.SGD(model.parameters(), lr=hyper.lr, momentum=hyper.momentum, weight_decay=hyper.weight_decay)


# --- the methods -----------------------------------------------------------------------------------


def _finetune(ws: Any, ckpt: dict[str, Any], Xr: np.ndarray, yr: np.ndarray, p: ApproxParams, hyper: Any,
              rng: np.random.Generator) -> dict[str, Any]:
    import torch

    m, _ = _model(ws, ckpt)
    m.train()
    opt = _sgd(m, hyper)
    X, y = torch.from_numpy(Xr), torch.from_numpy(yr)
    for _ in range(p.finetune_epochs):
        for idx in _batches(len(Xr), hyper.batch_size, rng):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(X[idx]), y[idx]).backward()
            opt.step()
    return _ckpt(m)


def _neggrad(ws: Any, ckpt: dict[str, Any], Xr: np.ndarray, yr: np.ndarray, Xd: np.ndarray, yd: np.ndarray,
             p: ApproxParams, hyper: Any, rng: np.random.Generator) -> dict[str, Any]:
    import torch

    m, _ = _model(ws, ckpt)
    m.train()
    opt = _sgd(m, hyper)
    X, y = torch.from_numpy(Xr), torch.from_numpy(yr)
    Xdt, ydt = torch.from_numpy(Xd), torch.from_numpy(yd)
    B = hyper.batch_size
    dq: list[np.ndarray] = []
    for _ in range(p.neggrad_epochs):
        for idx in _batches(len(Xr), B, rng):
            if not dq:
                dq = _batches(len(Xd), B, rng)
            di = dq.pop()
            opt.zero_grad()
            ce_r = torch.nn.functional.cross_entropy(m(X[idx]), y[idx])
            ce_d = torch.nn.functional.cross_entropy(m(Xdt[di]), ydt[di])
            (ce_r - p.neggrad_beta * torch.clamp(ce_d, max=p.neggrad_cap)).backward()
            opt.step()
    return _ckpt(m)


def _fisher(ws: Any, ckpt: dict[str, Any], Xr: np.ndarray, yr: np.ndarray, p: ApproxParams,
            rng: np.random.Generator) -> tuple[dict[str, Any], dict[str, Any]]:
    import torch
    from torch.func import functional_call, grad, vmap

    m, _ = _model(ws, ckpt)
    m.eval()
    params = {k: v.detach() for k, v in m.named_parameters()}

    def loss(prm: dict[str, Any], x: Any, t: Any) -> Any:
        out = functional_call(m, prm, (x.unsqueeze(0),))
        return torch.nn.functional.cross_entropy(out, t.unsqueeze(0))

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
    X, y = torch.from_numpy(Xr), torch.from_numpy(yr)
    fisher = {k: torch.zeros_like(v) for k, v in params.items()}
    for a in range(0, len(Xr), 256):
        g = per_sample(params, X[a : a + 256], y[a : a + 256])
        for k in fisher:
            fisher[k] += (g[k] ** 2).sum(dim=0)
    gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
    capped = total = 0
    with torch.no_grad():
        for k, prm in m.named_parameters():
            f = fisher[k] / max(len(Xr), 1)
            std = torch.sqrt(p.fisher_alpha / (f + 1e-8))
            capped += int((std > p.fisher_max_std).sum())
            total += std.numel()
            std = torch.clamp(std, max=p.fisher_max_std)
            prm.add_(std * torch.randn(prm.shape, generator=gen, dtype=prm.dtype))
    return _ckpt(m), {"noise_capped_fraction": capped / max(total, 1)}


def _distill(ws: Any, ckpt: dict[str, Any], Xr: np.ndarray, p: ApproxParams, hyper: Any,
             rng: np.random.Generator) -> dict[str, Any]:
    import torch

    from verifiable_mu.training import build_model

    teacher, _ = _model(ws, ckpt)
    teacher.eval()
    T = p.distill_temperature
    X = torch.from_numpy(Xr)
    with torch.no_grad():
        soft = torch.softmax(teacher(X) / T, dim=1)
    student = build_model(ws._model_spec(), init_seed=int(rng.integers(0, 2**62)))
    student.train()
    opt = _sgd(student, hyper)
    for _ in range(p.distill_epochs):
        for idx in _batches(len(Xr), hyper.batch_size, rng):
            opt.zero_grad()
            logp = torch.log_softmax(student(X[idx]) / T, dim=1)
            (torch.nn.functional.kl_div(logp, soft[idx], reduction="batchmean") * T * T).backward()
            opt.step()
    return _ckpt(student)


def _oblivi(ws: Any, shard: int, deleted_rows: set[int], p: ApproxParams) -> tuple[dict[str, Any], dict[str, Any]]:
    """Retrain the shard from its rollback point stage by stage as SISA would (generation + 1,
    the same seeds and order as :meth:`Workspace.forget`), while the relative temporal residual
    memory exceeds epsilon; then stitch ``N_R = N_k + (O_R - O_k)``."""
    import torch

    from verifiable_mu._seeds import epoch_order
    from verifiable_mu.training import Hyper, step_seed, train_step

    from ._sisa import stage_epochs

    cfg = ws.config
    gen = ws._state.shard_generation(shard)[0] + 1
    stages = ws._state.stages(shard)
    by_slice = ws._live_rows_by_slice(shard)
    first = min(slc for slc, (rows, _) in by_slice.items() if deleted_rows & set(rows))
    k = first + 1  # the first stage retrained (1-based)
    R = cfg.slices
    orig = {r: _load(ws, stages[r][1]) for r in range(k - 1, R + 1)}
    model, momentum = _model(ws, orig[k - 1])
    hyper = Hyper.from_json(cfg.hyper_json())
    X_all, y_all = ws.data.X, ws.data.y
    step = stages[k - 1][0]
    ep = stage_epochs(cfg.epochs, cfg.slices)
    rows: list[int] = []
    for r in range(k - 1):
        rows += [x for x in by_slice.get(r, ([], []))[0] if x not in deleted_rows]
    prev_o = prev_n = flatten_params({n: t.numpy() for n, t in orig[k - 1].items()})
    trace: list[dict[str, Any]] = []
    stop = R
    n_ck: dict[str, Any] = orig[k - 1]
    for r in range(k, R + 1):
        rows += [x for x in by_slice.get(r - 1, ([], []))[0] if x not in deleted_rows]
        ra = np.asarray(rows, dtype=np.int64)
        X = torch.from_numpy(np.ascontiguousarray(X_all[ra], dtype=np.float32))
        y = torch.from_numpy(np.ascontiguousarray(y_all[ra], dtype=np.int64))
        n = len(ra)
        for e in range(ep):
            perm = epoch_order(cfg.seed, shard=shard, generation=gen, stage=r, epoch=e, n=n)
            for b in range(0, n, hyper.batch_size):
                ti = torch.from_numpy(perm[b : b + hyper.batch_size])
                seed = step_seed(cfg.seed, shard=shard, generation=gen, stage=r, epoch=e, step=step)
                train_step(model, momentum, X[ti], y[ti], hyper, seed)
                step += 1
        n_ck = _ckpt(model, momentum)
        o_v = flatten_params({nm: t.numpy() for nm, t in orig[r].items()})
        n_v = flatten_params({nm: t.numpy() for nm, t in n_ck.items()})
        l1, rel = stage_residual(prev_o, o_v, prev_n, n_v)
        trace.append({"stage": r, "residual_l1": l1, "residual_rel": rel})
        prev_o, prev_n = o_v, n_v
        if rel <= p.oblivi_epsilon and r < R:
            stop = r
            break
    if stop < R:  # stitch the original updates after stage `stop`
        out = {}
        for nm, t in n_ck.items():
            if nm.startswith("param/"):
                out[nm] = (t.double() + (orig[R][nm].double() - orig[stop][nm].double())).float().contiguous()
            else:
                out[nm] = torch.zeros_like(t)
        n_ck = out
    return n_ck, {"shard": shard, "rollback_stage": k - 1, "retrained_stages": list(range(k, stop + 1)),
                  "stitched_from_stage": stop if stop < R else None, "trace": trace}


# --- the driver ------------------------------------------------------------------------------------


def approximate_forget(ws: Any, ids: Sequence[str], method: str, params: ApproxParams | None = None) -> ApproxResult:
    """Run one *unproven* approximate unlearning method on the workspace's current models.

    Reads the workspace only: its log, committed state and checkpoint files are unchanged (no
    transcript is written). Returns the constituents before and after, for an audit package."""
    if method not in APPROXIMATE:
        raise BadInput(f"unknown approximate method {method!r} (use {', '.join(APPROXIMATE)}; 'retrain' is the "
                       "exact, proven path: Workspace.forget)")
    p = params or ApproxParams()
    if not ws.trained:
        raise BadInput("the workspace is not trained yet: run 'vmu train' first")
    if isinstance(ids, (str, bytes)):
        raise BadInput("ids must be a list of record ids")
    ws._warm_up()
    recs = ws._validate_ids([str(i) for i in ids])
    from verifiable_mu.training import Hyper

    hyper = Hyper.from_json(ws.config.hyper_json())
    t0 = time.perf_counter()
    digests = ws._shard_digests()
    pre = [_load(ws, d) for d in digests]
    post = list(pre)
    trained = [(row, rid, shard) for row, rid, shard, _slc, _c, _k in recs if shard is not None]
    held = tuple(rid for _row, rid, shard, *_ in recs if shard is None)
    rows = np.asarray([r for r, _, _ in trained], dtype=np.int64)
    shard_of = np.asarray([s for _, _, s in trained], dtype=np.int64)
    X_all, y_all = ws.data.X, ws.data.y
    details: dict[str, Any] = {}
    changed = sorted({int(s) for s in shard_of})
    for s in changed:
        rng = np.random.default_rng([p.seed, s, APPROXIMATE.index(method)])
        d_rows = set(rows[shard_of == s].tolist())
        live = [r for rs, _ in ws._live_rows_by_slice(s).values() for r in rs]
        kept = np.asarray(sorted(r for r in live if r not in d_rows), dtype=np.int64)
        dr = np.asarray(sorted(d_rows), dtype=np.int64)
        Xr = np.ascontiguousarray(X_all[kept], dtype=np.float32)
        yr = np.ascontiguousarray(y_all[kept], dtype=np.int64)
        Xd = np.ascontiguousarray(X_all[dr], dtype=np.float32)
        yd = np.ascontiguousarray(y_all[dr], dtype=np.int64)
        if len(kept) == 0 and method != "oblivi":
            raise BadInput(f"shard {s} would keep no record: {method} needs retained data (use retrain)")
        if method == "finetune":
            post[s] = _finetune(ws, pre[s], Xr, yr, p, hyper, rng)
        elif method == "neggrad":
            post[s] = _neggrad(ws, pre[s], Xr, yr, Xd, yd, p, hyper, rng)
        elif method == "fisher":
            post[s], details[f"shard_{s}"] = _fisher(ws, pre[s], Xr, yr, p, rng)
        elif method == "distill":
            post[s] = _distill(ws, pre[s], Xr, p, hyper, rng)
        else:
            post[s], details[f"shard_{s}"] = _oblivi(ws, s, d_rows, p)
    return ApproxResult(
        method=method,
        label=UNPROVEN_LABEL,
        ids=tuple(str(i) for i in ids),
        deleted_rows=rows,
        shard_of_deleted=shard_of,
        held_out_ids=held,
        shards_changed=tuple(changed),
        pre=pre,
        post=post,
        seconds=time.perf_counter() - t0,
        params=p.to_json(),
        details=details,
    )
