"""The platform fingerprint: which facts about a machine decide the bits of a training step.

Torch-free, so the verifier's proof checks can parse and compare fingerprints without torch; the
probe that reads them from a running torch lives in :func:`verifiable_mu.training.platform_info`
(specs/06-training.md section 5, specs/09-verification.md step 18).

A float32 step's bits depend on the torch build, the device (and, on CUDA, its model and
libraries), the ATen CPU kernels torch dispatches to (``ATEN_CPU_CAPABILITY``), the BLAS library
and the code path it takes (MKL's ``MKL_CBWR`` branch, or its automatic choice on this CPU), the
oneDNN build and its ISA cap, the intra-op thread count and the deterministic flags. Replay is
bit-exact only when every one of them agrees; :func:`platform_differences` lists those that do
not, and a verifier in mode ``auto`` compares bit for bit only when that list is empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "FINGERPRINT_FIELDS",
    "PLATFORM_FIELDS",
    "MKL_BRANCHES",
    "mkl_branch_name",
    "platform_differences",
]

#: The fields every config's ``platform`` object has since the fingerprint (all required).
PLATFORM_FIELDS = ("torch", "device", "threads", "deterministic", "dtype")

#: The fingerprint fields (strings, at most 128 characters each). Logs written before the
#: fingerprint lack them; such a log never gets a bit-exact ``auto`` replay.
FINGERPRINT_FIELDS = (
    "cpu_capability",  # ATen's CPU kernel set: DEFAULT, AVX2, AVX512, ... ("none" off x86)
    "cpu_isa",  # the CPU's own ISA class, as MKL ranks it (what automatic dispatch would pick)
    "blas",  # BLAS library and version, e.g. "mkl 2024.2"
    "blas_path",  # the code path the BLAS takes: MKL's CBWR branch (AVX512_E1, AVX2, COMPATIBLE, ...)
    "onednn",  # oneDNN version and ISA cap, e.g. "3.12.0 max_isa=default"
    "cuda_device",  # CUDA device name and compute capability, or "none"
    "cuda_libs",  # CUDA, cuBLAS and cuDNN versions, or "none"
)

#: MKL's conditional-numerical-reproducibility branch codes (mkl_cbwr.h).
MKL_BRANCHES = {
    0: "OFF",
    1: "BRANCH_OFF",
    2: "AUTO",
    3: "COMPATIBLE",
    4: "SSE2",
    6: "SSSE3",
    7: "SSE4_1",
    8: "SSE4_2",
    9: "AVX",
    10: "AVX2",
    11: "AVX512_MIC",
    12: "AVX512",
    13: "AVX512_MIC_E1",
    14: "AVX512_E1",
}
_MKL_STRICT = 0x10000


def mkl_branch_name(code: int) -> str:
    """The name of an MKL CBWR branch code (``STRICT`` appended when that bit is set)."""
    strict = bool(code & _MKL_STRICT)
    name = MKL_BRANCHES.get(code & ~_MKL_STRICT, f"code-{code & ~_MKL_STRICT}")
    return f"{name}+STRICT" if strict else name


def platform_differences(logged: Mapping[str, Any], here: Mapping[str, Any]) -> list[str]:
    """The bit-relevant fields on which ``logged`` (a config's platform) and ``here`` (this
    machine's, probed for the same device and thread count) differ, as ``"field: logged -> here"``
    lines; a field missing on either side counts as different. Empty means a bit-exact replay is
    expected."""
    out = []
    for k in (*PLATFORM_FIELDS, *FINGERPRINT_FIELDS):
        a, b = logged.get(k), here.get(k)
        if a is None or b is None or a != b:
            out.append(f"{k}: {'(not logged)' if a is None else a} -> {'(unknown)' if b is None else b}")
    return out
