"""What both command-line tools (``vmu``, ``vmu-verify``) do alike at their edge."""

from __future__ import annotations

import os
import sys

__all__ = ["EXIT_BROKEN_PIPE", "EXIT_INTERRUPTED", "detach_stdout"]

#: The reader of stdout went away (``| head``): stop quietly with 128 + SIGPIPE, as a shell tool does.
EXIT_BROKEN_PIPE = 141
#: SIGINT (Ctrl-C): 128 + 2, as a shell reports it.
EXIT_INTERRUPTED = 130


def detach_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush of a closed pipe raises
    nothing more (call it when a write raised BrokenPipeError)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
