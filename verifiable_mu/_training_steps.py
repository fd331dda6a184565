"""The three kinds of step (specs/06-training.md section 3): float32 SGD with momentum, portable-v1
with its gradient grid and rounding hints (section 3a), and DP-SGD (section 3b).

Part of :mod:`verifiable_mu.training`, which re-exports every name; import it from there.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from ._errors import CommitmentMismatch
from ._training_model import Hyper

#: portable-v1 (specs/06 section 3a): a gradient tensor is rounded to the grid 2^(E - GRID_BITS),
#: E the exponent of its largest magnitude; the prover hints every element whose scaled value
#: lies within HINT_ZONE of a grid midpoint, and the grid exponent when the largest magnitude lies
#: within EXP_ZONE (relative) of a power of two; the verifier accepts a hint up to ACCEPT_ZONE /
#: EXP_ACCEPT away.
GRID_BITS = 24
HINT_ZONE = 2.0**-14
ACCEPT_ZONE = 2.0**-12
EXP_ZONE = 2.0**-30
EXP_ACCEPT = 2.0**-28
#: A gradient tensor whose largest magnitude is below this rounds to zero.
TINY = 2.0**-900


def _seed_step(seed: int, xb: torch.Tensor) -> None:
    """Item 1 of a step (specs/06 section 3): the generators seeded with the step seed.
    torch.manual_seed goes through Python wrappers costing ~170 us; seed the generators directly."""
    torch.default_generator.manual_seed(seed)
    if xb.is_cuda:
        torch.cuda.manual_seed(seed)


def _momentum_update(p: torch.Tensor, g: torch.Tensor, buf: torch.Tensor, hyper: Hyper) -> None:
    """The float32 update of one parameter (specs/06 section 3, item 3): weight decay, momentum,
    the step. Shared by plain SGD and DP-SGD, so the two differ only in the gradient."""
    if hyper.weight_decay:
        g = g.add(p, alpha=hyper.weight_decay)
    buf.mul_(hyper.momentum).add_(g)
    p.add_(buf, alpha=-hyper.lr)


def sgd_step(
    model: nn.Module,
    momentum: dict[str, torch.Tensor],
    xb: torch.Tensor,
    yb: torch.Tensor,
    hyper: Hyper,
    seed: int,
) -> float:
    """One deterministic SGD-with-momentum step; returns the batch loss."""
    _seed_step(seed, xb)
    model.train()
    for p in model.parameters():
        p.grad = None
    loss = nn.functional.cross_entropy(model(xb), yb)
    loss.backward()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.grad is not None:
                _momentum_update(p, p.grad, momentum[name], hyper)
    return float(loss.detach())


class RoundingHintInvalid(CommitmentMismatch):
    """A portable step's logged rounding hint does not fit the value the replay computed."""


Hint = tuple[int, int, int]
"""``(tensor, element, value)``: tensor = index in the sorted parameter names; element = -1 for
the grid exponent (value = E), else the flat index (value = the grid integer)."""


def _grid_round(g: torch.Tensor, t: int, given: list[Hint] | None, out: list[Hint]) -> torch.Tensor:
    """Round one float64 gradient tensor to its grid (specs/06 section 3a). ``given`` None: as the
    prover, append the hints this rounding needs to ``out``; else apply and check those hints.

    ``|s - round(s)|`` equals ``|s - floor(s) - 1/2|`` subtracted from 1/2, exactly (both are exact
    in float64 for ``|s| < 2^25``), so the hint zone is tested on the former: one subtraction."""
    flat = g.reshape(-1)
    if flat.numel():
        lo, hi = torch.aminmax(flat)
        m = max(-float(lo), float(hi))
    else:
        m = 0.0
    if not math.isfinite(m):
        raise FloatingPointError(f"gradient of parameter {t} is not finite")
    if m < TINY:  # flushed: far below anything training can resolve (and 2^(24-E) stays finite)
        if given:
            raise RoundingHintInvalid(f"rounding hint for parameter {t}, whose gradient is zero")
        return torch.zeros_like(g)
    e = math.frexp(m)[1]  # 2^(e-1) <= m < 2^e
    hints = given or []
    if given is None:
        if m / 2.0 ** (e - 1) - 1.0 < EXP_ZONE or 1.0 - m / 2.0**e < EXP_ZONE:
            out.append((t, -1, e))
    elif hints and hints[0][1] == -1:
        eh = hints[0][2]
        if not -1000 < eh < 1000 or min(abs(m / 2.0 ** (eh - 1) - 1.0), abs(m / 2.0**eh - 1.0)) >= EXP_ACCEPT:
            raise RoundingHintInvalid(f"grid-exponent hint {eh} of parameter {t} is not near its largest gradient")
        e, hints = eh, hints[1:]
    scale = 2.0 ** (GRID_BITS - e)
    s = flat * scale  # exact: a power of two
    q = torch.round(s)  # ties to even
    if given is None:
        off = s.sub_(q).abs_()  # |s - q| = 1/2 - |s - floor(s) - 1/2|
        near = off > 0.5 - HINT_ZONE
        if bool(near.any()):
            out.extend((t, int(i), int(q[i])) for i in torch.nonzero(near).reshape(-1).tolist())
    else:
        n = flat.numel()
        for _, i, v in hints:
            if not 0 <= i < n:
                raise RoundingHintInvalid(f"rounding hint for element {i} of parameter {t}, which has {n}")
            si = float(s[i])
            fl = math.floor(si)
            if abs(si - fl - 0.5) >= ACCEPT_ZONE or v not in (fl, fl + 1):
                raise RoundingHintInvalid(f"rounding hint for element {i} of parameter {t} is not near a grid midpoint")
            q[i] = float(v)
    return q.mul_(1.0 / scale).reshape(g.shape)


