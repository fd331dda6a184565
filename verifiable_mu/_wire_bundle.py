"""The proof bundle's wire format (specs/08-bundle.md): member names, the commit-block layout,
and the typed JSON members -- the manifest, the log runs, the openings and the absence proofs.

The prover writes these objects with ``to_json``; the verifier reads them with the strict
``from_json`` (any deviation raises :class:`~verifiable_mu._errors.InvalidBundle`, an unknown
version :class:`~verifiable_mu._errors.UnsupportedVersion`). ``X.from_json(x.to_json()) == x``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ._canonical import hex32
from ._errors import InvalidBundle, UnsupportedVersion
from ._log import LogEntry
from ._modelcode import SOURCE_PATH_RE
from ._multiproof import MultiProof
from ._proofs import ConsistencyProof
from ._range import RangeProof
from ._records import RecordOpening
from ._sorted_tree import AbsenceProof
from ._wire_common import check_type_version, dec, expect_object, integer, wrap

__all__ = [
    "ABSENCE",
    "BUNDLE_TYPE",
    "BUNDLE_VERSION",
    "FINAL_HEAD",
    "LOG",
    "MANIFEST",
    "MEMBER_NAME_RE",
    "MODEL_SOURCE_DIR",
    "OPENINGS",
    "PUBKEY",
    "SLICES_DIR",
    "Absence",
    "CommitBlock",
    "LogDoc",
    "LogRun",
    "Manifest",
    "Openings",
    "checkpoint_member",
    "slice_member",
    "transcript_member",
]

BUNDLE_VERSION = 1
BUNDLE_TYPE = "vmu.bundle"
LOG_TYPE = "vmu.bundle-log"
OPENINGS_TYPE = "vmu.bundle-openings"
ABSENCE_TYPE = "vmu.bundle-absence"
MANIFEST = "manifest.json"
PUBKEY = "keys/signing-key.pub.pem"
FINAL_HEAD = "heads/final.note"
LOG = "log/entries.json"
OPENINGS = "records/openings.json"
SLICES_DIR = "slices/"
ABSENCE = "slices/absence.json"
MODEL_SOURCE_DIR = "model/source/"

#: Every member name a bundle of version 1 may hold.
MEMBER_NAME_RE = re.compile(
    r"(manifest\.json|keys/signing-key\.pub\.pem|heads/final\.note|transcripts/[0-9]{6}\.dsse\.json"
    r"|log/entries\.json|records/openings\.json|checkpoints/[0-9a-f]{64}\.safetensors|slices/[0-9a-f]{64}\.records"
    r"|slices/absence\.json|model/source/" + SOURCE_PATH_RE.pattern + ")"
)
_TRANSCRIPT_NAME = re.compile(r"transcripts/[0-9]{6}\.dsse\.json")


def transcript_member(n: int) -> str:
    """The member name of the signed transcript of deletion request ``n``."""
    return f"transcripts/{n:06d}.dsse.json"


def checkpoint_member(digest_hex: str) -> str:
    """The member name of the checkpoint file with content digest ``digest_hex``."""
    return f"checkpoints/{digest_hex}.safetensors"


def slice_member(root_hex: str) -> str:
    """The member name of the (key, commitment) records of the slice tree with root ``root_hex``."""
    return f"{SLICES_DIR}{root_hex}.records"


@dataclass(frozen=True, slots=True)
class CommitBlock:
    """The layout of the commit block at the start of the log (specs/06 section 5): the config
    entry, one slice entry per (shard, slice), the data-set entry, the audit entry, and one
    initial checkpoint entry per shard -- the one place this index arithmetic is written."""

    shards: int
    slices: int

    config: int = 0

    def slice(self, shard: int, slc: int) -> int:
        """The log index of the generation-0 slice entry (shard, slc)."""
        return 1 + shard * self.slices + slc

    @property
    def dataset(self) -> int:
        return 1 + self.shards * self.slices

    @property
    def audit(self) -> int:
        return 2 + self.shards * self.slices

    def checkpoint(self, shard: int) -> int:
        """The log index of shard ``shard``'s initial checkpoint entry."""
        return 3 + self.shards * self.slices + shard

    @property
    def end(self) -> int:
        """One past the block's last entry."""
        return 3 + self.shards * self.slices + self.shards


