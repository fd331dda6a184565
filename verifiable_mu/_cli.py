"""What both command-line tools (``vmu``, ``vmu-verify``) do alike at their edge."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable

from ._errors import EXIT_INTERNAL, ISSUES_URL, VmuError

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "Parser",
    "at_the_edge",
    "detach_stdout",
    "report_bug",
    "report_error",
    "say",
]

#: The reader of stdout went away (``| head``): stop quietly with 128 + SIGPIPE, as a shell tool does.
EXIT_BROKEN_PIPE = 141
#: SIGINT (Ctrl-C): 128 + 2, as a shell reports it.
EXIT_INTERRUPTED = 130
#: A bad command line is bad input, exit 2, in every tool (argparse's own code is also 2).
EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """The tools' argument parser: a bad command line prints the usage and one line
    ``TOOL: error: ...`` (the tool's name, also under a sub-command) and exits :data:`EXIT_USAGE`."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog.split()[0]}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


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


def say(prog: str, line: str, *, verbose: bool) -> None:
    """Print ``prog: line`` on stderr; with ``verbose`` first the traceback of the exception being
    handled."""
    if verbose:
        traceback.print_exc()
    print(f"{prog}: {line}", file=sys.stderr)


def at_the_edge(prog: str, body: Callable[[], int], *, verbose: bool, interrupted: str) -> int:
    """Run a command-line tool's ``body`` and map what escapes it, alike in every tool: Ctrl-C
    prints ``prog: interrupted`` and returns 130; a reader of stdout that went away (``| head``)
    stops quietly with 141; any other exception is a bug (one line, :data:`EXIT_INTERNAL`)."""
    try:
        return body()
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (| head): stop quietly, as a shell tool does
        detach_stdout()
        return EXIT_BROKEN_PIPE
    except Exception as e:  # a bug of this tool: one line asking for a report (--verbose: the traceback)
        return report_bug(prog, e, verbose=verbose)