def _hints_by_tensor(hints: Iterable[Hint], n_tensors: int) -> dict[int, list[Hint]]:
    out: dict[int, list[Hint]] = {}
    prev: Hint | None = None
    for h in hints:
        if prev is not None and (h[0], h[1]) <= (prev[0], prev[1]):
            raise RoundingHintInvalid("rounding hints are not in strictly increasing (tensor, element) order")
        if not 0 <= h[0] < n_tensors:
            raise RoundingHintInvalid(f"rounding hint for parameter {h[0]}; the model has {n_tensors}")
        out.setdefault(h[0], []).append(h)
        prev = h
    return out


def portable_step(
    model: nn.Module,
    momentum: dict[str, torch.Tensor],
    xb: torch.Tensor,
    yb: torch.Tensor,
    hyper: Hyper,
    seed: int,
    hints: Iterable[Hint] | None = None,
) -> tuple[float, list[Hint]]:
    """One portable-v1 step (specs/06 section 3a) on a float64 ``model`` whose values are all
    float32-representable; the update uses only correctly rounded element-wise operations, so the
    only platform-dependent value, the gradient, is rounded to a grid with hints. ``hints`` None:
    as the prover, return the hints the step needs; else (the verifier) apply them, raising
    :class:`RoundingHintInvalid` for one that does not fit. Returns the batch loss and the hints."""
    _seed_step(seed, xb)
    model.train()
    params = dict(model.named_parameters())
    names = sorted(params)
    for p in params.values():
        p.grad = None
    loss = nn.functional.cross_entropy(model(xb.to(torch.float64)), yb)
    loss.backward()
    given = None if hints is None else _hints_by_tensor(hints, len(names))
    out: list[Hint] = []
    lr, mom, wd = hyper.lr, hyper.momentum, hyper.weight_decay
    with torch.no_grad():
        for t, name in enumerate(names):
            p = params[name]
            if p.grad is None:
                if given and t in given:
                    raise RoundingHintInvalid(f"rounding hint for parameter {t}, which has no gradient")
                continue
            g = _grid_round(p.grad, t, None if given is None else given.get(t, []), out)
            if wd:
                g = g + p * wd
            buf = momentum[name]
            buf.mul_(mom)
            buf.add_(g)
            buf.copy_(buf.to(torch.float32))
            p.sub_(buf * lr)
            p.copy_(p.to(torch.float32))
    return float(loss.detach()), out


#: Domain separation of the DP noise generator's seed from the step's own (dropout) seed.
_DP_NOISE_SEED_XOR = 0x44502D53_47440001


def dp_step(
    model: nn.Module,
    momentum: dict[str, torch.Tensor],
    xb: torch.Tensor,
    yb: torch.Tensor,
    hyper: Hyper,
    seed: int,
) -> float:
    """One DP-SGD step (Abadi et al. 2016; specs/06 section 3b), then momentum as in
    :func:`sgd_step`: per-example gradients (torch.func), each scaled to L2 norm at most
    ``hyper.dp_clip`` over all parameters, summed, plus ``N(0, (dp_noise * dp_clip)^2)`` noise per
    element drawn in sorted parameter-name order from a CPU generator seeded with
    ``seed ^ _DP_NOISE_SEED_XOR`` (so a replay draws the same noise on any device), divided by the
    batch size. Returns the batch loss."""
    from torch.func import functional_call, grad_and_value, vmap

    _seed_step(seed, xb)
    model.train()
    params = {k: v.detach() for k, v in model.named_parameters()}
    names = sorted(params)

    def loss_of(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(functional_call(model, p, (x[None],)), y[None])

    g, losses = vmap(grad_and_value(loss_of), in_dims=(None, 0, 0))(params, xb, yb)
    n = xb.shape[0]
    norms = torch.sqrt(sum((g[k].reshape(n, -1) ** 2).sum(dim=1) for k in names))
    scale = torch.clamp(hyper.dp_clip / (norms + 1e-12), max=1.0)
    gen = torch.Generator(device="cpu").manual_seed(seed ^ _DP_NOISE_SEED_XOR)
    live = dict(model.named_parameters())
    with torch.no_grad():
        for k in names:
            summed = (g[k] * scale.reshape((n,) + (1,) * (g[k].dim() - 1))).sum(dim=0)
            noise = torch.randn(summed.shape, generator=gen, dtype=summed.dtype).to(summed.device)
            _momentum_update(live[k], (summed + noise * (hyper.dp_noise * hyper.dp_clip)) / n, momentum[k], hyper)
    return float(losses.mean())  # the batch loss, from the per-example values (no second forward)
