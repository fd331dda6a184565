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
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from verifiable_mu._canonical import canonical_json
from verifiable_mu._disclosure import disclosure_summary, replay_records
from verifiable_mu._range import RangeProof, range_path
from verifiable_mu._records import RecordOpening
from verifiable_mu._sampling import (
    AUDIT_DISCLOSE_MAX,
    DEFAULT_REPLAY,
    LINEAGE_MODES,
    SegmentRef,
    challenge_seed,
    fiat_shamir_seed,
    head_body,
    lineage_seed,
    sample_audit,
    sample_segments,
    split_population,
)
from verifiable_mu._seeds import derive_slices
from verifiable_mu._sorted_tree import SortedTree

from . import _sisa
from ._errors import BadInput, WorkspaceError

if TYPE_CHECKING:
    from ._workspace import Workspace

__all__ = ["BUNDLE_VERSION", "DEFAULT_REPLAY", "BundleInfo", "write_bundle"]

BUNDLE_VERSION = 1
BUNDLE_TYPE = "vmu.bundle"
MANIFEST = "manifest.json"
PUBKEY = "keys/signing-key.pub.pem"
FINAL_HEAD = "heads/final.note"
LOG = "log/entries.json"
OPENINGS = "records/openings.json"
SLICES_DIR = "slices/"
ABSENCE = "slices/absence.json"
MODEL_SOURCE_DIR = "model/source/"


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


def _payload(env_bytes: bytes) -> tuple[bytes, dict[str, Any]]:
    import base64

    env = json.loads(env_bytes)
    payload = base64.b64decode(env["payload"])
    return payload, json.loads(payload)


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


