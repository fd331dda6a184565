"""Ed25519 signing and verifying keys (specs/05-dsse.md, section "Keys").

* A private key is stored as an unencrypted PKCS#8 PEM file with mode 0600. :meth:`SigningKey.save`
  creates it that way from the first byte (``os.open`` with 0o600, written to a temporary file in the
  same folder, fsynced, then moved into place), and refuses to replace an existing file unless
  ``overwrite=True``. :meth:`SigningKey.load` refuses, on POSIX, a key file that grants any
  permission to group or others (like OpenSSH does): a private key others could read must be
  treated as compromised, not silently used.
* A public key is 32 raw bytes (RFC 8032); its file form is a SubjectPublicKeyInfo PEM.
* The key id is ``hex(SHA-256(TAG_KEY_ID || raw public key))``: 64 lower-case hex characters.
  It names a key; it never replaces checking the signature with the key itself.

Every parse failure raises :class:`~verifiable_mu._errors.MalformedKey`; a signature that does
not verify raises :class:`~verifiable_mu._errors.SignatureFailed`. Operating-system errors
(missing file, no permission, disk full) propagate as :class:`OSError`; saving over an existing
file without ``overwrite=True`` raises :class:`FileExistsError`.

On Windows ``os.open``'s mode only sets the read-only flag and there are no group/other bits to
check: protect key files there with the folder's access control list.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ._errors import MalformedKey, SignatureFailed
from ._tags import TAG_KEY_ID, tagged_hash

__all__ = [
    "PUBLIC_KEY_SIZE",
    "SEED_SIZE",
    "SIGNATURE_SIZE",
    "SigningKey",
    "VerifyingKey",
    "key_id_of",
]

PUBLIC_KEY_SIZE = 32
SEED_SIZE = 32
SIGNATURE_SIZE = 64
_MAX_KEY_FILE = 64 * 1024  # an Ed25519 PEM file is about 120 bytes
_POSIX = os.name == "posix"


def key_id_of(raw_public_key: bytes) -> str:
    """Return the key id of a raw 32-byte Ed25519 public key (64 lower-case hex characters)."""
    if not isinstance(raw_public_key, (bytes, bytearray)) or len(raw_public_key) != PUBLIC_KEY_SIZE:
        raise MalformedKey(f"an Ed25519 public key is {PUBLIC_KEY_SIZE} bytes")
    return tagged_hash(TAG_KEY_ID, bytes(raw_public_key)).hex()


def _read_bounded(path: str | os.PathLike[str], what: str) -> tuple[bytes, os.stat_result]:
    """Read a small file, returning its bytes and the fstat of the descriptor that was read."""
    # O_NONBLOCK: opening a FIFO planted at the key path must not hang (no effect on files).
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(os.fspath(path), flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise MalformedKey(f"{what} {os.fspath(path)!r} is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(_MAX_KEY_FILE + 1)
    finally:
        os.close(fd)
    if len(data) > _MAX_KEY_FILE:
        raise MalformedKey(f"{what} {os.fspath(path)!r} is too large to be an Ed25519 key file")
    return data, st


class VerifyingKey:
    """An Ed25519 public key. Equal (and hashed) by its 32 raw bytes."""

    __slots__ = ("_raw", "_key", "_key_id")

    def __init__(self, key: Ed25519PublicKey) -> None:
        if not isinstance(key, Ed25519PublicKey):
            raise MalformedKey(f"expected an Ed25519 public key, got {type(key).__name__}")
        self._key = key
        self._raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self._key_id = key_id_of(self._raw)

    # --- parsing -------------------------------------------------------------------------

    @classmethod
    def from_bytes(cls, raw: bytes) -> VerifyingKey:
        """Parse a raw 32-byte Ed25519 public key (RFC 8032)."""
        if not isinstance(raw, (bytes, bytearray)):
            raise MalformedKey(f"an Ed25519 public key must be bytes, not {type(raw).__name__}")
        if len(raw) != PUBLIC_KEY_SIZE:
            raise MalformedKey(f"an Ed25519 public key is {PUBLIC_KEY_SIZE} bytes, got {len(raw)}")
        try:
            return cls(Ed25519PublicKey.from_public_bytes(bytes(raw)))
        except (ValueError, UnsupportedAlgorithm) as e:
            raise MalformedKey(f"not a valid Ed25519 public key: {e}") from e

    @classmethod
    def from_pem(cls, data: bytes) -> VerifyingKey:
        """Parse a SubjectPublicKeyInfo PEM holding an Ed25519 public key."""
        if not isinstance(data, (bytes, bytearray)):
            raise MalformedKey(f"a PEM public key must be bytes, not {type(data).__name__}")
        try:
            key = serialization.load_pem_public_key(bytes(data))
        except (ValueError, TypeError, UnsupportedAlgorithm) as e:
            raise MalformedKey(f"not a PEM public key: {e}") from e
        if not isinstance(key, Ed25519PublicKey):
            raise MalformedKey(f"the PEM public key is not Ed25519 (it is {type(key).__name__})")
        return cls(key)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> VerifyingKey:
        """Read a public key PEM file."""
        data, _ = _read_bounded(path, "public key file")
        try:
            return cls.from_pem(data)
        except MalformedKey as e:
            raise MalformedKey(f"public key file {os.fspath(path)!r}: {e}") from e

    # --- accessors -----------------------------------------------------------------------

    @property
    def raw(self) -> bytes:
        """The 32 raw bytes of the public key."""
        return self._raw

    @property
    def key_id(self) -> str:
        """``hex(SHA-256(TAG_KEY_ID || raw))``, 64 lower-case hex characters."""
        return self._key_id

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The underlying ``cryptography`` object."""
        return self._key

    def to_pem(self) -> bytes:
        """SubjectPublicKeyInfo PEM."""
        return self._key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    # --- verifying -----------------------------------------------------------------------

    def verify(self, signature: bytes, message: bytes) -> None:
        """Return if ``signature`` is this key's Ed25519 signature of ``message``; else raise
        :class:`SignatureFailed`."""
        if not isinstance(signature, (bytes, bytearray)) or not isinstance(message, (bytes, bytearray)):
            raise TypeError("signature and message must be bytes")
        if len(signature) != SIGNATURE_SIZE:
            raise SignatureFailed(
                f"signature is {len(signature)} bytes, an Ed25519 signature is {SIGNATURE_SIZE}"
                f" (key {self._key_id[:16]})"
            )
        try:
            self._key.verify(bytes(signature), bytes(message))
        except InvalidSignature as e:
            raise SignatureFailed(f"Ed25519 signature does not verify under key {self._key_id[:16]}") from e

    # --- identity ------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VerifyingKey):
            return NotImplemented
        return self._raw == other._raw

    def __hash__(self) -> int:
        return hash((VerifyingKey, self._raw))

    def __repr__(self) -> str:
        return f"VerifyingKey(key_id={self._key_id[:16]}...)"


