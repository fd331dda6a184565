"""The deletion transcript (specs/07-deletion-transcript.md, predicate version 1): the in-toto
statement the prover signs for one request, as typed objects.

The prover builds a :class:`Transcript` and signs ``to_json()``; the verifier reads the signed
statement back with the strict ``from_json`` (any deviation raises
:class:`~verifiable_mu._errors.InvalidBundle`, an unknown version
:class:`~verifiable_mu._errors.UnsupportedVersion`). The statement's outer form (``_type``,
``subject`` shape, ``predicateType``) is checked by :mod:`verifiable_mu._dsse` before
``from_json`` reads the subjects' names and the predicate. ``Transcript.from_json(t.to_json())
== t`` (the signed ``payload`` it was read from is not part of the comparison).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ._canonical import hex32
from ._dsse import PREDICATE_DELETION, make_statement
from ._errors import InvalidBundle, UnsupportedVersion
from ._log import LogEntry
from ._proofs import ConsistencyProof, InclusionProof
from ._sorted_tree import AbsenceProof, MembershipProof, NonMembershipProof
from ._wire_common import Fields, wrap

__all__ = [
    "TRANSCRIPT_VERSION",
    "Disclosure",
    "HeldOut",
    "HeldOutRecord",
    "HeldOutSlice",
    "RecordClaim",
    "ShardClaim",
    "SliceClaim",
    "Transcript",
    "subject_file",
]

TRANSCRIPT_VERSION = 1
#: A per-file subject of a deletion transcript (specs/07).
_SUBJECT_FILE = re.compile(r"checkpoints/([0-9a-f]{64})\.safetensors")


def subject_file(digest_hex: str) -> str:
    """The subject name of the checkpoint file with content digest ``digest_hex``."""
    return f"checkpoints/{digest_hex}.safetensors"


@dataclass(frozen=True, slots=True, kw_only=True)
class Disclosure:
    """A log entry with its inclusion proof against the transcript's head_after."""

    entry: LogEntry
    inclusion: InclusionProof

    @classmethod
    def from_json(cls, d: Any, what: str = "disclosure") -> Disclosure:
        b = Fields(what, d, {"entry", "inclusion"})
        entry = wrap(f"{what} entry", LogEntry.from_json, b.d["entry"])
        inc = wrap(f"{what} inclusion", InclusionProof.from_json, b.d["inclusion"])
        if inc.index != entry.index:
            raise InvalidBundle(f"{what}: inclusion proof is for index {inc.index}, the entry has index {entry.index}")
        return cls(entry=entry, inclusion=inc)

    parse = from_json

    def to_json(self) -> dict[str, Any]:
        return {"entry": self.entry.to_json(), "inclusion": self.inclusion.to_json()}


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordClaim:
    commitment: bytes
    key: bytes
    shard: int
    slice: int
    old_slice: Disclosure
    membership: MembershipProof
    first_use: Disclosure

    @classmethod
    def from_json(cls, d: Any, what: str) -> RecordClaim:
        rb = Fields(what, d, {"commitment", "key", "shard", "slice", "old_slice", "membership", "first_use"})
        return cls(
            commitment=rb.hex("commitment"), key=rb.hex("key"), shard=rb.int("shard"), slice=rb.int("slice"),
            old_slice=Disclosure.from_json(rb.d["old_slice"], f"{what} old_slice"),
            membership=wrap(f"{what} membership", MembershipProof.from_json, rb.d["membership"]),
            first_use=Disclosure.from_json(rb.d["first_use"], f"{what} first_use"),
        )

    def to_json(self) -> dict[str, Any]:
        return {"commitment": self.commitment.hex(), "key": self.key.hex(), "shard": self.shard, "slice": self.slice,
                "old_slice": self.old_slice.to_json(), "membership": self.membership.to_json(),
                "first_use": self.first_use.to_json()}


