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
"""

from __future__ import annotations

__all__ = [
    "VmuError",
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
    "LogError",
    "LogCorrupted",
]


class VmuError(Exception):
    """Root of every error raised by verifiable-mu."""


# --- malformed input: could not be parsed / not of a supported form (exit code 2) ---------


class MalformedInput(VmuError, ValueError):
    """The input is not of the documented form (could not be parsed)."""


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


class InvalidBundle(MalformedInput):
    """A proof bundle cannot be read: not a bundle, unsafe archive, or invalid manifest."""


class FullInstallRequired(MalformedInput):
    """The operation needs a module of the ``full`` extra (torch, scipy, scikit-learn, tqdm) that
    this (proof-only) install lacks; nothing was judged."""


# --- well formed but false (exit code 1) ----------------------------------------------------


class VerificationFailed(VmuError):
    """The input is well formed, but a check of what it claims failed."""


class InclusionProofFailed(VerificationFailed):
    """An inclusion proof does not lead from the leaf to the expected root."""


class ConsistencyProofFailed(VerificationFailed):
    """A consistency proof does not show the older tree is a prefix of the newer one."""


class NonMembershipProofFailed(VerificationFailed):
    """A non-membership proof does not show the key is absent from the tree."""


class SignatureFailed(VerificationFailed):
    """A signature does not verify, or was made by a key that is not trusted."""


class CommitmentMismatch(VerificationFailed):
    """A disclosed opening does not match its commitment."""


# --- log state ------------------------------------------------------------------------------


class LogError(VmuError):
    """The transparency log cannot be used as asked (bad index, closed, locked)."""


class LogCorrupted(LogError):
    """The transparency log's stored state is inconsistent with itself."""
