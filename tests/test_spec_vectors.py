"""The worked examples of specs/06-training.md, recomputed from the spec's own description.

The reference functions here use only the standard library (hashlib, struct, json) and the
spec's words: no numpy, no torch, no helper of the implementation. Each vector is then also
checked against the implementation, so spec, port and code agree (issue 19)."""

from __future__ import annotations

import hashlib
import json
import re
import struct
from pathlib import Path
from typing import Any

import pytest

SPEC = Path(__file__).resolve().parents[1] / "specs" / "06-training.md"
TAG_STEP_SEED = b"vmu:step-seed:v1\x00"  # specs/00-hashing.md section 2
TAG_CHECKPOINT = b"vmu:checkpoint:v1\x00"
TAG_MODEL = b"vmu:model:v1\x00"
TAG_MODEL_SOURCE = b"vmu:model-source:v1\x00"
TAG_MODEL_STRUCTURE = b"vmu:model-structure:v1\x00"
M32, M64, M128 = (1 << 32) - 1, (1 << 64) - 1, (1 << 128) - 1


def _vectors() -> dict[str, list[str]]:
    text = SPEC.read_text(encoding="utf-8")
    out: dict[str, list[str]] = {}
    for m in re.finditer(r"^```vector name=(?P<name>[\w-]+)\n(?P<body>.*?)^```$", text, re.M | re.S):
        assert m["name"] not in out
        out[m["name"]] = m["body"].strip("\n").split("\n")
    return out


# --- the spec's algorithms, ported from its text ------------------------------------------------


def spec_perm_seed(seed: int, shard: int, generation: int, stage: int, epoch: int) -> int:
    d = hashlib.sha256(TAG_STEP_SEED + b"perm" + struct.pack(">QIIII", seed, shard, generation, stage, epoch)).digest()
    return int.from_bytes(d[:8], "big")


def spec_step_seed(seed: int, shard: int, generation: int, stage: int, epoch: int, step: int) -> int:
    d = hashlib.sha256(TAG_STEP_SEED + struct.pack(">QIIIIQ", seed, shard, generation, stage, epoch, step)).digest()
    return int.from_bytes(d[:8], "big") >> 1


def _words(x: int) -> list[int]:
    out = []
    while True:
        out.append(x & M32)
        x >>= 32
        if x == 0:
            return out


def spec_seed_sequence(entropy: int | list[int], n64: int = 4) -> list[int]:
    words: list[int] = []
    for e in entropy if isinstance(entropy, list) else [entropy]:
        words += _words(e)
    hc = 0x43B0D7E5

    def hashmix(v: int) -> int:
        nonlocal hc
        v ^= hc
        hc = (hc * 0x931E8875) & M32
        v = (v * hc) & M32
        return v ^ (v >> 16)

    def mix(x: int, y: int) -> int:
        r = (0xCA01F9DD * x - 0x4973F715 * y) & M32
        return r ^ (r >> 16)

    pool = [hashmix(words[i] if i < len(words) else 0) for i in range(4)]
    for src in range(4):
        for dst in range(4):
            if src != dst:
                pool[dst] = mix(pool[dst], hashmix(pool[src]))
    for w in words[4:]:
        for dst in range(4):
            pool[dst] = mix(pool[dst], hashmix(w))
    hb = 0x8B51F9DD
    out32 = []
    for i in range(2 * n64):
        v = pool[i % 4] ^ hb
        hb = (hb * 0x58F38DED) & M32
        v = (v * hb) & M32
        out32.append(v ^ (v >> 16))
    return [out32[2 * k] | (out32[2 * k + 1] << 32) for k in range(n64)]


