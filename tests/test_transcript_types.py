"""specs/07's field-type table checked against a real transcript (issue 19, item 2): every leaf
of the predicate has the stated JSON type, and every path of the table occurs."""

from __future__ import annotations

import base64
import glob
import json
import os
import re
from pathlib import Path
from typing import Any

from conftest_verifier import honest

SPEC = Path(__file__).resolve().parents[1] / "specs" / "07-deletion-transcript.md"
_ROW = re.compile(r"^\| `([a-z_.\[\]]+)` \| ([^|]+) \|$", re.M)
_HEX32 = re.compile(r"[0-9a-f]{64}")
_DEC = re.compile(r"0|[1-9][0-9]*")


def _table() -> dict[str, str]:
    section = SPEC.read_text(encoding="utf-8").split("## Field types", 1)[1].split("\n## ", 1)[0]
    return {m[1]: m[2].strip() for m in _ROW.finditer(section)}


def _leaves(o: Any, path: str = "") -> list[tuple[str, Any]]:
    """(path, value) of every leaf; a disclosed entry or a proof object is one leaf."""
    if isinstance(o, dict) and not ({"entry", "inclusion"} == set(o) or "type" in o):
        return [x for k, v in o.items() for x in _leaves(v, f"{path}.{k}" if path else k)]
    if isinstance(o, list) and o and all(isinstance(x, dict) and "type" not in x for x in o):
        return [x for v in o for x in _leaves(v, f"{path}[]")]
    return [(path, o)]


def _fits(kind: str, v: Any) -> bool:
    if kind.startswith("integer"):
        return type(v) is int and (kind != "integer, `1`" or v == 1)
    if kind.startswith("dec"):
        return isinstance(v, str) and bool(_DEC.fullmatch(v))
    if kind == "hex32":
        return isinstance(v, str) and bool(_HEX32.fullmatch(v))
    if kind.startswith("string, "):  # an enumeration: the values the row lists
        return v in re.findall(r'`"([^"`]*)"`', kind)
    if kind in ("string", "note"):
        return isinstance(v, str) and (kind == "string" or v.count("\n") >= 3)
    if kind.startswith("entry"):
        want = re.search(r"kind `(\w+)`", kind)
        return isinstance(v, dict) and set(v) == {"entry", "inclusion"} and (
            want is None or v["entry"]["kind"] == want[1])
    if kind.startswith("object"):
        return isinstance(v, dict) and isinstance(v.get("type"), str)
    if kind.startswith("array"):
        return isinstance(v, list) and all(isinstance(x, dict) and isinstance(x.get("type"), str) for x in v)
    raise AssertionError(f"unknown type in the table: {kind}")


def test_every_predicate_leaf_has_its_stated_type() -> None:
    table = _table()
    assert len(table) >= 25
    h = honest()
    seen: set[str] = set()
    from test_held_out import held_out  # its transcripts carry held_out (a mixed and a held-out-only request)

    paths = [os.path.join(d, "transcripts", "*.dsse.json") for d in (h.ws_dir, held_out().ws_dir)]
    for path in sorted(p for pat in paths for p in glob.glob(pat)):
        stmt = json.loads(base64.b64decode(json.loads(open(path, "rb").read())["payload"]))
        assert stmt["subject"] and all(set(x) == {"name", "digest"} for x in stmt["subject"])
        for x in stmt["subject"]:  # one checkpoint file per constituent (specs/07)
            assert re.fullmatch(r"checkpoints/[0-9a-f]{64}\.safetensors", x["name"])
            assert _HEX32.fullmatch(x["digest"]["sha256"])
        for p, v in _leaves(stmt["predicate"]):
            assert p in table, f"{p} is not in specs/07's field table"
            assert _fits(table[p], v), (p, table[p], repr(v)[:80])
            seen.add(p)
    assert seen == set(table), set(table) - seen


def test_specs_08_member_name_pattern_is_the_verifiers() -> None:
    """Issue 19, item 1: the member-name pattern of specs/08 section 1 is exactly what step 1
    accepts (slice records and absence proofs included)."""
    from verifier._bundle import _NAME_RE

    text = (SPEC.parent / "08-bundle.md").read_text(encoding="utf-8")
    spec = re.compile(re.search(r"^Names match `([^`]+)`\.$", text, re.M)[1])  # type: ignore[index]
    names = ["manifest.json", "keys/signing-key.pub.pem", "heads/final.note", "transcripts/000001.dsse.json",
             "log/entries.json", "records/openings.json", f"checkpoints/{'ab' * 32}.safetensors",
             f"slices/{'cd' * 32}.records", "slices/absence.json"]  # fmt: skip
    wrong = ["slices/absence.jsonx", f"slices/{'CD' * 32}.records", "transcripts/1.dsse.json", "notes.txt",
             f"checkpoints/{'ab' * 31}.safetensors", "../manifest.json"]  # fmt: skip
    for n in names:
        assert spec.fullmatch(n) and _NAME_RE.fullmatch(n), n
    for n in wrong:
        assert not spec.fullmatch(n) and not _NAME_RE.fullmatch(n), n
