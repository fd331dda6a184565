"""Reading a proof bundle safely (specs/08-bundle.md; specs/09-verification.md steps 1-3).

Everything a bundle holds is hostile until checked. This module reads the zip with bounded
memory and time and turns every member into validated, frozen objects; any failure raises
:class:`~verifiable_mu._errors.InvalidBundle` (or :class:`UnsupportedVersion`) with a one-line
message naming the member. It checks *form* only: no signature or proof is checked here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from verifiable_mu._dsse import Envelope
from verifiable_mu._errors import InvalidBundle
from verifiable_mu._json import JsonBudget as _CoreBudget
from verifiable_mu._json import json_memory_estimate, parse_json_strict
from verifiable_mu._keys import VerifyingKey
from verifiable_mu._modelcode import MAX_SOURCE_BYTES, MAX_SOURCE_FILE_BYTES, MAX_SOURCE_FILES
from verifiable_mu._proofs import ConsistencyProof
from verifiable_mu._sorted_tree import AbsenceProof, SortedTree
from verifiable_mu._wire_bundle import (
    ABSENCE,
    BUNDLE_TYPE,
    BUNDLE_VERSION,
    FINAL_HEAD,
    LOG,
    MANIFEST,
    MEMBER_NAME_RE,
    MODEL_SOURCE_DIR,
    OPENINGS,
    PUBKEY,
    Absence,
    LogDoc,
    LogRun,
    Manifest,
    Openings,
)
from verifiable_mu._wire_checkpoint import checkpoint_content_digest, checkpoint_shapes
from verifiable_mu._wire_common import wrap as _wrap

from ._openings_stream import OpeningsReader

__all__ = [
    "BUNDLE_TYPE",
    "BUNDLE_VERSION",
    "Archive",
    "Bundle",
    "JsonBudget",
    "Limits",
    "LogRun",
    "Manifest",
    "Openings",
    "checkpoint_content_digest",
    "checkpoint_shapes",
    "load_file",
    "json_memory_estimate",
    "open_archive",
    "open_manifest",
    "parse_bundle",
    "parse_envelope",
    "parse_json_bounded",
    "parse_large_members",
    "parse_signed_members",
    "read_bundle",
]

#: The member-name pattern (the wire model's; this name kept for existing callers).
_NAME_RE = MEMBER_NAME_RE


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Resource bounds for reading an untrusted bundle (table in specs/09-verification.md,
    "Resource bounds"). Every bound is checked on sizes the bundle states (the file's size, the
    zip's central directory, a JSON text's token counts) *before* the memory is allocated."""

    max_archive_bytes: int = 4 * 1024**3
    max_members: int = 4096
    max_member_bytes: int = 256 * 1024**2
    max_total_bytes: int = 1024**3
    max_ratio: int = 200  # uncompressed / compressed, for members over ratio_floor bytes
    ratio_floor: int = 1024**2
    #: all members together expand to at most max_total_ratio x the archive's size + total_floor
    max_total_ratio: int = 64
    total_floor: int = 16 * 1024**2
    max_manifest_bytes: int = 16 * 1024**2
    max_json_bytes: int = 256 * 1024**2
    max_json_depth: int = 32
    #: estimated Python memory of one parsed JSON document, and of all documents of one bundle
    max_json_memory: int = 256 * 1024**2
    max_json_memory_total: int = 512 * 1024**2
    max_safetensors_header: int = 1024**2


_DEFAULT = Limits()


class JsonBudget(_CoreBudget):
    """What is left of :attr:`Limits.max_json_memory_total` for the JSON documents of one bundle."""

    __slots__ = ()

    def __init__(self, limits: Limits) -> None:
        super().__init__(limits.max_json_memory_total)


# --- the zip layer ------------------------------------------------------------------------


