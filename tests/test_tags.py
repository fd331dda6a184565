"""Domain-separation tags (verifiable_mu/_tags.py) and their table in specs/00-hashing.md."""

from __future__ import annotations

import ast
import hashlib
import re
from pathlib import Path

import pytest

from verifiable_mu import _tags
from verifiable_mu._tags import ALL_TAGS, TAG_KEY_ID, TAG_RECORD_COMMITMENT, TAG_RECORD_KEY, tagged_hash

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "00-hashing.md"
_TAG_FORM = re.compile(rb"vmu:[a-z0-9]+(?:-[a-z0-9]+)*:v[1-9][0-9]*\x00")


def _named_tags() -> dict[str, bytes]:
    return {name: getattr(_tags, name) for name in _tags.__all__ if name.startswith("TAG_")}


def test_all_tags_lists_every_tag_constant_once() -> None:
    named = _named_tags()
    assert len(named) == len(ALL_TAGS) == 15
    assert list(named.values()) == list(ALL_TAGS)  # same order as __all__
    assert len(set(ALL_TAGS)) == len(ALL_TAGS)
    # No TAG_ constant in the module is left out of __all__.
    assert {n for n in vars(_tags) if n.startswith("TAG_")} == set(named)


@pytest.mark.parametrize("tag", ALL_TAGS, ids=[t.decode("ascii", "replace") for t in ALL_TAGS])
def test_tag_form(tag: bytes) -> None:
    assert type(tag) is bytes
    assert tag.isascii()
    assert tag.endswith(b"\x00") and tag.count(b"\x00") == 1
    assert _TAG_FORM.fullmatch(tag), tag
    assert re.search(rb":v[0-9]+\x00$", tag), "a tag carries a version"
    assert all(0x20 < b < 0x7F for b in tag[:-1]), "printable ASCII, no spaces, before the NUL"


def test_no_tag_is_a_prefix_of_another() -> None:
    for a in ALL_TAGS:
        for b in ALL_TAGS:
            if a is not b:
                assert not b.startswith(a), (a, b)


def test_tags_do_not_start_like_merkle_prefixes() -> None:
    # RFC 9162 leaf/node hashes start with 0x00 / 0x01; every tag starts with "v".
    assert {t[0] for t in ALL_TAGS} == {ord("v")}


def test_tagged_hash_is_sha256_of_tag_and_parts() -> None:
    assert tagged_hash(TAG_RECORD_KEY, b"abc") == hashlib.sha256(TAG_RECORD_KEY + b"abc").digest()
    assert tagged_hash(TAG_KEY_ID) == hashlib.sha256(TAG_KEY_ID).digest()
    assert tagged_hash(TAG_RECORD_COMMITMENT, b"a", b"", b"bc") == hashlib.sha256(
        TAG_RECORD_COMMITMENT + b"abc"
    ).digest()
    # Domain separation: the same data under two tags gives two digests.
    assert len({tagged_hash(t, b"same data") for t in ALL_TAGS}) == len(ALL_TAGS)


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"vmu:record-key:v1",  # without the NUL
        b"vmu:record-key:v2\x00",  # unknown version
        b"vmu:record-key:v1\x00\x00",
        b"VMU:RECORD-KEY:V1\x00",
        b"\x00",
        b"\x01",
    ],
)
def test_tagged_hash_refuses_unknown_tags(bad: bytes) -> None:
    with pytest.raises(ValueError, match="unknown domain-separation tag"):
        tagged_hash(bad, b"data")


# --- the table in specs/00-hashing.md ------------------------------------------------------------

_ROW = re.compile(r"^\|\s*`(TAG_[A-Z0-9_]+)`\s*\|\s*`(b\"[^`]*\")`\s*\|\s*([^|]*?)\s*\|", re.M)


def _spec_table() -> list[tuple[str, bytes, str]]:
    text = SPEC.read_text(encoding="utf-8")
    section = text.split("## 2. The tags", 1)[1].split("\n## ", 1)[0]
    rows = []
    for m in _ROW.finditer(section):
        value = ast.literal_eval(m[2])
        assert isinstance(value, bytes)
        rows.append((m[1], value, m[3]))
    # Every table row that names a tag was parsed (nothing silently skipped).
    assert len(rows) == sum(1 for line in section.splitlines() if line.startswith("| `TAG_"))
    return rows


def test_spec_table_matches_all_tags_exactly() -> None:
    rows = _spec_table()
    assert [(name, value) for name, value, _ in rows] == list(_named_tags().items())
    assert [value for _, value, _ in rows] == list(ALL_TAGS)


def test_spec_status_matches_the_code() -> None:
    """A tag marked "in use" is used by the core, the prover or the verifier; a "reserved for" tag is not used yet
    (when code starts to use one, mark it "in use" in specs/00-hashing.md)."""
    sources = {
        f"{p.parent.name}/{p.name}": p.read_text(encoding="utf-8")
        for pkg in ("verifiable_mu", "prover", "verifier")
        for p in (ROOT / pkg).glob("*.py")
        if p.name != "_tags.py"
    }
    for name, _, status in _spec_table():
        used_in = sorted(f for f, src in sources.items() if re.search(rf"\b{name}\b", src))
        if status.startswith("in use"):
            assert used_in, f"{name} is marked 'in use' in specs/00-hashing.md but no module uses it"
            assert re.fullmatch(r"in use \(specs/\d\d-[a-z0-9-]+\.md\)", status), status
        else:
            assert status == "reserved for", f"{name}: unknown status {status!r}"
            assert not used_in, f"{name} is used in {used_in}: mark it 'in use' in specs/00-hashing.md"


def test_spec_hex_example_of_record_key_tag() -> None:
    text = SPEC.read_text(encoding="utf-8")
    m = re.search(r"`((?:[0-9a-f]{2} )+[0-9a-f]{2})` in hex", text)
    assert m is not None
    assert bytes.fromhex(m[1].replace(" ", "")) == TAG_RECORD_KEY


def test_spec_empty_tree_hash() -> None:
    text = SPEC.read_text(encoding="utf-8")
    assert hashlib.sha256(b"").hexdigest() in text
