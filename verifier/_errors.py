"""Verifier-specific failures: one subclass of the core tree per kind of false claim.

All of them are :class:`~verifiable_mu._errors.VerificationFailed` (exit code 1). Anything that
cannot be read is :class:`~verifiable_mu._errors.InvalidBundle` or another
:class:`~verifiable_mu._errors.MalformedInput` (exit code 2).
"""

from __future__ import annotations

from verifiable_mu._errors import VerificationFailed

__all__ = [
    "BatchNotCommitted",
    "ChallengeMismatch",
    "CommitBlockInvalid",
    "DeletionClaimFailed",
    "EntryKindMismatch",
    "HeadMismatch",
    "ManifestContainsDeleted",
    "ModelMismatch",
    "OpeningMismatch",
    "OrderingViolation",
    "ReplayMismatch",
    "ResidualTraceFound",
    "ScheduleViolation",
    "SegmentMissing",
    "UntrustedKey",
    "WitnessQuorumMissing",
]


class UntrustedKey(VerificationFailed):
    """The bundle is signed by a key other than the one the verifier pinned."""


class HeadMismatch(VerificationFailed):
    """Signed tree heads or transcripts do not form one consistent, ordered history."""


class CommitBlockInvalid(VerificationFailed):
    """The commitments logged before training (config, slices, data set, audit set) are inconsistent."""


class DeletionClaimFailed(VerificationFailed):
    """A deletion transcript's claims (records, slices, shards) do not hold."""


class EntryKindMismatch(VerificationFailed):
    """A claim names a proven log entry as one kind (a step, a checkpoint, a slice...) and the
    entry is of another kind: a false claim about signed content (exit 1), not malformed input."""


class OrderingViolation(VerificationFailed):
    """A rollback checkpoint does not precede the first use of a deleted record."""


class ScheduleViolation(VerificationFailed):
    """Logged steps and checkpoints do not follow the committed SISA schedule."""


class ModelMismatch(VerificationFailed):
    """A model entry, its constituent digests or the disclosed weights disagree."""


class ManifestContainsDeleted(VerificationFailed):
    """A logged retraining step uses a record that was deleted."""


class BatchNotCommitted(VerificationFailed):
    """A logged batch is not the one the committed seed and the stage's slice records fix."""


class OpeningMismatch(VerificationFailed):
    """A disclosed record opening does not match what it must open."""


class ChallengeMismatch(VerificationFailed):
    """The bundle answers another challenge, or sampled other segments than the verifier draws."""


class SegmentMissing(VerificationFailed):
    """A segment the verifier's sample selects is not fully disclosed."""


class ReplayMismatch(VerificationFailed):
    """Replaying a sampled segment did not reproduce its logged end checkpoint."""


class ResidualTraceFound(VerificationFailed):
    """Step 19: the deleted records (or their canary trigger) still leave a measurable trace,
    or the residual tests were inconclusive while --require-residual was given."""


class WitnessQuorumMissing(VerificationFailed):
    """The final head lacks the cosignatures of as many of the verifier's witnesses as its
    threshold asks (split-view defence, c2sp.org/tlog-cosignature)."""
