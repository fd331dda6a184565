"""Split-view defences (issue 10 item 7; specs/04 section 6, specs/09 steps 5, 7 and 17): witness
cosignatures (c2sp.org/tlog-cosignature, cosignature/v1) on the final head with a threshold, and
``--known-head``: a signed head the verifier saw before, which the bundle's history must extend.

The split view itself is built with the library: the owner copies its workspace and carries out
a different third deletion in each copy, so two signed histories under one key and origin exist,
each of which verifies on its own.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from typing import Any

import pytest
from conftest_verifier import Honest, honest, members_of, rezip

from verifiable_mu._errors import MalformedKey, SignatureFailed, UnsupportedVersion
from verifiable_mu._note import Checkpoint, NoteSigner, NoteVerifier, open_note, sign_checkpoint
from verifiable_mu._witness import (
    WitnessKey,
    WitnessSigner,
    add_cosignature,
    cosigned_message,
    strip_cosignatures,
    verify_cosignatures,
)
from verifier import VerifyOptions, verify
from verifier.cli import main as cli_main

W1 = WitnessSigner.generate(name="witness.example/w1")
W2 = WitnessSigner.generate(name="witness.example/w2")
W3 = WitnessSigner.generate(name="witness.example/w3")
FINAL = "heads/final.note"


def _opts(**kw: Any) -> VerifyOptions:
    """Heads and signatures only: nothing replayed (steps 1-17 run in full), no residual tests."""
    return VerifyOptions(replay=kw.pop("replay", 0), unsafe_no_replay=kw.pop("unsafe_no_replay", True), residual=False,
                         **kw)


def _cosigned(data: bytes, *witnesses: WitnessSigner, ts: int = 1_795_000_000) -> bytes:
    m = members_of(data)
    for w in witnesses:
        m[FINAL] = add_cosignature(m[FINAL], w, ts)
    return rezip(m)


# --- the cosignature format ------------------------------------------------------------------


def _note() -> tuple[NoteSigner, bytes]:
    s = NoteSigner.generate(name="example.com/log")
    return s, sign_checkpoint(Checkpoint(origin="example.com/log", size=7, root_hash=b"\x01" * 32, timestamp=5), s)


def test_cosignature_format() -> None:
    """The line is ``name base64(key ID || u64be(time) || Ed25519 sig)``, the key ID uses the
    algorithm byte 0x04, and the signature covers ``cosignature/v1\\ntime T\\n`` + the note body."""
    s, note = _note()
    out = add_cosignature(note, W1, 1234)
    line = out.decode().splitlines()[-1]
    name, b64 = line[2:].split(" ")
    raw = base64.b64decode(b64)
    assert name == W1.name and len(raw) == 4 + 8 + 64
    assert int.from_bytes(raw[:4], "big") == W1.key.key_id != NoteSigner.from_private_key(
        name=W1.name, key=W1.private_key).key_id  # 0x04, not the log's 0x01
    assert int.from_bytes(raw[4:12], "big") == 1234
    body = note.decode().rsplit("\n\n", 1)[0] + "\n"
    assert cosigned_message(body, 1234) == b"cosignature/v1\ntime 1234\n" + body.encode()
    W1.private_key.public_key().verify(raw[12:], cosigned_message(body, 1234))
    # The log's own signature still opens the note; the cosignature is an unverified line to it.
    assert len(open_note(out, [s.verifier]).unverified) == 1
    assert strip_cosignatures(out, s.verifier) == note
    assert WitnessKey.from_vkey(W1.key.vkey) == W1.key


def test_verify_cosignatures_counts_given_witnesses_only() -> None:
    s, note = _note()
    out = add_cosignature(add_cosignature(note, W1, 1), W3, 2)
    got = verify_cosignatures(out, s.verifier, [W1.key, W2.key])
    assert [(c.name, c.timestamp) for c in got] == [(W1.name, 1)]


def test_bad_cosignature_of_a_given_witness_refuses_the_note() -> None:
    s, note = _note()
    out = add_cosignature(note, W1, 1).decode()
    head, sig = out.rstrip("\n").rsplit(" ", 1)
    raw = bytearray(base64.b64decode(sig))
    raw[-1] ^= 1
    bad = (head + " " + base64.b64encode(bytes(raw)).decode() + "\n").encode()
    with pytest.raises(SignatureFailed, match="invalid cosignature for witness witness.example/w1"):
        verify_cosignatures(bad, s.verifier, [W1.key])
    assert verify_cosignatures(bad, s.verifier, [W2.key]) == []  # another witness's line is ignored


def test_witness_vkey_rejects_other_algorithms() -> None:
    log_vkey = NoteSigner.generate(name="w").vkey  # algorithm 0x01: a log key, not a witness key
    with pytest.raises(UnsupportedVersion, match="algorithm 0x01"):
        WitnessKey.from_vkey(log_vkey)
    name, kid, b64 = W1.key.vkey.split("+", 2)
    with pytest.raises(MalformedKey, match="does not match"):
        WitnessKey.from_vkey(f"{name}+{(int(kid, 16) ^ 1):08x}+{b64}")
    assert NoteVerifier  # the log key type stays distinct


# --- witnesses in the verifier (step 5; step 17 keeps its sample) ------------------------------


def test_step_05_cosigned_head_verifies() -> None:
    """A final head cosigned after the bundle was written verifies, with or without the witness
    policy: cosignatures do not change the Fiat-Shamir sample (step 17)."""
    h = honest()
    data = _cosigned(h.bundle, W1, W2)
    for opts in (_opts(), _opts(witnesses=(W1.key, W2.key)), _opts(replay=2, unsafe_no_replay=False,
                                                                       witnesses=(W1.key, W2.key), witness_threshold=1)):
        v = verify(data, opts)
        assert v.exit_code == 0, (v.failed_step, repr(v.failure))
    v = verify(data, _opts(witnesses=(W1.key, W2.key)))
    assert sorted(c.name for c in v.cosignatures) == [W1.name, W2.name]
    from verifier import to_json

    trust = to_json(v, path="x")["trust"]
    assert (trust["witnesses"], trust["witness_threshold"], trust["known_heads"]) == (2, 2, 0)
    assert sorted(c["name"] for c in trust["cosigned_by"]) == [W1.name, W2.name]


def test_step_05_witness_quorum_missing() -> None:
    h = honest()
    data = _cosigned(h.bundle, W1)
    v = verify(data, _opts(witnesses=(W1.key, W2.key)))
    assert (v.exit_code, v.failed_step, type(v.failure).__name__) == (1, 5, "WitnessQuorumMissing")
    assert "cosignatures of 1 of the 2 given witnesses, 2 needed" in str(v.failure)
    assert verify(data, _opts(witnesses=(W1.key, W2.key), witness_threshold=1)).exit_code == 0
    v = verify(h.bundle, _opts(witnesses=(W3.key,)))
    assert (v.exit_code, v.failed_step, type(v.failure).__name__) == (1, 5, "WitnessQuorumMissing")


def test_step_05_forged_cosignature_rejected() -> None:
    """A cosignature line under a given witness's name and key ID that the witness did not make."""
    h = honest()
    impostor = WitnessSigner(name=W1.name, private_key=W2.private_key)
    m = members_of(h.bundle)
    note = add_cosignature(m[FINAL], impostor, 1)
    line = note.decode().splitlines()[-1]
    raw = base64.b64decode(line.split(" ")[-1])
    forged = W1.key.key_id.to_bytes(4, "big") + raw[4:]  # claims to be W1
    m[FINAL] = note[: note.rfind(b"\xe2\x80\x94 " + W1.name.encode())] + (
        f"\u2014 {W1.name} {base64.b64encode(forged).decode()}\n").encode()
    v = verify(rezip(m), _opts(witnesses=(W1.key,)))
    assert (v.exit_code, v.failed_step, type(v.failure).__name__) == (1, 5, "SignatureFailed"), repr(v.failure)
    assert "invalid cosignature" in str(v.failure)


