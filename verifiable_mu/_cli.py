"""What both command-line tools (``vmu``, ``vmu-verify``) do alike at their edge."""

from __future__ import annotations

import os
import sys
import traceback

from ._errors import EXIT_INTERNAL, ISSUES_URL, VmuError

__all__ = ["EXIT_BROKEN_PIPE", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "detach_stdout", "report_bug", "report_error"]

#: The reader of stdout went away (``| head``): stop quietly with 128 + SIGPIPE, as a shell tool does.
EXIT_BROKEN_PIPE = 141
#: SIGINT (Ctrl-C): 128 + 2, as a shell reports it.
EXIT_INTERRUPTED = 130


def detach_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush of a closed pipe raises
    nothing more (call it when a write raised BrokenPipeError)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def bug_line(prog: str, e: BaseException) -> str:
    """The one line both CLIs print for a bug (an exception no documented error covers)."""
    cause = e.__cause__ if isinstance(e, VmuError) and e.__cause__ is not None else e
    what = f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
    if isinstance(e, VmuError) and e.step is not None:
        what = f"step {e.step} ({e.step_name}): {what}"
    what = " ".join(what.split())[:300]  # one line, whatever the exception's text holds
    return (f"{prog}: internal error (a bug in verifiable-mu, not a verdict on the input): {what}; "
            f"please report it at {ISSUES_URL} with the output of --verbose")


def report_bug(prog: str, e: BaseException, *, verbose: bool) -> int:
    """Print a bug's one line (with ``verbose`` first its traceback) on stderr; return
    :data:`EXIT_INTERNAL`."""
    if verbose:
        traceback.print_exception(e)
    print(bug_line(prog, e), file=sys.stderr)
    return EXIT_INTERNAL


def report_error(prog: str, e: VmuError, *, verbose: bool) -> None:
    """Print a documented error's one line on stderr; with ``verbose`` first its traceback and its
    :meth:`~verifiable_mu._errors.VmuError.diagnostics`."""
    if verbose:
        traceback.print_exception(e)
        print(e.diagnostics(), file=sys.stderr)
    print(f"{prog}: error: {e}", file=sys.stderr)
