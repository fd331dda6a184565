"""The verifier's view of log entry bodies and of the deletion transcript predicate (version 1).

The body classes are the core wire model's (:mod:`verifiable_mu._wire_entries`, the one
definition of each format), read only through their strict parsers, which check every field's
type and refuse unknown or missing fields (InvalidBundle, exit 2). Here each is narrowed so that
an entry of another kind than a claim names raises :class:`EntryKindMismatch` (a false claim
about signed content, exit 1). Field meanings: specs/06-training.md (config, slice, dataset,
audit, checkpoint, step, model), specs/07-deletion-transcript.md (deletion, transcript), and
specs/08-bundle.md.
"""

from __future__ import annotations

from verifiable_mu import _wire_entries as _w
from verifiable_mu._dsse import PREDICATE_DELETION
from verifiable_mu._wire_entries import MAX_HINTS
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

from ._errors import EntryKindMismatch

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


class ConfigBody(_w.ConfigBody):
    __slots__ = ()
    WRONG_KIND = EntryKindMismatch


class SliceBody(_w.SliceBody):
    __slots__ = ()
    WRONG_KIND = EntryKindMismatch


class DatasetBody(_w.DatasetBody):
    __slots__ = ()
    WRONG_KIND = EntryKindMismatch


class AuditBody(_w.AuditBody):
    __slots__ = ()
    WRONG_KIND = EntryKindMismatch


class CheckpointBody(_w.CheckpointBody):
    __slots__ = ()
    WRONG_KIND = EntryKindMismatch


class StepBody(_w.StepBody):
    __slots__ = ()
    WRONG_KIND = EntryKindMismatch


class DeletionBody(_w.DeletionBody):
    __slots__ = ()
    WRONG_KIND = EntryKindMismatch


class ModelBody(_w.ModelBody):
    __slots__ = ()
    WRONG_KIND = EntryKindMismatch
