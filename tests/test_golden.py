"""Golden bundles (tests/golden/, built by tests/golden/make_golden.py): files named after what
is wrong with them must keep getting the verdict recorded beside them. A format change that
alters a verdict shows up here first; rebuild the goldens only on purpose."""

from __future__ import annotations

import json
import os
import re

import pytest

from verifier import VerifyOptions, verify

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
with open(os.path.join(HERE, "expected.json"), encoding="utf-8") as _f:
    EXPECTED = json.load(_f)


def test_goldens_are_all_there() -> None:
    files = sorted(n for n in os.listdir(HERE) if n.endswith(".vmu"))
    assert files == sorted(EXPECTED)
    assert "bundle_honest.vmu" in files and len(files) >= 5


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_golden_verdict(name: str) -> None:
    want = EXPECTED[name]
    v = verify(os.path.join(HERE, name), VerifyOptions(replay=want["replay"], residual=False))
    assert v.exit_code == want["exit"], repr(v.failure)
    if want["exit"] == 0:
        assert v.failure is None and v.uniform_replayed == min(want["replay"], v.sampled_population) > 0
        assert v.replayed == len(v.complete) + v.uniform_replayed and v.complete  # the deletion lineage in full
        return
    assert v.failed_step == want["step"], repr(v.failure)
    assert type(v.failure).__name__ == want["error"]
    assert re.search(want["match"], str(v.failure)), str(v.failure)
