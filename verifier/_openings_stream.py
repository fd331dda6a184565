"""A cursor over the text of ``records/openings.json``, for a member too large to parse whole
within the memory bound (:func:`verifier._bundle.parse_openings_streamed`, specs/09 step 3):
each value is checked against the bound before it is parsed, and each opening is converted at
once.
"""

from __future__ import annotations

import re
from typing import Any

from verifiable_mu._errors import InvalidBundle
from verifiable_mu._json import json_loads_strict, json_memory_estimate
from verifiable_mu._records import RecordOpening
from verifiable_mu._wire_bundle import OPENINGS
from verifiable_mu._wire_common import wrap

__all__ = ["OpeningsReader"]

_S = rb'"[^"\\]*(?:\\.[^"\\]*)*"'
#: A JSON object whose values are scalars or arrays of scalars (an opening, an audit multiproof).
_FLAT_OBJECT = re.compile(rb"\{(?:[^{}\[\]\"]|" + _S + rb"|\[(?:[^{}\[\]\"]|" + _S + rb")*\])*\}")
_SCALAR = re.compile(_S + rb"|-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false|null")
_KEY = re.compile(_S)
_WS = re.compile(rb"[ \t\n\r]*")


class OpeningsReader:
    """A cursor over the text of ``records/openings.json`` for :func:`parse_openings_streamed`."""

    def __init__(self, data: bytes, cap: int) -> None:
        self.data, self.cap, self.pos = data, cap, 0
        self.retained = 0  # estimated memory the converted openings keep

    def bad(self, why: str) -> InvalidBundle:
        return InvalidBundle(f"{OPENINGS} is not valid JSON of the openings' form: {why} at byte {self.pos}")

    def skip(self) -> None:
        m = _WS.match(self.data, self.pos)
        self.pos = m.end() if m else self.pos

    def peek(self) -> bytes:
        self.skip()
        return self.data[self.pos : self.pos + 1]

    def piece(self, rx: re.Pattern[bytes], what: str) -> Any:
        """The next value matching ``rx``, parsed strictly once its memory is known to fit."""
        self.skip()
        m = rx.match(self.data, self.pos)
        if m is None:
            raise self.bad(f"expected {what}")
        text = m.group()
        if json_memory_estimate(text) > self.cap:
            raise InvalidBundle(f"{OPENINGS}: one value would take about {json_memory_estimate(text) >> 20} MiB of "
                                f"memory to parse (at most {self.cap >> 20} MiB)")
        try:
            v = json_loads_strict(text)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise InvalidBundle(f"{OPENINGS} is not valid JSON: {str(e)[:200]}") from e
        self.pos = m.end()
        return v

    def punct(self, chars: bytes) -> bytes:
        c = self.peek()
        if not c or c not in chars:
            raise self.bad(f"expected one of {chars.decode()!r}")
        self.pos += 1
        return c

    def array(self, key: str) -> list[Any]:
        """An array of flat objects (after its ``[``); openings are converted one at a time."""
        items: list[Any] = []
        if self.peek() == b"]":
            self.pos += 1
            return items
        while True:
            start = self.pos
            o = self.piece(_FLAT_OBJECT, "an opening (a flat JSON object)")
            if key in ("deleted", "audit", "training"):
                o = wrap(f"{OPENINGS} {key}[{len(items)}]", RecordOpening.from_json, o)
                self.retained += 2 * (self.pos - start)  # a parsed opening keeps about its text's size, twice
            items.append(o)
            if self.punct(b",]") == b"]":
                return items

    def document(self) -> dict[str, Any]:
        """The top-level object: scalars, flat objects and arrays of flat objects."""
        d: dict[str, Any] = {}
        self.punct(b"{")
        if self.peek() == b"}":
            self.pos += 1
        else:
            while True:
                key = self.piece(_KEY, "a key")
                if key in d:
                    raise InvalidBundle(f"{OPENINGS} is not valid JSON: duplicate key {key[:60]!r}")
                self.punct(b":")
                first = self.peek()
                if first == b"[":
                    self.pos += 1
                    d[key] = self.array(key)
                elif first == b"{":
                    d[key] = self.piece(_FLAT_OBJECT, "a flat JSON object")
                else:
                    d[key] = self.piece(_SCALAR, "a value")
                if self.punct(b",}") == b"}":
                    break
        self.skip()
        if self.pos != len(self.data):
            raise self.bad("trailing data")
        return d
