"""vmu-verify prints each check's line as soon as the check is done (issue 16, "Progress"): the
library hands every step's final result to ``on_result`` in step order, and the CLI writes it at
once; ``--quiet`` and ``--json -`` keep stdout free of it."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from verifier import VerifyOptions, verify
from verifier import _checks as checks
from verifier.cli import main as verify_main

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden"


def _collect(bundle: Path, **opts: Any) -> tuple[Any, list[int]]:
    seen: list[int] = []
    v = verify(str(bundle), VerifyOptions(residual=False, **opts), on_result=lambda r: seen.append(r.step))
    return v, seen


@pytest.mark.parametrize("name", ["bundle_honest.vmu", "bundle_batch_not_committed.vmu", "bundle_unsupported_version.vmu"])
def test_every_step_is_handed_over_once_in_order(name: str) -> None:
    v, seen = _collect(GOLDEN / name, replay=0)
    assert seen == list(range(1, 20))
    assert [r.step for r in v.results] == seen


def test_a_stop_in_steps_4_to_6_still_hands_over_step_3_first() -> None:
    """Step 3 is final only after steps 4-6 (its large members are parsed after the signatures);
    when step 4 rejects, step 3's result ('signed members only') still comes before it."""
    from verifiable_mu._keys import SigningKey

    got: list[tuple[int, str]] = []
    v = verify(str(GOLDEN / "bundle_honest.vmu"),
               VerifyOptions(residual=False, trust_key=SigningKey.generate().public_key),
               on_result=lambda r: got.append((r.step, r.status)))
    assert v.failed_step == 4
    assert [s for s, _ in got] == list(range(1, 20))
    assert got[2] == (3, "pass") and got[3] == (4, "fail")


def test_cli_prints_the_checks_before_step_18_finishes(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    real = dict(checks._ORDER)[18]
    seen_before: list[str] = []

    def step_18(v: Any) -> Any:
        seen_before.append(capsys.readouterr().out)  # what was already printed when step 18 started
        return real(v)

    monkeypatch.setattr(checks, "_ORDER", tuple((n, step_18 if n == 18 else f) for n, f in checks._ORDER))
    assert verify_main([str(GOLDEN / "bundle_honest.vmu"), "--no-residual"]) == 0
    early = seen_before[0]
    assert early.startswith("vmu-verify bundle_honest.vmu\n")
    assert "  [ PASS] 17. sampling\n" in early and "18. replay" not in early
    rest = capsys.readouterr().out
    assert "18. replay" in rest and rest.rstrip().splitlines()[-1].startswith("verdict: ACCEPTED")


def test_streamed_text_holds_the_same_lines_as_the_unstreamed_report(capsys: pytest.CaptureFixture[str]) -> None:
    from verifier._report import render_text

    assert verify_main([str(GOLDEN / "bundle_honest.vmu"), "--no-residual"]) == 0
    streamed = capsys.readouterr().out.splitlines()
    v = verify(str(GOLDEN / "bundle_honest.vmu"), VerifyOptions(residual=False))
    whole = render_text(v, path="bundle_honest.vmu").splitlines()

    def norm(lines: list[str]) -> list[str]:  # timings differ between the two runs
        return sorted(ln.split(" steps in ")[0] for ln in lines)

    assert norm(streamed) == norm(whole)


def test_quiet_and_json_dash_keep_stdout_clean(capsys: pytest.CaptureFixture[str]) -> None:
    assert verify_main([str(GOLDEN / "bundle_honest.vmu"), "--no-residual", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("verdict: ACCEPTED")
    assert verify_main([str(GOLDEN / "bundle_honest.vmu"), "--no-residual", "--json", "-"]) == 0
    cap = capsys.readouterr()
    assert json.load(io.StringIO(cap.out))["verdict"] == "accepted"
    assert "  [ PASS]  1. archive" in cap.err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_lines_on_a_terminal_only(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    term = _Terminal()
    monkeypatch.setattr("sys.stderr", term)
    assert verify_main([str(GOLDEN / "bundle_honest.vmu")]) == 0
    err = term.getvalue()
    n = err.count("step 18: replayed segment ")
    assert n == 12 and "step 18: replayed segment 12 of 12 (363 steps)" in err
    assert "step 19: membership tests on 3 deleted and 180 audit records (3 models after, 3 before)" in err
    assert err.endswith("\r\033[K")  # the last progress line is erased before the result lines
    assert "step 18: replayed segment" not in capsys.readouterr().out
    # --quiet and a pipe (not a terminal) get none
    term2 = _Terminal()
    monkeypatch.setattr("sys.stderr", term2)
    assert verify_main([str(GOLDEN / "bundle_honest.vmu"), "--no-residual", "--quiet"]) == 0
    assert "step 18: replayed segment" not in term2.getvalue()
    pipe = io.StringIO()
    monkeypatch.setattr("sys.stderr", pipe)
    assert verify_main([str(GOLDEN / "bundle_honest.vmu"), "--no-residual"]) == 0
    assert "step 18: replayed segment" not in pipe.getvalue()
