"""Checkpoint files and digests (specs/06-training.md section 4): the fast writer against the
``safetensors`` library and the digest against the spec formula computed naively."""

from __future__ import annotations

import hashlib
import json
import os
import struct

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load, save  # noqa: E402

import verifiable_mu.training as T  # noqa: E402
from verifiable_mu import MalformedInput  # noqa: E402
from verifiable_mu._tags import TAG_CHECKPOINT  # noqa: E402
from verifier._bundle import checkpoint_content_digest  # noqa: E402


def _naive_digest(ckpt: dict) -> bytes:
    names = sorted(ckpt)
    header = {"version": 1, "tensors": [{"name": n, "dtype": "float32", "shape": list(ckpt[n].shape)} for n in names]}
    hb = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    data = TAG_CHECKPOINT + struct.pack(">Q", len(hb)) + hb
    for n in names:
        data += ckpt[n].numpy().astype("<f4").tobytes()
    return hashlib.sha256(data).digest()


def _ckpt(model: str, seed: int) -> dict:
    spec = T.ModelSpec(name=model, n_features=64, n_classes=10, input_shape=(8, 8), hidden=32)
    m = T.build_model(spec, init_seed=seed)
    mom = {n: torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)) for n, p in m.named_parameters()}
    return T.checkpoint_from_model(m, mom)


@pytest.mark.parametrize("model", ["mlp", "logreg", "cnn"])
def test_checkpoint_file_reads_back_with_safetensors(model: str, tmp_path: os.PathLike) -> None:
    ck = _ckpt(model, 3)
    d = T.save_checkpoint(ck, tmp_path)
    assert d == _naive_digest(ck) == T.checkpoint_digest(ck)
    path = os.path.join(os.fspath(tmp_path), d.hex() + ".safetensors")
    raw = open(path, "rb").read()
    back = load(raw)
    assert sorted(back) == sorted(ck)
    for n in ck:
        assert back[n].dtype == torch.float32 and torch.equal(back[n], ck[n])
    (hlen,) = struct.unpack("<Q", raw[:8])
    assert hlen % 8 == 0
    header = json.loads(raw[8 : 8 + hlen])
    assert header["__metadata__"] == {"vmu": json.dumps({"digest": d.hex(), "version": 1}, separators=(",", ":"))}
    assert checkpoint_content_digest(raw) == d
    assert T.checkpoint_digest(T.load_checkpoint(path, expected_digest=d)) == d


def test_same_content_gives_same_bytes(tmp_path: os.PathLike) -> None:
    a, b = os.path.join(os.fspath(tmp_path), "a"), os.path.join(os.fspath(tmp_path), "b")
    os.mkdir(a)
    os.mkdir(b)
    d1 = T.save_checkpoint(_ckpt("mlp", 1), a)
    d2 = T.save_checkpoint({k: v.clone() for k, v in reversed(list(_ckpt("mlp", 1).items()))}, b)
    assert d1 == d2
    name = d1.hex() + ".safetensors"
    assert open(os.path.join(a, name), "rb").read() == open(os.path.join(b, name), "rb").read()
    assert T.save_checkpoint(_ckpt("mlp", 2), a) != d1


def test_files_written_by_the_safetensors_library_digest_alike(tmp_path: os.PathLike) -> None:
    ck = _ckpt("cnn", 5)
    raw = save(ck, metadata={"other": "x", "more": "y"})
    path = os.path.join(os.fspath(tmp_path), "lib.safetensors")
    with open(path, "wb") as f:
        f.write(raw)
    assert checkpoint_content_digest(raw) == T.checkpoint_digest(T.load_checkpoint(path)) == _naive_digest(ck)


def test_non_float32_tensors_are_refused(tmp_path: os.PathLike) -> None:
    ck = _ckpt("logreg", 1)
    ck["param/extra"] = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(MalformedInput, match="only float32"):
        T.save_checkpoint(ck, tmp_path)
    assert not os.listdir(tmp_path)


def _spec_file_bytes(ck: dict, digest: bytes) -> bytes:
    """The checkpoint file as specs/06 section 4 words it, written out by hand (the reference):
    u64le header length, a JSON header whose one metadata key ``vmu`` holds
    ``{"digest": hex, "version": 1}``, then each tensor in name order with consecutive
    ``data_offsets``, padded with spaces to 8 bytes; then the tensor bytes in name order."""
    meta = json.dumps({"version": 1, "digest": digest.hex()}, sort_keys=True, separators=(",", ":"))
    header: dict = {"__metadata__": {"vmu": meta}}
    blobs, pos = [], 0
    for n in sorted(ck):
        b = ck[n].detach().contiguous().numpy().astype("<f4").tobytes()
        header[n] = {"dtype": "F32", "shape": list(ck[n].shape), "data_offsets": [pos, pos + len(b)]}
        pos += len(b)
        blobs.append(b)
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    return struct.pack("<Q", len(hb)) + hb + b"".join(blobs)


@pytest.mark.parametrize("model", ["mlp", "logreg", "cnn"])
def test_library_written_file_is_the_spec_layout_byte_for_byte(model: str, tmp_path: os.PathLike) -> None:
    """save_checkpoint writes with the safetensors library; its bytes are the spec's, exactly."""
    ck = _ckpt(model, 11)
    d = T.save_checkpoint(ck, tmp_path)
    raw = open(os.path.join(os.fspath(tmp_path), d.hex() + ".safetensors"), "rb").read()
    assert raw == _spec_file_bytes(ck, d)
