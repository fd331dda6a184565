"""Canonical JSON (fast path == RFC 8785) and the strict parser for untrusted JSON."""

from __future__ import annotations

import json

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from verifiable_mu import MalformedInput
from verifiable_mu._canonical import b64decode, canonical_json, hex32, parse_json_strict

_scalars = st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text()
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(_json)
def test_fast_path_equals_rfc8785(obj: object) -> None:
    try:
        want = rfc8785.dumps(obj)
    except (rfc8785.CanonicalizationError, UnicodeEncodeError):  # the reference refuses it (lone surrogates)
        with pytest.raises(MalformedInput, match="cannot be canonicalised as RFC 8785 JSON"):
            canonical_json(obj)
        return
    assert canonical_json(obj) == want


@settings(max_examples=100, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_floats_take_the_rfc8785_path(x: float) -> None:
    assert canonical_json({"x": x, "é": [x]}) == rfc8785.dumps({"x": x, "é": [x]})


_near_bounds = st.sampled_from([1e-4, 1.00000000000001e-4, 9.999999999999e-5, 1e16, 9999999999999998.0,
                                1e15 + 0.5, 0.1, 0.3, 1 / 3, 2.0, -0.0, 5e-324, 1e21, 123456.789])


@settings(max_examples=500, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False) | st.floats(1e-5, 1e17) | _near_bounds)
def test_fast_float_path_equals_rfc8785(x: float) -> None:
    """Floats the fast path takes (ASCII keys) print exactly as ECMAScript does."""
    for v in (x, -x):
        assert canonical_json({"lr": v, "n": [v, 1]}) == rfc8785.dumps({"lr": v, "n": [v, 1]})


def _naive_depth(text: str) -> int:
    depth = best = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            best = max(best, depth)
        elif ch in "]}":
            depth -= 1
    return best


@settings(max_examples=300, deadline=None)
@given(_json, st.integers(1, 8))
def test_depth_limit_matches_a_naive_scanner(obj: object, limit: int) -> None:
    text = json.dumps(obj)
    if _naive_depth(text) > limit:
        with pytest.raises(MalformedInput, match="nested deeper"):
            parse_json_strict(text, max_depth=limit)
    else:
        assert parse_json_strict(text, max_depth=limit) == obj


@pytest.mark.parametrize(
    "doc, fragment",
    [
        (b'{"a": 1, "a": 2}', "duplicate key"),
        (b'{"a": NaN}', "non-finite"),
        (b'{"a": Infinity}', "non-finite"),
        (b"[" * 65 + b"]" * 65, "nested deeper than 64"),
        (b"\xff\xfe", "not valid JSON"),
        (b'{"a": ', "not valid JSON"),
    ],
)
def test_parse_json_strict_rejects(doc: bytes, fragment: str) -> None:
    with pytest.raises(MalformedInput, match=fragment):
        parse_json_strict(doc)


def test_parse_json_strict_size_bound() -> None:
    with pytest.raises(MalformedInput, match="too large"):
        parse_json_strict(b"[" + b"1," * 100 + b"1]", max_bytes=50)


def test_brackets_inside_strings_do_not_count() -> None:
    doc = json.dumps({"s": "[" * 200 + '\\"' + "{" * 200})
    assert parse_json_strict(doc, max_depth=2)["s"].startswith("[[")


@pytest.mark.parametrize("value", ["ab" * 31, "AB" * 32, " " * 64, "ab " * 21 + "a", 7, None, "g" * 64])
def test_hex32_rejects(value: object) -> None:
    with pytest.raises(MalformedInput, match="hex"):
        hex32(value)


@pytest.mark.parametrize("value", ["not base64!", "YQ", 5])
def test_b64decode_rejects(value: object) -> None:
    with pytest.raises(MalformedInput, match="base64"):
        b64decode(value)  # type: ignore[arg-type]


def test_lone_surrogates_are_malformed() -> None:
    with pytest.raises(MalformedInput, match="cannot be canonicalised as RFC 8785 JSON: .*surrogates not allowed"):
        canonical_json({"a": "\ud800"})
