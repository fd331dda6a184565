"""The checkpoint file's wire form (specs/06 section 4; specs/08 section 1): a safetensors file of
float32 tensors, read without torch, and its content digest -- the digest a checkpoint entry
logs and a bundle member is named by.
"""

from __future__ import annotations

import hashlib
import struct

from ._canonical import canonical_json
from ._errors import InvalidBundle
from ._json import parse_json_strict
from ._tags import TAG_CHECKPOINT
from ._wire_common import expect_object

__all__ = ["MAX_SAFETENSORS_HEADER", "checkpoint_content_digest", "checkpoint_shapes"]

#: The largest safetensors header read (a reader may set a smaller bound).
MAX_SAFETENSORS_HEADER = 1024**2

_ST_DTYPES = {"F32": ("float32", 4)}


def checkpoint_content_digest(data: bytes, *, what: str = "checkpoint", max_header: int = MAX_SAFETENSORS_HEADER) -> bytes:
    """The content digest of a safetensors checkpoint file, computed without torch.

    Same value as :func:`verifiable_mu.training.checkpoint_digest` of the loaded tensors:
    ``SHA-256(TAG_CHECKPOINT || u64be(len h) || h || tensor bytes in name order)`` where ``h`` is
    the canonical JSON ``{"tensors": [{"dtype", "name", "shape"}...], "version": 1}``. Only
    float32 tensors, stored contiguously without gaps or overlaps, are accepted.
    """
    if len(data) < 8:
        raise InvalidBundle(f"{what} is not a safetensors file (too short)")
    (hlen,) = struct.unpack("<Q", data[:8])
    if hlen > len(data) - 8:
        raise InvalidBundle(f"{what} has a safetensors header longer than the file")
    if hlen > max_header:
        raise InvalidBundle(f"{what} has a safetensors header of {hlen} bytes (at most {max_header})")
    header = parse_json_strict(data[8 : 8 + hlen], what=f"{what} header", exc=InvalidBundle, max_bytes=max_header,
                               max_depth=8, max_memory=64 * max_header)
    if not isinstance(header, dict):
        raise InvalidBundle(f"{what} header must be a JSON object")
    body = memoryview(data)[8 + hlen :]
    tensors = []
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        spec = expect_object(spec, f"{what} tensor {name[:60]!r}", {"dtype", "shape", "data_offsets"})
        if spec["dtype"] not in _ST_DTYPES:
            raise InvalidBundle(f"{what} tensor {name[:60]!r} has dtype {str(spec['dtype'])[:10]!r} (only F32)")
        shape = spec["shape"]
        if not isinstance(shape, list) or len(shape) > 8 or not all(type(x) is int and 0 <= x < 2**40 for x in shape):
            raise InvalidBundle(f"{what} tensor {name[:60]!r} has an invalid shape")
        offs = spec["data_offsets"]
        if not isinstance(offs, list) or len(offs) != 2 or not all(type(x) is int and x >= 0 for x in offs):
            raise InvalidBundle(f"{what} tensor {name[:60]!r} has invalid data offsets")
        n = 1
        for x in shape:
            n *= x
        if offs[1] - offs[0] != 4 * n or offs[1] > len(body):
            raise InvalidBundle(f"{what} tensor {name[:60]!r} does not fit its shape or the file")
        tensors.append((name, shape, offs))
    spans = sorted(o for _, _, o in tensors)
    pos = 0
    for a, b in spans:
        if a != pos:
            raise InvalidBundle(f"{what} tensor data has gaps or overlaps")
        pos = b
    if pos != len(body):
        raise InvalidBundle(f"{what} has trailing bytes after its tensors")
    tensors.sort(key=lambda t: t[0])
    hdr = {"version": 1, "tensors": [{"name": n, "dtype": "float32", "shape": s} for n, s, _ in tensors]}
    hb = canonical_json(hdr)
    h = hashlib.sha256(TAG_CHECKPOINT)
    h.update(struct.pack(">Q", len(hb)))
    h.update(hb)
    for _, _, (a, b) in tensors:
        h.update(body[a:b])
    return h.digest()


def checkpoint_shapes(data: bytes, *, what: str = "checkpoint", max_header: int = MAX_SAFETENSORS_HEADER) -> dict[str, tuple[int, ...]]:
    """``name -> shape`` of the tensors of a safetensors file that step 3 accepted (no tensor is read)."""
    (hlen,) = struct.unpack("<Q", data[:8])
    header = parse_json_strict(data[8 : 8 + hlen], what=f"{what} header", exc=InvalidBundle, max_bytes=max_header,
                               max_depth=8, max_memory=64 * max_header)
    return {name: tuple(spec["shape"]) for name, spec in header.items() if name != "__metadata__"}
