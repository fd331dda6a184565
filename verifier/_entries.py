"""Typed views of log entry bodies and of the deletion transcript predicate (version 1).

The log stores bodies as free JSON objects; the verifier reads them only through these parsers,
which check every field's type and refuse unknown or missing fields (InvalidBundle, exit 2).
Field meanings: specs/06-training.md (config, slice, dataset, audit, checkpoint, step, model),
specs/07-deletion-transcript.md (deletion, transcript), and specs/08-bundle.md.
"""

from __future__ import annotations

import builtins
import re
from dataclasses import dataclass
from typing import Any

from verifiable_mu._canonical import hex32
from verifiable_mu._dsse import PREDICATE_DELETION
from verifiable_mu._errors import InvalidBundle, MalformedInput, UnsupportedVersion
from verifiable_mu._log import LogEntry
from verifiable_mu._modelcode import parse_code
from verifiable_mu._platform import FINGERPRINT_FIELDS, PLATFORM_FIELDS
from verifiable_mu._proofs import ConsistencyProof, InclusionProof
from verifiable_mu._sorted_tree import AbsenceProof, MembershipProof, NonMembershipProof

from ._errors import EntryKindMismatch

__all__ = [
    "PREDICATE_DELETION",
    "AuditBody",
    "CheckpointBody",
    "ConfigBody",
    "DatasetBody",
    "DeletionBody",
    "Disclosure",
    "ModelBody",
    "RecordClaim",
    "ShardClaim",
    "SliceBody",
    "SliceClaim",
    "StepBody",
    "Transcript",
]

#: A per-file subject of a deletion transcript (specs/07).
_SUBJECT_FILE = re.compile(r"checkpoints/([0-9a-f]{64})\.safetensors")

_DEC = re.compile(r"0|[1-9][0-9]{0,18}")
_FLOAT = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:e[-+]?[0-9]+)?")
_U32 = 2**32 - 1


class _Body:
    def __init__(self, what: str, d: Any, fields: set[str], optional: set[str] = set()) -> None:  # noqa: B006
        if not isinstance(d, dict):
            raise InvalidBundle(f"{what} must be a JSON object")
        missing = fields - set(d)
        if missing:
            raise InvalidBundle(f"{what} lacks field(s): {', '.join(sorted(missing))}")
        extra = set(d) - fields - optional
        if extra:
            raise InvalidBundle(f"{what} has unknown field(s): {', '.join(sorted(map(str, extra)))[:200]}")
        self.what, self.d = what, d

    def int(self, k: builtins.str, lo: builtins.int = 0, hi: builtins.int = _U32) -> builtins.int:
        v = self.d[k]
        if type(v) is not int or not lo <= v <= hi:
            raise InvalidBundle(f"{self.what}: {k} must be an integer in [{lo}, {hi}]")
        return v

    def dec(self, k: builtins.str) -> builtins.int:
        v = self.d[k]
        if not isinstance(v, str) or not _DEC.fullmatch(v) or int(v) >= 2**63:
            raise InvalidBundle(f"{self.what}: {k} must be a decimal string")
        return int(v)

    def hex(self, k: builtins.str) -> bytes:
        return hex32(self.d[k], what=f"{self.what}: {k}", exc=InvalidBundle)

    def hexlist(self, k: builtins.str, max_len: builtins.int = 10_000_000) -> tuple[bytes, ...]:
        v = self.d[k]
        if not isinstance(v, list) or len(v) > max_len:
            raise InvalidBundle(f"{self.what}: {k} must be a list of hex digests")
        return tuple(hex32(x, what=f"{self.what}: {k}[{i}]", exc=InvalidBundle) for i, x in enumerate(v))

    def str(self, k: builtins.str, max_len: builtins.int = 1024) -> builtins.str:
        v = self.d[k]
        if not isinstance(v, str) or len(v) > max_len:
            raise InvalidBundle(f"{self.what}: {k} must be a string of at most {max_len} characters")
        return v

    def obj(self, k: builtins.str) -> dict[builtins.str, Any]:
        v = self.d[k]
        if not isinstance(v, dict):
            raise InvalidBundle(f"{self.what}: {k} must be a JSON object")
        return v


