"""specs/11-threat-model.md: every attack class names a defence of a known kind, a step, and a test
that exists (a function in the named file, or a case of the tamper suite)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "11-threat-model.md"
KINDS = ("binding", "complete replay", "sampled replay", "policy", "statistical test")
_ROW = re.compile(r"^\| (\d+) \| ([^|]+) \| ([^|]+) \| ([^|]+) \| ([^|]+) \| `([^`]+)` \|$", re.M)


def _rows() -> list[tuple[int, str, str, str, str]]:
    text = SPEC.read_text(encoding="utf-8")
    section = text.split("## Attack classes", 1)[1].split("\n## ", 1)[0]
    rows = [(int(m[1]), m[2].strip(), m[4].strip(), m[5].strip(), m[6]) for m in _ROW.finditer(section)]
    assert len(rows) == sum(1 for line in section.splitlines() if re.match(r"^\| \d+ \|", line)), "a row did not parse"
    return rows


def test_rows_are_numbered_and_cover_the_eight_classes_of_issue_10() -> None:
    rows = _rows()
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
    names = " ".join(r[1] for r in rows)
    for cls in ("relabelled slices", "another shard", "downgrade", "grinding", "request prefix", "new id",
                "split view", "resource exhaustion"):  # fmt: skip
        assert cls in names, cls


def test_every_defence_is_of_a_known_kind_and_names_a_step() -> None:
    for n, _, defence, step, _ in _rows():
        assert defence.startswith(KINDS), (n, defence)
        assert re.fullmatch(r"\d+(, \d+)*", step), (n, step)
        assert all(1 <= int(s) <= 19 for s in step.split(", ")), (n, step)


def test_every_named_test_exists() -> None:
    from test_tamper import CASES

    for n, _, _, _, ref in _rows():
        path, _, name = ref.partition("::")
        file = ROOT / path
        assert file.is_file(), (n, ref)
        if not name:
            continue
        if path == "tests/test_tamper.py" and not name.startswith("test_"):
            assert name in CASES, (n, ref)
        else:
            assert re.search(rf"^def {re.escape(name)}\(", file.read_text(encoding="utf-8"), re.M), (n, ref)