def _challenge(d: Any) -> tuple[str, bytes | None]:
    ch = expect_object(d, "manifest challenge", {"mode"}, {"challenge"})
    mode = ch["mode"]
    if mode == "fiat-shamir":
        if "challenge" in ch:
            raise InvalidBundle("a fiat-shamir manifest must not carry a challenge")
        return mode, None
    if mode == "interactive":
        c = ch.get("challenge")
        if not isinstance(c, str) or not re.fullmatch(r"(?:[0-9a-f]{2}){16,64}", c):
            raise InvalidBundle("manifest challenge must be 32 to 128 lower-case hex digits")
        return mode, bytes.fromhex(c)
    raise UnsupportedVersion(f"challenge mode {str(mode)[:40]!r} is not supported (fiat-shamir or interactive)")


def _transcript_names(ts: Any) -> tuple[str, ...]:
    if not isinstance(ts, list) or not ts or len(ts) > 100_000:
        raise InvalidBundle("manifest transcripts must be a non-empty list of member names")
    for t in ts:
        if not isinstance(t, str) or not _TRANSCRIPT_NAME.fullmatch(t):
            raise InvalidBundle(f"manifest transcript name {str(t)[:80]!r} is not valid")
    if len(set(ts)) != len(ts):
        raise InvalidBundle("manifest lists a transcript twice")
    return tuple(ts)


def _original(orig: Any) -> dict[int, tuple[int, ...]]:
    if not isinstance(orig, list) or not orig or len(orig) > 4096:
        raise InvalidBundle("manifest original must be a non-empty list of lineages")
    original: dict[int, tuple[int, ...]] = {}
    for i, lin in enumerate(orig):
        lin = expect_object(lin, f"manifest original[{i}]", {"shard", "checkpoints"})
        s = integer(lin["shard"], f"manifest original[{i}] shard", 0, 2**32 - 1)
        cks = lin["checkpoints"]
        if not isinstance(cks, list) or not cks or len(cks) > 10_000_000:
            raise InvalidBundle(f"manifest original[{i}] checkpoints must be a non-empty list")
        if s in original:
            raise InvalidBundle(f"manifest lists the original lineage of shard {s} twice")
        original[s] = tuple(dec(x, f"manifest original[{i}] checkpoint index") for x in cks)
    return original


def _members(mem: Any) -> dict[str, bytes]:
    if not isinstance(mem, dict):
        raise InvalidBundle("manifest members must be an object of name -> sha256")
    members = {}
    for k, v in mem.items():
        if not isinstance(k, str) or not MEMBER_NAME_RE.fullmatch(k) or k == MANIFEST:
            raise InvalidBundle(f"manifest lists an invalid member name {str(k)[:80]!r}")
        members[k] = hex32(v, what=f"manifest digest of {k}", exc=InvalidBundle)
    return members


