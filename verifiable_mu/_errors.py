"""The one exception tree of verifiable-mu.

Every error the public API raises on bad input or a failed check is a subclass of
:class:`VmuError`. It splits into two families:

* :class:`MalformedInput` -- the input could not be parsed or is of an unsupported form
  (wrong length, wrong type, unknown version, bad encoding). The CLIs map it to exit code 2.
* :class:`VerificationFailed` -- the input is well formed but what it claims is false
  (a proof does not lead to the root, a signature does not verify). The CLIs map it to exit
  code 1.

Foreign exceptions (``binascii.Error``, ``json.JSONDecodeError``, ``sqlite3.Error``,
``cryptography`` errors) are always wrapped with ``raise ... from``.
Messages are written for people: they say what was wrong, not only where.

Anything else that escapes is a bug, not a verdict on the input: the verifier wraps it in
:class:`InternalError` and both CLIs exit with :data:`EXIT_INTERNAL` (70, ``EX_SOFTWARE`` of
sysexits.h) and a one-line request for a report.

Every error has :meth:`VmuError.diagnostics`: a few lines for people saying what failed, at
which step of the verification (when a verifier step raised it) and what to do about it.
"""

from __future__ import annotations

from typing import TypeVar

__all__ = [
    "EXIT_INTERNAL",
    "ISSUES_URL",
    "VmuError",
    "InternalError",
    "MalformedInput",
    "MalformedProof",
    "MalformedRecord",
    "MalformedNote",
    "MalformedEnvelope",
    "MalformedKey",
    "UnsupportedVersion",
    "InvalidBundle",
    "FullInstallRequired",
    "VerificationFailed",
    "InclusionProofFailed",
    "ConsistencyProofFailed",
    "NonMembershipProofFailed",
    "SignatureFailed",
    "CommitmentMismatch",
    "EntryKindMismatch",
    "LogError",
    "LogCorrupted",
]


#: Exit code of both CLIs (``vmu``, ``vmu-verify``) for a bug: an exception that no documented
#: error covers (``EX_SOFTWARE`` of sysexits.h). It judges nothing about the input.
EXIT_INTERNAL = 70
#: Where bugs are reported (pyproject.toml ``[project.urls] Issues``).
ISSUES_URL = "https://github.com/verifiable-mu/verifiable-mu/issues"


_E = TypeVar("_E", bound="VmuError")


class VmuError(Exception):
    """Root of every error raised by verifiable-mu."""

    #: What a person can do about an error of this kind (the last line of :meth:`diagnostics`).
    advice = "read the message: it names what was wrong; fix that input or argument and run the command again"
    #: The verification step (specs/09-verification.md) that raised it, and its name; set by the
    #: verifier's runner (:meth:`at_step`), None elsewhere.
    step: int | None = None
    step_name: str | None = None

    def at_step(self: _E, step: int, name: str) -> _E:
        """Record the verification step that raised this error; returns the error."""
        self.step, self.step_name = step, name
        return self

    def kind(self) -> str:
        """The error's kind in words: the first paragraph of its class's docstring, on one line."""
        doc = (type(self).__doc__ or type(self).__name__).strip().split("\n\n", 1)[0]
        return " ".join(doc.split())

    def diagnostics(self) -> str:
        """A few lines for people: what failed, which step (when a verifier step raised it), the
        underlying cause (a wrapped foreign exception), and what to do."""
        lines = [f"what failed: {self}", f"kind: {type(self).__name__}: {self.kind()}"]
        if self.step is not None:
            lines.append(f"step: {self.step} ({self.step_name}) of the verification checklist "
                         "(specs/09-verification.md)")
        cause = self.__cause__
        if cause is not None and not isinstance(cause, VmuError):
            lines.append(f"cause: {type(cause).__name__}: {cause}")
        lines.append(f"what to do: {self.advice}")
        return "\n".join(lines)