@dataclass(frozen=True, slots=True, kw_only=True)
class SliceClaim:
    slice: Disclosure
    non_membership: tuple[NonMembershipProof, ...]

    @classmethod
    def from_json(cls, d: Any, what: str) -> SliceClaim:
        xb = Fields(what, d, {"slice", "non_membership"})
        nm = xb.d["non_membership"]
        if not isinstance(nm, list) or len(nm) > 10_000_000:
            raise InvalidBundle(f"{what}: non_membership must be a list")
        return cls(
            slice=Disclosure.from_json(xb.d["slice"], f"{what} slice"),
            non_membership=tuple(wrap(f"{what} non_membership[{k}]", NonMembershipProof.from_json, q)
                                 for k, q in enumerate(nm)),
        )

    def to_json(self) -> dict[str, Any]:
        return {"slice": self.slice.to_json(), "non_membership": [q.to_json() for q in self.non_membership]}


@dataclass(frozen=True, slots=True, kw_only=True)
class HeldOutRecord:
    commitment: bytes
    key: bytes
    split: str  # "test" or "audit"
    membership: MembershipProof  # in the committed tree of its split (the audit entry)

    @classmethod
    def from_json(cls, d: Any, what: str) -> HeldOutRecord:
        rb = Fields(what, d, {"commitment", "key", "split", "membership"})
        split = rb.d["split"]
        if split not in ("test", "audit"):
            raise InvalidBundle(f"{what}: split must be 'test' or 'audit'")
        return cls(commitment=rb.hex("commitment"), key=rb.hex("key"), split=split,
                   membership=wrap(f"{what} membership", MembershipProof.from_json, rb.d["membership"]))

    def to_json(self) -> dict[str, Any]:
        return {"commitment": self.commitment.hex(), "key": self.key.hex(), "split": self.split,
                "membership": self.membership.to_json()}


@dataclass(frozen=True, slots=True, kw_only=True)
class HeldOutSlice:
    slice: Disclosure
    absence: AbsenceProof  # of every held-out key of the request

    @classmethod
    def from_json(cls, d: Any, what: str) -> HeldOutSlice:
        xb = Fields(what, d, {"slice", "absence"})
        return cls(slice=Disclosure.from_json(xb.d["slice"], f"{what} slice"),
                   absence=wrap(f"{what} absence", AbsenceProof.from_json, xb.d["absence"]))

    def to_json(self) -> dict[str, Any]:
        return {"slice": self.slice.to_json(), "absence": self.absence.to_json()}


@dataclass(frozen=True, slots=True, kw_only=True)
class HeldOut:
    """The ``held_out`` object of a transcript (specs/07): never empty when present."""

    records: tuple[HeldOutRecord, ...]
    audit: Disclosure
    slices: tuple[HeldOutSlice, ...]

    @classmethod
    def from_json(cls, d: Any, what: str) -> HeldOut:
        b = Fields(what, d, {"records", "audit", "slices"})
        rj, sj = b.d["records"], b.d["slices"]
        if not isinstance(rj, list) or not rj or len(rj) > 10_000_000:
            raise InvalidBundle(f"{what}: records must be a non-empty list")
        if not isinstance(sj, list) or len(sj) > 1 << 32:
            raise InvalidBundle(f"{what}: slices must be a list")
        records = tuple(HeldOutRecord.from_json(r, f"{what} records[{i}]") for i, r in enumerate(rj))
        slices = tuple(HeldOutSlice.from_json(x, f"{what} slices[{j}]") for j, x in enumerate(sj))
        return cls(records=records, audit=Disclosure.from_json(b.d["audit"], f"{what} audit"), slices=slices)

    def to_json(self) -> dict[str, Any]:
        return {"records": [r.to_json() for r in self.records], "audit": self.audit.to_json(),
                "slices": [x.to_json() for x in self.slices]}