def test_witness_threshold_fails_closed() -> None:
    h = honest()
    for kw in ({"witnesses": (W1.key,), "witness_threshold": 0}, {"witnesses": (W1.key,), "witness_threshold": 2},
               {"witness_threshold": 1}, {"witnesses": (W1.key, W1.key)}):
        v = verify(h.bundle, _opts(**kw))
        assert (v.exit_code, v.failed_step) == (2, 5) and "witness threshold" in str(v.failure), kw


def test_cli_witness_flags(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    h = honest()
    path = tmp_path / "cosigned.vmu"
    path.write_bytes(_cosigned(h.bundle, W1))
    vk = tmp_path / "w2.vkey"
    vk.write_text(W2.key.vkey + "\n")
    base = [str(path), "--unsafe-no-replay", "--no-residual", "--quiet"]
    assert cli_main([*base, "--witness", W1.key.vkey]) == 0
    capsys.readouterr()
    assert cli_main([*base, "--witness", W1.key.vkey, "--witness", str(vk)]) == 1
    assert "step 5: the final signed tree head carries valid cosignatures of 1 of the 2" in capsys.readouterr().err
    assert cli_main([*base, "--witness", W1.key.vkey, "--witness", str(vk), "--witness-threshold", "1"]) == 0
    assert cli_main([*base, "--witness-threshold", "1"]) == 2
    assert cli_main([*base, "--witness", "nonsense+00000000+AAAA"]) == 2


# --- known heads and the split view (step 7) ---------------------------------------------------


def _fork(h: Honest, tag: str, third: int, known: list[str] | None = None) -> tuple[bytes, str]:
    """A copy of the honest workspace that carries out a third deletion, of its ``third``-th
    remaining training record: one of two diverging histories under the same key and origin.
    Returns its bundle and workspace."""
    from prover import Workspace
    from prover._bundle import known_head_size, write_bundle

    d = tempfile.mkdtemp(prefix=f"vmu-split-{tag}-", dir=h.root)
    ws_dir = os.path.join(d, "ws")
    shutil.copytree(h.ws_dir, ws_dir, ignore=shutil.ignore_patterns(".lock", "checkpoints"))
    shutil.copytree(os.path.join(h.ws_dir, "checkpoints"), os.path.join(ws_dir, "checkpoints"), copy_function=os.link)
    path = os.path.join(d, "b.vmu")
    with Workspace.open(ws_dir) as ws:
        ws.progress = False
        ids = sorted((i for (i,) in ws._db().execute(
            "SELECT id FROM p_records WHERE role='train' AND deleted_by IS NULL")), key=int)
        ws.forget([ids[third]], workers=1)
        sizes = [known_head_size(ws, k) for k in known or []]
        write_bundle(ws, path, known_sizes=sizes)
    with open(path, "rb") as f:
        return f.read(), ws_dir


_SPLIT: dict[str, Any] = {}


def _size(bundle: bytes) -> int:
    return int(members_of(bundle)[FINAL].decode().split("\n")[1])


def _split() -> dict[str, Any]:
    if not _SPLIT:
        h = honest()
        a, ws_a = _fork(h, "a", 0)
        b, ws_b = _fork(h, "b", 1)
        if _size(a) < _size(b):  # "a" is the longer history
            a, ws_a, b, ws_b = b, ws_b, a, ws_a
        _SPLIT.update(a=a, b=b, ws_a=ws_a)
    return _SPLIT


def _known(tmp_path: Any, note: bytes, name: str = "known.note") -> str:
    p = tmp_path / name
    p.write_bytes(note)
    return str(p)


def test_step_07_split_view_each_history_alone_verifies() -> None:
    s = _split()
    assert verify(s["a"], _opts()).exit_code == 0
    assert verify(s["b"], _opts()).exit_code == 0
    fa = members_of(s["a"])[FINAL].decode().split("\n")
    fb = members_of(s["b"])[FINAL].decode().split("\n")
    assert fa[0] == fb[0] and fa[2] != fb[2]  # same origin, two roots


def test_step_07_known_head_detects_split_view() -> None:
    """History B, checked against a head of history A the agency already holds, is rejected: at
    the size of B's final head A has another root (split view); A's own final head is one B
    neither holds nor can prove consistent."""
    from prover import Workspace

    s = _split()
    size_b = _size(s["b"])
    with Workspace.open(s["ws_a"]) as ws:
        assert ws.log.size >= size_b
        a_at = sign_checkpoint(Checkpoint(origin=ws.log_origin, size=size_b, root_hash=ws.log.root(size_b)),
                               ws._note_signer)
    v = verify(s["b"], _opts(known_heads=(a_at,)))
    assert (v.exit_code, v.failed_step, type(v.failure).__name__) == (1, 7, "HeadMismatch"), repr(v.failure)
    assert "two signed histories of one log (split view)" in str(v.failure)
    v = verify(s["b"], _opts(known_heads=(members_of(s["a"])[FINAL],)))
    assert (v.exit_code, v.failed_step) == (1, 7), repr(v.failure)
    assert verify(s["a"], _opts(known_heads=(members_of(s["a"])[FINAL],))).exit_code == 0


def test_step_07_known_head_common_prefix_and_proof() -> None:
    """A head both histories share (the honest bundle's final head) is extended by both; a head the
    bundle does not hold is accepted only with the prover's consistency proof (``known``)."""
    h = honest()
    shared = members_of(h.bundle)[FINAL]
    s = _split()
    for data in (s["a"], s["b"]):
        v = verify(data, _opts(known_heads=(shared,)))
        assert v.exit_code == 0, repr(v.failure)


def test_step_07_known_head_needs_proof_when_not_a_bundle_head(tmp_path: Any) -> None:
    h = honest()
    from prover import Workspace

    with Workspace.open(h.ws_dir) as ws:  # a head at a size no transcript or final head has
        size = ws.log.size - 1
        note = sign_checkpoint(Checkpoint(origin=ws.log_origin, size=size, root_hash=ws.log.root(size)),
                               ws._note_signer)
    path = _known(tmp_path, note)
    without, _ = _fork(h, "noproof", 0)
    v = verify(without, _opts(known_heads=(note,)))
    assert (v.exit_code, v.failed_step, type(v.failure).__name__) == (1, 7, "SegmentMissing"), repr(v.failure)
    with_proof, _ = _fork(h, "proof", 0, known=[path])
    assert verify(with_proof, _opts(known_heads=(note,))).exit_code == 0
    # The proof must be the log's: a bent one is a split view.
    m = members_of(with_proof)
    log = json.loads(m["log/entries.json"])
    log["known"][0]["path"][0] = ("1" if log["known"][0]["path"][0][0] != "1" else "2") + log["known"][0]["path"][0][1:]
    m["log/entries.json"] = json.dumps(log).encode()
    v = verify(rezip(m), _opts(known_heads=(note,)))
    assert (v.exit_code, v.failed_step, type(v.failure).__name__) == (1, 7, "HeadMismatch"), repr(v.failure)


def test_step_07_known_head_newer_than_bundle() -> None:
    s = _split()
    h = honest()
    v = verify(h.bundle, _opts(known_heads=(members_of(s["a"])[FINAL],)))
    assert (v.exit_code, v.failed_step, type(v.failure).__name__) == (1, 7, "HeadMismatch")
    assert "older state of the log" in str(v.failure)


def test_step_07_known_head_of_another_key() -> None:
    h = honest()
    other = NoteSigner.generate(name=members_of(h.bundle)[FINAL].decode().split("\n")[0])
    note = sign_checkpoint(Checkpoint(origin=other.name, size=3, root_hash=b"\x02" * 32), other)
    v = verify(h.bundle, _opts(known_heads=(note,)))
    assert (v.exit_code, v.failed_step, type(v.failure).__name__) == (1, 7, "SignatureFailed"), repr(v.failure)


def test_cli_known_head(tmp_path: Any) -> None:
    s = _split()
    a = tmp_path / "a.vmu"
    b = tmp_path / "b.vmu"
    a.write_bytes(s["a"])
    b.write_bytes(s["b"])
    known = _known(tmp_path, members_of(s["a"])[FINAL])
    base = ["--unsafe-no-replay", "--no-residual", "--quiet", "--known-head", known]
    assert cli_main([str(a), *base]) == 0
    assert cli_main([str(b), *base]) == 1
    assert cli_main([str(a), "--known-head", str(tmp_path / "missing.note")]) == 2


def test_prover_known_head(tmp_path: Any) -> None:
    """``vmu bundle --known-head`` adds the consistency proof; a head that is not one of this log's
    (another key, or another root at its size) is refused as bad input."""
    from prover import Workspace
    from prover._bundle import known_head_size
    from prover._errors import BadInput
    from prover.cli import main as vmu_main

    h = honest()
    d = tmp_path / "ws"
    shutil.copytree(h.ws_dir, d, ignore=shutil.ignore_patterns(".lock"))
    with Workspace.open(str(d)) as ws:
        size = ws.log.size - 2
        good = sign_checkpoint(Checkpoint(origin=ws.log_origin, size=size, root_hash=ws.log.root(size)), ws._note_signer)
        forked = sign_checkpoint(Checkpoint(origin=ws.log_origin, size=size, root_hash=b"\x03" * 32), ws._note_signer)
        other = sign_checkpoint(Checkpoint(origin=ws.log_origin, size=size, root_hash=ws.log.root(size)),
                                NoteSigner.generate(name=ws.log_origin))
        for note, match in ((forked, "not a head of this log's history"), (other, "not a signed head of this log")):
            with pytest.raises(BadInput, match=match):
                known_head_size(ws, _known(tmp_path, note, "bad.note"))
    out = tmp_path / "b.vmu"
    assert vmu_main(["bundle", str(d), "--out", str(out), "--known-head", _known(tmp_path, good)]) == 0
    log = json.loads(members_of(out.read_bytes())["log/entries.json"])
    assert [p["old_size"] for p in log["known"]] == [str(size)]
    assert verify(out.read_bytes(), _opts(known_heads=(good,))).exit_code == 0
