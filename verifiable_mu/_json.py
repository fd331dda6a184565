"""The one strict JSON parser for untrusted input (documents, envelopes, bundle members).

Every JSON text verifiable-mu reads from outside goes through :func:`parse_json_strict`: size,
depth and (optionally) memory bounded before anything is parsed, no duplicate keys, no
NaN/Infinity. The pre-scan runs at C speed (string literals are cut out by a regular expression,
only the brackets left are counted), so multi-megabyte members parse in tens of milliseconds.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ._errors import MalformedInput

__all__ = ["JsonBudget", "json_loads_strict", "json_memory_estimate", "parse_json_strict"]

#: A JSON string literal (unrolled: no per-character alternation).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class JsonBudget:
    """What is left of a memory budget shared by several documents (one bundle's members)."""

    __slots__ = ("left",)

    def __init__(self, left: int) -> None:
        self.left = left


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} is not allowed")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise ValueError(f"duplicate key {k[:60]!r}")
            seen.add(k)
    return out


def json_loads_strict(text: bytes | str) -> Any:
    """``json.loads`` with the strict hooks (no duplicate keys, no NaN/Infinity) and no bounds:
    for a piece whose size and shape the caller bounded already. Raises ``ValueError``."""
    return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)


def json_memory_estimate(data: bytes) -> int:
    """An upper estimate of the Python memory :func:`parse_json_strict` takes for the JSON text
    ``data`` (its pre-scan and ``json.loads``), from token counts taken at C speed without
    allocating: 3 bytes per byte of text, and per string, object, array, key and element what
    the worst shapes took under tracemalloc (``[{},{},..]``, ``[[],[],..]``, many distinct keys,
    short strings, numbers, one long string). Characters inside strings are counted as tokens
    too, which only overestimates; honest members (hex and base64 strings) estimate 1-3x."""
    return (3 * len(data) + 132 * data.count(b'"') + 96 * data.count(b"{") + 80 * data.count(b"[")
            + 160 * data.count(b":") + 48 * data.count(b","))


def _check_memory(data: bytes, what: str, exc: type[Exception], max_memory: int | None,
                  budget: JsonBudget | None) -> int:
    if max_memory is None and budget is None:
        return 0
    est = json_memory_estimate(data)
    caps = [c for c in (max_memory, None if budget is None else budget.left) if c is not None]
    cap = min(caps)
    if est > cap:
        left = " left for this bundle" if budget is not None and budget.left == cap and cap != max_memory else ""
        raise exc(f"{what} would take about {est >> 20} MiB of memory to parse ({len(data)} bytes of JSON; "
                  f"at most {cap >> 20} MiB{left})")
    return est


def _check_depth(data: bytes, what: str, exc: type[Exception], max_depth: int) -> None:
    brackets = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    depth = 0
    for b in brackets:
        if b in (0x5B, 0x7B):
            depth += 1
            if depth > max_depth:
                raise exc(f"{what} is nested deeper than {max_depth} levels")
        else:
            depth -= 1


def parse_json_strict(
    data: bytes | str,
    *,
    what: str = "JSON document",
    exc: type[Exception] = MalformedInput,
    max_bytes: int = 64 * 1024 * 1024,
    max_depth: int = 64,
    max_memory: int | None = None,
    budget: JsonBudget | None = None,
) -> Any:
    """Parse untrusted JSON: size and depth bounded, no duplicate keys, no NaN/Infinity; every
    failure raises ``exc`` naming ``what``. With ``max_memory`` (and/or ``budget``), the memory
    the parse would take (:func:`json_memory_estimate`) is checked against it and against what
    is left of ``budget`` before anything is parsed, and drawn from ``budget``."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if len(data) > max_bytes:
        raise exc(f"{what} is too large ({len(data)} bytes > {max_bytes})")
    est = _check_memory(data, what, exc, max_memory, budget)
    _check_depth(data, what, exc, max_depth)
    if budget is not None:
        budget.left -= est
    try:
        return json_loads_strict(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise exc(f"{what} is not valid JSON: {str(e)[:200]}") from e
