"""Field readers shared by the wire model's strict ``from_json`` parsers.

Every reader refuses what the format does not allow (a missing or unknown field, a wrong type, a
number out of range) with :class:`~verifiable_mu._errors.InvalidBundle` naming the field, so a
document parsed here is of the documented form (specs/06, 07, 08) or is rejected with one line.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Callable
from typing import Any, TypeVar

from ._canonical import hex32
from ._errors import InvalidBundle, MalformedInput, UnsupportedVersion

__all__ = ["DEC", "U32", "Fields", "check_type_version", "dec", "expect_object", "integer", "wrap"]

#: A non-negative decimal below 2^63 without leading zeros: counters and indices as strings.
DEC = re.compile(r"0|[1-9][0-9]{0,18}")
U32 = 2**32 - 1

T = TypeVar("T")


def wrap(what: str, fn: Callable[..., T], *args: Any) -> T:
    """Call a core parser and turn its MalformedInput into InvalidBundle naming ``what``
    (an unsupported version stays one, with ``what`` prefixed)."""
    try:
        return fn(*args)
    except UnsupportedVersion as e:
        raise UnsupportedVersion(f"{what}: {e}") from e
    except MalformedInput as e:
        raise InvalidBundle(f"{what}: {e}") from e


def expect_object(d: Any, what: str, fields: set[str], optional: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """``d`` as a JSON object with every field of ``fields``, and others only from ``optional``."""
    if not isinstance(d, dict):
        raise InvalidBundle(f"{what} must be a JSON object")
    missing = fields - set(d)
    if missing:
        raise InvalidBundle(f"{what} lacks field(s): {', '.join(sorted(missing))}")
    extra = set(d) - fields - optional
    if extra:
        raise InvalidBundle(f"{what} has unknown field(s): {', '.join(sorted(map(str, extra)))[:200]}")
    return d


def dec(v: Any, what: str) -> int:
    """A decimal string (see :data:`DEC`)."""
    if not isinstance(v, str) or not DEC.fullmatch(v):
        raise InvalidBundle(f"{what} must be a decimal string without leading zeros")
    return int(v)


def integer(v: Any, what: str, lo: int = 0, hi: int = 2**53) -> int:
    """A JSON integer (not a boolean) in ``[lo, hi]``."""
    if type(v) is not int or not lo <= v <= hi:
        raise InvalidBundle(f"{what} must be an integer in [{lo}, {hi}]")
    return v


def check_type_version(d: dict[str, Any], what: str, typ: str) -> None:
    """A bundle member's ``type`` is ``typ`` and its ``version`` is 1."""
    if d.get("type") != typ:
        raise InvalidBundle(f"{what} must have type {typ!r}, got {str(d.get('type'))[:60]!r}")
    v = d.get("version")
    if type(v) is not int or v != 1:
        shown = v if type(v) is int else repr(str(v)[:40])
        raise UnsupportedVersion(f"{what} version {shown} is not supported (this verifier reads version 1)")


class Fields:
    """The fields of one JSON object, read with their types checked (messages name ``what``)."""

    __slots__ = ("what", "d")

    def __init__(self, what: str, d: Any, fields: set[str], optional: set[str] | frozenset[str] = frozenset()) -> None:
        self.what = what
        self.d = expect_object(d, what, fields, optional)

    def int(self, k: builtins.str, lo: builtins.int = 0, hi: builtins.int = U32) -> builtins.int:
        v = self.d[k]
        if type(v) is not int or not lo <= v <= hi:
            raise InvalidBundle(f"{self.what}: {k} must be an integer in [{lo}, {hi}]")
        return v

    def dec(self, k: builtins.str) -> builtins.int:
        v = self.d[k]
        if not isinstance(v, str) or not DEC.fullmatch(v) or int(v) >= 2**63:
            raise InvalidBundle(f"{self.what}: {k} must be a decimal string")
        return int(v)

    def hex(self, k: builtins.str) -> bytes:
        return hex32(self.d[k], what=f"{self.what}: {k}", exc=InvalidBundle)

    def hexlist(self, k: builtins.str, max_len: builtins.int = 10_000_000) -> tuple[bytes, ...]:
        v = self.d[k]
        if not isinstance(v, list) or len(v) > max_len:
            raise InvalidBundle(f"{self.what}: {k} must be a list of hex digests")
        return tuple(hex32(x, what=f"{self.what}: {k}[{i}]", exc=InvalidBundle) for i, x in enumerate(v))

    def str(self, k: builtins.str, max_len: builtins.int = 1024) -> builtins.str:
        v = self.d[k]
        if not isinstance(v, str) or len(v) > max_len:
            raise InvalidBundle(f"{self.what}: {k} must be a string of at most {max_len} characters")
        return v

    def obj(self, k: builtins.str) -> dict[builtins.str, Any]:
        v = self.d[k]
        if not isinstance(v, dict):
            raise InvalidBundle(f"{self.what}: {k} must be a JSON object")
        return v

    def list(self, k: builtins.str, max_len: builtins.int, *, non_empty: bool = False) -> builtins.list[Any]:
        v = self.d[k]
        if not isinstance(v, list) or len(v) > max_len or (non_empty and not v):
            raise InvalidBundle(f"{self.what}: {k} must be a {'non-empty ' if non_empty else ''}list")
        return v
