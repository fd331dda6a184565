"""Issue 11, errors: ``verify()`` returns a verdict for any input; an exception no documented
error covers is a bug, with its own exit code (70, the same in ``vmu`` and ``vmu-verify``), one
line that asks for a report, and ``--verbose`` for the traceback; every error has a
``diagnostics()`` text for people (what failed, which step, what to do)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from conftest_verifier import members_of, rezip

import verifier._checks as checks
from prover._errors import BadInput, WorkspaceLocked
from verifiable_mu._errors import (
    EXIT_INTERNAL,
    InternalError,
    InvalidBundle,
    SignatureFailed,
    UnsupportedVersion,
    VmuError,
)
from verifier import VerifyOptions, report_schema, to_json, verify
from verifier._html import headline

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
HONEST = str(GOLDEN / "bundle_honest.vmu")
FAST = VerifyOptions(replay=0, residual=False)


def _boom(*_: Any, **__: Any) -> None:
    raise ZeroDivisionError("division by zero")


def _break_step(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Make check ``step`` raise a ZeroDivisionError (a bug, not a documented error)."""
    monkeypatch.setattr(checks, "_ORDER", tuple((n, _boom if n == step else f) for n, f in checks._ORDER))


def test_internal_exit_code_is_the_same_in_both_clis() -> None:
    import prover.cli
    import verifier.cli

    assert EXIT_INTERNAL == prover.cli.EXIT_INTERNAL == verifier.cli.EXIT_INTERNAL == 70
    assert len({0, 1, 2, 3, 130, 141, EXIT_INTERNAL}) == 7  # distinct from every other documented code


@pytest.mark.parametrize("step", [1, 5, 10, 16])
def test_a_bug_in_a_check_is_a_verdict_with_the_bug_exit_code(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    _break_step(monkeypatch, step)
    v = verify(HONEST, FAST)
    assert v.exit_code == EXIT_INTERNAL and v.verdict == "internal-error"
    assert isinstance(v.failure, InternalError) and v.failed_step == step
    assert isinstance(v.failure.__cause__, ZeroDivisionError)
    assert str(v.failure) == "ZeroDivisionError: division by zero"
    by_step = {r.step: r for r in v.results}
    assert by_step[step].status == "error" and "ZeroDivisionError" in by_step[step].detail
    assert all(by_step[n].status == "skipped" for n in range(step + 1, 20))
    assert all(by_step[n].status == "pass" for n in range(1, step) if n != 3)
    report = to_json(v, path="b.vmu")
    jsonschema.Draft202012Validator(report_schema()).validate(report)
    assert report["failure"] == {"step": step, "error": "InternalError", "message": "ZeroDivisionError: division by zero",
                                 "advice": InternalError.advice}
    h = headline(report)
    assert h.title == "INTERNAL ERROR" and "please report it" in h.summary and f"exit code {EXIT_INTERNAL}" in h.summary


@pytest.mark.parametrize("kind", [RuntimeError, ImportError, KeyError, AssertionError, TypeError, OverflowError])
def test_every_foreign_exception_in_a_step_is_a_bug_at_that_step(monkeypatch: pytest.MonkeyPatch,
                                                                 kind: type[Exception]) -> None:
    """Not only ZeroDivisionError: the kinds the out-of-memory mapping looks at (RuntimeError,
    ImportError) too, when they are not about memory."""

    def raise_it(*_: Any) -> None:
        raise kind("not memory")

    monkeypatch.setattr(checks, "_ORDER", tuple((n, raise_it if n == 15 else f) for n, f in checks._ORDER))
    v = verify(HONEST, FAST)
    assert (v.exit_code, v.failed_step, type(v.failure).__name__) == (EXIT_INTERNAL, 15, "InternalError")
    assert str(v.failure).startswith(f"{kind.__name__}: ") and type(v.failure.__cause__) is kind


def test_a_bug_gets_an_html_page_and_no_attestation(monkeypatch: pytest.MonkeyPatch) -> None:
    from verifier import render_html
    from verifier._attest import build_vsa

    _break_step(monkeypatch, 10)
    v = verify(HONEST, FAST)
    page = render_html(to_json(v, path="b.vmu"))
    assert "INTERNAL ERROR" in page and "ZeroDivisionError: division by zero" in page
    assert "<b>What to do:</b> this is a bug in verifiable-mu, not a verdict on the input: please report it" in page
    with pytest.raises(ValueError, match="no attestation for unusable input or an internal error"):
        build_vsa(v, name="b.vmu")


def test_a_bug_outside_every_step_is_still_a_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checks, "_emit", _boom)
    v = verify(HONEST, FAST)
    assert v.exit_code == EXIT_INTERNAL and isinstance(v.failure, InternalError)
    assert str(v.failure) == "the verifier's runner: ZeroDivisionError: division by zero"