class SpecPCG64:
    MULT = 0x2360ED051FC65DA44385DF649FCCF645

    def __init__(self, entropy: int | list[int]) -> None:
        s = spec_seed_sequence(entropy)
        self.inc = ((((s[2] << 64) | s[3]) << 1) | 1) & M128
        self.state = 0
        self._step()
        self.state = (self.state + ((s[0] << 64) | s[1])) & M128
        self._step()
        self.half: int | None = None

    def _step(self) -> None:
        self.state = (self.state * self.MULT + self.inc) & M128

    def next64(self) -> int:
        self._step()
        x, rot = (self.state >> 64) ^ (self.state & M64), self.state >> 122
        return ((x >> rot) | (x << ((64 - rot) & 63))) & M64

    def next32(self) -> int:
        if self.half is not None:
            v, self.half = self.half, None
            return v
        v = self.next64()
        self.half = v >> 32
        return v & M32


def spec_permutation(entropy: int | list[int], n: int) -> list[int]:
    g = SpecPCG64(entropy)
    a = list(range(n))
    for i in range(n - 1, 0, -1):
        mask = i
        for sh in (1, 2, 4, 8, 16, 32):
            mask |= mask >> sh
        while True:
            j = (g.next32() if i <= M32 else g.next64()) & mask
            if j <= i:
                break
        a[i], a[j] = a[j], a[i]
    return a


def spec_checkpoint_digest(tensors: dict[str, list[float]]) -> tuple[bytes, bytes]:
    names = sorted(tensors)
    header = {"tensors": [{"dtype": "float32", "name": n, "shape": [len(tensors[n])]} for n in names], "version": 1}
    h = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()  # RFC 8785 for this ASCII object
    data = b"".join(struct.pack(f"<{len(tensors[n])}f", *tensors[n]) for n in names)
    return h, hashlib.sha256(TAG_CHECKPOINT + struct.pack(">Q", len(h)) + h + data).digest()


# --- the vectors ---------------------------------------------------------------------------------

NAMES = ["perm-seed-1", "step-seed-1", "seed-sequence-1", "permutation-1", "permutation-2", "permutation-3",
         "checkpoint-digest-1", "model-digest-1", "grid-1", "grid-2", "grid-3", "model-source-1",
         "model-structure-1"]  # fmt: skip


def test_the_spec_has_every_vector() -> None:
    assert sorted(_vectors()) == sorted(NAMES)


def test_seed_vectors() -> None:
    v = _vectors()
    a = json.loads(v["perm-seed-1"][0])
    want = int(v["perm-seed-1"][1])
    assert spec_perm_seed(int(a["seed"]), a["shard"], a["generation"], a["stage"], a["epoch"]) == want
    b = json.loads(v["step-seed-1"][0])
    want_step = int(v["step-seed-1"][1])
    assert spec_step_seed(int(b["seed"]), b["shard"], b["generation"], b["stage"], b["epoch"], int(b["step"])) == want_step
    from verifiable_mu._seeds import perm_seed, step_seed

    assert perm_seed(int(a["seed"]), shard=a["shard"], generation=a["generation"], stage=a["stage"], epoch=a["epoch"]) == want
    assert step_seed(int(b["seed"]), shard=b["shard"], generation=b["generation"], stage=b["stage"], epoch=b["epoch"],
                     step=int(b["step"])) == want_step  # fmt: skip


def test_seed_sequence_vector() -> None:
    v = _vectors()["seed-sequence-1"]
    assert [hex(x) for x in spec_seed_sequence(json.loads(v[0]))] == json.loads(v[1])


@pytest.mark.parametrize("name", ["permutation-1", "permutation-2", "permutation-3"])
def test_permutation_vectors_without_numpy(name: str) -> None:
    v = _vectors()[name]
    inp, want = json.loads(v[0]), json.loads(v[1])
    assert spec_permutation(inp["entropy"], inp["n"]) == want