@dataclass(frozen=True, slots=True, kw_only=True)
class ShardClaim:
    shard: int
    from_stage: int
    generation: int
    rollback: Disclosure
    slices: tuple[SliceClaim, ...]
    retraining_start: int
    retraining_end: int
    final_checkpoint: Disclosure

    @classmethod
    def from_json(cls, d: Any, what: str) -> ShardClaim:
        sb = Fields(what, d, {"shard", "from_stage", "generation", "rollback", "slices", "retraining",
                              "final_checkpoint"})
        sl = sb.d["slices"]
        if not isinstance(sl, list) or len(sl) > 1 << 16:
            raise InvalidBundle(f"{what}: slices must be a list")
        slices = tuple(SliceClaim.from_json(x, f"{what} slices[{j}]") for j, x in enumerate(sl))
        rt = Fields(f"{what} retraining", sb.obj("retraining"), {"start", "end"})
        return cls(
            shard=sb.int("shard"), from_stage=sb.int("from_stage", 1), generation=sb.int("generation", 1),
            rollback=Disclosure.from_json(sb.d["rollback"], f"{what} rollback"), slices=slices,
            retraining_start=rt.dec("start"), retraining_end=rt.dec("end"),
            final_checkpoint=Disclosure.from_json(sb.d["final_checkpoint"], f"{what} final_checkpoint"),
        )

    def to_json(self) -> dict[str, Any]:
        return {"shard": self.shard, "from_stage": self.from_stage, "generation": self.generation,
                "rollback": self.rollback.to_json(), "slices": [x.to_json() for x in self.slices],
                "retraining": {"start": str(self.retraining_start), "end": str(self.retraining_end)},
                "final_checkpoint": self.final_checkpoint.to_json()}


def _subjects(subj: list[Any], what: str) -> tuple[bytes | None, tuple[tuple[bytes, bytes], ...]]:
    """The statement's subjects: the single 'model' digest of older transcripts, or the per-file
    (content digest from the name, SHA-256 of the file) pairs."""
    if len(subj) == 1 and subj[0].get("name") == "model":  # transcripts written before per-file subjects
        return hex32(subj[0]["digest"]["sha256"], what=f"{what} subject digest", exc=InvalidBundle), ()
    files = []
    for i, sj in enumerate(subj):
        name = sj.get("name")
        m = _SUBJECT_FILE.fullmatch(name) if isinstance(name, str) else None
        if m is None:
            raise InvalidBundle(f"{what}: subject {i} is not named checkpoints/<64 hex>.safetensors (or the "
                                "single subject 'model' of older transcripts)")
        files.append((bytes.fromhex(m.group(1)),
                      hex32(sj["digest"]["sha256"], what=f"{what} subject {i} digest", exc=InvalidBundle)))
    return None, tuple(files)


def _claims(p: Fields, what: str, may_be_empty: bool) -> tuple[tuple[RecordClaim, ...], tuple[ShardClaim, ...]]:
    records_j = p.d["records"]
    if not isinstance(records_j, list) or not (records_j or may_be_empty) or len(records_j) > 10_000_000:
        raise InvalidBundle(f"{what}: records must be a non-empty list")
    records = tuple(RecordClaim.from_json(r, f"{what} records[{i}]") for i, r in enumerate(records_j))
    shards_j = p.d["shards"]
    if not isinstance(shards_j, list) or not (shards_j or may_be_empty) or len(shards_j) > 1 << 16:
        raise InvalidBundle(f"{what}: shards must be a non-empty list")
    shards = tuple(ShardClaim.from_json(s, f"{what} shards[{i}]") for i, s in enumerate(shards_j))
    return records, shards


