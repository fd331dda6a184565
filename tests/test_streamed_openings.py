"""Openings too large to parse whole (issue 17: 61,000 openings at 10^6 records were refused at
step 3) are parsed one opening at a time, with the same result and the same memory bound on
every piece; anything outside the openings' form is refused (exit 2, step 3)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest_verifier import honest, members_of, rezip

from verifiable_mu._errors import InvalidBundle
from verifier import VerifyOptions, verify
from verifier import _bundle as vb
from verifier._bundle import OPENINGS, JsonBudget, Limits, parse_openings_streamed


def _raw() -> bytes:
    return members_of(honest().bundle)[OPENINGS]


def _key(o: Any) -> tuple[Any, ...]:
    return tuple(sorted((k, tuple(x.commitment() for x in getattr(o, k))) for k in ("deleted", "audit", "training")))


def test_streamed_parse_gives_the_whole_parse_result() -> None:
    raw = _raw()
    whole = vb._parse_openings(json.loads(raw))
    streamed = parse_openings_streamed(raw, Limits())
    assert _key(streamed) == _key(whole) and len(whole.training) > 0
    assert streamed.audit_proof == whole.audit_proof
    # whitespace between tokens is JSON too
    spaced = raw.replace(b'","', b'" , "').replace(b"[{", b"[ \n{")
    assert _key(parse_openings_streamed(spaced, Limits())) == _key(whole)


def test_a_bundle_above_the_whole_parse_bound_verifies_streamed(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = vb.parse_openings_streamed

    def spy(data: bytes, limits: Limits, budget: JsonBudget | None = None) -> Any:
        calls.append(len(data))
        return real(data, limits, budget)

    monkeypatch.setattr(vb, "openings_fit_whole", lambda data, limits: False)
    monkeypatch.setattr(vb, "parse_openings_streamed", spy)
    v = verify(honest().bundle, VerifyOptions(residual=False, replay=2))
    assert v.exit_code == 0, repr(v.failure)
    assert calls


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda r: r.replace(b'"training":[{', b'"training":[{"x":{"y":1},', 1), r"expected an opening \(a flat JSON object\)"),
        (lambda r: r[:-1] + b',"type":"vmu.bundle-openings"}', "duplicate key 'type'"),
        (lambda r: r + b"x", "trailing data"),
        (lambda r: r.replace(b'"training":[', b'"training":{', 1), "expected a flat JSON object"),
        (lambda r: r.replace(b'"type":"vmu.record-opening"', b'"type":"vmu.record-opening","type":1', 1),
         "is not valid JSON: duplicate key 'type'"),
    ],
)
def test_the_streamed_parse_refuses_what_is_not_the_openings_form(edit: Any, fragment: str) -> None:
    with pytest.raises(InvalidBundle, match=fragment):
        parse_openings_streamed(edit(_raw()), Limits())


def test_the_streamed_parse_keeps_the_memory_bounds() -> None:
    raw = _raw()
    with pytest.raises(InvalidBundle, match="one value would take about"):
        parse_openings_streamed(raw, Limits(max_json_memory=2000))
    b = JsonBudget(Limits())
    b.left = 1000
    with pytest.raises(InvalidBundle, match="one value would take about|the openings would take about"):
        parse_openings_streamed(raw, Limits(), b)


def test_step_3_streamed_rejection_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    m = members_of(honest().bundle)
    m[OPENINGS] = m[OPENINGS].replace(b'"training":[{', b'"training":[{"x":[[1]],', 1)
    monkeypatch.setattr(vb, "openings_fit_whole", lambda data, limits: False)
    v = verify(rezip(m), VerifyOptions(residual=False, replay=0))
    assert v.exit_code == 2 and v.failed_step == 3, (v.failed_step, repr(v.failure))
    assert "expected an opening (a flat JSON object)" in str(v.failure)