def _check_name(info: zipfile.ZipInfo, names: re.Pattern[str] = MEMBER_NAME_RE,
                holds: str = f"a bundle of version {BUNDLE_VERSION}") -> None:
    name = info.filename
    if "\x00" in name:
        raise InvalidBundle(f"archive member name {name!r} contains a NUL byte")
    if "\\" in name:
        raise InvalidBundle(f"archive member {name!r} uses a backslash (refused: path traversal on Windows)")
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        raise InvalidBundle(f"archive member {name!r} is an absolute path")
    if any(part == ".." for part in name.split("/")):
        raise InvalidBundle(f"archive member {name!r} contains '..' (path traversal)")
    if name.endswith("/"):
        raise InvalidBundle(f"archive member {name!r} is a directory entry (a bundle holds files only)")
    mode = info.external_attr >> 16
    if info.create_system == 3 and mode and stat.S_ISLNK(mode):
        raise InvalidBundle(f"archive member {name!r} is a symbolic link")
    if info.flag_bits & 0x1:
        raise InvalidBundle(f"archive member {name!r} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise InvalidBundle(f"archive member {name!r} uses compression method {info.compress_type} (only stored or deflate)")
    if not names.fullmatch(name):
        raise InvalidBundle(f"archive member {name[:200]!r} is not a member {holds} can hold")


@dataclass(frozen=True, slots=True)
class Archive:
    """A zip archive whose central directory passed step 1; nothing is inflated yet."""

    zip: zipfile.ZipFile = field(repr=False)
    infos: Mapping[str, zipfile.ZipInfo] = field(repr=False)
    size: int

    def read(self, name: str, limits: Limits, *, max_bytes: int | None = None) -> bytes:
        """Inflate one member: never more than the size its central-directory entry states
        (bounded in step 1), nor more than ``max_bytes``."""
        info = self.infos[name]
        if max_bytes is not None and info.file_size > max_bytes:
            raise InvalidBundle(f"archive member {name!r} is {info.file_size} bytes (at most {max_bytes})")
        try:
            with self.zip.open(info) as f:
                blob = f.read(info.file_size + 1)
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error, ValueError, NotImplementedError, struct.error) as e:
            raise InvalidBundle(f"archive member {name!r} cannot be read (truncated or damaged): {e}") from e
        if len(blob) != info.file_size:
            raise InvalidBundle(f"archive member {name!r} does not have the size its header states")
        return blob


def open_archive(
    data: bytes,
    limits: Limits = Limits(),
    *,
    names: re.Pattern[str] = MEMBER_NAME_RE,
    max_members: int | None = None,
    kind: str = "a proof bundle",
    holds: str = f"a bundle of version {BUNDLE_VERSION}",
) -> Archive:
    """Step 1: open the zip in ``data`` and check its central directory: names, counts and the
    sizes every member declares, against bounds derived from the archive's own size. Nothing is
    inflated here; :meth:`Archive.read` never inflates a member beyond its declared size.

    A bundle by default; an audit package (specs/12, step A1) passes its own member ``names``,
    ``max_members`` (at most ``limits.max_members``), ``kind`` and ``holds`` for the messages."""
    noun = kind.split()[-1]
    if len(data) > limits.max_archive_bytes:
        raise InvalidBundle(f"the {noun} is {len(data)} bytes (at most {limits.max_archive_bytes})")
    if not data.startswith(b"PK"):
        raise InvalidBundle(f"not {kind}: the file is not a zip archive")
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, struct.error) as e:
        raise InvalidBundle(f"not a readable zip archive (truncated or damaged): {e}") from e
    infos = z.infolist()
    most = limits.max_members if max_members is None else min(max_members, limits.max_members)
    if len(infos) > most:
        raise InvalidBundle(f"the archive has {len(infos)} members (at most {most})")
    seen: dict[str, zipfile.ZipInfo] = {}
    total = packed = 0
    max_total = min(limits.max_total_bytes, limits.max_total_ratio * len(data) + limits.total_floor)
    for info in infos:
        _check_name(info, names, holds)
        if info.filename in seen:
            raise InvalidBundle(f"archive member {info.filename!r} appears twice (duplicate entry)")
        seen[info.filename] = info
        if info.file_size > limits.max_member_bytes:
            raise InvalidBundle(
                f"archive member {info.filename!r} is {info.file_size} bytes (at most {limits.max_member_bytes})"
            )
        total += info.file_size
        packed += info.compress_size
        if total > max_total:
            raise InvalidBundle(f"the archive expands to more than {max_total} bytes (at most {limits.max_total_ratio} "
                                f"times its own size of {len(data)} bytes, plus {limits.total_floor}; zip bomb?)")
        if info.file_size > limits.ratio_floor and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise InvalidBundle(
                f"archive member {info.filename!r} expands {info.file_size // max(info.compress_size, 1)}-fold "
                f"(at most {limits.max_ratio}; zip bomb?)"
            )
    if packed > len(data):
        raise InvalidBundle(f"the archive's members claim {packed} compressed bytes in a file of {len(data)} "
                            "(overlapping members; zip bomb?)")
    return Archive(zip=z, infos=MappingProxyType(seen), size=len(data))


# --- bounded JSON -------------------------------------------------------------------------