_PREDICATE_FIELDS = {"version", "origin", "request", "records", "shards", "model_before", "model_after", "log"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Transcript:
    """A deletion transcript (predicate version 1), parsed."""

    subject_digest: bytes | None  # the single 'model' subject of older transcripts
    # Per-file subjects: (content digest from the name, SHA-256 of the file), in shard order.
    subject_files: tuple[tuple[bytes, bytes], ...]
    origin: str
    request: int
    deletion: Disclosure
    count: int
    records: tuple[RecordClaim, ...]
    shards: tuple[ShardClaim, ...]
    model_before: Disclosure
    model_after: Disclosure
    held_out: HeldOut | None
    head_before: bytes
    head_after: bytes
    consistency: ConsistencyProof
    #: the signed payload it was read from (empty for a transcript being built); not compared
    payload: bytes = field(default=b"", compare=False)

    def disclosures(self) -> list[tuple[str, Disclosure]]:
        out = [("request deletion", self.deletion), ("model_before", self.model_before), ("model_after", self.model_after)]
        for i, r in enumerate(self.records):
            out += [(f"records[{i}] old_slice", r.old_slice), (f"records[{i}] first_use", r.first_use)]
        for sc in self.shards:
            out += [(f"shard {sc.shard} rollback", sc.rollback), (f"shard {sc.shard} final_checkpoint", sc.final_checkpoint)]
            out += [(f"shard {sc.shard} slices[{j}]", x.slice) for j, x in enumerate(sc.slices)]
        if self.held_out is not None:
            out.append(("held_out audit", self.held_out.audit))
            out += [(f"held_out slices[{j}]", x.slice) for j, x in enumerate(self.held_out.slices)]
        return out

    def held_out_records(self) -> tuple[HeldOutRecord, ...]:
        return () if self.held_out is None else self.held_out.records

    @classmethod
    def from_json(cls, statement: dict[str, Any], *, payload: bytes = b"", what: str = "transcript") -> Transcript:
        """The transcript of an in-toto statement whose outer form is checked already."""
        subject_digest, files = _subjects(statement["subject"], what)
        p = Fields(f"{what} predicate", statement["predicate"], _PREDICATE_FIELDS, {"held_out"})
        held_out = HeldOut.from_json(p.d["held_out"], f"{what} held_out") if "held_out" in p.d else None
        if type(p.d["version"]) is not int or p.d["version"] != TRANSCRIPT_VERSION:
            raise UnsupportedVersion(f"{what}: transcript version {str(p.d['version'])[:20]!r} is not supported (only 1)")
        req = Fields(f"{what} request", p.obj("request"), {"n", "deletion", "count"})
        # A request of held-out records only retrains nothing: records and shards are then empty.
        records, shards = _claims(p, what, may_be_empty=held_out is not None)
        lg = Fields(f"{what} log", p.obj("log"), {"head_before", "head_after", "consistency"})
        return cls(
            payload=payload,
            subject_digest=subject_digest,
            subject_files=files,
            origin=p.str("origin", 256),
            request=req.dec("n"),
            deletion=Disclosure.from_json(req.d["deletion"], f"{what} request deletion"),
            count=req.int("count", 0, 2**53),
            records=records,
            shards=shards,
            model_before=Disclosure.from_json(p.d["model_before"], f"{what} model_before"),
            model_after=Disclosure.from_json(p.d["model_after"], f"{what} model_after"),
            held_out=held_out,
            head_before=lg.str("head_before", 1 << 20).encode("utf-8"),
            head_after=lg.str("head_after", 1 << 20).encode("utf-8"),
            consistency=wrap(f"{what} log consistency", ConsistencyProof.from_json, lg.d["consistency"]),
        )

    @classmethod
    def parse(cls, statement: dict[str, Any], payload: bytes, what: str) -> Transcript:
        """:meth:`from_json` of a signed statement, keeping the payload it was read from."""
        return cls.from_json(statement, payload=payload, what=what)

    def predicate(self) -> dict[str, Any]:
        return {
            "version": TRANSCRIPT_VERSION,
            "origin": self.origin,
            "request": {"n": str(self.request), "deletion": self.deletion.to_json(), "count": self.count},
            "records": [r.to_json() for r in self.records],
            "shards": [s.to_json() for s in self.shards],
            **({"held_out": self.held_out.to_json()} if self.held_out is not None else {}),
            "model_before": self.model_before.to_json(),
            "model_after": self.model_after.to_json(),
            "log": {"head_before": self.head_before.decode("utf-8"), "head_after": self.head_after.decode("utf-8"),
                    "consistency": self.consistency.to_json()},
        }

    def to_json(self) -> dict[str, Any]:
        """The in-toto statement (not yet signed)."""
        if self.subject_digest is not None:
            subjects = [("model", {"sha256": self.subject_digest.hex()})]
        else:
            subjects = [(subject_file(d.hex()), {"sha256": h.hex()}) for d, h in self.subject_files]
        return make_statement(subjects=subjects, predicate_type=PREDICATE_DELETION, predicate=self.predicate())
