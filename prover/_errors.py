"""Prover errors: part of the one tree rooted at :class:`verifiable_mu.VmuError`."""

from __future__ import annotations

from verifiable_mu._errors import MalformedInput, UnsupportedVersion, VmuError

__all__ = ["ProverError", "BadInput", "WorkspaceError", "WorkspaceLocked", "UnsupportedWorkspace", "TrainingDiverged"]


class ProverError(VmuError):
    """A prover operation failed (exit code 1)."""


class BadInput(MalformedInput):
    """Bad usage or bad input: unknown id, already deleted, unreadable data (exit code 2)."""

    advice = "fix the argument or input the message names (vmu status DIR lists the ids and requests) and run again"


class WorkspaceError(ProverError):
    """The workspace is missing, damaged, or not in a state for this operation."""


class WorkspaceLocked(WorkspaceError):
    """Another vmu process holds the workspace lock."""

    advice = "wait for the other vmu process on this workspace to finish (or stop it), then run the command again"


class UnsupportedWorkspace(UnsupportedVersion):
    """The workspace was written by a newer (or unknown) format version (exit code 2)."""

    advice = "use the verifiable-mu version that wrote this workspace, or a newer one (pip install -U verifiable-mu)"


class TrainingDiverged(WorkspaceError):
    """A loss, gradient or weight went non-finite; the stage was not committed."""

    advice = ("nothing was committed: lower the learning rate (vmu init --lr) or check the data for extreme "
              "values, then train again")
