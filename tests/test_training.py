"""Checkpoint files and digests (specs/06-training.md section 4): the fast writer against the
``safetensors`` library and the digest against the spec formula computed naively."""

from __future__ import annotations

import hashlib
import json
import os
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# --- checkpoint files staged in a DurableBatch (one file-system sync for many files) ----------


@pytest.mark.parametrize("use_syncfs", [True, False])
def test_batched_checkpoints_are_the_files_save_checkpoint_writes(use_syncfs: bool, tmp_path: os.PathLike) -> None:
    """Staged in a batch, a checkpoint appears under its final name only at commit, with the same
    digest and the same bytes as written alone (the slow path: a synced file each)."""
    from verifiable_mu._seeds import DurableBatch

    alone, batched = os.path.join(os.fspath(tmp_path), "alone"), os.path.join(os.fspath(tmp_path), "batched")
    os.mkdir(alone)
    os.mkdir(batched)
    cks = [_ckpt(m, s) for m, s in (("mlp", 1), ("cnn", 2), ("logreg", 3), ("mlp", 1))]
    want = [T.save_checkpoint(ck, alone) for ck in cks]
    batch = DurableBatch(batched, use_syncfs=use_syncfs)
    got = [T.save_checkpoint(ck, batched, batch=batch) for ck in cks]
    assert got == want
    assert len(batch) == 3  # the repeated content is staged once
    assert not [n for n in os.listdir(batched) if n.endswith(".safetensors")]  # nothing in place yet
    assert len([n for n in os.listdir(batched) if ".tmp." in n]) == 3
    batch.commit()
    assert sorted(os.listdir(batched)) == sorted(os.listdir(alone))
    for n in os.listdir(alone):  # no temporary file left
        assert open(os.path.join(alone, n), "rb").read() == open(os.path.join(batched, n), "rb").read()
    assert T.save_checkpoint(cks[0], batched, batch=batch) == want[0] and len(batch) == 0  # in place: left alone


def test_a_discarded_batch_leaves_nothing(tmp_path: os.PathLike) -> None:
    from verifiable_mu._seeds import DurableBatch

    batch = DurableBatch(tmp_path)
    T.save_checkpoint(_ckpt("mlp", 4), tmp_path, batch=batch)
    assert len(os.listdir(tmp_path)) == 1  # the temporary file
    batch.discard()
    assert os.listdir(tmp_path) == []
    batch.commit()  # nothing left to commit
    assert os.listdir(tmp_path) == []


