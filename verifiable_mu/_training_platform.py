"""What a bit-exact replay pins (specs/06-training.md): the intra-op thread count and
deterministic algorithms, the device, and the platform fingerprint a log records.

Part of :mod:`verifiable_mu.training`, which re-exports every name; import it from there.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ._errors import MalformedInput


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