def test_what_the_callers_callback_raises_is_the_callers() -> None:
    """A closed pipe in ``on_result`` is not a bug of the verifier: it propagates unchanged."""

    def closed(_: Any) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(BrokenPipeError, match="Broken pipe"):
        verify(HONEST, FAST, on_result=closed)


def test_vmu_verify_bug_is_one_line_exit_70(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from verifier.cli import main

    _break_step(monkeypatch, 10)
    assert main([HONEST, "--replay", "0", "--no-residual", "--quiet"]) == EXIT_INTERNAL
    out = capsys.readouterr()
    assert out.out.startswith("verdict: INTERNAL ERROR") and out.out.count("\n") == 1
    err = out.err.splitlines()
    assert len(err) == 1 and "Traceback" not in out.err, out.err
    assert err[0].startswith("vmu-verify: internal error (a bug in verifiable-mu, not a verdict on the input): "
                             "step 10 (commitments): ZeroDivisionError: division by zero; please report it at https://")
    # --verbose adds the traceback and the diagnostics; the last line is the same one line
    assert main([HONEST, "--replay", "0", "--no-residual", "--quiet", "--verbose"]) == EXIT_INTERNAL
    err_v = capsys.readouterr().err
    assert "Traceback" in err_v and "ZeroDivisionError" in err_v and "what to do: this is a bug" in err_v
    assert err_v.splitlines()[-1] == err[0]


def test_vmu_verify_bug_around_verify_is_exit_70(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import verifier.cli as vcli

    monkeypatch.setattr(vcli, "render_text", _boom)
    assert vcli.main([HONEST, "--replay", "0", "--no-residual", "--quiet"]) == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "vmu-verify: internal error" in err and "ZeroDivisionError: division by zero; please report it" in err


def test_vmu_bug_is_one_line_exit_70(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from prover import Workspace
    from prover.cli import main as vmu_main

    monkeypatch.setattr(Workspace, "open", classmethod(lambda cls, *a, **k: _boom()))
    assert vmu_main(["status", str(tmp_path)]) == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("vmu: internal error (a bug in verifiable-mu, not a verdict on the input): "
                          "ZeroDivisionError: division by zero; please report it at https://")

    def two_lines(*_: Any, **__: Any) -> Any:
        raise ValueError("first line\nsecond line")

    monkeypatch.setattr(Workspace, "open", classmethod(lambda cls, *a, **k: two_lines()))
    assert vmu_main(["status", str(tmp_path)]) == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ValueError: first line second line; please report it" in err, err
    assert vmu_main(["--verbose", "status", str(tmp_path)]) == EXIT_INTERNAL
    assert "Traceback" in capsys.readouterr().err


def test_vmu_audit_bug_is_one_line_exit_70(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    """The third CLI (vmu-audit, and vmu-verify --residual-only, which hands over to it) too."""
    import verifier._audit as audit
    from verifier.audit_cli import main as audit_main
    from verifier.cli import main as verify_main

    monkeypatch.setattr(audit, "read_package", _boom)
    package = tmp_path / "p.zip"
    package.write_bytes(b"PK\x05\x06" + bytes(18))
    for run in (lambda: audit_main([str(package)]), lambda: verify_main([str(package), "--residual-only"])):
        assert run() == EXIT_INTERNAL
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith("vmu-audit: internal error (a bug in verifiable-mu, not a verdict on the input): "
                              "ZeroDivisionError: division by zero; please report it at https://")


def test_vmu_documented_error_verbose_shows_diagnostics(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                        tmp_path: Path) -> None:
    from prover import Workspace
    from prover.cli import main as vmu_main

    def locked(*_: Any, **__: Any) -> Any:
        raise WorkspaceLocked("another vmu process (pid 4242) holds the workspace lock")

    monkeypatch.setattr(Workspace, "open", classmethod(lambda cls, *a, **k: locked()))
    assert vmu_main(["status", str(tmp_path)]) == 1
    assert capsys.readouterr().err == "vmu: error: another vmu process (pid 4242) holds the workspace lock\n"
    assert vmu_main(["--verbose", "status", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "kind: WorkspaceLocked: Another vmu process holds the workspace lock." in err
    assert "what to do: wait for the other vmu process" in err


# --- diagnostics() ---------------------------------------------------------------------------------


def _lines(e: VmuError) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in e.diagnostics().splitlines())


def test_diagnostics_of_an_unreadable_bundle_name_step_1_and_say_nothing_was_judged() -> None:
    v = verify(b"PK\x03\x04 this is not a zip archive", FAST)
    assert isinstance(v.failure, InvalidBundle) and v.failed_step == 1
    d = _lines(v.failure)
    assert d["what failed"] == str(v.failure)
    assert d["kind"].startswith("InvalidBundle: A proof bundle cannot be read")
    assert d["step"] == "1 (archive) of the verification checklist (specs/09-verification.md)"
    assert d["what to do"].startswith("nothing was judged: ask the owner for the bundle again")


def test_diagnostics_of_an_unsupported_version_say_upgrade() -> None:
    v = verify(str(GOLDEN / "bundle_unsupported_version.vmu"), FAST)
    assert isinstance(v.failure, UnsupportedVersion) and v.failed_step == 2
    d = _lines(v.failure)
    assert d["step"].startswith("2 (manifest)") and "upgrade verifiable-mu" in d["what to do"]
    # the report carries the advice, the text report ends the failure with it
    assert to_json(v)["failure"]["advice"] == d["what to do"] == UnsupportedVersion.advice
    from verifier import render_text

    assert render_text(v).splitlines()[-2] == f"  what to do: {UnsupportedVersion.advice}"


def test_diagnostics_of_a_bad_signature_say_do_not_accept() -> None:
    with open(HONEST, "rb") as f:
        members = members_of(f.read())
    lines = members["heads/final.note"].decode().split("\n")
    sig = next(i for i, line in enumerate(lines) if line.startswith("\u2014 "))
    at = len(lines[sig]) - 20  # inside the base64 of the Ed25519 signature
    lines[sig] = lines[sig][:at] + ("A" if lines[sig][at] != "A" else "B") + lines[sig][at + 1:]
    members["heads/final.note"] = "\n".join(lines).encode()
    v = verify(rezip(members), FAST)
    assert isinstance(v.failure, SignatureFailed) and v.failed_step == 5, v.failure
    d = _lines(v.failure)
    assert d["step"].startswith("5 (final-head)")
    assert d["what to do"].startswith("do not accept it: the signed content was changed after signing")


def test_diagnostics_name_a_wrapped_cause_and_no_step_outside_the_verifier() -> None:
    try:
        try:
            int("x")
        except ValueError as e:
            raise BadInput("--shards must be an integer") from e
    except BadInput as e:
        d = _lines(e)
    assert d["what failed"] == "--shards must be an integer"
    assert d["cause"] == "ValueError: invalid literal for int() with base 10: 'x'"
    assert "step" not in d and d["what to do"].startswith("fix the argument or input the message names")


def test_every_error_class_has_a_kind_and_advice() -> None:
    import prover._errors
    import verifiable_mu._errors
    import verifier._errors

    classes = [getattr(m, n) for m in (verifiable_mu._errors, verifier._errors, prover._errors) for n in m.__all__]
    classes = [c for c in classes if isinstance(c, type) and issubclass(c, VmuError)]
    assert len(classes) >= 30
    for c in classes:
        e = c("x")
        assert e.kind() and not e.kind().startswith(c.__name__), c  # a docstring, not just the name
        assert e.advice and e.diagnostics().endswith(f"what to do: {e.advice}"), c


@pytest.mark.skipif(os.name != "posix", reason="POSIX exit codes")
def test_readme_and_specs_list_the_internal_error_exit_code() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    spec = (ROOT / "specs" / "09-verification.md").read_text(encoding="utf-8")
    assert "`70` internal error" in readme and "| internal-error | 70 |" in spec