def parse_json_bounded(
    data: bytes,
    *,
    what: str,
    max_bytes: int,
    max_depth: int,
    exc: type[Exception] = InvalidBundle,
    max_memory: int = _DEFAULT.max_json_memory,
    budget: JsonBudget | None = None,
) -> Any:
    """Strict JSON for untrusted bundle members: :func:`verifiable_mu._json.parse_json_strict`
    with the bundle's bounds (size, depth, and the memory the parse would take, checked against
    ``max_memory`` and what is left of ``budget`` before anything is parsed)."""
    return parse_json_strict(data, what=what, exc=exc, max_bytes=max_bytes, max_depth=max_depth,
                             max_memory=max_memory, budget=budget)


def parse_envelope(data: bytes, what: str, limits: Limits, budget: JsonBudget | None = None) -> Envelope:
    """A DSSE envelope member (strict profile of verifiable_mu._dsse), parsed with the bounded parser."""
    obj = parse_json_bounded(data, what=what, max_bytes=limits.max_json_bytes, max_depth=3,
                             max_memory=limits.max_json_memory, budget=budget)
    return _wrap(what, Envelope.from_json, obj)


# --- parsed members -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Bundle:
    """A bundle whose members are all present, listed, and well formed (nothing verified yet)."""

    manifest: Manifest
    public_key: VerifyingKey
    final_head: bytes
    transcripts: tuple[Envelope, ...]
    runs: tuple[LogRun, ...]
    consistency: tuple[ConsistencyProof, ...]
    openings: Openings
    checkpoints: Mapping[bytes, bytes] = field(repr=False)  # content digest (from the name) -> file bytes
    member_bytes: Mapping[str, int] = field(repr=False)
    # slice-tree root (from the name, rebuilt from the content) -> its records' commitments in key order
    slice_records: Mapping[bytes, tuple[bytes, ...]] = field(repr=False, default_factory=dict)
    # slice-tree root -> its records' keys in key order (the same members)
    slice_keys: Mapping[bytes, tuple[bytes, ...]] = field(repr=False, default_factory=dict)
    # slice-tree root -> the absence proof of the deleted keys in that tree (slices/absence.json)
    absence: Mapping[bytes, AbsenceProof] = field(repr=False, default_factory=dict)
    # consistency proofs from heads the verifier named to the prover (--known-head) to the final head
    known: tuple[ConsistencyProof, ...] = ()
    # a factory model's shipped source files (model/source/<path>): relative path -> bytes, unchecked
    # here (step 18 checks them against the config's committed digests before anything runs)
    model_source: Mapping[str, bytes] = field(repr=False, default_factory=dict)


def _json(members: Mapping[str, bytes], name: str, limits: Limits, budget: JsonBudget | None) -> Any:
    return parse_json_bounded(members[name], what=name, max_bytes=limits.max_json_bytes, max_depth=limits.max_json_depth,
                              max_memory=limits.max_json_memory, budget=budget)


def _parse_log(d: Any) -> tuple[tuple[LogRun, ...], tuple[ConsistencyProof, ...], tuple[ConsistencyProof, ...]]:
    doc = LogDoc.from_json(d)
    return doc.runs, doc.consistency, doc.known or ()


def _parse_openings(d: Any) -> Openings:
    return Openings.from_json(d)


def openings_fit_whole(data: bytes, limits: Limits) -> bool:
    """Whether ``records/openings.json`` is parsed whole (the usual bounded parse) rather than one
    opening at a time (:func:`parse_openings_streamed`, for members above the memory bound)."""
    return json_memory_estimate(data) <= min(limits.max_json_memory, limits.max_json_memory_total)


def parse_openings_streamed(data: bytes, limits: Limits, budget: JsonBudget | None = None) -> Openings:
    """``records/openings.json`` parsed one opening at a time, for a member too large to parse
    whole within :attr:`Limits.max_json_memory`: the top-level object's values must be scalars,
    flat objects (``audit_proof``) or arrays of flat objects (the openings); each piece is
    checked against the memory bound before it is parsed, and each opening is converted at
    once, so the peak is the member's text and the parsed openings, never every opening's JSON
    objects together. Same fields and checks as the whole parse (:func:`_parse_openings`)."""
    if len(data) > limits.max_json_bytes:
        raise InvalidBundle(f"{OPENINGS} is too large ({len(data)} bytes > {limits.max_json_bytes})")
    cap = limits.max_json_memory if budget is None else min(limits.max_json_memory, budget.left)
    reader = OpeningsReader(data, cap)
    d = reader.document()
    if budget is not None:
        if reader.retained > budget.left:
            raise InvalidBundle(f"{OPENINGS}: the openings would take about {reader.retained >> 20} MiB of memory "
                                f"(at most {budget.left >> 20} MiB left for this bundle)")
        budget.left -= reader.retained
    return _parse_openings(d)


