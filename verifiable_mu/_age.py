"""Confidential bundles: the age file format (age-encryption.org/v1), X25519 recipients.

A bundle discloses the deleted records' features and the openings replay needs; an owner who
sends it to one agency encrypts it to that agency's age key (``vmu bundle --recipient``), and
the agency reads it with its identity (``vmu-verify --identity``). The encryption is the age
library's (pyrage, the ``age`` extra): the file is what the age CLI writes, so ``age -d -i KEY``
opens it too. Nothing here is a check: the encryption is confidentiality only; the bundle's
integrity rests on its signatures, as for a plain bundle.

Foreign errors (pyrage's) are wrapped in :class:`MalformedInput` (exit code 2: nothing judged).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ._errors import MalformedInput
from ._extras import require

__all__ = ["AGE_MAGIC", "is_age", "recipients", "identities", "encrypt", "decrypt"]

#: The first line of every age file (binary format).
AGE_MAGIC = b"age-encryption.org/v1\n"
_MAX_KEY_FILE = 1 << 20


def is_age(head: bytes) -> bool:
    """Whether bytes that start a file are an age file's header."""
    return head.startswith(AGE_MAGIC)


def _pyrage() -> Any:
    require(("pyrage",), "an encrypted bundle (age)", extra="age")
    import pyrage

    return pyrage


def _lines(arg: str, what: str) -> list[str]:
    """A key given inline, or a file of keys (one per line, '#' comments), as age reads them."""
    if os.path.isfile(arg):
        try:
            with open(arg, "rb") as f:
                raw = f.read(_MAX_KEY_FILE + 1)
        except OSError as e:
            raise MalformedInput(f"cannot read {what} file {arg}: {e.strerror or e}") from e
        if len(raw) > _MAX_KEY_FILE:
            raise MalformedInput(f"{what} file {arg} is larger than 1 MiB")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise MalformedInput(f"{what} file {arg} is not UTF-8 text") from e
        out = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        if not out:
            raise MalformedInput(f"{what} file {arg} holds no key")
        return out
    return [arg.strip()]


def recipients(args: Sequence[str]) -> list[Any]:
    """``age1...`` X25519 recipients, inline or from recipient files; at least one."""
    pyrage = _pyrage()
    out = []
    for arg in args:
        for line in _lines(arg, "recipient"):
            try:
                out.append(pyrage.x25519.Recipient.from_str(line))
            except Exception as e:  # pyrage raises its own error types
                raise MalformedInput(f"{line[:40]!r} is not an age X25519 recipient (age1...): {e}") from e
    if not out:
        raise MalformedInput("--recipient needs at least one age recipient")
    return out


def identities(args: Sequence[str]) -> list[Any]:
    """``AGE-SECRET-KEY-1...`` X25519 identities from identity files (as ``age -i`` reads them)."""
    pyrage = _pyrage()
    out = []
    for arg in args:
        if not os.path.isfile(arg):
            raise MalformedInput(f"--identity {arg}: no such file (give the age identity file, as for age -i)")
        for line in _lines(arg, "identity"):
            try:
                out.append(pyrage.x25519.Identity.from_str(line))
            except Exception as e:  # pyrage raises its own error types; never echo a secret key
                raise MalformedInput(f"--identity {arg} holds a line that is not an age X25519 identity") from e
    return out


def encrypt(data: bytes, to: Sequence[Any]) -> bytes:
    return bytes(_pyrage().encrypt(data, list(to)))


def decrypt(data: bytes, ids: Sequence[Any], what: str) -> bytes:
    pyrage = _pyrage()
    try:
        return bytes(pyrage.decrypt(data, list(ids)))
    except pyrage.DecryptError as e:
        raise MalformedInput(f"cannot decrypt {what} with the given identity: {e}") from e
