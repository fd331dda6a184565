"""Canonical JSON (RFC 8785, JCS) and strict base64 helpers.

Every digest or signature taken over JSON in verifiable-mu is taken over the RFC 8785
canonical form. ``rfc8785`` rejects NaN/Infinity and integers outside +-2^53, so large
counters travel as decimal strings.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

import rfc8785

from ._errors import MalformedInput
from ._json import parse_json_strict

__all__ = ["canonical_json", "b64encode", "b64decode", "hex32", "parse_json_strict"]


_fast_dumps = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False, check_circular=False
).encode


def _is_simple(obj: Any, depth: int = 0) -> bool:
    """True when ``json.dumps(sort_keys=True)`` is exactly RFC 8785 for ``obj``.

    That holds for dicts with ASCII keys (code-point order equals UTF-16 order), lists, strings,
    booleans, None, integers within +-(2^53 - 1) and non-integral floats with
    ``1e-4 <= |x| < 1e16``: there Python's ``repr`` (shortest round-trip digits, positional
    notation) is exactly ECMAScript's Number-to-String. Other floats (integral ones print "2"
    in ECMAScript but "2.0" in Python; exponent forms differ) take the slow path.
    """
    t = type(obj)
    if t is str or t is bool or obj is None:
        return True
    if t is int:
        return bool(-(2**53) < obj < 2**53)
    if t is float:
        return 1e-4 <= abs(obj) < 1e16 and not obj.is_integer()
    if depth > 32:
        return False
    if t is list or t is tuple:
        if set(map(type, obj)) <= _STR_ONLY:  # the common case: lists of hex digests
            return True
        return all(_is_simple(v, depth + 1) for v in obj)
    if t is dict:
        keys = obj.keys()
        if not (set(map(type, keys)) <= _STR_ONLY and all(map(str.isascii, keys))):
            return False
        return all(_is_simple(v, depth + 1) for v in obj.values())
    return False


_STR_ONLY = {str}


def canonical_json(obj: Any) -> bytes:
    """Return the RFC 8785 canonical UTF-8 bytes of ``obj``.

    A fast path (the stdlib encoder) serves documents with only ASCII keys and no floats
    outside ``1e-4 <= |x| < 1e16`` or of integral value, where its output is byte-identical to RFC 8785 (a hypothesis test checks this against
    the ``rfc8785`` package); everything else goes through ``rfc8785``.
    """
    if _is_simple(obj):
        try:
            return _fast_dumps(obj).encode("utf-8")
        except UnicodeEncodeError as e:  # lone surrogates
            raise MalformedInput(f"value cannot be canonicalised as RFC 8785 JSON: {e}") from e
    try:
        return rfc8785.dumps(obj)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as e:
        raise MalformedInput(f"value cannot be canonicalised as RFC 8785 JSON: {e}") from e


def b64encode(data: bytes) -> str:
    """Standard base64 with padding (RFC 4648 section 4)."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str, *, what: str = "value", exc: type[Exception] = MalformedInput) -> bytes:
    """Strict standard base64 decoding; anything else raises ``exc`` naming ``what``."""
    if not isinstance(text, str):
        raise exc(f"{what} must be a base64 string, not {type(text).__name__}")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as e:
        raise exc(f"{what} is not valid base64: {e}") from e


def hex32(text: object, *, what: str = "digest", exc: type[Exception] = MalformedInput) -> bytes:
    """Parse a lower-case 64-character hex string into 32 bytes; anything else raises ``exc``."""
    if not isinstance(text, str) or len(text) != 64:
        raise exc(f"{what} must be 64 lower-case hex characters")
    if not _HEX64.fullmatch(text):
        raise exc(f"{what} is not valid hex (64 lower-case characters 0-9, a-f)" if text == text.lower() else f"{what} must be lower-case hex")
    return bytes.fromhex(text)


_HEX64 = re.compile(r"[0-9a-f]{64}")