# --- the bundle ------------------------------------------------------------------------------


def open_manifest(archive: Archive, limits: Limits = Limits()) -> tuple[Manifest, dict[str, bytes]]:
    """Step 2: inflate and parse the manifest (and nothing else before it), check the member list
    against it, then inflate every other member (each bounded by its declared size, step 1) and
    check its SHA-256. Returns the manifest and every member's bytes."""
    if MANIFEST not in archive.infos:
        raise InvalidBundle("not a proof bundle: the archive has no manifest.json")
    raw = archive.read(MANIFEST, limits, max_bytes=limits.max_manifest_bytes)
    manifest = Manifest.from_json(parse_json_bounded(raw, what=MANIFEST, max_bytes=limits.max_manifest_bytes,
                                                     max_depth=limits.max_json_depth, max_memory=limits.max_json_memory))
    names = set(archive.infos) - {MANIFEST}
    listed = set(manifest.members)
    if names - listed:
        raise InvalidBundle(f"archive member {sorted(names - listed)[0]!r} is not listed in the manifest")
    if listed - names:
        raise InvalidBundle(f"member {sorted(listed - names)[0]!r} listed in the manifest is missing from the archive")
    for required in (PUBKEY, FINAL_HEAD, LOG, OPENINGS, *manifest.transcripts):
        if required not in names:
            raise InvalidBundle(f"the bundle lacks the member {required!r}")
    extra_t = {n for n in names if n.startswith("transcripts/")} - set(manifest.transcripts)
    if extra_t:
        raise InvalidBundle(f"transcript {sorted(extra_t)[0]!r} is not listed in the manifest's transcripts")
    members = {MANIFEST: raw}
    for name in sorted(names):
        blob = archive.read(name, limits)
        if hashlib.sha256(blob).digest() != manifest.members[name]:
            raise InvalidBundle(f"member {name!r} does not match its SHA-256 in the manifest")
        members[name] = blob
    return manifest, members


#: Members parsed before the signatures are checked (steps 4-6 need them); the others, the large
#: ones, are parsed only after step 6 (:func:`parse_large_members`).
SIGNED_MEMBERS = (PUBKEY, FINAL_HEAD, "transcripts/")


def parse_signed_members(members: Mapping[str, bytes], manifest: Manifest, limits: Limits = Limits(),
                         budget: JsonBudget | None = None) -> Bundle:
    """Step 3, first part: the public key, the final head and the transcripts' DSSE envelopes, the
    members whose signatures steps 4 to 6 check. The large members are left unparsed (empty)."""
    key = _wrap(PUBKEY, VerifyingKey.from_pem, members[PUBKEY])
    envs = tuple(parse_envelope(members[name], name, limits, budget) for name in manifest.transcripts)
    return Bundle(
        manifest=manifest,
        public_key=key,
        final_head=members[FINAL_HEAD],
        transcripts=envs,
        runs=(),
        consistency=(),
        openings=Openings(deleted=(), audit=(), training=()),
        checkpoints=MappingProxyType({}),
        member_bytes=MappingProxyType({n: len(b) for n, b in members.items()}),
    )


