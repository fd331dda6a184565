"""The deterministic training step that prover and verifier both execute (specs/06-training.md).

This module needs torch; the rest of :mod:`verifiable_mu` does not import it, so a verifier that
only checks proofs never loads torch.

One *step* is: seed torch's global RNG with the logged step seed, compute the mean
cross-entropy of the model on the disclosed batch, back-propagate, and apply SGD with momentum
(``buf = momentum * buf + grad + weight_decay * param``; ``param -= lr * buf``), all in float32
with ``torch.use_deterministic_algorithms(True)`` and a fixed intra-op thread count. A
*checkpoint* is the model's parameters and the momentum buffers; its digest is taken over
canonical content (names, dtypes, shapes and little-endian bytes), never over file bytes.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import re
import struct
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ._canonical import canonical_json
from ._errors import CommitmentMismatch, MalformedInput
from ._seeds import DurableBatch, _same_content, atomic_write, step_seed
from ._tags import TAG_CHECKPOINT

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

_BUILTIN_MODELS = ("mlp", "logreg", "cnn")

FLOAT32 = "float32"
PORTABLE = "portable-v1"
ARITHMETICS = (FLOAT32, PORTABLE)
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


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """Which model to build: a built-in name or ``module:factory``.

    A factory is called as ``factory(n_features=..., n_classes=..., input_shape=...)`` and must
    return a ``torch.nn.Module`` mapping a float32 batch of ``input_shape`` to logits.
    """

    name: str
    n_features: int
    n_classes: int
    input_shape: tuple[int, ...]
    hidden: int = 128

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "n_features": self.n_features,
            "n_classes": self.n_classes,
            "input_shape": list(self.input_shape),
            "hidden": self.hidden,
        }

    @classmethod
    def from_json(cls, d: Any) -> ModelSpec:
        try:
            return cls(
                name=str(d["name"]),
                n_features=int(d["n_features"]),
                n_classes=int(d["n_classes"]),
                input_shape=tuple(int(x) for x in d["input_shape"]),
                hidden=int(d["hidden"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise MalformedInput(f"model spec is not valid: {e}") from e


@dataclass(frozen=True, slots=True, kw_only=True)
class Hyper:
    """Hyper-parameters of every step; all logged (floats travel as decimal strings)."""

    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 32
    #: ``float32`` (bit-exact only on the same platform) or ``portable-v1`` (specs/06 section 3a:
    #: float64 gradients on a fixed grid with rounding hints, bit-exact on any platform)
    arithmetic: str = "float32"
    #: DP-SGD (specs/06 section 3b): per-example gradients clipped to L2 norm ``dp_clip``, summed,
    #: plus Gaussian noise of standard deviation ``dp_noise * dp_clip`` drawn from the step seed;
    #: both 0 for plain SGD
    dp_clip: float = 0.0
    dp_noise: float = 0.0
    dp_delta: float = 0.0  # the delta the owner's epsilon is stated at (reporting only)

    def __post_init__(self) -> None:
        if self.arithmetic not in ARITHMETICS:
            raise MalformedInput(f"unknown arithmetic {self.arithmetic!r} (use {' or '.join(ARITHMETICS)})")
        if (self.dp_clip or self.dp_noise) and not (
            math.isfinite(self.dp_clip) and math.isfinite(self.dp_noise) and self.dp_clip > 0 and self.dp_noise > 0
        ):
            raise MalformedInput("DP-SGD needs a finite clipping norm > 0 and a finite noise multiplier > 0")
        if self.dp and not 0 < self.dp_delta < 1:
            raise MalformedInput("DP-SGD needs a delta in (0, 1)")
        if self.dp and self.portable:
            raise MalformedInput("DP-SGD is defined for float32 arithmetic only")

    @property
    def portable(self) -> bool:
        return self.arithmetic == PORTABLE

    @property
    def dp(self) -> bool:
        return self.dp_clip > 0

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "lr": repr(self.lr),
            "momentum": repr(self.momentum),
            "weight_decay": repr(self.weight_decay),
            "batch_size": self.batch_size,
        }
        if self.portable:  # float32 logs keep the fields they always had
            d["arithmetic"] = self.arithmetic
        if self.dp:
            d["dp"] = {"clip": repr(self.dp_clip), "noise_multiplier": repr(self.dp_noise), "delta": repr(self.dp_delta)}
        return d

    @classmethod
    def from_json(cls, d: Any) -> Hyper:
        try:
            return cls(
                lr=float(d["lr"]),
                momentum=float(d["momentum"]),
                weight_decay=float(d["weight_decay"]),
                batch_size=int(d["batch_size"]),
                arithmetic=str(d.get("arithmetic", FLOAT32)),
                **_dp_fields(d.get("dp")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise MalformedInput(f"hyper-parameters are not valid: {e}") from e


def _dp_fields(d: Any) -> dict[str, float]:
    if d is None:
        return {}
    if not isinstance(d, dict) or set(d) != {"clip", "noise_multiplier", "delta"}:
        raise ValueError("'dp' must hold exactly 'clip', 'noise_multiplier' and 'delta'")
    if not all(isinstance(v, str) for v in d.values()):
        raise ValueError("DP parameters travel as decimal strings")
    return {"dp_clip": float(d["clip"]), "dp_noise": float(d["noise_multiplier"]), "dp_delta": float(d["delta"])}


class _CNN(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], n_classes: int) -> None:
        super().__init__()
        side = int(round(float(np.prod(input_shape)) ** 0.5))
        if side * side != int(np.prod(input_shape)):
            raise MalformedInput("the cnn model needs square single-channel inputs")
        self.side = side
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * (side // 2) * (side // 2), n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], 1, self.side, self.side)
        x = torch.relu(self.conv1(x))
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        out: torch.Tensor = self.fc(x.flatten(1))
        return out


def build_model(spec: ModelSpec, *, init_seed: int, factory: Callable[..., Any] | None = None) -> nn.Module:
    """Build the model with a deterministic initialisation from ``init_seed``.

    ``factory``: for a ``module:factory`` model, the factory to call instead of importing it by
    name (the verifier passes the one it loaded from the checked source files)."""
    # What torch.manual_seed does, without queueing a lazy CUDA seeding (which formats a stack
    # trace, ~3 ms) on a machine that has no CUDA device.
    torch.default_generator.manual_seed(init_seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(init_seed)
    if spec.name == "mlp":
        model: nn.Module = nn.Sequential(
            nn.Flatten(), nn.Linear(spec.n_features, spec.hidden), nn.ReLU(), nn.Linear(spec.hidden, spec.n_classes)
        )
    elif spec.name == "logreg":
        model = nn.Sequential(nn.Flatten(), nn.Linear(spec.n_features, spec.n_classes))
    elif spec.name == "cnn":
        model = _CNN(spec.input_shape, spec.n_classes)
    elif ":" in spec.name:
        mod_name, _, fn_name = spec.name.partition(":")
        if factory is None:
            try:
                factory = getattr(importlib.import_module(mod_name), fn_name)
            except Exception as e:  # ImportError, AttributeError, or the module's own code raising
                raise MalformedInput(f"cannot import model factory {spec.name!r}: {type(e).__name__}: {e}") from e
        if not callable(factory):
            raise MalformedInput(f"model factory {spec.name!r} is not callable")
        try:
            model = factory(n_features=spec.n_features, n_classes=spec.n_classes, input_shape=spec.input_shape)
        except Exception as e:  # the owner's code: any exception is a model that cannot be built
            raise MalformedInput(f"model factory {spec.name!r} raised {type(e).__name__}: {e}") from e
        if not isinstance(model, nn.Module):
            raise MalformedInput(f"model factory {spec.name!r} did not return a torch.nn.Module")
    else:
        raise MalformedInput(f"unknown model {spec.name!r} (use {', '.join(_BUILTIN_MODELS)} or module:factory)")
    return model.float()


def model_structure(model: nn.Module) -> list[tuple[str, tuple[int, ...], str]]:
    """``(name, shape, dtype)`` of every parameter, in name order (specs/06 section 5b)."""
    return sorted((n, tuple(int(x) for x in p.shape), str(p.dtype).removeprefix("torch."))
                  for n, p in model.named_parameters())


def structure_digest_of(model: nn.Module) -> bytes:
    """The structure digest of a built model (specs/06 section 5b)."""
    from ._modelcode import structure_digest

    return structure_digest(model_structure(model))


def commit_model_code(spec: ModelSpec) -> dict[str, Any] | None:
    """The config's ``model.code`` for ``spec`` (``None`` for a built-in model): locate the
    factory's source files, import it, build it and digest both (specs/06 section 5b). Raises
    :class:`MalformedInput` with one line on a bad path, a missing module or function, a factory
    that raises or returns no ``torch.nn.Module``."""
    from ._modelcode import code_json, locate_source, split_factory

    if spec.name in _BUILTIN_MODELS:
        return None
    split_factory(spec.name)
    files = locate_source(spec.name.partition(":")[0])
    model = build_model(spec, init_seed=0)
    return code_json(files, structure_digest_of(model))


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


def configure_determinism(threads: int) -> None:
    """Pin the intra-op thread count and turn on deterministic algorithms.

    The thread count changes the bits of a result, so it is logged and replay uses the same.
    """
    if threads < 1:
        raise MalformedInput("thread count must be at least 1")
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is not None:
        # The public wrapper also imports torch._inductor (seconds) to flip a compiler flag we
        # do not use; the C setter is what makes eager kernels deterministic.
        if not torch.are_deterministic_algorithms_enabled():
            setter(True, warn_only=False)
    else:  # pragma: no cover - older/newer torch without the private setter
        torch.use_deterministic_algorithms(True, warn_only=False)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise MalformedInput("--device cuda was asked for, but no CUDA device is available")
        return torch.device("cuda")
    if name == "cpu":
        return torch.device("cpu")
    raise MalformedInput(f"unknown device {name!r} (use auto, cpu or cuda)")


def platform_info(device: torch.device, threads: int) -> dict[str, Any]:
    """What a bit-exact replay must match: the platform fields and the fingerprint of
    :mod:`verifiable_mu._platform` for training on ``device`` with ``threads`` intra-op threads."""
    out: dict[str, Any] = {
        "torch": torch.__version__,
        "device": device.type,
        "threads": threads,
        "deterministic": True,
        "dtype": "float32",
    }
    out.update(_cpu_fingerprint())
    out.update(_cuda_fingerprint(device))
    return out


_CPU_FINGERPRINT: dict[str, str] = {}


def _cpu_fingerprint() -> dict[str, str]:
    """ATen's CPU kernel set, the BLAS and its code path, oneDNN and its ISA cap (fixed for the
    life of a process: each is chosen from the CPU and the environment at start-up)."""
    if not _CPU_FINGERPRINT:
        import re

        cap = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "none")()
        config = torch.__config__.show()
        blas, path, isa = _blas_fingerprint(config)
        m = re.search(r"(?:MKL-DNN|oneDNN) v([0-9][0-9.]*)", config)
        onednn = "none"
        if m and torch.backends.mkldnn.is_available():
            cap_env = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "default"
            onednn = f"{m.group(1)} max_isa={cap_env.lower()}"
        _CPU_FINGERPRINT.update(
            cpu_capability=str(cap), cpu_isa=isa, blas=blas, blas_path=path, onednn=onednn
        )  # fmt: skip
    return dict(_CPU_FINGERPRINT)


def _blas_fingerprint(config: str) -> tuple[str, str, str]:
    """``(library and version, code path, the CPU's own ISA class)``. MKL's path is read from
    MKL itself (its CBWR branch, or the branch its automatic dispatch picks on this CPU); a BLAS
    whose path cannot be read reports ``unknown``, which never matches for a bit-exact replay."""
    import ctypes
    import re

    from ._platform import mkl_branch_name

    m = re.search(r"BLAS_INFO=([A-Za-z0-9_]+)", config)
    lib_name = m.group(1) if m else "unknown"
    if lib_name != "mkl":
        return lib_name, "unknown", "unknown"
    v = re.search(r"Math Kernel Library Version ([0-9][0-9.]*)", config)
    blas = f"mkl {v.group(1) if v else 'unknown'}"
    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        branch = int(lib.mkl_serv_cbwr_get(1))  # MKL_CBWR_BRANCH
        auto = int(lib.mkl_serv_cbwr_get_auto_branch())
    except (OSError, AttributeError):  # another build or OS: the path cannot be read
        return blas, "unknown", "unknown"
    path = auto if branch in (0, 1, 2) else branch  # OFF / BRANCH_OFF / AUTO: automatic dispatch
    return blas, mkl_branch_name(path), mkl_branch_name(auto)


def _cuda_fingerprint(device: torch.device) -> dict[str, str]:
    if device.type != "cuda":
        return {"cuda_device": "none", "cuda_libs": "none"}
    import importlib.metadata

    idx = device.index if device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(idx)
    cublas = "unknown"
    for pkg in ("nvidia-cublas-cu12", "nvidia-cublas-cu13", "nvidia-cublas-cu11", "nvidia-cublas"):
        try:
            cublas = importlib.metadata.version(pkg)
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "cuda_device": f"{torch.cuda.get_device_name(idx)} sm_{major}{minor}",
        "cuda_libs": f"cuda {torch.version.cuda} cublas {cublas} cudnn {cudnn or 'none'}",
    }


# --- checkpoints ---------------------------------------------------------------------------


Checkpoint = dict[str, torch.Tensor]
"""Ordered mapping ``param/<name>`` and ``momentum/<name>`` -> float32 CPU tensors."""


def checkpoint_from_model(model: nn.Module, momentum: Mapping[str, torch.Tensor]) -> Checkpoint:
    out: Checkpoint = {}
    for name, p in model.named_parameters():
        # A portable model computes in float64 with float32-representable values: exact here.
        out[f"param/{name}"] = p.detach().to("cpu", dtype=torch.float32, copy=True).contiguous()
        out[f"momentum/{name}"] = momentum[name].detach().to("cpu", dtype=torch.float32, copy=True).contiguous()
    return out


def load_into_model(model: nn.Module, ckpt: Checkpoint, device: torch.device) -> dict[str, torch.Tensor]:
    """Copy a checkpoint into ``model``; return the momentum buffers on ``device``."""
    names = [n for n, _ in model.named_parameters()]
    expected = {f"param/{n}" for n in names} | {f"momentum/{n}" for n in names}
    if set(ckpt) != expected:
        raise MalformedInput("checkpoint tensors do not match the model's parameters")
    momentum: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for n, p in model.named_parameters():
            src = ckpt[f"param/{n}"]
            mom = ckpt[f"momentum/{n}"]
            if src.shape != p.shape or mom.shape != p.shape or src.dtype != torch.float32 or mom.dtype != torch.float32:
                raise MalformedInput(f"checkpoint tensor {n} has the wrong shape or dtype")
            p.copy_(src.to(device))  # into a float32 model, or exactly into a portable (float64) one
            momentum[n] = mom.to(device=device, dtype=p.dtype).clone()
    return momentum


def _tensor_views(ckpt: Checkpoint) -> list[tuple[str, list[int], memoryview]]:
    """``(name, shape, little-endian float32 bytes)`` of each tensor, in name order, no copies
    of CPU tensors."""
    out = []
    for n in sorted(ckpt):
        t = ckpt[n]
        if t.dtype != torch.float32:
            raise MalformedInput(f"checkpoint tensor {n} is {t.dtype}, only float32 is supported")
        a = t.detach().to("cpu").contiguous().numpy()
        if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and sys.byteorder != "little"):
            a = a.astype("<f4")  # pragma: no cover - big-endian hosts
        out.append((n, list(t.shape), np.ascontiguousarray(a).data.cast("B")))
    return out


_DIGEST_PREFIX: dict[tuple[tuple[str, tuple[int, ...]], ...], Any] = {}


def _digest_of_views(views: list[tuple[str, list[int], memoryview]]) -> bytes:
    key = tuple((n, tuple(shape)) for n, shape, _ in views)
    prefix = _DIGEST_PREFIX.get(key)
    if prefix is None:
        header = [{"name": n, "dtype": "float32", "shape": shape} for n, shape, _ in views]
        hb = canonical_json({"version": 1, "tensors": header})
        prefix = hashlib.sha256(TAG_CHECKPOINT)
        prefix.update(struct.pack(">Q", len(hb)))
        prefix.update(hb)
        if len(_DIGEST_PREFIX) > 64:
            _DIGEST_PREFIX.clear()
        _DIGEST_PREFIX[key] = prefix
    h = prefix.copy()
    for _, _, mv in views:
        h.update(mv)
    return h.digest()


def checkpoint_digest(ckpt: Checkpoint) -> bytes:
    """``SHA-256(TAG_CHECKPOINT || u64be(len h) || h || tensor bytes in name order)`` where ``h``
    is the canonical JSON ``{"tensors": [{"dtype", "name", "shape"}...], "version": 1}`` and the
    tensor bytes are little-endian float32 (specs/06-training.md section 5)."""
    return _digest_of_views(_tensor_views(ckpt))


_META_KEY = "vmu"


def _safetensors_bytes(views: list[tuple[str, list[int], memoryview]], digest: bytes) -> bytes:
    """The checkpoint file of specs/06 section 4, written by the safetensors library (which lays
    out exactly those bytes for float32 tensors: header fields in its own order, tensors in name
    order, spaces to a multiple of 8; ``tests/test_training.py`` checks it byte for byte against
    a writer that follows the spec's words); the one metadata key carries the digest."""
    from safetensors.numpy import save

    meta = json.dumps({"version": 1, "digest": digest.hex()}, sort_keys=True, separators=(",", ":"))
    arrays = {n: np.frombuffer(mv, dtype="<f4").reshape(shape) for n, shape, mv in views}  # no copies
    return bytes(save(arrays, metadata={_META_KEY: meta}))


_FILE_HEADERS: dict[tuple[tuple[str, tuple[int, ...]], ...], tuple[bytes, bytes] | None] = {}
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_./:\-]+")
_DIGEST_MARK = "@" * 64  # where the digest's hex goes in the header (never in a plain name)


def _file_header_parts(views: list[tuple[str, list[int], memoryview]]) -> tuple[bytes, bytes] | None:
    """The file's header (length prefix included) around the digest's 64 hex characters, built
    once per layout as specs/06 section 4 words it; None for a tensor name that JSON would need
    to escape (the library writes those files)."""
    key = tuple((n, tuple(shape)) for n, shape, _ in views)
    if key in _FILE_HEADERS:
        return _FILE_HEADERS[key]
    parts: tuple[bytes, bytes] | None = None
    if all(_PLAIN_NAME.fullmatch(n) for n, _, _ in views):
        meta = json.dumps({"version": 1, "digest": _DIGEST_MARK}, sort_keys=True, separators=(",", ":"))
        header: dict[str, Any] = {"__metadata__": {_META_KEY: meta}}
        pos = 0
        for n, shape, mv in views:
            header[n] = {"dtype": "F32", "shape": list(shape), "data_offsets": [pos, pos + len(mv)]}
            pos += len(mv)
        hb = json.dumps(header, separators=(",", ":")).encode("ascii")
        hb += b" " * (-len(hb) % 8)
        pre, post = (struct.pack("<Q", len(hb)) + hb).split(_DIGEST_MARK.encode("ascii"))
        parts = (pre, post)
    if len(_FILE_HEADERS) > 64:
        _FILE_HEADERS.clear()
    _FILE_HEADERS[key] = parts
    return parts


def _checkpoint_file_bytes(views: list[tuple[str, list[int], memoryview]], digest: bytes) -> bytes:
    """The same bytes as :func:`_safetensors_bytes`, written out directly: the header (built once
    per layout) around the digest, then the tensor bytes in name order (``tests/test_training.py``
    checks the two byte for byte)."""
    parts = _file_header_parts(views)
    if parts is None:
        return _safetensors_bytes(views, digest)
    return b"".join([parts[0], digest.hex().encode("ascii"), parts[1], *(mv for _, _, mv in views)])


def save_checkpoint(ckpt: Checkpoint, directory: str | os.PathLike[str], *, batch: DurableBatch | None = None) -> bytes:
    """Write ``<digest hex>.safetensors`` atomically (content-addressed); return the digest.

    The file is written by :func:`_safetensors_bytes` (the safetensors library), so the same
    content always gives the same bytes. An existing file with those bytes is left alone (one
    that differs, left incomplete by a crash, is replaced). With ``batch`` (a :class:`DurableBatch` of
    ``directory``) the file is only staged: it is durable and in place once the caller commits
    the batch, which it must do before anything refers to the digest.
    """
    views = _tensor_views(ckpt)
    digest = _digest_of_views(views)
    name = digest.hex() + ".safetensors"
    path = os.path.join(os.fspath(directory), name)
    if batch is not None and os.path.abspath(batch.folder) != os.path.abspath(os.fspath(directory)):
        raise ValueError("the durable batch writes to another folder than the checkpoint store")
    if batch is not None and batch.pending(path):
        return digest
    data = _checkpoint_file_bytes(views, digest)
    if os.path.exists(path):
        # Content-addressed: the same name holds the same bytes -- unless a writer crashed
        # between moving the file into place and syncing it, so the bytes are compared.
        if batch is None and _same_content(path, data):
            return digest
        if batch is not None and batch.existing_matches(path, data):
            return digest
    if batch is None:
        atomic_write(path, data)
    else:
        batch.add(name, data)
    return digest


def load_checkpoint(path: str | os.PathLike[str], *, expected_digest: bytes | None = None) -> Checkpoint:
    """Load a checkpoint file and, when asked, check its content digest."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        with open(path, "rb") as f:
            raw = f.read()
        tensors = load(raw)
    except (OSError, SafetensorError, ValueError, RuntimeError) as e:
        raise MalformedInput(f"checkpoint {os.fspath(path)} cannot be read: {e}") from e
    ckpt: Checkpoint = {k: tensors[k] for k in sorted(tensors)}
    if expected_digest is not None:
        got = checkpoint_digest(ckpt)
        if got != expected_digest:
            raise CommitmentMismatch(
                f"checkpoint {os.path.basename(os.fspath(path))} has content digest {got.hex()[:16]}..., "
                f"expected {expected_digest.hex()[:16]}..."
            )
    return ckpt


def checkpoint_distance(a: Checkpoint, b: Checkpoint) -> float:
    """Relative L2 distance of the parameters: ||a - b|| / max(||b||, tiny)."""
    if set(a) != set(b):
        return float("inf")
    num = 0.0
    den = 0.0
    for k in a:
        if not k.startswith("param/"):
            continue
        da = a[k].double()
        db = b[k].double()
        if da.shape != db.shape:
            return float("inf")
        num += float(((da - db) ** 2).sum())
        den += float((db**2).sum())
    return float((num**0.5) / max(den**0.5, 1e-30))


# --- the step ----------------------------------------------------------------------------


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


def prepare_model(model: nn.Module, hyper: Hyper) -> nn.Module:
    """The model in the arithmetic the steps run in: float64 for portable-v1 (build the model,
    load a float32 checkpoint, then call this; every value stays float32-representable)."""
    return model.double() if hyper.portable else model


def zero_momentum(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: torch.zeros_like(p) for n, p in model.named_parameters()}


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