def _expect(e: LogEntry, kind: str) -> str:
    # Bodies are parsed only after steps 8-9 proved the entry under a signed head: an entry of
    # another kind than the claim says is a false claim (exit 1), named by the step that made it.
    if e.kind != kind:
        raise EntryKindMismatch(f"log entry {e.index} is of kind {e.kind!r}, the claim says {kind!r}")
    return f"log entry {e.index} ({kind})"


def _float_str(b: _Body, k: str) -> float:
    v = b.str(k, 64)
    if not _FLOAT.fullmatch(v):
        raise InvalidBundle(f"{b.what}: {k} must be a decimal number string")
    return float(v)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigBody:
    index: int
    shards: int
    slices: int
    epochs: int
    stage_epochs: int
    checkpoint_every: int
    seed: int
    batch_size: int
    lr: str
    model: dict[str, Any]
    hyper: dict[str, Any]
    platform: dict[str, Any]
    n_train: int
    portable: bool = False
    compact: bool = False  # format 2: step entries carry no batch list (specs/06 section 5)

    @classmethod
    def parse(cls, e: LogEntry) -> ConfigBody:
        what = _expect(e, "config")
        b = _Body(
            what,
            e.body,
            {"format", "shards", "slices", "epochs", "stage_epochs", "checkpoint_every", "seed", "assignment",
             "model", "hyper", "platform", "n_train", "data_digest"},
        )
        fmt = b.d["format"]
        if fmt not in (1, 2) or type(fmt) is not int:
            raise UnsupportedVersion(f"{what}: log format {str(fmt)[:20]!r} is not supported (only 1 and 2)")
        if b.d["assignment"] != "sha256-rank-v1":
            raise UnsupportedVersion(f"{what}: assignment {str(b.d['assignment'])[:40]!r} is not supported")
        hyper = _Body(f"{what} hyper", b.obj("hyper"), {"lr", "momentum", "weight_decay", "batch_size"},
                      {"arithmetic", "dp"})
        arithmetic = hyper.d.get("arithmetic")
        if (fmt, arithmetic) not in ((1, None), (2, "float32"), (2, "portable-v1")):
            raise UnsupportedVersion(
                f"{what}: log format {fmt} with arithmetic {str(arithmetic)[:40]!r} is not supported (format 1 has "
                "no arithmetic field and float32 steps; format 2 has arithmetic 'float32' or 'portable-v1')"
            )
        for k in ("lr", "momentum", "weight_decay"):
            _float_str(hyper, k)
        if "dp" in hyper.d:  # specs/06 section 3b: DP-SGD, float32 steps only
            if arithmetic != "float32":
                raise UnsupportedVersion(f"{what}: DP-SGD is defined for float32 steps only, not {str(arithmetic)[:40]!r}")
            dp = _Body(f"{what} hyper dp", hyper.obj("dp"), {"clip", "noise_multiplier", "delta"})
            for k in ("clip", "noise_multiplier", "delta"):
                _float_str(dp, k)
            clip, noise, delta = (float(dp.d[k]) for k in ("clip", "noise_multiplier", "delta"))
            if not (0 < clip < 1e6 and 0 < noise < 1e6 and 0 < delta < 1):
                raise InvalidBundle(f"{what} hyper dp: clip and noise multiplier must be > 0 and delta in (0, 1)")
        model = _Body(f"{what} model", b.obj("model"), {"name", "n_features", "n_classes", "input_shape", "hidden"},
                      {"code"})
        model.str("name", 256)
        if "code" in model.d:  # specs/06 section 5b: only a factory model carries (and must carry) it
            if model.d["name"] in ("mlp", "logreg", "cnn"):
                raise InvalidBundle(f"{what} model: the built-in model {model.d['name']!r} carries no code digests")
            try:
                parse_code(model.d["code"], f"{what} model code")
            except MalformedInput as x:
                raise InvalidBundle(str(x)) from x
        model.int("n_features", 1, 2**24)
        model.int("n_classes", 1, 2**20)
        model.int("hidden", 0, 2**20)
        shape = model.d["input_shape"]
        if not isinstance(shape, list) or not 1 <= len(shape) <= 8 or not all(type(x) is int and 0 < x < 2**24 for x in shape):
            raise InvalidBundle(f"{what} model: input_shape must be a list of positive integers")
        platform = _Body(f"{what} platform", b.obj("platform"), set(PLATFORM_FIELDS), set(FINGERPRINT_FIELDS))
        for k in FINGERPRINT_FIELDS:
            if k in platform.d:
                platform.str(k, 128)
        platform.str("torch", 64)
        platform.str("device", 16)
        platform.int("threads", 1, 256)
        if platform.d["dtype"] != "float32" or platform.d["deterministic"] is not True:
            raise UnsupportedVersion(f"{what}: only deterministic float32 training is supported")
        b.str("data_digest", 128)
        return cls(
            index=e.index,
            shards=b.int("shards", 1, 1 << 16),
            slices=b.int("slices", 1, 1 << 16),
            epochs=b.int("epochs", 1, 1 << 20),
            stage_epochs=b.int("stage_epochs", 1, 1 << 20),
            checkpoint_every=b.int("checkpoint_every", 0, 2**40),
            seed=b.dec("seed"),
            batch_size=hyper.int("batch_size", 1, 1 << 24),
            lr=hyper.d["lr"],
            model=model.d,
            hyper=hyper.d,
            platform=platform.d,
            n_train=b.int("n_train", 0, 2**40),
            portable=arithmetic == "portable-v1",
            compact=fmt == 2,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class SliceBody:
    index: int
    shard: int
    slice: int
    generation: int
    root: bytes
    size: int

    @classmethod
    def parse(cls, e: LogEntry) -> SliceBody:
        b = _Body(_expect(e, "slice"), e.body, {"shard", "slice", "generation", "root", "size"})
        return cls(index=e.index, shard=b.int("shard"), slice=b.int("slice"), generation=b.int("generation"),
                   root=b.hex("root"), size=b.dec("size"))


@dataclass(frozen=True, slots=True, kw_only=True)
class DatasetBody:
    index: int
    version: int
    root: bytes
    slices: int

    @classmethod
    def parse(cls, e: LogEntry) -> DatasetBody:
        b = _Body(_expect(e, "dataset"), e.body, {"version", "root", "slices"})
        return cls(index=e.index, version=b.int("version"), root=b.hex("root"), slices=b.int("slices"))


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditBody:
    index: int
    root: bytes
    size: int
    test_root: bytes | None = None  # the committed test split; absent in logs written before it was
    test_size: int | None = None

    @classmethod
    def parse(cls, e: LogEntry) -> AuditBody:
        b = _Body(_expect(e, "audit"), e.body, {"root", "size"}, {"test_root", "test_size"})
        if ("test_root" in b.d) != ("test_size" in b.d):
            raise InvalidBundle(f"{b.what}: test_root and test_size come together")
        if "test_root" in b.d:
            return cls(index=e.index, root=b.hex("root"), size=b.dec("size"), test_root=b.hex("test_root"),
                       test_size=b.dec("test_size"))
        return cls(index=e.index, root=b.hex("root"), size=b.dec("size"))


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointBody:
    index: int
    shard: int
    generation: int
    stage: int
    step: int
    digest: bytes

    @classmethod
    def parse(cls, e: LogEntry) -> CheckpointBody:
        b = _Body(_expect(e, "checkpoint"), e.body, {"shard", "generation", "stage", "step", "digest"})
        return cls(index=e.index, shard=b.int("shard"), generation=b.int("generation"), stage=b.int("stage"),
                   step=b.dec("step"), digest=b.hex("digest"))


_HEX = re.compile(r"[0-9a-f]*")


def _batch(b: _Body) -> tuple[bytes, ...]:
    """``batch``: the batch's commitments, 64 lower-case hex characters each, concatenated."""
    v = b.d["batch"]
    if not isinstance(v, str) or len(v) % 64 or len(v) > 64 << 24 or not _HEX.fullmatch(v):
        raise InvalidBundle(f"{b.what}: batch must be concatenated 64-character lower-case hex commitments")
    raw = bytes.fromhex(v)
    return tuple(raw[i : i + 32] for i in range(0, len(raw), 32))


@dataclass(frozen=True, slots=True, kw_only=True)
class StepBody:
    index: int
    shard: int
    generation: int
    stage: int
    epoch: int
    step: int
    seed: int
    lr: str
    batch: tuple[bytes, ...] | None  # format 1 only; format 2's batches follow from the committed order
    hints: tuple[tuple[int, int, int], ...] | None = None  # portable-v1 steps only

    @classmethod
    def parse(cls, e: LogEntry) -> StepBody:
        b = _Body(_expect(e, "step"), e.body, {"shard", "generation", "stage", "epoch", "step", "seed", "lr"},
                  {"hints", "batch"})
        return cls(index=e.index, shard=b.int("shard"), generation=b.int("generation"), stage=b.int("stage"),
                   epoch=b.int("epoch"), step=b.dec("step"), seed=b.dec("seed"), lr=b.str("lr", 64),
                   batch=_batch(b) if "batch" in b.d else None, hints=_hints(b) if "hints" in b.d else None)


#: At most this many rounding hints in one step (an honest step has about one per 2^13 gradient
#: values; specs/06 section 3a).
MAX_HINTS = 1 << 16


def _hints(b: _Body) -> tuple[tuple[int, int, int], ...]:
    v = b.d["hints"]
    if not isinstance(v, list) or len(v) > MAX_HINTS:
        raise InvalidBundle(f"{b.what}: hints must be a list of at most {MAX_HINTS} [tensor, element, value] triples")
    out = []
    for h in v:
        if (
            not isinstance(h, list) or len(h) != 3 or not all(type(x) is int for x in h)
            or not 0 <= h[0] < 1 << 16 or not -1 <= h[1] < 1 << 40 or not -(1 << 31) <= h[2] < 1 << 31
        ):  # fmt: skip
            raise InvalidBundle(f"{b.what}: each hint must be [tensor 0..65535, element -1..2^40, value 32-bit int]")
        out.append((h[0], h[1], h[2]))
    return tuple(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeletionBody:
    index: int
    request: int
    request_digest: bytes
    commitments: tuple[bytes, ...]
    shards: tuple[int, ...]

    @classmethod
    def parse(cls, e: LogEntry) -> DeletionBody:
        b = _Body(_expect(e, "deletion"), e.body, {"request", "request_digest", "commitments", "shards"})
        sh = b.d["shards"]
        if not isinstance(sh, list) or not all(type(x) is int and 0 <= x <= _U32 for x in sh):
            raise InvalidBundle(f"{b.what}: shards must be a list of shard numbers")
        return cls(index=e.index, request=b.dec("request"), request_digest=b.hex("request_digest"),
                   commitments=b.hexlist("commitments"), shards=tuple(sh))


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelBody:
    index: int
    reason: str
    shards: tuple[bytes, ...]
    digest: bytes
    request: int | None

    @classmethod
    def parse(cls, e: LogEntry) -> ModelBody:
        b = _Body(_expect(e, "model"), e.body, {"reason", "shards", "digest"}, {"request"})
        return cls(index=e.index, reason=b.str("reason", 32), shards=b.hexlist("shards", 1 << 16),
                   digest=b.hex("digest"), request=b.dec("request") if "request" in b.d else None)


# --- the transcript predicate ---------------------------------------------------------------


def _wrap(what: str, fn: Any, *args: Any) -> Any:
    """Call a core parser and turn its MalformedInput into InvalidBundle naming ``what``."""
    try:
        return fn(*args)
    except UnsupportedVersion as e:
        raise UnsupportedVersion(f"{what}: {e}") from e
    except MalformedInput as e:
        raise InvalidBundle(f"{what}: {e}") from e


@dataclass(frozen=True, slots=True, kw_only=True)
class Disclosure:
    """A log entry with its inclusion proof against the transcript's head_after."""

    entry: LogEntry
    inclusion: InclusionProof

    @classmethod
    def parse(cls, d: Any, what: str) -> Disclosure:
        b = _Body(what, d, {"entry", "inclusion"})
        entry = _wrap(f"{what} entry", LogEntry.from_json, b.d["entry"])
        inc = _wrap(f"{what} inclusion", InclusionProof.from_json, b.d["inclusion"])
        if inc.index != entry.index:
            raise InvalidBundle(f"{what}: inclusion proof is for index {inc.index}, the entry has index {entry.index}")
        return cls(entry=entry, inclusion=inc)


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordClaim:
    commitment: bytes
    key: bytes
    shard: int
    slice: int
    old_slice: Disclosure
    membership: MembershipProof
    first_use: Disclosure


@dataclass(frozen=True, slots=True, kw_only=True)
class SliceClaim:
    slice: Disclosure
    non_membership: tuple[NonMembershipProof, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class HeldOutRecord:
    commitment: bytes
    key: bytes
    split: str  # "test" or "audit"
    membership: MembershipProof  # in the committed tree of its split (the audit entry)


@dataclass(frozen=True, slots=True, kw_only=True)
class HeldOutSlice:
    slice: Disclosure
    absence: AbsenceProof  # of every held-out key of the request


@dataclass(frozen=True, slots=True, kw_only=True)
class HeldOut:
    records: tuple[HeldOutRecord, ...]
    audit: Disclosure
    slices: tuple[HeldOutSlice, ...]


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


@dataclass(frozen=True, slots=True, kw_only=True)
class Transcript:
    """A signature-checked deletion transcript (predicate version 1), parsed."""

    payload: bytes
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
    def parse(cls, statement: dict[str, Any], payload: bytes, what: str) -> Transcript:
        subj = statement["subject"]
        subject_digest = None
        files: list[tuple[bytes, bytes]] = []
        if len(subj) == 1 and subj[0].get("name") == "model":  # transcripts written before per-file subjects
            subject_digest = hex32(subj[0]["digest"]["sha256"], what=f"{what} subject digest", exc=InvalidBundle)
        else:
            for i, sj in enumerate(subj):
                name = sj.get("name")
                m = _SUBJECT_FILE.fullmatch(name) if isinstance(name, str) else None
                if m is None:
                    raise InvalidBundle(f"{what}: subject {i} is not named checkpoints/<64 hex>.safetensors (or the "
                                        "single subject 'model' of older transcripts)")
                files.append((bytes.fromhex(m.group(1)),
                              hex32(sj["digest"]["sha256"], what=f"{what} subject {i} digest", exc=InvalidBundle)))
        p = _Body(f"{what} predicate", statement["predicate"],
                  {"version", "origin", "request", "records", "shards", "model_before", "model_after", "log"},
                  {"held_out"})
        held_out = _parse_held_out(p.d["held_out"], f"{what} held_out") if "held_out" in p.d else None
        # A request of held-out records only retrains nothing: records and shards are then empty.
        may_be_empty = held_out is not None
        if type(p.d["version"]) is not int or p.d["version"] != 1:
            raise UnsupportedVersion(f"{what}: transcript version {str(p.d['version'])[:20]!r} is not supported (only 1)")
        req = _Body(f"{what} request", p.obj("request"), {"n", "deletion", "count"})
        records_j = p.d["records"]
        if not isinstance(records_j, list) or not (records_j or may_be_empty) or len(records_j) > 10_000_000:
            raise InvalidBundle(f"{what}: records must be a non-empty list")
        records = []
        for i, r in enumerate(records_j):
            rb = _Body(f"{what} records[{i}]", r,
                       {"commitment", "key", "shard", "slice", "old_slice", "membership", "first_use"})
            records.append(RecordClaim(
                commitment=rb.hex("commitment"), key=rb.hex("key"), shard=rb.int("shard"), slice=rb.int("slice"),
                old_slice=Disclosure.parse(rb.d["old_slice"], f"{what} records[{i}] old_slice"),
                membership=_wrap(f"{what} records[{i}] membership", MembershipProof.from_json, rb.d["membership"]),
                first_use=Disclosure.parse(rb.d["first_use"], f"{what} records[{i}] first_use"),
            ))
        shards_j = p.d["shards"]
        if not isinstance(shards_j, list) or not (shards_j or may_be_empty) or len(shards_j) > 1 << 16:
            raise InvalidBundle(f"{what}: shards must be a non-empty list")
        shards = []
        for i, s in enumerate(shards_j):
            w = f"{what} shards[{i}]"
            sb = _Body(w, s, {"shard", "from_stage", "generation", "rollback", "slices", "retraining", "final_checkpoint"})
            sl = sb.d["slices"]
            if not isinstance(sl, list) or len(sl) > 1 << 16:
                raise InvalidBundle(f"{w}: slices must be a list")
            slices = []
            for j, x in enumerate(sl):
                xb = _Body(f"{w} slices[{j}]", x, {"slice", "non_membership"})
                nm = xb.d["non_membership"]
                if not isinstance(nm, list) or len(nm) > 10_000_000:
                    raise InvalidBundle(f"{w} slices[{j}]: non_membership must be a list")
                slices.append(SliceClaim(
                    slice=Disclosure.parse(xb.d["slice"], f"{w} slices[{j}] slice"),
                    non_membership=tuple(_wrap(f"{w} slices[{j}] non_membership[{k}]", NonMembershipProof.from_json, q)
                                         for k, q in enumerate(nm)),
                ))
            rt = _Body(f"{w} retraining", sb.obj("retraining"), {"start", "end"})
            shards.append(ShardClaim(
                shard=sb.int("shard"), from_stage=sb.int("from_stage", 1), generation=sb.int("generation", 1),
                rollback=Disclosure.parse(sb.d["rollback"], f"{w} rollback"), slices=tuple(slices),
                retraining_start=rt.dec("start"), retraining_end=rt.dec("end"),
                final_checkpoint=Disclosure.parse(sb.d["final_checkpoint"], f"{w} final_checkpoint"),
            ))
        lg = _Body(f"{what} log", p.obj("log"), {"head_before", "head_after", "consistency"})
        return cls(
            payload=payload,
            subject_digest=subject_digest,
            subject_files=tuple(files),
            origin=p.str("origin", 256),
            request=req.dec("n"),
            deletion=Disclosure.parse(req.d["deletion"], f"{what} request deletion"),
            count=req.int("count", 0, 2**53),
            records=tuple(records),
            shards=tuple(shards),
            model_before=Disclosure.parse(p.d["model_before"], f"{what} model_before"),
            model_after=Disclosure.parse(p.d["model_after"], f"{what} model_after"),
            held_out=held_out,
            head_before=lg.str("head_before", 1 << 20).encode("utf-8"),
            head_after=lg.str("head_after", 1 << 20).encode("utf-8"),
            consistency=_wrap(f"{what} log consistency", ConsistencyProof.from_json, lg.d["consistency"]),
        )


def _parse_held_out(d: Any, what: str) -> HeldOut:
    """The ``held_out`` object of a transcript (specs/07): never empty when present."""
    b = _Body(what, d, {"records", "audit", "slices"})
    rj, sj = b.d["records"], b.d["slices"]
    if not isinstance(rj, list) or not rj or len(rj) > 10_000_000:
        raise InvalidBundle(f"{what}: records must be a non-empty list")
    if not isinstance(sj, list) or len(sj) > 1 << 32:
        raise InvalidBundle(f"{what}: slices must be a list")
    records = []
    for i, r in enumerate(rj):
        rb = _Body(f"{what} records[{i}]", r, {"commitment", "key", "split", "membership"})
        split = rb.d["split"]
        if split not in ("test", "audit"):
            raise InvalidBundle(f"{what} records[{i}]: split must be 'test' or 'audit'")
        records.append(HeldOutRecord(
            commitment=rb.hex("commitment"), key=rb.hex("key"), split=split,
            membership=_wrap(f"{what} records[{i}] membership", MembershipProof.from_json, rb.d["membership"]),
        ))
    slices = []
    for j, x in enumerate(sj):
        xb = _Body(f"{what} slices[{j}]", x, {"slice", "absence"})
        slices.append(HeldOutSlice(
            slice=Disclosure.parse(xb.d["slice"], f"{what} slices[{j}] slice"),
            absence=_wrap(f"{what} slices[{j}] absence", AbsenceProof.from_json, xb.d["absence"]),
        ))
    return HeldOut(records=tuple(records), audit=Disclosure.parse(b.d["audit"], f"{what} audit"), slices=tuple(slices))
