"""The deterministic training step that prover and verifier both execute (specs/06-training.md).

This module needs torch; the rest of :mod:`verifiable_mu` does not import it, so a verifier that
only checks proofs never loads torch.

One *step* is: seed torch's global RNG with the logged step seed, compute the mean
cross-entropy of the model on the disclosed batch, back-propagate, and apply SGD with momentum
(``buf = momentum * buf + grad + weight_decay * param``; ``param -= lr * buf``), all in float32
with ``torch.use_deterministic_algorithms(True)`` and a fixed intra-op thread count. A
*checkpoint* is the model's parameters and the momentum buffers; its digest is taken over
canonical content (names, dtypes, shapes and little-endian bytes), never over file bytes.

The work is split by phase, one module each; this module re-exports every name of them, so it
stays the one entry point (the verifier imports it lazily by name):

- :mod:`verifiable_mu._training_model`: the model spec, the hyper-parameters, building a model;
- :mod:`verifiable_mu._training_platform`: determinism, the device, the platform fingerprint;
- :mod:`verifiable_mu._training_checkpoint`: checkpoints, their digest and their files;
- :mod:`verifiable_mu._training_steps`: float32 SGD, portable-v1 with rounding hints, DP-SGD.

The step in the log's arithmetic (:func:`train_step`), :func:`run_steps` and :func:`warm_up` stay
here and call the steps through this module's names (a test that patches ``dp_step`` or
``train_step`` here changes what the prover runs).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ._seeds import step_seed

# Every name of the parts, underscore names included: tests, benchmarks and the verifier (which
# imports this module by name) reach them through this module.
from ._training_checkpoint import (  # noqa: F401  (re-exported)
    _DIGEST_MARK,
    _DIGEST_PREFIX,
    _FILE_HEADERS,
    _META_KEY,
    _PLAIN_NAME,
    Checkpoint,
    _checkpoint_file_bytes,
    _digest_of_views,
    _file_header_parts,
    _safetensors_bytes,
    _tensor_views,
    checkpoint_digest,
    checkpoint_distance,
    checkpoint_from_model,
    load_checkpoint,
    load_into_model,
    save_checkpoint,
)
from ._training_model import (  # noqa: F401  (re-exported)
    _BUILTIN_MODELS,
    _CNN,
    ARITHMETICS,
    FLOAT32,
    PORTABLE,
    Hyper,
    ModelSpec,
    _dp_fields,
    build_model,
    commit_model_code,
    model_structure,
    prepare_model,
    structure_digest_of,
    zero_momentum,
)
from ._training_platform import (  # noqa: F401  (re-exported)
    _CPU_FINGERPRINT,
    _blas_fingerprint,
    _cpu_fingerprint,
    _cuda_fingerprint,
    configure_determinism,
    platform_info,
    resolve_device,
)
from ._training_steps import (  # noqa: F401  (re-exported)
    _DP_NOISE_SEED_XOR,
    ACCEPT_ZONE,
    EXP_ACCEPT,
    EXP_ZONE,
    GRID_BITS,
    HINT_ZONE,
    TINY,
    Hint,
    RoundingHintInvalid,
    _grid_round,
    _hints_by_tensor,
    _momentum_update,
    _seed_step,
    dp_step,
    portable_step,
    sgd_step,
)

__all__ = [
    "ModelSpec",
    "Hyper",
    "Checkpoint",
    "build_model",
    "configure_determinism",
    "warm_up",
    "platform_info",
    "step_seed",
    "sgd_step",
    "dp_step",
    "portable_step",
    "train_step",
    "prepare_model",
    "RoundingHintInvalid",
    "FLOAT32",
    "PORTABLE",
    "ARITHMETICS",
    "run_steps",
    "checkpoint_digest",
    "checkpoint_from_model",
    "load_into_model",
    "save_checkpoint",
    "load_checkpoint",
    "checkpoint_distance",
    "resolve_device",
    "zero_momentum",
    "StepInput",
    "commit_model_code",
    "model_structure",
    "structure_digest_of",
]


_WARMED: set[tuple[str, str]] = set()


def warm_up(spec: ModelSpec, hyper: Hyper, feature_shape: tuple[int, ...], device: str = "cpu") -> None:
    """One throwaway training step of this model on zeros, once per process and model.

    The first steps of a process pay one-time costs (lazy imports, autograd, first use of each
    kernel and shape, the allocator: about 90 ms for the digits MLP on this machine). The prover runs this
    before it starts the clock on a training or forget run, as it imports torch before, so that
    recorded times and the speed-up printed after a deletion measure the work, not the process
    starting up. Every real step reseeds the RNG, so this changes no result.
    """
    key = (json.dumps(spec.to_json(), sort_keys=True), device)
    if key in _WARMED:
        return
    import safetensors.torch  # noqa: F401  (load_checkpoint imports it lazily: ~50 ms the first time)
    dev = resolve_device(device)
    model = build_model(spec, init_seed=0).to(dev)
    xb = torch.zeros((hyper.batch_size, *feature_shape), dtype=torch.float32, device=dev)
    yb = torch.zeros(hyper.batch_size, dtype=torch.long, device=dev)
    sgd_step(model, zero_momentum(model), xb, yb, hyper, 0)
    _WARMED.add(key)


def train_step(
    model: nn.Module,
    momentum: dict[str, torch.Tensor],
    xb: torch.Tensor,
    yb: torch.Tensor,
    hyper: Hyper,
    seed: int,
    hints: Iterable[Hint] | None = None,
) -> tuple[float, list[Hint]]:
    """One step in the log's arithmetic (``hyper.arithmetic``); returns the batch loss and the
    rounding hints (none for float32)."""
    if hyper.portable:
        return portable_step(model, momentum, xb, yb, hyper, seed, hints)
    if hints:
        raise RoundingHintInvalid("a float32 step carries rounding hints")
    if hyper.dp:
        return dp_step(model, momentum, xb, yb, hyper, seed), []
    return sgd_step(model, momentum, xb, yb, hyper, seed), []


@dataclass(frozen=True, slots=True)
class StepInput:
    """One step to execute: the batch rows and the logged seed."""

    x: np.ndarray
    y: np.ndarray
    seed: int


def run_steps(
    model: nn.Module,
    momentum: dict[str, torch.Tensor],
    steps: Iterable[StepInput],
    hyper: Hyper,
    device: torch.device,
) -> int:
    """Execute steps in order; return how many ran."""
    n = 0
    for s in steps:
        xb = torch.from_numpy(np.ascontiguousarray(s.x, dtype=np.float32)).to(device)
        yb = torch.from_numpy(np.ascontiguousarray(s.y, dtype=np.int64)).to(device)
        sgd_step(model, momentum, xb, yb, hyper, s.seed)
        n += 1
    return n