def parse_large_members(bundle: Bundle, members: Mapping[str, bytes], limits: Limits = Limits(),
                        budget: JsonBudget | None = None) -> Bundle:
    """Step 3, second part (run after the signatures of steps 4 to 6 verified): the log runs, the
    openings, the checkpoint files and the slice-records members."""
    runs, cons, known = _parse_log(_json(members, LOG, limits, budget))
    if len(cons) != len(bundle.transcripts):
        raise InvalidBundle(f"{LOG} must hold one consistency proof per transcript ({len(bundle.transcripts)}), "
                            f"it has {len(cons)}")
    raw = members[OPENINGS]
    if openings_fit_whole(raw, limits):
        openings = _parse_openings(_json(members, OPENINGS, limits, budget))
    else:  # too large to parse whole within the bound: one opening at a time (specs/09 step 3)
        openings = parse_openings_streamed(raw, limits, budget)
    ckpts = {}
    for name in sorted(members):
        if name.startswith("checkpoints/"):
            digest = bytes.fromhex(name[len("checkpoints/") : -len(".safetensors")])
            got = checkpoint_content_digest(members[name], what=name, max_header=limits.max_safetensors_header)
            if got != digest:
                raise InvalidBundle(f"{name} holds a checkpoint whose content digest is {got.hex()[:16]}...")
            ckpts[digest] = members[name]
    slices, slice_keys = {}, {}
    for name in sorted(members):
        if name.startswith("slices/") and name.endswith(".records"):
            root = bytes.fromhex(name[len("slices/") : -len(".records")])
            slice_keys[root], slices[root] = _parse_slice_records(members[name], root, name)
    source = {name[len(MODEL_SOURCE_DIR):]: blob for name, blob in sorted(members.items())
              if name.startswith(MODEL_SOURCE_DIR)}
    if len(source) > MAX_SOURCE_FILES:
        raise InvalidBundle(f"the bundle ships {len(source)} model source files (at most {MAX_SOURCE_FILES})")
    for name, blob in source.items():
        if len(blob) > MAX_SOURCE_FILE_BYTES:
            raise InvalidBundle(f"{MODEL_SOURCE_DIR}{name} is {len(blob)} bytes (at most {MAX_SOURCE_FILE_BYTES})")
    if sum(map(len, source.values())) > MAX_SOURCE_BYTES:
        raise InvalidBundle(f"the bundle's model source files hold more than {MAX_SOURCE_BYTES} bytes")
    return dataclasses.replace(
        bundle,
        model_source=MappingProxyType(source),
        runs=runs,
        consistency=cons,
        known=known,
        openings=openings,
        checkpoints=MappingProxyType(ckpts),
        slice_records=MappingProxyType(slices),
        slice_keys=MappingProxyType(slice_keys),
        absence=_parse_absence(_json(members, ABSENCE, limits, budget)) if ABSENCE in members else MappingProxyType({}),
    )


def _parse_absence(d: Any) -> Mapping[bytes, AbsenceProof]:
    """``slices/absence.json``: one absence proof of the deleted keys per slice tree whose records
    the bundle does not disclose (specs/08-bundle.md section 4b)."""
    return Absence.from_json(d).proofs


def parse_bundle(members: Mapping[str, bytes], manifest: Manifest, limits: Limits = Limits()) -> Bundle:
    """Step 3: parse every member into validated objects (nothing is verified yet)."""
    budget = JsonBudget(limits)
    return parse_large_members(parse_signed_members(members, manifest, limits, budget), members, limits, budget)


def _parse_slice_records(data: bytes, root: bytes, name: str) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """A ``slices/<root>.records`` member: 64-byte ``key || commitment`` records, strictly
    ascending by key, whose slice tree has the root the name says (specs/08-bundle.md 4a)."""
    if len(data) % 64:
        raise InvalidBundle(f"{name} is not a whole number of 64-byte records")
    keys = [data[i : i + 32] for i in range(0, len(data), 64)]
    commits = tuple(data[i + 32 : i + 64] for i in range(0, len(data), 64))
    if any(a >= b for a, b in zip(keys, keys[1:], strict=False)):
        raise InvalidBundle(f"{name} must list its records in strictly ascending key order")
    tree = SortedTree.from_buffers(b"".join(keys), b"".join(commits))
    if tree.root != root:
        raise InvalidBundle(f"{name} holds records whose slice tree has root {tree.root.hex()[:16]}..., not its name")
    return tuple(keys), commits


def load_file(path: str, limits: Limits = Limits()) -> bytes:
    """Read a bundle file by its real size (never a read that reserves the largest allowed size)."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_size > limits.max_archive_bytes:
                raise InvalidBundle(f"the bundle is {st.st_size} bytes (at most {limits.max_archive_bytes})")
            if stat.S_ISREG(st.st_mode):
                data = f.read(st.st_size + 1)  # one byte more: a file that grew is noticed below
            else:  # a pipe or device: no size to trust, so read in chunks up to the bound
                buf = bytearray()
                while len(buf) <= limits.max_archive_bytes:
                    chunk = f.read(1 << 20)
                    if not chunk:
                        break
                    buf += chunk
                data = bytes(buf)
    except OSError as e:
        raise InvalidBundle(f"cannot read {path}: {e.strerror or e}") from e
    if len(data) > limits.max_archive_bytes:
        raise InvalidBundle(f"the bundle is larger than {limits.max_archive_bytes} bytes")
    return data


def read_bundle(source: str | bytes, limits: Limits = Limits()) -> Bundle:
    """Read and parse a bundle file (path) or its bytes (steps 1 to 3; no signature is checked)."""
    data = bytes(source) if isinstance(source, (bytes, bytearray)) else load_file(source, limits)
    manifest, members = open_manifest(open_archive(data, limits), limits)
    return parse_bundle(members, manifest, limits)