@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    """``manifest.json`` (specs/08 section 2); unsigned, so nothing in it is trusted."""

    origin: str
    transcripts: tuple[str, ...]
    challenge_mode: str  # "fiat-shamir" or "interactive"
    challenge: bytes | None
    replay: int
    sample: tuple[int, ...]  # end checkpoint log indices, in draw order
    original: Mapping[int, tuple[int, ...]]  # shard -> checkpoint log indices of generation 0
    members: Mapping[str, bytes]  # name -> SHA-256
    generator: str
    # Informative only: the verifier ignores both (specs/08 section 2), so they are kept as read.
    created: Any = None
    disclosure: Any = None

    @classmethod
    def from_json(cls, d: Any) -> Manifest:
        if not isinstance(d, dict):
            raise InvalidBundle("manifest.json must be a JSON object")
        check_type_version(d, "manifest.json", BUNDLE_TYPE)
        expect_object(d, "manifest.json",
                      {"type", "version", "origin", "transcripts", "challenge", "replay", "sample", "original", "members"},
                      {"generator", "created", "disclosure"})
        origin = d["origin"]
        if not isinstance(origin, str) or not 0 < len(origin) <= 256:
            raise InvalidBundle("manifest origin must be a non-empty string of at most 256 characters")
        transcripts = _transcript_names(d["transcripts"])
        mode, challenge = _challenge(d["challenge"])
        replay = integer(d["replay"], "manifest replay", 0, 1_000_000)
        sample = d["sample"]
        if not isinstance(sample, list) or len(sample) > 1_000_000:
            raise InvalidBundle("manifest sample must be a list of log indices")
        samp = tuple(dec(x, "manifest sample index") for x in sample)
        original = _original(d["original"])
        members = _members(d["members"])
        gen = d.get("generator", "")
        if not isinstance(gen, str):
            raise InvalidBundle("manifest generator must be a string")
        return cls(origin=origin, transcripts=transcripts, challenge_mode=mode, challenge=challenge, replay=replay,
                   sample=samp, original=MappingProxyType(original), members=MappingProxyType(members),
                   generator=gen[:200], created=d.get("created"), disclosure=d.get("disclosure"))

    def to_json(self) -> dict[str, Any]:
        ch: dict[str, Any] = {"mode": self.challenge_mode}
        if self.challenge is not None:
            ch["challenge"] = self.challenge.hex()
        out: dict[str, Any] = {
            "type": BUNDLE_TYPE,
            "version": BUNDLE_VERSION,
            "origin": self.origin,
            "generator": self.generator,
            "transcripts": list(self.transcripts),
            "challenge": ch,
            "replay": self.replay,
            "sample": [str(i) for i in self.sample],
            "original": [{"shard": s, "checkpoints": [str(i) for i in ck]} for s, ck in self.original.items()],
            "members": {name: digest.hex() for name, digest in self.members.items()},
        }
        if self.created is not None:
            out["created"] = self.created
        if self.disclosure is not None:
            out["disclosure"] = self.disclosure
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class LogRun:
    """A contiguous run of disclosed log entries and its range proof against the final head."""

    start: int
    entries: tuple[LogEntry, ...]
    proof: RangeProof

    @property
    def end(self) -> int:
        return self.start + len(self.entries)

    @classmethod
    def from_json(cls, d: Any, what: str) -> LogRun:
        r = expect_object(d, what, {"entries", "proof"})
        proof = wrap(f"{what} proof", RangeProof.from_json, r["proof"])
        ents = r["entries"]
        if not isinstance(ents, list) or len(ents) != proof.end - proof.start:
            raise InvalidBundle(f"{what} must hold {proof.end - proof.start} entries, as its proof states")
        entries = tuple(wrap(f"{what} entry {j}", LogEntry.from_json, e) for j, e in enumerate(ents))
        for j, e in enumerate(entries):
            if e.index != proof.start + j:
                raise InvalidBundle(f"{what} entry {j} has index {e.index}, expected {proof.start + j}")
        return cls(start=proof.start, entries=entries, proof=proof)

    def to_json(self) -> dict[str, Any]:
        return {"entries": [e.to_json() for e in self.entries], "proof": self.proof.to_json()}


@dataclass(frozen=True, slots=True, kw_only=True)
class LogDoc:
    """``log/entries.json`` (specs/08 section 3): the disclosed runs, one consistency proof per
    transcript to the final head, and those from heads the verifier named (``known``; absent in
    bundles made without ``--known-head``)."""

    runs: tuple[LogRun, ...]
    consistency: tuple[ConsistencyProof, ...]
    known: tuple[ConsistencyProof, ...] | None = None

    @classmethod
    def from_json(cls, d: Any) -> LogDoc:
        if not isinstance(d, dict):
            raise InvalidBundle(f"{LOG} must be a JSON object")
        check_type_version(d, LOG, LOG_TYPE)
        expect_object(d, LOG, {"type", "version", "runs", "consistency"}, {"known"})
        runs_j = d["runs"]
        if not isinstance(runs_j, list) or not runs_j:
            raise InvalidBundle(f"{LOG} runs must be a non-empty list")
        runs: list[LogRun] = []
        for i, r in enumerate(runs_j):
            run = LogRun.from_json(r, f"{LOG} run {i}")
            if runs and run.start < runs[-1].end:
                raise InvalidBundle(f"{LOG} runs must be sorted and must not overlap (run {i} starts at {run.start})")
            if runs and run.proof.tree_size != runs[0].proof.tree_size:
                raise InvalidBundle(f"{LOG} run {i} is proven against another tree size than run 0")
            runs.append(run)
        cons_j = d["consistency"]
        if not isinstance(cons_j, list):
            raise InvalidBundle(f"{LOG} consistency must be a list")
        cons = tuple(wrap(f"{LOG} consistency proof {i}", ConsistencyProof.from_json, c) for i, c in enumerate(cons_j))
        known = None
        if "known" in d:
            known_j = d["known"]
            if not isinstance(known_j, list) or len(known_j) > 64:
                raise InvalidBundle(f"{LOG} known must be a list of at most 64 consistency proofs")
            known = tuple(wrap(f"{LOG} known proof {i}", ConsistencyProof.from_json, c) for i, c in enumerate(known_j))
        return cls(runs=tuple(runs), consistency=cons, known=known)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": LOG_TYPE, "version": 1, "runs": [r.to_json() for r in self.runs],
                               "consistency": [c.to_json() for c in self.consistency]}
        if self.known is not None:
            out["known"] = [c.to_json() for c in self.known]
        return out


