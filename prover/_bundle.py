"""Proof bundles: one self-describing zip a third party checks with ``vmu-verify`` (specs/08-bundle.md).

The writer reads the workspace (log, transcripts, checkpoint store, records) and never changes
it. What goes in:

* the public key, the latest signed tree head ("final head"), and the DSSE-signed deletion
  transcripts of requests 1..N (all of them by default);
* log entries with range proofs against the final head: the commit block at the start of the log
  (config, slice trees, data-set root, audit set, initial checkpoints), every checkpoint entry of
  the original training, every entry of every retraining, and the steps of each replayed segment;
  plus a consistency proof from each transcript's head to the final head;
* the final constituent models and the start and end checkpoints of each replayed segment;
* record openings (id, features, label, salt) of the deleted records, the audit set, and the
  records used by the replayed segments -- and of no other record;
* the (key, commitment) pairs (no features, no labels, no salts) of every slice a retraining
  trained on, of every generation-0 slice of a retrained shard, and of the generation-0 slices
  each disclosed original step trained on that the openings do not already rebuild: the
  verifier recomputes every disclosed batch, the committed assignment of the retrained shards
  and each re-committed slice from them;
* each request's re-commit block (deletion entry, new slice entries, data-set entry), from which
  the verifier rebuilds every shard's slice lineage;
* absence proofs of every deleted key in every current slice whose records the verifier does
  not otherwise see (``slices/absence.json``).

The replayed segments are the deletion lineage of every retrained shard (all of it: its original
training up to the rollback and every retraining) and ``replay`` uniform draws from the other
segments, decided by the verifier's challenge (``challenge=``) or, offline, by Fiat-Shamir from the
deletion entries and the final head's body (:mod:`verifiable_mu._sampling`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from verifiable_mu._canonical import canonical_json
from verifiable_mu._errors import MalformedInput, VerificationFailed
from verifiable_mu._note import NoteVerifier, open_checkpoint
from verifiable_mu._sampling import AUDIT_DISCLOSE_MAX, DEFAULT_REPLAY
from verifiable_mu._wire_bundle import (
    ABSENCE,
    BUNDLE_VERSION,
    FINAL_HEAD,
    LOG,
    MANIFEST,
    MODEL_SOURCE_DIR,
    OPENINGS,
    PUBKEY,
    Manifest,
    checkpoint_member,
)

from . import _bundle_plan as plan
from . import _bundle_records as records
from ._bundle_plan import lineage_segments
from ._errors import BadInput

if TYPE_CHECKING:
    from ._workspace import Workspace

__all__ = ["BUNDLE_VERSION", "DEFAULT_REPLAY", "BundleInfo", "known_head_size", "lineage_segments", "write_bundle"]


@dataclass(frozen=True, slots=True)
class BundleInfo:
    path: str
    transcripts: tuple[int, ...]
    segments: int
    population: int
    sampled: tuple[int, ...]  # end-checkpoint log indices of the uniform draws, draw order
    bytes_total: int
    bytes_without_checkpoints: int
    openings: int
    complete: tuple[int, ...] = ()  # end-checkpoint log indices of the deletion lineage (replayed in full)
    disclosure: dict[str, Any] | None = None  # what the bundle opens (also in its manifest)


def _created() -> int:
    """The manifest's informative ``created`` time: ``SOURCE_DATE_EPOCH`` when set (the
    reproducible-builds convention: the same workspace and challenge then give the same bundle,
    byte for byte), else now."""
    raw = os.environ.get("SOURCE_DATE_EPOCH")
    if raw is None:
        return int(time.time())
    if not raw.isdigit() or len(raw) > 12:
        raise BadInput(f"SOURCE_DATE_EPOCH must be a non-negative integer (seconds), not {raw[:20]!r}")
    return int(raw)


def known_head_size(ws: Workspace, path: str) -> int:
    """The size of a signed head of this workspace's log that a verifier holds (``vmu bundle
    --known-head``), after checking it is one: signed by the log's key, with the root the log
    has at that size."""
    try:
        with open(path, "rb") as f:
            note = f.read(1 << 20)
        cp = open_checkpoint(note, [NoteVerifier.from_vkey(ws.note_vkey)], origin=ws.log_origin)
    except OSError as e:
        raise BadInput(f"cannot read --known-head {path}: {e.strerror or e}") from e
    except (MalformedInput, VerificationFailed) as e:
        raise BadInput(f"--known-head {path} is not a signed head of this log: {e}") from e
    if cp.size > ws.log.size or ws.log.root(cp.size) != cp.root_hash:
        raise BadInput(f"--known-head {path} (size {cp.size}) is not a head of this log's history")
    return cp.size


def _model_source(ws: Workspace, model: dict[str, Any]) -> list[tuple[str, bytes]]:
    """The ``model/source/<path>`` members: the factory's source files as the config entry
    commits them (specs/06 section 5b), read from this machine and checked against it."""
    from verifiable_mu._modelcode import ModelCodeError, compare_files, locate_source

    code = model.get("code")
    if code is None:
        raise BadInput("--include-model-source: the log commits no digest of the model factory's code (a workspace "
                       "made before model code was committed)")
    try:
        files = locate_source(str(model["name"]).partition(":")[0])
    except ModelCodeError as e:
        raise BadInput(f"--include-model-source: {e}") from e
    why = compare_files(code["files"], files)
    if why is not None:
        raise BadInput(f"--include-model-source: the model code on this machine differs from the committed code: {why}")
    return [(MODEL_SOURCE_DIR + p, files[p]) for p in sorted(files, key=str.encode)]


def _write_zip(out: str, members: Sequence[tuple[str, bytes]]) -> int:
    """Write the members (the manifest first) with fixed timestamps and modes; returns the
    compressed size of the checkpoint files."""
    tmp = f"{out}.tmp.{os.getpid()}"
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as z:
            for name, data in members:
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                z.writestr(info, data)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    with zipfile.ZipFile(out) as z:
        return sum(i.compress_size for i in z.infolist() if i.filename.startswith("checkpoints/"))


def write_bundle(
    ws: Workspace,
    out: str | os.PathLike[str],
    *,
    transcript: int | None = None,
    challenge: bytes | None = None,
    replay: int = DEFAULT_REPLAY,
    audit_max: int = AUDIT_DISCLOSE_MAX,
    known_sizes: Sequence[int] = (),
    include_model_source: bool = False,
    lineage: str = "complete",
) -> BundleInfo:
    """Write the proof bundle of deletion requests 1..``transcript`` (default: all) to ``out``.

    ``known_sizes``: sizes of heads the verifier saw before (``--known-head``); the bundle carries a
    consistency proof from each to its final head (specs/08 section 3). ``include_model_source``:
    ship a factory model's committed source files (``model/source/...``, specs/08 section 1).
    ``lineage``: ``complete`` discloses every segment of the deletion lineage; ``sampled`` only the
    ``replay`` uniform draws from it that a verifier with ``--lineage sampled`` replays (specs/08
    section 5): less disclosure, and a verifier asking for the complete lineage rejects it."""
    p = plan.start(ws, transcript, replay, lineage, include_model_source)
    plan.read_transcripts(p)
    plan.draw(p, plan.population(p), challenge, replay, lineage)
    log_doc = plan.log_doc(p, known_sizes)
    digests = plan.checkpoint_digests(p)
    opened = records.openings(p, audit_max, lineage)
    derived = records.derived_roots(p, opened.used | opened.deleted)
    slice_members = records.slice_members(p, derived)
    absence = records.absence(p, slice_members, derived)
    members: list[tuple[str, bytes]] = [
        *(_model_source(ws, p.config["model"]) if include_model_source else []),
        (PUBKEY, ws.public_key.to_pem()),
        (FINAL_HEAD, p.note),
        *p.envs,
        (LOG, canonical_json(log_doc.to_json())),
        (OPENINGS, canonical_json(opened.openings.to_json())),
        *sorted(slice_members.items()),
        (ABSENCE, canonical_json(absence.to_json())),
    ]
    for d in sorted(digests):
        with open(os.path.join(ws.store, d + ".safetensors"), "rb") as f:
            members.append((checkpoint_member(d), f.read()))
    manifest = Manifest(
        origin=p.log.origin, generator="verifiable-mu prover", created=_created(),
        transcripts=tuple(name for name, _ in p.envs),
        challenge_mode="fiat-shamir" if challenge is None else "interactive", challenge=challenge,
        replay=replay, sample=tuple(r.end_index for r in p.drawn), original=p.original,
        members={name: hashlib.sha256(data).digest() for name, data in members}, disclosure=opened.disclosure,
    )
    out = os.fspath(out)
    manifest_bytes = json.dumps(manifest.to_json(), indent=1, sort_keys=True).encode()
    ck_bytes = _write_zip(out, [(MANIFEST, manifest_bytes), *members])
    total = os.path.getsize(out)
    o = opened.openings
    return BundleInfo(
        path=out,
        transcripts=tuple(p.requests),
        segments=len(p.picked),
        population=len(p.segments),
        sampled=tuple(r.end_index for r in p.drawn),
        complete=tuple(r.end_index for r in p.complete),
        bytes_total=total,
        bytes_without_checkpoints=total - ck_bytes,
        openings=len(o.audit) + len(o.deleted) + len(o.training),
        disclosure=opened.disclosure,
    )