def _merge(intervals: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def lineage_segments(
    ckpts: Sequence[tuple[int, dict[str, Any]]], *, shard: int, generation: int, stratum: int | None
) -> list[SegmentRef]:
    """Consecutive checkpoint pairs of one lineage, as segments."""
    out = []
    for (si, sb), (ei, eb) in zip(ckpts[:-1], ckpts[1:], strict=True):
        out.append(
            SegmentRef(
                shard=shard,
                generation=generation,
                stage=int(eb["stage"]),
                start_index=si,
                end_index=ei,
                start_step=int(sb["step"]),
                end_step=int(eb["step"]),
                stratum=stratum,
            )
        )
    return out


def known_head_size(ws: Workspace, path: str) -> int:
    """The size of a signed head of this workspace's log that a verifier holds (``vmu bundle
    --known-head``), after checking it is one: signed by the log's key, with the root the log
    has at that size."""
    from verifiable_mu._errors import MalformedInput, VerificationFailed
    from verifiable_mu._note import NoteVerifier, open_checkpoint

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
    if replay < 0:
        raise BadInput("--replay must be >= 0")
    if lineage not in LINEAGE_MODES:
        raise BadInput(f"--lineage must be one of {', '.join(LINEAGE_MODES)}, not {lineage!r}")
    if include_model_source and ":" not in ws.config.model:
        raise BadInput(f"--include-model-source: the workspace's model {ws.config.model!r} is built in; it has no "
                       "source to include")
    if not ws.trained:
        raise WorkspaceError("the workspace is not trained yet: run 'vmu train' first")
    log = ws.log
    db = ws._db()
    done = [n for (n,) in db.execute("SELECT n FROM p_requests WHERE status='done' ORDER BY n")]
    if not done:
        raise BadInput("the workspace has no finished deletion request: run 'vmu forget' first")
    last = done[-1] if transcript is None else transcript
    if last not in done:
        raise BadInput(f"deletion request {last} does not exist or is not finished (finished: {done})")
    requests = [n for n in done if n <= last]
    if requests != list(range(1, last + 1)):
        raise WorkspaceError(f"deletion requests 1..{last} are not all finished")

    head = log.latest_tree_head()
    if head is None:
        raise WorkspaceError("the log has no signed tree head")
    size = head.size

    # Transcripts, in request order.
    envs: list[tuple[str, bytes]] = []
    preds: list[dict[str, Any]] = []
    payloads: list[bytes] = []
    for n in requests:
        rel = db.execute("SELECT transcript FROM p_requests WHERE n=?", (n,)).fetchone()[0]
        with open(os.path.join(ws.path, rel), "rb") as f:
            data = f.read()
        payload, stmt = _payload(data)
        envs.append((f"transcripts/{n:06d}.dsse.json", data))
        payloads.append(payload)
        preds.append(stmt["predicate"])

    # Checkpoint entries of the whole signed log, grouped by lineage.
    cfg = log.entry(0).body
    shards, slices, seed_cfg = int(cfg["shards"]), int(cfg["slices"]), int(cfg["seed"])
    commit_end = 1 + shards * slices + 2 + shards
    by_lineage: dict[tuple[int, int], list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    for e in log.entries(0, size):
        if e.kind == "checkpoint":
            by_lineage[(int(e.body["shard"]), int(e.body["generation"]))].append((e.index, e.body))

    segments: list[SegmentRef] = []
    original: list[dict[str, Any]] = []
    for s in range(shards):
        ck = by_lineage[(s, 0)]
        original.append({"shard": s, "checkpoints": [str(i) for i, _ in ck]})
        segments += lineage_segments(ck, shard=s, generation=0, stratum=None)
    retrain_ranges: list[tuple[int, int]] = []
    for t, pred in enumerate(preds):
        for sh in pred["shards"]:
            s, g = int(sh["shard"]), int(sh["generation"])
            a, b = int(sh["retraining"]["start"]), int(sh["retraining"]["end"])
            rb = sh["rollback"]["entry"]
            ck = [(int(rb["index"]), rb["body"])] + [(i, body) for i, body in by_lineage[(s, g)] if a <= i < b]
            segments += lineage_segments(ck, shard=s, generation=g, stratum=t)
            retrain_ranges.append((a, b))
    segments.sort(key=lambda r: r.end_index)
    # The deletion lineage of every retrained shard is replayed in full by the verifier; the
    # other segments are sampled (specs/08-bundle.md section 5).
    gen0_rollback: dict[int, int] = {}
    for pred in preds:
        for sh in pred["shards"]:
            rb = sh["rollback"]["entry"]
            if int(rb["body"]["generation"]) == 0:
                rs = int(sh["shard"])
                gen0_rollback[rs] = max(gen0_rollback.get(rs, -1), int(rb["index"]))
    complete, rest = split_population(segments, gen0_rollback)

    deletions = [log.entry(int(pred["request"]["deletion"]["entry"]["index"])).leaf_hash for pred in preds]
    final_body = head_body(log.origin, size, head.root_hash)
    if challenge is not None:
        seed = challenge_seed(challenge, deletions, final_body)
        ch = {"mode": "interactive", "challenge": challenge.hex()}
    else:
        seed = fiat_shamir_seed(deletions, final_body)
        ch = {"mode": "fiat-shamir"}
    drawn = [rest[i] for i in sample_segments(len(rest), replay, seed)]
    if lineage == "sampled":  # the draws a verifier with --lineage sampled makes (specs/08 section 5)
        complete = [complete[i] for i in sample_segments(len(complete), replay, lineage_seed(seed))]
    picked = complete + drawn

    # Log entries to disclose.
    intervals = [(0, commit_end)] + retrain_ranges
    # Each request's re-commit block: its deletion entry, the new slice entries and the dataset
    # entry (specs/06 section 5), from which the verifier rebuilds every shard's slice lineage.
    for pred in preds:
        del_idx = int(pred["request"]["deletion"]["entry"]["index"])
        end = del_idx + 1
        while end < size and log.entry(end).kind != "dataset":
            end += 1
        intervals.append((del_idx, min(end + 1, size)))
    for lin in original:
        intervals += [(int(i), int(i) + 1) for i in lin["checkpoints"]]
    for r in picked:
        intervals.append((min(max(0, r.end_index - r.steps), r.end_index), r.end_index + 1))
        intervals.append((r.start_index, r.start_index + 1))
    runs = []
    original_stages: set[tuple[int, int]] = set()  # (shard, stage) of every disclosed original step
    original_used: dict[int, set[bytes]] = defaultdict(set)  # shard -> commitments its disclosed original steps use
    for a, b in _merge(intervals):
        disclosed = list(log.entries(a, b))
        for e in disclosed:
            if e.kind == "step" and int(e.body["generation"]) == 0:
                original_stages.add((int(e.body["shard"]), int(e.body["stage"])))
                original_used[int(e.body["shard"])] |= set(ws.batch_of(e))
        entries = [e.to_json() for e in disclosed]
        proof = RangeProof(start=a, end=b, tree_size=size, path=tuple(range_path(log.mth, a, b, size)))
        runs.append({"entries": entries, "proof": proof.to_json()})
    consistency = []
    for pred in preds:
        after = pred["log"]["head_after"].encode("utf-8")
        old_size = int(after.decode().split("\n")[1])
        consistency.append(log.consistency_proof(old_size, size).to_json())
    log_doc: dict[str, Any] = {"type": "vmu.bundle-log", "version": 1, "runs": runs, "consistency": consistency}
    known = sorted({int(k) for k in known_sizes})
    if any(not 0 < k <= size for k in known) or len(known) > 64:
        raise BadInput(f"a known head must have a size between 1 and the final head's {size} (at most 64 of them)")
    if known:
        log_doc["known"] = [log.consistency_proof(k, size).to_json() for k in known if k < size]

    # Checkpoint files: final model + both ends of every sampled segment.
    model_body = preds[-1]["model_after"]["entry"]["body"]
    digests: set[str] = set(model_body["shards"])
    for r in picked:
        for idx in (r.start_index, r.end_index):
            digests.add(log.entry(idx).body["digest"])

    # Residual-information tests (specs/10-residual.md): the pre-deletion constituents of the
    # affected shards (the positive control) and their original lineage's stage checkpoints (the
    # temporal residual memory). Their digests are in disclosed, proven log entries.
    affected = sorted({int(sh["shard"]) for pred in preds for sh in pred["shards"]})
    for pred in preds:
        before = pred["model_before"]["entry"]["body"]["shards"]
        for sh in pred["shards"]:
            digests.add(before[int(sh["shard"])])
    # Only each stage's last checkpoint: the temporal test reads no other (with --checkpoint-every
    # a lineage has many more, which would only make the bundle bigger).
    def stage_ends(ckpts: Sequence[tuple[int, dict[str, Any]]]) -> set[str]:
        last: dict[int, tuple[int, str]] = {}
        for i, body in ckpts:
            st = int(body["stage"])
            if st not in last or i > last[st][0]:
                last[st] = (i, body["digest"])
        return {d for _, d in last.values()}

    for s in affected:
        digests |= stage_ends(by_lineage[(s, 0)])
    for pred in preds:
        for sh in pred["shards"]:
            a, b = int(sh["retraining"]["start"]), int(sh["retraining"]["end"])
            digests |= stage_ends([(i, body) for i, body in by_lineage[(int(sh["shard"]), int(sh["generation"]))]
                                   if a <= i < b])

    # Record openings.
    deleted_c: set[bytes] = set()
    for pred in preds:
        deleted_c |= {bytes.fromhex(r["commitment"]) for r in pred["records"]}
        # Held-out records (test or audit split) are opened with the deleted ones: the request
        # digest covers their ids (specs/08 section 4).
        deleted_c |= {bytes.fromhex(r["commitment"]) for r in pred.get("held_out", {}).get("records", [])}
    used_c: set[bytes] = set()
    by_kind: dict[str, set[bytes]] = {"lineage": set(), "sampled": set()}
    complete_ends = {r.end_index for r in complete}
    for r in picked:
        kind = by_kind["lineage" if r.end_index in complete_ends else "sampled"]
        for e in log.entries(min(max(0, r.end_index - r.steps), r.end_index), r.end_index):
            if e.kind == "step":
                kind.update(ws.batch_of(e))
        used_c |= kind
    # One pass over the committed records, keeping only what the openings need (not a table of
    # every record: at 10^6 records that alone was hundreds of MB).
    needed = deleted_c | used_c
    rows: dict[bytes, tuple[int, str, bytes]] = {}  # commitment -> (row, id, salt)
    audit_rows: dict[bytes, tuple[int, str, bytes, bytes]] = {}  # key -> (row, id, salt, commitment)
    n_train = 0
    cur = db.execute("SELECT row, id, role, salt, commitment, key FROM p_records")
    while chunk := cur.fetchmany(65_536):
        for row, rid, role, salt, c, k in chunk:
            if role == "train":
                n_train += 1
            elif role == "audit":
                audit_rows[k] = (row, rid, salt, c)
            if c in needed:
                rows[c] = (row, rid, salt)
    for row, rid, salt, c in audit_rows.values():
        rows.setdefault(c, (row, rid, salt))

    # The audit set: whole when small, else the challenge-selected sample with inclusion proofs in
    # the committed audit tree (so the bundle does not grow with the data set).
    audit_tree = SortedTree.build((k, c) for k, (_, _, _, c) in audit_rows.items())
    positions = sample_audit(seed, len(audit_tree), audit_max)
    audit_proof: dict[str, Any] | None = None
    # An audit record deleted by a bundled request is opened among the deleted records, not here:
    # its leaf is accounted for from the transcript (specs/08 section 4).
    if len(positions) == len(audit_tree):
        audit_c = sorted(c for _, _, _, c in audit_rows.values() if c not in deleted_c)
    else:
        audit_c = []
        for pos in positions:
            c = audit_rows[audit_tree.key_at(pos)][3]
            if c not in deleted_c:
                audit_c.append(c)
        audit_proof = audit_tree.multi_proof(positions).to_json()  # one multiproof for all of them
    del audit_rows, audit_tree
    deleted_l, training_l = sorted(deleted_c), sorted(used_c - deleted_c)
    # The features and labels of exactly the opened rows, streamed from the data file (not the
    # whole data set: Workspace.data would hold every record).
    opened_rows = np.unique(np.asarray([rows[c][0] for c in [*audit_c, *deleted_l, *training_l]], dtype=np.int64))
    X_open, y_open = _sisa._load_rows(ws.data_path, opened_rows)

    def opening(c: bytes) -> dict[str, Any]:
        row, rid, salt = rows[c]
        at = int(np.searchsorted(opened_rows, row))
        return RecordOpening(id=rid, features=X_open[at], label=int(y_open[at]), salt=salt).to_json()

    audit = [opening(c) for c in audit_c]
    deleted = [opening(c) for c in deleted_l]
    training = [opening(c) for c in training_l]
    openings_doc: dict[str, Any] = {
        "type": "vmu.bundle-openings", "version": 1, "deleted": deleted, "audit": audit, "training": training,
    }
    if audit_proof is not None:
        openings_doc["audit_proof"] = audit_proof
    disclosure = disclosure_summary(len(deleted), len(audit), len(training), n_train,
                                    replay_records(lineage, by_kind["lineage"], by_kind["sampled"], deleted_c))

    # Slice records: the (key, commitment) pairs of every slice a retraining trained on, so the
    # verifier can recompute each epoch's committed visiting order and check every retraining
    # batch against it (specs/08-bundle.md section 4a): all slices of every retrained shard as of
    # its request.
    slice_members: dict[str, bytes] = {}

    def add_slice(shard: int, slc: int, n: int, root_hex: str) -> None:
        """The records of slice (shard, slc) once requests 1..n were carried out, under the
        name of the root the transcript logs. A root they do not rebuild (a log rewritten behind
        the workspace's back) is left out; the verifier rejects a bundle that lacks it."""
        name = f"{SLICES_DIR}{root_hex}.records"
        if name in slice_members:
            return
        pairs = sorted(
            db.execute(
                "SELECT key, commitment FROM p_records WHERE role='train' AND shard=? AND slice=? "
                "AND (deleted_by IS NULL OR deleted_by > ?)",
                (shard, slc, n),
            ).fetchall()
        )
        if SortedTree.build(pairs).root.hex() == root_hex:
            slice_members[name] = b"".join(k + c for k, c in pairs)

    for n, pred in zip(requests, preds, strict=True):
        for sh in pred["shards"]:
            for j, item in enumerate(sh["slices"]):
                add_slice(int(sh["shard"]), j, n, item["slice"]["entry"]["body"]["root"])
    # The generation-0 slices (as the commit block logs them) of every affected shard, whole (the
    # verifier rebuilds the shard's committed assignment and each re-committed slice from them),
    # and slices 0..r-1 of every shard with a disclosed step of original stage r (its batches are
    # checked against the committed order too).
    # A generation-0 slice whose records the opened records of the shard's disclosed original
    # steps already rebuild (verifiable_mu._seeds.derive_slices; the verifier does the same) is
    # not listed again.
    opened_c = used_c | deleted_c
    derived: set[str] = set()
    # (A format-2 log lists no batches, so the verifier cannot tell which opened records a shard
    # trained on before it has the slices: every such slice is listed.)
    compact = int(log.entry(0).body["format"]) >= 2
    key_of = {} if compact else {c: k for k, c in db.execute("SELECT key, commitment FROM p_records")}
    for s, used in ({} if compact else original_used).items():
        sizes = [int(log.entry(1 + s * slices + j).body["size"]) for j in range(slices)]
        pairs = [(key_of[c], c) for c in used if c in opened_c]
        for j, tree in enumerate(derive_slices(seed_cfg, pairs, sizes)):
            if tree.root.hex() == log.entry(1 + s * slices + j).body["root"]:
                derived.add(tree.root.hex())
    gen0: set[tuple[int, int]] = {(s, j) for s in affected for j in range(slices)}
    gen0 |= {(s, j) for s, r in original_stages for j in range(r)}
    for s, j in sorted(gen0):
        root_hex = log.entry(1 + s * slices + j).body["root"]
        if root_hex not in derived:
            add_slice(s, j, 0, root_hex)

    # Absence of every deleted key from every shard's slices as they are after the last bundled
    # request (specs/08 section 4b): a non-membership proof per key and slice, for the slices whose
    # records the bundle does not disclose anyway.
    final_slices: dict[tuple[int, int], dict[str, Any]] = {
        (s, j): log.entry(1 + s * slices + j).body for s in range(shards) for j in range(slices)
    }
    for pred in preds:
        for sh in pred["shards"]:
            for j, item in enumerate(sh["slices"]):
                final_slices[(int(sh["shard"]), j)] = item["slice"]["entry"]["body"]
    deleted_keys = sorted(bytes.fromhex(r["key"]) for pred in preds for r in pred["records"])
    absence: dict[str, dict[str, Any]] = {}
    for (s, j), body in sorted(final_slices.items()):
        root_hex = body["root"]
        if not deleted_keys:  # requests of held-out records only: no trained key to prove absent
            break
        if f"{SLICES_DIR}{root_hex}.records" in slice_members or root_hex in derived or root_hex in absence:
            continue
        pairs = db.execute(
            "SELECT key, commitment FROM p_records WHERE role='train' AND shard=? AND slice=? "
            "AND (deleted_by IS NULL OR deleted_by > ?)",
            (s, j, last),
        ).fetchall()
        tree = SortedTree.build(pairs)
        if tree.root.hex() == root_hex:  # else left out: the verifier rejects the bundle
            absence[root_hex] = tree.absence_proof(deleted_keys).to_json()
    absence_doc = {"type": "vmu.bundle-absence", "version": 1,
                   "slices": [{"root": r, "proof": p} for r, p in sorted(absence.items())]}

    source_members = _model_source(ws, log.entry(0).body["model"]) if include_model_source else []
    members: list[tuple[str, bytes]] = [
        *source_members,
        (PUBKEY, ws.public_key.to_pem()),
        (FINAL_HEAD, head.note),
        *envs,
        (LOG, canonical_json(log_doc)),
        (OPENINGS, canonical_json(openings_doc)),
        *sorted(slice_members.items()),
        (ABSENCE, canonical_json(absence_doc)),
    ]
    ckpt_members = []
    for d in sorted(digests):
        with open(os.path.join(ws.store, d + ".safetensors"), "rb") as f:
            ckpt_members.append((f"checkpoints/{d}.safetensors", f.read()))
    members += ckpt_members
    manifest = {
        "type": BUNDLE_TYPE,
        "version": BUNDLE_VERSION,
        "origin": log.origin,
        "generator": "verifiable-mu prover",
        "created": _created(),
        "transcripts": [name for name, _ in envs],
        "challenge": ch,
        "replay": replay,
        "sample": [str(r.end_index) for r in drawn],
        "original": original,
        "members": {name: hashlib.sha256(data).hexdigest() for name, data in members},
        "disclosure": disclosure,
    }
    out = os.fspath(out)
    tmp = f"{out}.tmp.{os.getpid()}"
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as z:
            for name, data in [(MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode()), *members]:
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
        ck_bytes = sum(i.compress_size for i in z.infolist() if i.filename.startswith("checkpoints/"))
    total = os.path.getsize(out)
    return BundleInfo(
        path=out,
        transcripts=tuple(requests),
        segments=len(picked),
        population=len(segments),
        sampled=tuple(r.end_index for r in drawn),
        complete=tuple(r.end_index for r in complete),
        bytes_total=total,
        bytes_without_checkpoints=total - ck_bytes,
        openings=len(audit) + len(deleted) + len(training),
        disclosure=disclosure,
    )
