"""Checkpoints (specs/06-training.md sections 4 and 5): the parameters and momentum buffers of a
model, their content digest, the content-addressed file and its direct writer, and the distance
of two checkpoints.

Part of :mod:`verifiable_mu.training`, which re-exports every name; import it from there.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ._canonical import canonical_json
from ._errors import CommitmentMismatch, MalformedInput
from ._seeds import DurableBatch, _same_content, atomic_write
from ._tags import TAG_CHECKPOINT

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