class SigningKey:
    """An Ed25519 private key. Its ``repr`` never shows private material."""

    __slots__ = ("_key", "_public")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        if not isinstance(key, Ed25519PrivateKey):
            raise MalformedKey(f"expected an Ed25519 private key, got {type(key).__name__}")
        self._key = key
        self._public = VerifyingKey(key.public_key())

    # --- making and parsing --------------------------------------------------------------

    @classmethod
    def generate(cls) -> SigningKey:
        """A fresh key from the operating system's random source."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        """The key whose RFC 8032 32-byte private seed is ``seed`` (for test vectors and imports)."""
        if not isinstance(seed, (bytes, bytearray)) or len(seed) != SEED_SIZE:
            got = len(seed) if isinstance(seed, (bytes, bytearray)) else type(seed).__name__
            raise MalformedKey(f"an Ed25519 private seed is {SEED_SIZE} bytes, got {got}")
        return cls(Ed25519PrivateKey.from_private_bytes(bytes(seed)))

    @classmethod
    def from_pem(cls, data: bytes) -> SigningKey:
        """Parse an unencrypted PKCS#8 PEM holding an Ed25519 private key."""
        if not isinstance(data, (bytes, bytearray)):
            raise MalformedKey(f"a PEM private key must be bytes, not {type(data).__name__}")
        try:
            key = serialization.load_pem_private_key(bytes(data), password=None)
        except TypeError as e:  # raised for an encrypted key when no password is given
            raise MalformedKey(f"the PEM private key is encrypted or unreadable: {e}") from e
        except (ValueError, UnsupportedAlgorithm) as e:
            raise MalformedKey(f"not a PEM private key: {e}") from e
        if not isinstance(key, Ed25519PrivateKey):
            raise MalformedKey(f"the PEM private key is not Ed25519 (it is {type(key).__name__})")
        return cls(key)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SigningKey:
        """Read a private key file written by :meth:`save`.

        On POSIX the file must grant no permission to group or others (mode 0600 or 0400):
        otherwise :class:`MalformedKey` is raised and the key is not used.
        """
        data, st = _read_bounded(path, "private key file")
        if _POSIX and st.st_mode & 0o077:
            mode = stat.S_IMODE(st.st_mode)
            raise MalformedKey(
                f"private key file {os.fspath(path)!r} has mode {mode:04o}: group/others may access it;"
                " run 'chmod 600' on it (and treat the key as exposed if others could read it)"
            )
        try:
            return cls.from_pem(data)
        except MalformedKey as e:
            raise MalformedKey(f"private key file {os.fspath(path)!r}: {e}") from e

    # --- accessors -----------------------------------------------------------------------

    @property
    def public_key(self) -> VerifyingKey:
        return self._public

    @property
    def key_id(self) -> str:
        return self._public.key_id

    @property
    def private_key(self) -> Ed25519PrivateKey:
        """The underlying ``cryptography`` object (for other signature formats, e.g. signed notes)."""
        return self._key

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message`` (deterministic, RFC 8032)."""
        if not isinstance(message, (bytes, bytearray)):
            raise TypeError("message must be bytes")
        return self._key.sign(bytes(message))

    def to_pem(self) -> bytes:
        """Unencrypted PKCS#8 PEM. Keep it secret."""
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the key as PKCS#8 PEM, atomically, with mode 0600 from creation.

        The bytes go to a new temporary file (``O_CREAT | O_EXCL``, mode 0600) in the same
        folder, are fsynced, and the file is then linked (``overwrite=False``; fails if ``path``
        exists, with no race) or renamed (``overwrite=True``) into place. The temporary file is
        removed on every path. Raises :class:`FileExistsError` if ``path`` exists and
        ``overwrite`` is false.
        """
        target = Path(os.fspath(path))
        folder = target.parent if str(target.parent) else Path(".")
        if not overwrite and os.path.lexists(target):
            raise FileExistsError(f"refusing to overwrite existing key file {os.fspath(target)!r}")
        tmp = folder / f".{target.name}.tmp-{secrets.token_hex(8)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(tmp, flags, 0o600)
        try:
            try:
                if _POSIX:
                    os.fchmod(fd, 0o600)  # exact mode whatever the umask
                data = self.to_pem()
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            finally:
                os.close(fd)
            if overwrite:
                os.replace(tmp, target)
            else:
                try:
                    os.link(tmp, target)  # atomic and fails if target exists
                except FileExistsError:
                    raise FileExistsError(
                        f"refusing to overwrite existing key file {os.fspath(target)!r}"
                    ) from None
                except OSError:
                    # Filesystems without hard links: fall back to a checked rename.
                    if os.path.lexists(target):
                        raise FileExistsError(
                            f"refusing to overwrite existing key file {os.fspath(target)!r}"
                        ) from None
                    os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if _POSIX:
            _fsync_dir(folder)

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id[:16]}...)"


def _fsync_dir(folder: Path) -> None:
    try:
        dfd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)