def test_a_failed_sync_raises_and_leaves_no_temporary_file(tmp_path: os.PathLike, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the file-system sync fails, commit raises (so the caller never logs the digests) and
    no temporary file is left behind."""
    import ctypes

    from verifiable_mu import _seeds

    if _seeds._SYNCFS is None:
        pytest.skip("no syncfs here")
    monkeypatch.setattr(_seeds, "_SYNCFS", lambda fd: -1)
    monkeypatch.setattr(ctypes, "get_errno", lambda: 5)  # EIO
    batch = _seeds.DurableBatch(tmp_path)
    T.save_checkpoint(_ckpt("mlp", 5), tmp_path, batch=batch)
    with pytest.raises(OSError, match="syncfs of .* failed"):
        batch.commit()
    assert not [n for n in os.listdir(tmp_path) if ".tmp." in n]


@pytest.mark.parametrize("mode", ["alone", "syncfs", "fsync"])
@pytest.mark.parametrize("damage", [lambda raw: b"", lambda raw: raw[: len(raw) // 2], lambda raw: raw[:-1] + b"x"])
def test_a_damaged_file_in_place_is_rewritten_not_trusted(mode: str, damage, tmp_path: os.PathLike) -> None:  # type: ignore[no-untyped-def]
    """A file under a checkpoint's name but not its bytes (a power loss between a batch's renames
    and its sync can leave one) is replaced; an intact one is left alone."""
    from verifiable_mu._seeds import DurableBatch

    ck = _ckpt("mlp", 8)
    d = T.save_checkpoint(ck, tmp_path)
    path = os.path.join(os.fspath(tmp_path), d.hex() + ".safetensors")
    good = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(damage(good))
    batch = None if mode == "alone" else DurableBatch(tmp_path, use_syncfs=mode == "syncfs")
    assert T.save_checkpoint(ck, tmp_path, batch=batch) == d
    if batch is not None:
        assert len(batch) == 1
        batch.commit()
    assert open(path, "rb").read() == good
    mtime = os.stat(path).st_mtime_ns
    batch = None if mode == "alone" else DurableBatch(tmp_path, use_syncfs=mode == "syncfs")
    assert T.save_checkpoint(ck, tmp_path, batch=batch) == d
    if batch is not None:
        assert len(batch) == 0  # intact: nothing staged
        batch.commit()
    assert os.stat(path).st_mtime_ns == mtime and sorted(os.listdir(tmp_path)) == [d.hex() + ".safetensors"]


def test_a_batch_of_another_folder_is_refused(tmp_path: os.PathLike) -> None:
    from verifiable_mu._seeds import DurableBatch

    other = os.path.join(os.fspath(tmp_path), "other")
    os.mkdir(other)
    with pytest.raises(ValueError, match="another folder"):
        T.save_checkpoint(_ckpt("mlp", 6), tmp_path, batch=DurableBatch(other))


_names = st.text(alphabet=st.sampled_from(list("abz_09./:-") + ['"', "\\", "\u00e9", "\n", " "]), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(_names, st.lists(st.integers(1, 5), max_size=3), min_size=1, max_size=6), st.binary(min_size=32, max_size=32))
def test_the_direct_file_writer_matches_the_safetensors_library(layout: dict, digest: bytes) -> None:
    """The checkpoint file written out directly (header cached per layout) is the library's,
    byte for byte, for any names and shapes (names JSON would escape go to the library)."""
    rng = np.random.default_rng(len(layout))
    ck = {n: torch.from_numpy(rng.standard_normal(shape).astype(np.float32)) for n, shape in layout.items()}
    views = T._tensor_views(ck)
    assert T._checkpoint_file_bytes(views, digest) == T._safetensors_bytes(views, digest)
    assert T._checkpoint_file_bytes(views, digest) == T._safetensors_bytes(views, digest)  # cached header


@pytest.mark.parametrize("model", ["mlp", "logreg", "cnn"])
def test_the_direct_file_writer_matches_the_library_on_the_built_in_models(model: str) -> None:
    ck = _ckpt(model, 12)
    views = T._tensor_views(ck)
    d = T.checkpoint_digest(ck)
    assert T._checkpoint_file_bytes(views, d) == T._safetensors_bytes(views, d) == _spec_file_bytes(ck, d)


_MODULES = {
    "mlp": lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)),
    "logreg": lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)),
    "cnn": lambda: T._CNN((8, 8), 10),
}


@pytest.mark.parametrize("model", ["mlp", "logreg", "cnn"])
def test_built_in_models_initialise_as_under_torch_manual_seed(model: str) -> None:
    """build_model seeds the generators directly (the fast path); the same modules built after
    torch.manual_seed (the slow path) have the same weights, whatever the generator's state
    before."""
    spec = T.ModelSpec(name=model, n_features=64, n_classes=10, input_shape=(8, 8), hidden=32)
    torch.rand(5)  # disturb the global generator: build_model must reseed it
    builtin = T.build_model(spec, init_seed=7)
    torch.rand(3)
    torch.manual_seed(7)
    slow = _MODULES[model]().float()
    pairs = list(zip(builtin.named_parameters(), slow.named_parameters(), strict=True))
    assert pairs
    for (n, a), (m, b) in pairs:
        assert n == m and torch.equal(a, b), n