def test_permutation_vectors_match_the_implementation() -> None:
    import numpy as np

    from verifiable_mu._seeds import epoch_order

    v = _vectors()
    for name in ("permutation-1", "permutation-2", "permutation-3"):
        inp, want = json.loads(v[name][0]), json.loads(v[name][1])
        assert np.random.default_rng(inp["entropy"]).permutation(inp["n"]).tolist() == want
    # permutation-2's entropy is perm-seed-1: the epoch order of that epoch
    a = json.loads(v["perm-seed-1"][0])
    assert json.loads(v["permutation-2"][0])["entropy"] == int(v["perm-seed-1"][1])
    got = epoch_order(int(a["seed"]), shard=a["shard"], generation=a["generation"], stage=a["stage"], epoch=a["epoch"], n=10)
    assert got.tolist() == json.loads(v["permutation-2"][1])


@pytest.mark.parametrize("entropy", [1, 12345, 2**32 + 5, 2**63 + 17, 2**64 - 1, [0, 0x5EED], [2**40, 0x5EED, 9]])
def test_the_port_agrees_with_numpy_beyond_the_vectors(entropy: Any) -> None:
    import numpy as np

    for n in (1, 2, 33, 500):
        assert spec_permutation(entropy, n) == np.random.default_rng(entropy).permutation(n).tolist()


def test_checkpoint_digest_vector() -> None:
    v = _vectors()["checkpoint-digest-1"]
    tensors = json.loads(v[0])
    header, digest = spec_checkpoint_digest(tensors)
    assert header == v[1].encode() and digest.hex() == v[2]
    import torch

    from verifiable_mu.training import checkpoint_digest

    assert checkpoint_digest({k: torch.tensor(x, dtype=torch.float32) for k, x in tensors.items()}).hex() == v[2]


def test_model_digest_vector() -> None:
    v = _vectors()["model-digest-1"]
    shards = [bytes.fromhex(h) for h in json.loads(v[0])]
    assert hashlib.sha256(TAG_MODEL + b"".join(shards)).hexdigest() == v[1]


def test_stage_epochs_rounds_the_exact_rational_half_to_even() -> None:
    from fractions import Fraction

    from prover._sisa import stage_epochs

    for e in range(1, 60):
        for r in range(1, 30):
            x = Fraction(2 * e, r + 1)
            fl = x.numerator // x.denominator
            want = fl + (1 if x - fl > Fraction(1, 2) or (x - fl == Fraction(1, 2) and fl % 2) else 0)
            assert stage_epochs(e, r) == max(1, want), (e, r)
    assert (stage_epochs(5, 3), stage_epochs(7, 3)) == (2, 4)  # the examples of specs/06 section 2


def _rfc8785_ascii(obj: Any) -> bytes:
    """RFC 8785 for objects of ASCII strings, integers, lists and objects (what section 5b hashes)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def test_model_source_vector() -> None:
    v = _vectors()["model-source-1"]
    files = json.loads(v[0])
    lst = [{"path": p, "sha256": hashlib.sha256(files[p].encode()).hexdigest()} for p in sorted(files, key=str.encode)]
    assert lst == json.loads(v[1])
    digest = hashlib.sha256(TAG_MODEL_SOURCE + _rfc8785_ascii({"version": 1, "files": lst})).hexdigest()
    assert digest == v[2]
    from verifiable_mu._modelcode import file_list, source_digest

    assert file_list({p: c.encode() for p, c in files.items()}) == lst and source_digest(lst).hex() == v[2]


def test_model_structure_vector() -> None:
    v = _vectors()["model-structure-1"]
    params = json.loads(v[0])
    doc = {"version": 1, "parameters": [{"name": n, "shape": s, "dtype": d} for n, s, d in sorted(params)]}
    assert _rfc8785_ascii(doc) == v[1].encode()
    assert hashlib.sha256(TAG_MODEL_STRUCTURE + v[1].encode()).hexdigest() == v[2]
    from verifiable_mu._modelcode import structure_digest

    assert structure_digest([(n, s, d) for n, s, d in params]).hex() == v[2]
    torch = pytest.importorskip("torch")
    from verifiable_mu.training import structure_digest_of

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    assert structure_digest_of(model).hex() == v[2]