class InternalError(VmuError):
    """A bug in verifiable-mu: an exception that no documented error covers. It says nothing
    about the input: nothing was judged (exit code 70)."""

    advice = (f"this is a bug in verifiable-mu, not a verdict on the input: please report it at {ISSUES_URL} "
              "with the command line, the output of the same command with --verbose, and --version")

    @classmethod
    def wrap(cls, e: BaseException, where: str | None = None) -> InternalError:
        """An InternalError for the foreign exception ``e``, raised in ``where`` when given (raise it
        ``from e``)."""
        what = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        return cls(f"{where}: {what}" if where else what)


# --- malformed input: could not be parsed / not of a supported form (exit code 2) ---------


class MalformedInput(VmuError, ValueError):
    """The input is not of the documented form (could not be parsed)."""

    advice = ("nothing was judged: check that the input is the file you meant, of a supported version, and the "
              "command's arguments; ask whoever produced it for a well-formed one")


class MalformedProof(MalformedInput):
    """A Merkle proof (inclusion, consistency, non-membership) is not well formed."""


class MalformedRecord(MalformedInput):
    """A record (id, features, label) or its opening cannot be encoded or decoded."""


class MalformedNote(MalformedInput):
    """A signed note or tlog checkpoint is not well formed."""


class MalformedEnvelope(MalformedInput):
    """A DSSE envelope or in-toto statement is not well formed."""


class MalformedKey(MalformedInput):
    """A key file or key encoding is not well formed."""


class UnsupportedVersion(MalformedInput):
    """A format names a version (or algorithm) this implementation does not support."""

    advice = ("nothing was judged: upgrade verifiable-mu (pip install -U verifiable-mu), or ask for the input "
              "in a version this one supports (--version says which it is)")


class InvalidBundle(MalformedInput):
    """A proof bundle cannot be read: not a bundle, unsafe archive, or invalid manifest."""

    advice = ("nothing was judged: ask the owner for the bundle again, as 'vmu bundle' writes it; if it travelled "
              "over a network or a disk, compare its SHA-256 with the owner's. An owner who sends unreadable "
              "bundles again and again has not shown anything")


class FullInstallRequired(MalformedInput):
    """The operation needs a module of the ``full`` extra (torch, scipy, scikit-learn, tqdm) that
    this (proof-only) install lacks; nothing was judged."""

    advice = ("install the full verifier (pip install 'verifiable-mu[full]'), or leave out what needs it "
              "(--unsafe-no-replay --no-residual check the proofs only)")


# --- well formed but false (exit code 1) ----------------------------------------------------


class VerificationFailed(VmuError):
    """The input is well formed, but a check of what it claims failed."""

    advice = ("do not accept it: what the input claims is false. The step named is the first check that failed "
              "(later steps did not run); send its message to the owner, whose next bundle must pass every step")


class InclusionProofFailed(VerificationFailed):
    """An inclusion proof does not lead from the leaf to the expected root."""


class ConsistencyProofFailed(VerificationFailed):
    """A consistency proof does not show the older tree is a prefix of the newer one."""


class NonMembershipProofFailed(VerificationFailed):
    """A non-membership proof does not show the key is absent from the tree."""


class SignatureFailed(VerificationFailed):
    """A signature does not verify, or was made by a key that is not trusted."""

    advice = ("do not accept it: the signed content was changed after signing, or another key signed it. Check "
              "that --trust-key is the owner's key (vmu status prints it), then ask the owner for the bundle again")


class CommitmentMismatch(VerificationFailed):
    """A disclosed opening does not match its commitment."""


class EntryKindMismatch(VerificationFailed):
    """A claim names a proven log entry as one kind (a step, a checkpoint, a slice...) and the
    entry is of another kind: a false claim about signed content (exit 1), not malformed input."""


# --- log state ------------------------------------------------------------------------------


class LogError(VmuError):
    """The transparency log cannot be used as asked (bad index, closed, locked)."""

    advice = "check the workspace (vmu status DIR) and that no other vmu process uses it, then run the command again"


class LogCorrupted(LogError):
    """The transparency log's stored state is inconsistent with itself."""

    advice = ("do not append to this log: restore the workspace from a backup; its signed heads already "
              "published stay the reference a verifier holds you to")
