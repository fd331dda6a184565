"""The verifier's view of log entry bodies and of the deletion transcript predicate (version 1).

The body classes are the core wire model's (:mod:`verifiable_mu._wire_entries`, the one
definition of each format), read only through their strict parsers, which check every field's
type and refuse unknown or missing fields (InvalidBundle, exit 2); an entry of another kind than
a claim names raises :class:`~verifiable_mu._errors.EntryKindMismatch` (a false claim about
signed content, exit 1). Field meanings: specs/06-training.md (config, slice, dataset,
audit, checkpoint, step, model), specs/07-deletion-transcript.md (deletion, transcript), and
specs/08-bundle.md.
"""

from __future__ import annotations

from verifiable_mu._dsse import PREDICATE_DELETION
from verifiable_mu._wire_entries import (
    MAX_HINTS,
    AuditBody,
    CheckpointBody,
    ConfigBody,
    DatasetBody,
    DeletionBody,
    ModelBody,
    SliceBody,
    StepBody,
)
from verifiable_mu._wire_transcript import (
    Disclosure,
    HeldOut,
    HeldOutRecord,
    HeldOutSlice,
    RecordClaim,
    ShardClaim,
    SliceClaim,
    Transcript,
)

__all__ = [
    "MAX_HINTS",
    "PREDICATE_DELETION",
    "AuditBody",
    "CheckpointBody",
    "ConfigBody",
    "DatasetBody",
    "DeletionBody",
    "Disclosure",
    "HeldOut",
    "HeldOutRecord",
    "HeldOutSlice",
    "ModelBody",
    "RecordClaim",
    "ShardClaim",
    "SliceBody",
    "SliceClaim",
    "StepBody",
    "Transcript",
]