_OPENING_PARTS = ("deleted", "audit", "training")


@dataclass(frozen=True, slots=True, kw_only=True)
class Openings:
    """``records/openings.json`` (specs/08 section 4): the opened records, by part."""

    deleted: tuple[RecordOpening, ...]
    audit: tuple[RecordOpening, ...]
    training: tuple[RecordOpening, ...]
    audit_proof: MultiProof | None = None  # present when the audit set is sampled

    @classmethod
    def from_json(cls, d: Any) -> Openings:
        """Strict parse. An element that is already a :class:`RecordOpening` is taken as it is
        (a reader that converted each opening while streaming the member)."""
        if not isinstance(d, dict):
            raise InvalidBundle(f"{OPENINGS} must be a JSON object")
        check_type_version(d, OPENINGS, OPENINGS_TYPE)
        expect_object(d, OPENINGS, {"type", "version", *_OPENING_PARTS}, {"audit_proof"})
        parts: dict[str, tuple[RecordOpening, ...]] = {}
        for part in _OPENING_PARTS:
            lst = d[part]
            if not isinstance(lst, list):
                raise InvalidBundle(f"{OPENINGS} {part} must be a list")
            parts[part] = tuple(o if isinstance(o, RecordOpening)
                                else wrap(f"{OPENINGS} {part}[{i}]", RecordOpening.from_json, o) for i, o in enumerate(lst))
        proof = None
        if "audit_proof" in d:
            proof = wrap(f"{OPENINGS} audit_proof", MultiProof.from_json, d["audit_proof"])
            if len(proof.positions) < len(parts["audit"]):  # more: deleted audit records, checked in step 16
                raise InvalidBundle(f"{OPENINGS} audit_proof must prove a position for every audit opening "
                                    f"({len(parts['audit'])}), it proves {len(proof.positions)}")
        return cls(deleted=parts["deleted"], audit=parts["audit"], training=parts["training"], audit_proof=proof)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": OPENINGS_TYPE, "version": 1,
                               **{p: [o.to_json() for o in getattr(self, p)] for p in _OPENING_PARTS}}
        if self.audit_proof is not None:
            out["audit_proof"] = self.audit_proof.to_json()
        return out


@dataclass(frozen=True, slots=True)
class Absence:
    """``slices/absence.json`` (specs/08 section 4b): per slice-tree root, an absence proof of
    the deleted keys in that tree."""

    proofs: Mapping[bytes, AbsenceProof]

    @classmethod
    def from_json(cls, d: Any) -> Absence:
        if not isinstance(d, dict):
            raise InvalidBundle(f"{ABSENCE} must be a JSON object")
        check_type_version(d, ABSENCE, ABSENCE_TYPE)
        expect_object(d, ABSENCE, {"type", "version", "slices"})
        if not isinstance(d["slices"], list):
            raise InvalidBundle(f"{ABSENCE} slices must be a list")
        out: dict[bytes, AbsenceProof] = {}
        for i, item in enumerate(d["slices"]):
            what = f"{ABSENCE} slices[{i}]"
            if not isinstance(item, dict) or set(item) != {"root", "proof"}:
                raise InvalidBundle(f"{what} must be an object with exactly root and proof")
            root = hex32(item["root"], what=f"{what} root", exc=InvalidBundle)
            if root in out:
                raise InvalidBundle(f"{what}: root {root.hex()[:16]}... is listed twice")
            out[root] = wrap(f"{what} proof", AbsenceProof.from_json, item["proof"])
        return cls(MappingProxyType(out))

    def to_json(self) -> dict[str, Any]:
        return {"type": ABSENCE_TYPE, "version": 1,
                "slices": [{"root": r.hex(), "proof": self.proofs[r].to_json()} for r in sorted(self.proofs)]}
