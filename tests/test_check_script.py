"""scripts/junit_passed.py: what lets a Ray test process that exited non-zero through check.sh.

Only a report of exactly one passed test does; every other report (or none) fails the check.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "junit_passed.py"

_CASE = '<testcase classname="tests.test_ray" name="{name}" time="1.0">{body}</testcase>'


def _report(*cases: str) -> str:
    return (
        '<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" failures="0" '
        f'skipped="0" tests="{len(cases)}">{"".join(cases)}</testsuite></testsuites>'
    )


def _run(tmp_path: Path, text: str | None) -> int:
    path = tmp_path / "report.xml"
    if text is not None:
        path.write_text(text)
    return subprocess.run([sys.executable, str(SCRIPT), str(path)], check=False).returncode


def test_one_passed_test_is_let_through(tmp_path: Path) -> None:
    assert _run(tmp_path, _report(_CASE.format(name="test_a", body=""))) == 0


@pytest.mark.parametrize(
    "body",
    [
        '<failure message="assert 1 == 2">assert 1 == 2</failure>',
        '<error message="failed on teardown">teardown</error>',
        '<skipped type="pytest.skip" message="no ray">no ray</skipped>',
    ],
    ids=["failure", "error", "skipped"],
)
def test_a_failed_errored_or_skipped_test_fails_the_check(tmp_path: Path, body: str) -> None:
    assert _run(tmp_path, _report(_CASE.format(name="test_a", body=body))) == 1


def test_a_passed_test_with_an_errored_teardown_fails_the_check(tmp_path: Path) -> None:
    # pytest writes a teardown error as a second <testcase> of the same name
    passed = _CASE.format(name="test_a", body="")
    errored = _CASE.format(name="test_a", body='<error message="teardown">boom</error>')
    assert _run(tmp_path, _report(passed, errored)) == 1


def test_no_test_or_two_tests_fail_the_check(tmp_path: Path) -> None:
    assert _run(tmp_path, _report()) == 1
    assert _run(tmp_path, _report(_CASE.format(name="a", body=""), _CASE.format(name="b", body=""))) == 1


def test_a_missing_or_truncated_report_fails_the_check(tmp_path: Path) -> None:
    assert _run(tmp_path, None) == 1
    assert _run(tmp_path, _report(_CASE.format(name="test_a", body=""))[:-30]) == 1


def test_check_sh_uses_it_for_the_ray_tests_only_after_a_non_zero_exit() -> None:
    text = (ROOT / "scripts" / "check.sh").read_text()
    assert '--junitxml="$xml"' in text
    assert 'if .venv/bin/python scripts/junit_passed.py "$xml"; then' in text
    assert 'exit "$rc"' in text
