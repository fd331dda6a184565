"""C2SP signed notes and tlog checkpoints: Go known answers, round trips, every rejection."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from verifiable_mu._errors import MalformedInput, MalformedKey, MalformedNote, SignatureFailed, UnsupportedVersion
from verifiable_mu._note import (
    MAX_NOTE_BYTES,
    Checkpoint,
    Note,
    NoteSignature,
    NoteSigner,
    NoteVerifier,
    is_valid_key_name,
    key_id,
    open_checkpoint,
    open_note,
    sign_checkpoint,
    sign_note,
)

# --- golang.org/x/mod/sumdb/note/note_test.go ------------------------------------------------

GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
PETER_B64 = "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
ENOCH_B64 = "rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ="
PETER_SIG = f"\u2014 PeterNeumann {PETER_B64}\n"
ENOCH_SIG = f"\u2014 EnochRoot {ENOCH_B64}\n"
GO_NOTE = (GO_TEXT + "\n" + PETER_SIG).encode("utf-8")

PETER = NoteVerifier.from_vkey(GO_VKEY)
ENOCH = NoteVerifier.from_vkey(ENOCH_VKEY)
SIGNER = NoteSigner.from_skey(GO_SKEY)


def _sig(name: str, b64: str) -> NoteSignature:
    raw = base64.b64decode(b64)
    return NoteSignature(name=name, key_id=int.from_bytes(raw[:4], "big"), signature=raw[4:])


def test_go_signer_and_verifier_keys() -> None:
    assert SIGNER.name == "PeterNeumann"
    assert SIGNER.key_id == 0xC74F20A3
    assert SIGNER.vkey == GO_VKEY
    assert SIGNER.skey == GO_SKEY
    assert SIGNER.verifier == PETER
    assert PETER.vkey == GO_VKEY
    assert PETER.key_id == key_id("PeterNeumann", PETER.public_bytes) == 0xC74F20A3
    # The key ID is the documented hash, computed by hand.
    raw = base64.b64decode(GO_VKEY.split("+")[2])
    assert hashlib.sha256(b"PeterNeumann\n" + raw).digest()[:4] == bytes.fromhex("c74f20a3")
    assert "AYEK" not in repr(SIGNER)  # the private key never shows in repr


def test_go_sign_known_answer_byte_for_byte() -> None:
    assert sign_note(GO_TEXT, [SIGNER]) == GO_NOTE


def test_go_open_known_answer() -> None:
    n = open_note(GO_NOTE, [PETER])
    assert n == Note(text=GO_TEXT, signatures=(_sig("PeterNeumann", PETER_B64),), unverified=())
    assert n.signatures[0].line == PETER_SIG


def test_go_open_one_verified_one_unknown() -> None:
    msg = (GO_TEXT + "\n" + PETER_SIG + ENOCH_SIG).encode()
    n = open_note(msg, [PETER])
    assert n.signatures == (_sig("PeterNeumann", PETER_B64),)
    assert n.unverified == (_sig("EnochRoot", ENOCH_B64),)
    both = open_note(msg, [PETER, ENOCH])
    assert both.signatures == (_sig("PeterNeumann", PETER_B64), _sig("EnochRoot", ENOCH_B64))
    assert both.unverified == ()
    only_enoch = open_note(msg, [ENOCH])
    assert only_enoch.signatures == (_sig("EnochRoot", ENOCH_B64),)


def test_go_open_duplicated_verified_and_unverified() -> None:
    enoch_abcd = ENOCH_SIG[:60] + "ABCD" + ENOCH_SIG[60:]
    msg = (GO_TEXT + "\n" + PETER_SIG + PETER_SIG + ENOCH_SIG + ENOCH_SIG + enoch_abcd).encode()
    n = open_note(msg, [PETER])
    assert n.signatures == (_sig("PeterNeumann", PETER_B64),)
    assert n.unverified == (_sig("EnochRoot", ENOCH_B64), _sig("EnochRoot", enoch_abcd.split(" ")[2].strip()))


def test_go_open_invalid_signature() -> None:
    msg = (GO_TEXT + "\n" + PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]).encode()
    with pytest.raises(SignatureFailed, match=r"invalid signature for key PeterNeumann\+c74f20a3"):
        open_note(msg, [PETER])


def test_go_too_many_signatures() -> None:
    ok = (GO_TEXT + "\n" + PETER_SIG * 100).encode()
    assert len(open_note(ok, [PETER]).signatures) == 1  # identical lines count once
    for verifiers in ([PETER], [ENOCH]):
        with pytest.raises(MalformedNote, match="at most 100"):
            open_note((GO_TEXT + "\n" + PETER_SIG * 101).encode(), verifiers)


@pytest.mark.parametrize(
    ("msg", "fragment"),
    [
        (GO_TEXT, "no blank line"),
        (GO_TEXT + "\n", "no signature lines"),
        (GO_TEXT + "\n" + PETER_SIG[:-1], "must end with a newline"),
        ("\x01" + GO_TEXT + "\n" + PETER_SIG, "control character"),
        ("\u2014 Bad Name " + PETER_B64 + "\n", "no blank line"),
        (GO_TEXT + "\n" + "\u2014 Bad Name " + PETER_B64, "must end with a newline"),
        (GO_TEXT + "\n" + "\u2014 Bad Name " + PETER_B64 + "\n", "not valid base64"),
        (GO_TEXT + "\n" + PETER_SIG + "Unexpected line.\n", "line 2 does not start with an em dash"),
        (GO_TEXT + "\n" + "- PeterNeumann " + PETER_B64 + "\n", "does not start with an em dash"),
        (GO_TEXT + "\n" + "\u2014PeterNeumann " + PETER_B64 + "\n", "does not start with an em dash"),
        (GO_TEXT + "\n" + "\u2014 PeterNeumann\n", "invalid key name"),
        (GO_TEXT + "\n" + "\u2014  " + PETER_B64 + "\n", "invalid key name"),
        (GO_TEXT + "\n" + "\u2014 Peter+Neumann " + PETER_B64 + "\n", "invalid key name"),
        (GO_TEXT + "\n" + "\u2014 PeterNeumann \n", "empty signature"),
        (GO_TEXT + "\n" + "\u2014 PeterNeumann AAAAAA==\n", "shorter than a key ID"),
        (GO_TEXT + "\n" + "\u2014 PeterNeumann " + PETER_B64[:-2] + "N=\n", "not canonical base64"),
        (GO_TEXT + "\n" + "\u2014 PeterNeumann " + PETER_B64 + " \n", "not valid base64"),
        ("\t" + GO_TEXT + "\n" + PETER_SIG, "control character"),
        (GO_TEXT.replace("\n", "\r\n") + "\n" + PETER_SIG, "control character"),
    ],
)
def test_open_malformed_notes(msg: str, fragment: str) -> None:
    with pytest.raises(MalformedNote, match=fragment):
        open_note(msg.encode(), [PETER])


def test_open_rejects_invalid_utf8_and_non_bytes_and_huge() -> None:
    with pytest.raises(MalformedNote, match="not valid UTF-8"):
        open_note(b"\xff" + GO_NOTE, [PETER])
    with pytest.raises(MalformedNote, match="must be bytes"):
        open_note(GO_NOTE.decode(), [PETER])  # type: ignore[arg-type]
    with pytest.raises(MalformedNote, match="too large"):
        open_note(b"a" * (MAX_NOTE_BYTES + 1), [PETER])


def test_open_fails_closed_without_verifiers() -> None:
    with pytest.raises(SignatureFailed, match="no trusted verifier keys"):
        open_note(GO_NOTE, [])
    with pytest.raises(MalformedKey, match="sequence of verifiers"):
        open_note(GO_NOTE, PETER)  # type: ignore[arg-type]
    with pytest.raises(MalformedKey, match="expected a NoteVerifier"):
        open_note(GO_NOTE, [GO_VKEY])  # type: ignore[list-item]


def test_open_wrong_key_is_not_trusted() -> None:
    with pytest.raises(SignatureFailed, match="no valid signature from a trusted key"):
        open_note(GO_NOTE, [ENOCH])


def test_open_same_name_other_key_is_ignored_not_failed() -> None:
    # A trusted key with the same name but another key ID: the line is an unknown key's, ignored.
    other = NoteSigner.generate(name="PeterNeumann")
    assert other.key_id != PETER.key_id
    with pytest.raises(SignatureFailed, match="no valid signature from a trusted key"):
        open_note(GO_NOTE, [other.verifier])
    both = open_note(GO_NOTE + sign_note(GO_TEXT, [other]).split(b"\n\n")[1], [other.verifier])
    assert [s.key_id for s in both.signatures] == [other.key_id]
    assert [s.key_id for s in both.unverified] == [PETER.key_id]


def test_open_same_key_id_other_name_is_ignored() -> None:
    renamed = GO_NOTE.replace("\u2014 PeterNeumann".encode(), "\u2014 CarmenSandiego".encode())
    with pytest.raises(SignatureFailed, match="no valid signature from a trusted key"):
        open_note(renamed, [PETER])


def test_open_mutated_text_and_signature() -> None:
    mutated_text = GO_NOTE.replace(b"cryptography", b"Cryptography")
    with pytest.raises(SignatureFailed, match="invalid signature for key PeterNeumann"):
        open_note(mutated_text, [PETER])
    raw = bytearray(base64.b64decode(PETER_B64))
    raw[10] ^= 1
    mutated_sig = GO_NOTE.replace(PETER_B64.encode(), base64.b64encode(bytes(raw)))
    with pytest.raises(SignatureFailed, match="invalid signature for key PeterNeumann"):
        open_note(mutated_sig, [PETER])
    short = GO_NOTE.replace(PETER_B64.encode(), base64.b64encode(bytes(raw[:40])))
    with pytest.raises(SignatureFailed, match="invalid signature"):
        open_note(short, [PETER])


def test_known_key_bad_signature_rejects_even_with_a_good_one() -> None:
    # Rule 4: a trusted key's line that fails to verify rejects the note, whatever else verified.
    bad_enoch = ENOCH_SIG[:60] + "ABCD" + ENOCH_SIG[60:]
    msg = (GO_TEXT + "\n" + PETER_SIG + bad_enoch).encode()
    assert open_note(msg, [PETER]).signatures  # Enoch unknown here: ignored
    with pytest.raises(SignatureFailed, match=r"invalid signature for key EnochRoot\+af0cfe78"):
        open_note(msg, [PETER, ENOCH])
    # A second, different line from the same trusted key is checked too (Go would skip it).
    other_line = PETER_SIG.replace("x08go/ZJ", "x08go/ZK")
    with pytest.raises(SignatureFailed, match="invalid signature for key PeterNeumann"):
        open_note((GO_TEXT + "\n" + PETER_SIG + other_line).encode(), [PETER])


def test_ambiguous_verifiers() -> None:
    assert open_note(GO_NOTE, [PETER, NoteVerifier.from_vkey(GO_VKEY)]).signatures  # duplicates are fine
    fake = NoteVerifier.__new__(NoteVerifier)  # same name and ID, another key (IDs are only 32 bits)
    for name, value in (("name", "PeterNeumann"), ("key_id", PETER.key_id), ("public_key", ENOCH.public_key),
                        ("public_bytes", ENOCH.public_bytes)):
        object.__setattr__(fake, name, value)
    with pytest.raises(MalformedKey, match="ambiguous key PeterNeumann"):
        open_note(GO_NOTE, [PETER, fake])


# --- keys ---------------------------------------------------------------------------------------


def _mangled(s: str) -> list[str]:
    out = [s[i:j] for i in range(len(s) + 1) for j in range(i + 1, len(s) + 1) if (i, j) != (0, len(s))]
    out += [s[:i] + chr(ord(s[i]) + 1) + s[i + 1 :] for i in range(len(s))]
    return out


def test_go_vkey_manglings_are_rejected() -> None:
    for bad in _mangled(GO_VKEY):
        with pytest.raises(MalformedInput, match="verifier key"):
            NoteVerifier.from_vkey(bad)


def test_go_skey_manglings_are_rejected() -> None:
    for bad in _mangled(GO_SKEY):
        with pytest.raises(MalformedInput, match="signer key"):
            NoteSigner.from_skey(bad)


def test_go_bad_vkeys() -> None:
    with pytest.raises(MalformedKey, match="verifier key"):  # wrong length key, adjusted key hash
        NoteVerifier.from_vkey("PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==")
    with pytest.raises(UnsupportedVersion, match="algorithm 0x65 is not supported"):
        NoteVerifier.from_vkey("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")


def test_vkey_specific_rejections() -> None:
    with pytest.raises(MalformedKey, match="lower-case hex"):
        NoteVerifier.from_vkey(GO_VKEY.replace("c74f20a3", "C74F20A3"))
    with pytest.raises(MalformedKey, match="does not match the key"):
        NoteVerifier.from_vkey(GO_VKEY.replace("c74f20a3", "c74f20a4"))
    raw33 = base64.b64encode(b"\x01" + bytes(33)).decode()
    with pytest.raises(MalformedKey, match="must be 32 bytes, got 33"):
        NoteVerifier.from_vkey(f"X+{key_id('X', bytes(32)):08x}+{raw33}")
    with pytest.raises(MalformedKey, match="must be a string"):
        NoteVerifier.from_vkey(GO_VKEY.encode())  # type: ignore[arg-type]
    with pytest.raises(UnsupportedVersion, match="algorithm 0x02"):
        NoteSigner.from_skey("PRIVATE+KEY+PeterNeumann+c74f20a3+" + base64.b64encode(b"\x02" + bytes(32)).decode())


@pytest.mark.parametrize("name", ["", "a b", "a+b", "a\tb", "a\u2003b", "a\u00a0b", "a\u2028b", "a\x7fb", "a\nb"])
def test_invalid_key_names(name: str) -> None:
    assert not is_valid_key_name(name)
    key = Ed25519PrivateKey.generate()
    with pytest.raises(MalformedKey, match="invalid key name"):
        NoteSigner.from_private_key(name=name, key=key)
    with pytest.raises(MalformedKey, match="invalid key name"):
        NoteVerifier.from_public_key(name=name, key=key.public_key())


def test_valid_key_names() -> None:
    for name in ("a", "vmu.example/log", "PeterNeumann", "caf\u00e9/\u65e5\u672c", "x:1_2-3"):
        assert is_valid_key_name(name)


def test_key_types_and_constructor_checks() -> None:
    key = Ed25519PrivateKey.generate()
    with pytest.raises(MalformedKey, match="expected an Ed25519 private key"):
        NoteSigner.from_private_key(name="a", key=key.public_key())  # type: ignore[arg-type]
    with pytest.raises(MalformedKey, match="expected an Ed25519 public key"):
        NoteVerifier.from_public_key(name="a", key=key)  # type: ignore[arg-type]
    with pytest.raises(MalformedKey, match="does not match key"):
        NoteSigner(name="a", key_id=0, private_key=key)
    s = NoteSigner.from_private_key(name="a", key=key)
    assert NoteVerifier.from_public_key(name="a", key=key.public_key()) == s.verifier
    assert NoteVerifier.from_vkey(s.vkey) == s.verifier
    assert NoteSigner.from_skey(s.skey).vkey == s.vkey


# --- sign / open round trips ------------------------------------------------------------------


def test_sign_open_round_trip_several_signers() -> None:
    a, b = NoteSigner.generate(name="log.example/a"), NoteSigner.generate(name="witness.example/b")
    text = "hello\n\nworld \u00e9\u2014\n"
    note = sign_note(text, [a, b])
    assert note.startswith(text.encode() + "\n\u2014 log.example/a ".encode("utf-8"))
    for verifiers in ([a.verifier], [b.verifier], [a.verifier, b.verifier]):
        n = open_note(note, verifiers)
        assert n.text == text
        assert {s.name for s in n.signatures} == {v.name for v in verifiers}
    # Appending a signature line from an unknown key keeps it verifiable.
    extra = sign_note(text, [NoteSigner.generate(name="z")]).split(b"\n\n")[-1]
    assert open_note(note + extra, [a.verifier]).unverified[-1].name == "z"


def test_sign_note_rejections() -> None:
    with pytest.raises(MalformedNote, match="must end with a newline"):
        sign_note("abc", [SIGNER])
    with pytest.raises(MalformedNote, match="must end with a newline"):
        sign_note("", [SIGNER])
    with pytest.raises(MalformedNote, match="control character"):
        sign_note("a\rb\n", [SIGNER])
    with pytest.raises(MalformedNote, match="must be a string"):
        sign_note(b"abc\n", [SIGNER])  # type: ignore[arg-type]
    with pytest.raises(MalformedKey, match="at least one signer"):
        sign_note("abc\n", [])
    with pytest.raises(MalformedKey, match="given twice"):
        sign_note("abc\n", [SIGNER, NoteSigner.from_skey(GO_SKEY)])
    with pytest.raises(MalformedKey, match="not a single signer"):
        sign_note("abc\n", SIGNER)  # type: ignore[arg-type]
    with pytest.raises(MalformedKey, match="expected a NoteSigner"):
        sign_note("abc\n", [GO_SKEY])  # type: ignore[list-item]
    with pytest.raises(MalformedNote, match="exceed"):
        sign_note("a" * MAX_NOTE_BYTES + "\n", [SIGNER])


# --- checkpoints -----------------------------------------------------------------------------

ROOT = bytes(range(32))
C2SP_EXAMPLE = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"


def test_checkpoint_text_round_trip() -> None:
    cp = Checkpoint(origin="vmu.example/log", size=5, root_hash=ROOT)
    assert cp.to_text() == f"vmu.example/log\n5\n{base64.b64encode(ROOT).decode()}\n"
    assert Checkpoint.from_text(cp.to_text()) == cp
    ts = Checkpoint(origin="o", size=0, root_hash=ROOT, timestamp=1700000000)
    assert ts.to_text().endswith("\ntimestamp 1700000000\n")
    assert Checkpoint.from_text(ts.to_text()) == ts
    c2sp = Checkpoint.from_text(C2SP_EXAMPLE)
    assert (c2sp.origin, c2sp.size, c2sp.timestamp) == ("example.com/behind-the-sofa", 20852163, None)
    assert c2sp.to_text() == C2SP_EXAMPLE


B64ROOT = base64.b64encode(ROOT).decode()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (f"o\n1\n{B64ROOT}", "must end with a newline"),
        ("o\n1\n", "origin, size and root hash are required"),
        (f"\n1\n{B64ROOT}\n", "origin must not be empty"),
        (f"o\x7f\n1\n{B64ROOT}\n", "origin contains a control character"),
        (f"o\n007\n{B64ROOT}\n", "size must not have leading zeros"),
        (f"o\n00\n{B64ROOT}\n", "size must not have leading zeros"),
        (f"o\n-1\n{B64ROOT}\n", "size must be a decimal number"),
        (f"o\n+1\n{B64ROOT}\n", "size must be a decimal number"),
        (f"o\n 1\n{B64ROOT}\n", "size must be a decimal number"),
        (f"o\n1e3\n{B64ROOT}\n", "size must be a decimal number"),
        (f"o\n\u0661\n{B64ROOT}\n", "size must be a decimal number"),
        (f"o\n\n{B64ROOT}\n", "size must be a decimal number"),
        (f"o\n{2**63}\n{B64ROOT}\n", "size is too large"),
        ("o\n1\nnot base64!\n", "root hash is not valid base64"),
        (f"o\n1\n{base64.b64encode(ROOT[:31]).decode()}\n", "must be 32 bytes, got 31"),
        (f"o\n1\n{B64ROOT[:-2]}9=\n", "root hash is not canonical base64"),
        (f"o\n1\n{B64ROOT}\nwitness foo\n", "unknown extension line"),
        (f"o\n1\n{B64ROOT}\n\n", "extension line must not be empty"),
        (f"o\n1\n{B64ROOT}\ntimestamp 012\n", "timestamp must not have leading zeros"),
        (f"o\n1\n{B64ROOT}\ntimestamp x\n", "timestamp must be a decimal number"),
        (f"o\n1\n{B64ROOT}\ntimestamp  1\n", "timestamp must be a decimal number"),
        (f"o\n1\n{B64ROOT}\ntimestamp 1\ntimestamp 1\n", "directly follow the root hash, once"),
        (f"o\n1\n{B64ROOT}\nTimestamp 1\n", "unknown extension line"),
    ],
)
def test_checkpoint_from_text_rejections(text: str, fragment: str) -> None:
    with pytest.raises(MalformedNote, match=fragment):
        Checkpoint.from_text(text)


def test_checkpoint_unknown_extensions_only_when_allowed() -> None:
    text = f"o\n1\n{B64ROOT}\ntimestamp 5\nwitness foo\n"
    with pytest.raises(MalformedNote, match="unknown extension line"):
        Checkpoint.from_text(text)
    cp = Checkpoint.from_text(text, allow_unknown_extensions=True)
    assert (cp.timestamp, cp.extensions) == (5, ("witness foo",))
    assert cp.to_text() == text
    with pytest.raises(MalformedNote, match="directly follow"):
        Checkpoint.from_text(f"o\n1\n{B64ROOT}\nwitness foo\ntimestamp 5\n", allow_unknown_extensions=True)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"origin": "a\nb"}, "origin contains a control character or newline"),
        ({"origin": ""}, "origin must not be empty"),
        ({"origin": 5}, "origin must be a string"),
        ({"size": -1}, "size must be an integer"),
        ({"size": True}, "size must be an integer"),
        ({"size": 2**63}, "size must be an integer"),
        ({"root_hash": bytes(31)}, "root hash must be 32 bytes"),
        ({"root_hash": bytearray(32)}, "root hash must be 32 bytes"),
        ({"timestamp": -5}, "timestamp must be an integer"),
        ({"timestamp": False}, "timestamp must be an integer"),
        ({"extensions": ["x"]}, "tuple of lines"),
        ({"extensions": ("",)}, "extension line must not be empty"),
        ({"extensions": ("timestamp 5",)}, "goes in the timestamp field"),
    ],
)
def test_checkpoint_constructor_rejections(kwargs: dict, fragment: str) -> None:
    base = {"origin": "o", "size": 1, "root_hash": ROOT}
    with pytest.raises(MalformedNote, match=fragment):
        Checkpoint(**{**base, **kwargs})


def test_sign_open_checkpoint() -> None:
    s = NoteSigner.generate(name="vmu.example/log")
    cp = Checkpoint(origin="vmu.example/log", size=42, root_hash=ROOT, timestamp=1700000000)
    note = sign_checkpoint(cp, s)
    assert open_checkpoint(note, [s.verifier], origin="vmu.example/log") == cp
    with pytest.raises(SignatureFailed, match="expected 'vmu.example/other'"):
        open_checkpoint(note, [s.verifier], origin="vmu.example/other")
    with pytest.raises(SignatureFailed, match="no valid signature from a trusted key"):
        open_checkpoint(note, [PETER], origin="vmu.example/log")
    with pytest.raises(SignatureFailed, match="no trusted verifier keys"):
        open_checkpoint(note, [], origin="vmu.example/log")
    with pytest.raises(SignatureFailed, match="invalid signature"):
        open_checkpoint(note.replace(b"\n42\n", b"\n43\n"), [s.verifier], origin="vmu.example/log")
    with pytest.raises(MalformedNote, match="expected origin"):
        open_checkpoint(note, [s.verifier], origin="")
    with pytest.raises(MalformedNote, match="expected a Checkpoint"):
        sign_checkpoint(cp.to_text(), s)  # type: ignore[arg-type]


def test_open_checkpoint_parses_only_signed_text() -> None:
    s = NoteSigner.generate(name="k")
    weird = sign_note(f"o\n1\n{B64ROOT}\nwitness foo\n", [s])
    with pytest.raises(MalformedNote, match="unknown extension line"):
        open_checkpoint(weird, [s.verifier], origin="o")
    assert open_checkpoint(weird, [s.verifier], origin="o", allow_unknown_extensions=True).extensions == (
        "witness foo",
    )
    not_a_checkpoint = sign_note("hello\n", [s])
    with pytest.raises(MalformedNote, match="origin, size and root hash are required"):
        open_checkpoint(not_a_checkpoint, [s.verifier], origin="hello")
