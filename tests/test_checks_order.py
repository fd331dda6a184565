"""Issue 11, the verifier split by phase: the runner calls steps 1..19 in the spec's order, step 12
before step 13, and each proven log entry body is parsed once per verification."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import verifier._checks as checks
from verifier import VerifyOptions, _entries, verify

GOLDEN = Path(__file__).resolve().parent / "golden"
FAST = VerifyOptions(replay=0, residual=False)


def test_the_runner_calls_the_steps_in_the_spec_order() -> None:
    """Each step once, in order; only step 3 has two parts (its large members are parsed after the
    signatures of steps 4-6 verified)."""
    order = [n for n, _ in checks._ORDER]
    assert order == [1, 2, 3, 4, 5, 6, 3, *range(7, 20)]


def test_an_ordering_violation_is_step_12_in_its_diagnostics_too() -> None:
    v = verify(str(GOLDEN / "bundle_rollback_after_first_use.vmu"), FAST)
    assert v.failed_step == 12 and type(v.failure).__name__ == "OrderingViolation"
    assert v.failure is not None and v.failure.step == 12
    assert "step: 12 (ordering)" in v.failure.diagnostics()
    status = {r.step: r.status for r in v.results}
    assert status[12] == "fail" and status[13] == "skipped"


def test_a_schedule_finding_of_step_12s_walk_is_step_13s(monkeypatch: pytest.MonkeyPatch) -> None:
    """Step 12 builds the lineages under the schedule rules; what it finds against them fails step
    13, with step 12 passed."""
    from verifier import _steps_schedule
    from verifier._errors import ScheduleViolation

    def broken(*_: Any) -> None:
        raise ScheduleViolation("original training of shard 0: a schedule finding")

    monkeypatch.setattr(_steps_schedule, "_original_lineages", broken)
    v = verify(str(GOLDEN / "bundle_honest.vmu"), FAST)
    assert (v.exit_code, v.failed_step, type(v.failure).__name__) == (1, 13, "ScheduleViolation")
    status = {r.step: r.status for r in v.results}
    assert status[12] == "pass" and status[13] == "fail" and status[14] == "skipped"


def test_each_entry_body_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    counts: dict[tuple[str, int], int] = {}
    for cls in (_entries.StepBody, _entries.CheckpointBody, _entries.SliceBody, _entries.ModelBody,
                _entries.DeletionBody, _entries.DatasetBody):
        real = cls.parse.__func__  # type: ignore[attr-defined]

        def parse(c: Any, e: Any, real: Any = real) -> Any:
            counts[(c.__name__, e.index)] = counts.get((c.__name__, e.index), 0) + 1
            return real(c, e)

        monkeypatch.setattr(cls, "parse", classmethod(parse))
    v = verify(str(GOLDEN / "bundle_honest.vmu"), VerifyOptions(residual=False))
    assert v.exit_code == 0
    assert len({k for k, _ in counts}) == 6 and max(counts.values()) == 1
