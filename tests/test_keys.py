"""Ed25519 keys: key ids, PEM round trips, key files (mode 0600, atomic, no overwrite), rejections."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from verifiable_mu._errors import MalformedInput, MalformedKey, SignatureFailed, VerificationFailed
from verifiable_mu._keys import SigningKey, VerifyingKey, key_id_of

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")

SEED = bytes([1]) * 32
# RFC 8032 public key of the seed 0x01 * 32 (also in specs/05-dsse.md).
PUB_HEX = "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"


def test_rfc8032_test1_public_key_and_signature() -> None:
    # RFC 8032 section 7.1, TEST 1 (empty message).
    sk = SigningKey.from_seed(
        bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    )
    assert sk.public_key.raw.hex() == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    assert sk.sign(b"").hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )


def test_key_id_is_tagged_sha256_of_raw_key() -> None:
    sk = SigningKey.from_seed(SEED)
    assert sk.public_key.raw.hex() == PUB_HEX
    expected = hashlib.sha256(b"vmu:ed25519-key-id:v1\x00" + bytes.fromhex(PUB_HEX)).hexdigest()
    assert sk.key_id == expected == sk.public_key.key_id == key_id_of(bytes.fromhex(PUB_HEX))
    assert len(sk.key_id) == 64 and sk.key_id == sk.key_id.lower()
    # Not the plain (untagged) hash of the key.
    assert sk.key_id != hashlib.sha256(bytes.fromhex(PUB_HEX)).hexdigest()


def test_sign_verify_round_trip_and_failures() -> None:
    sk = SigningKey.generate()
    sig = sk.sign(b"message")
    assert len(sig) == 64
    sk.public_key.verify(sig, b"message")
    with pytest.raises(SignatureFailed, match="does not verify under key"):
        sk.public_key.verify(sig, b"messagE")
    bad = bytearray(sig)
    bad[0] ^= 1
    with pytest.raises(SignatureFailed, match="does not verify under key") as ei:
        sk.public_key.verify(bytes(bad), b"message")
    assert ei.value.__cause__ is not None  # wraps cryptography's InvalidSignature
    with pytest.raises(SignatureFailed, match="does not verify"):
        SigningKey.generate().public_key.verify(sig, b"message")
    with pytest.raises(SignatureFailed, match="signature is 63 bytes"):
        sk.public_key.verify(sig[:63], b"message")
    assert isinstance(SignatureFailed("x"), VerificationFailed)


def test_signing_is_deterministic() -> None:
    sk = SigningKey.from_seed(SEED)
    assert sk.sign(b"abc") == SigningKey.from_seed(SEED).sign(b"abc")


def test_verifying_key_equality_and_parsing() -> None:
    sk = SigningKey.generate()
    vk = sk.public_key
    assert VerifyingKey.from_bytes(vk.raw) == vk
    assert hash(VerifyingKey.from_bytes(vk.raw)) == hash(vk)
    assert VerifyingKey.from_pem(vk.to_pem()) == vk
    assert vk != SigningKey.generate().public_key
    assert len({vk, VerifyingKey.from_bytes(vk.raw)}) == 1
    assert vk.to_pem().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert "VerifyingKey(key_id=" in repr(vk)


def test_signing_key_pem_round_trip_and_repr_hides_secret() -> None:
    sk = SigningKey.from_seed(SEED)
    pem = sk.to_pem()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    sk2 = SigningKey.from_pem(pem)
    assert sk2.public_key == sk.public_key
    assert isinstance(sk.private_key, Ed25519PrivateKey)
    assert "PRIVATE" not in repr(sk) and SEED.hex() not in repr(sk)


@pytest.mark.parametrize("n", [0, 31, 33, 64])
def test_wrong_length_raw_public_key(n: int) -> None:
    with pytest.raises(MalformedKey, match=f"is 32 bytes, got {n}"):
        VerifyingKey.from_bytes(b"\x00" * n)


def test_raw_public_key_wrong_type() -> None:
    with pytest.raises(MalformedKey, match="must be bytes, not str"):
        VerifyingKey.from_bytes("00" * 32)  # type: ignore[arg-type]
    with pytest.raises(MalformedKey, match="public key is 32 bytes"):
        key_id_of(b"\x00" * 31)


@pytest.mark.parametrize("n", [0, 31, 33])
def test_wrong_length_seed(n: int) -> None:
    with pytest.raises(MalformedKey, match=f"seed is 32 bytes, got {n}"):
        SigningKey.from_seed(b"\x01" * n)


def test_corrupt_pem_rejected() -> None:
    pem = SigningKey.generate().to_pem()
    with pytest.raises(MalformedKey, match="not a PEM private key") as ei:
        SigningKey.from_pem(pem.replace(b"MC", b"XX", 1)[:-20] + b"\n-----END PRIVATE KEY-----\n")
    assert ei.value.__cause__ is not None
    with pytest.raises(MalformedKey, match="not a PEM private key"):
        SigningKey.from_pem(b"hello")
    with pytest.raises(MalformedKey, match="not a PEM public key"):
        VerifyingKey.from_pem(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(MalformedKey, match="not a PEM public key"):
        VerifyingKey.from_pem(pem)  # a private key is not a public key
    with pytest.raises(MalformedKey, match="must be bytes"):
        SigningKey.from_pem("text")  # type: ignore[arg-type]


def test_non_ed25519_and_encrypted_pem_rejected() -> None:
    ec = generate_private_key(SECP256R1())
    ec_pem = ec.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(MalformedKey, match="private key is not Ed25519"):
        SigningKey.from_pem(ec_pem)
    ec_pub = ec.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(MalformedKey, match="public key is not Ed25519"):
        VerifyingKey.from_pem(ec_pub)
    enc = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    with pytest.raises(MalformedKey, match="encrypted"):
        SigningKey.from_pem(enc)


def test_malformed_key_is_malformed_input() -> None:
    with pytest.raises(MalformedInput, match="an Ed25519 public key is 32 bytes, got 0") as e:
        VerifyingKey.from_bytes(b"")
    assert isinstance(e.value, MalformedKey)


# --- key files ----------------------------------------------------------------------------


@posix_only
def test_save_writes_mode_0600_and_loads(tmp_path) -> None:
    sk = SigningKey.generate()
    p = tmp_path / "owner.key"
    old = os.umask(0)  # even with a permissive umask the file must be 0600
    try:
        sk.save(p)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert p.read_bytes() == sk.to_pem()
    assert SigningKey.load(p).public_key == sk.public_key
    assert sorted(os.listdir(tmp_path)) == ["owner.key"]  # no temporary file left


@posix_only
def test_save_temp_file_created_with_0600(tmp_path, monkeypatch) -> None:
    # Every os.open that creates a file must ask for 0600 at creation time.
    real_open = os.open
    modes: list[int] = []

    def spy(path, flags, mode=0o777, *a, **kw):
        if flags & os.O_CREAT:
            modes.append(mode)
        return real_open(path, flags, mode, *a, **kw)

    monkeypatch.setattr(os, "open", spy)
    SigningKey.generate().save(tmp_path / "k.pem")
    assert modes == [0o600]


def test_save_refuses_overwrite(tmp_path) -> None:
    p = tmp_path / "k.pem"
    first = SigningKey.generate()
    first.save(p)
    with pytest.raises(FileExistsError, match="refusing to overwrite existing key file"):
        SigningKey.generate().save(p)
    assert p.read_bytes() == first.to_pem()
    assert sorted(os.listdir(tmp_path)) == ["k.pem"]
    second = SigningKey.generate()
    second.save(p, overwrite=True)
    assert p.read_bytes() == second.to_pem()
    assert sorted(os.listdir(tmp_path)) == ["k.pem"]
    if os.name == "posix":
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600


def test_save_refuses_overwrite_of_dangling_symlink(tmp_path) -> None:
    if not hasattr(os, "symlink"):
        pytest.skip("no symlinks")
    link = tmp_path / "k.pem"
    os.symlink(tmp_path / "elsewhere", link)
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        SigningKey.generate().save(link)
    assert not (tmp_path / "elsewhere").exists()


def test_save_failure_leaves_no_temp_file(tmp_path, monkeypatch) -> None:
    def boom(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        SigningKey.generate().save(tmp_path / "k.pem")
    assert os.listdir(tmp_path) == []


@posix_only
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_load_refuses_group_or_world_accessible_key(tmp_path, mode: int) -> None:
    p = tmp_path / "k.pem"
    SigningKey.generate().save(p)
    os.chmod(p, mode)
    with pytest.raises(MalformedKey, match=f"has mode {mode:04o}: group/others may access it"):
        SigningKey.load(p)


@posix_only
def test_load_accepts_0400(tmp_path) -> None:
    p = tmp_path / "k.pem"
    sk = SigningKey.generate()
    sk.save(p)
    os.chmod(p, 0o400)
    assert SigningKey.load(p).public_key == sk.public_key


def test_load_corrupt_key_file(tmp_path) -> None:
    p = tmp_path / "k.pem"
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")
    os.close(fd)
    with pytest.raises(MalformedKey, match=r"private key file .*k\.pem.*not a PEM private key"):
        SigningKey.load(p)


def test_load_oversized_and_non_regular(tmp_path) -> None:
    p = tmp_path / "big.pem"
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"A" * (64 * 1024 + 1))
    os.close(fd)
    with pytest.raises(MalformedKey, match="too large"):
        SigningKey.load(p)
    with pytest.raises(MalformedKey, match="not a regular file"):
        VerifyingKey.load(tmp_path)


def test_missing_key_file_is_os_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pem"):
        SigningKey.load(tmp_path / "nope.pem")


def test_public_key_file_round_trip(tmp_path) -> None:
    sk = SigningKey.generate()
    p = tmp_path / "k.pub"
    p.write_bytes(sk.public_key.to_pem())
    os.chmod(p, 0o644)  # public keys may be world-readable
    assert VerifyingKey.load(p) == sk.public_key
    p.write_bytes(b"not a key")
    with pytest.raises(MalformedKey, match=r"public key file .*k\.pub.*not a PEM public key"):
        VerifyingKey.load(p)


@posix_only
def test_load_fifo_is_refused_without_hanging(tmp_path) -> None:
    p = tmp_path / "k.pem"
    os.mkfifo(p, 0o600)
    with pytest.raises(MalformedKey, match="is not a regular file"):
        SigningKey.load(p)
