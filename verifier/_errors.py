"""Verifier-specific failures: one subclass of the core tree per kind of false claim.

All of them are :class:`~verifiable_mu._errors.VerificationFailed` (exit code 1). Anything that
cannot be read is :class:`~verifiable_mu._errors.InvalidBundle` or another
:class:`~verifiable_mu._errors.MalformedInput` (exit code 2).
"""

from __future__ import annotations

from verifiable_mu._errors import EntryKindMismatch, VerificationFailed

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

    advice = ("do not accept it: another key than the one you pinned with --trust-key signed it. Check that you "
              "pinned the owner's current key (vmu status prints it); a bundle signed by another key proves nothing")


class HeadMismatch(VerificationFailed):
    """Signed tree heads or transcripts do not form one consistent, ordered history."""


class CommitBlockInvalid(VerificationFailed):
    """The commitments logged before training (config, slices, data set, audit set) are inconsistent."""


class DeletionClaimFailed(VerificationFailed):
    """A deletion transcript's claims (records, slices, shards) do not hold."""


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

    advice = ("do not accept it: the bundle does not answer your --challenge. Give the owner the challenge again "
              "and verify the bundle written for it, with the same --challenge")


class SegmentMissing(VerificationFailed):
    """A segment the verifier's sample selects is not fully disclosed."""


class ReplayMismatch(VerificationFailed):
    """Replaying a sampled segment did not reproduce its logged end checkpoint."""

    advice = ("do not accept it: training did not produce the logged checkpoint. If the owner trained on another "
              "platform than this one, the report's replay mode and distance say by how much it missed; a bit-exact "
              "replay that misses is a false claim")


class ResidualTraceFound(VerificationFailed):
    """Step 19: the deleted records (or their canary trigger) still leave a measurable trace,
    or the residual tests were inconclusive while --require-residual was given."""

    advice = ("do not accept the deletion as complete: the model still behaves differently on the deleted records "
              "(or the canary still fires). The report's step 19 section gives the tests and their intervals")


class WitnessQuorumMissing(VerificationFailed):
    """The final head lacks the cosignatures of as many of the verifier's witnesses as its
    threshold asks (split-view defence, c2sp.org/tlog-cosignature)."""

    advice = ("do not accept it yet: ask the owner to have the final head cosigned by your witnesses (or check "
              "--witness and --witness-threshold): without them a split view of the log is not ruled out")
