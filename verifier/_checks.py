"""The verification algorithm: the numbered checklist of specs/09-verification.md.

Steps (the same numbers appear in the spec, in the code below and in the test names):

 1. archive            the file is a safe, readable zip archive
 2. manifest           manifest type and version, member list, member SHA-256 digests
 3. members            every member parses (key, head, envelopes, log runs, openings, checkpoints)
 4. trust              the signing key is the pinned key (or the bundle's own key, with a warning)
 5. final-head         the final signed tree head verifies under the key and the origin
 6. transcripts        every deletion transcript's DSSE signature verifies; its statement parses
 7. tree-heads         heads before/after each request verify; consistency before -> after -> final;
                       requests are 1..N in order
 8. transcript-proofs  every entry a transcript discloses is included under its head_after
 9. log-runs           every disclosed run of entries is included under the final head
10. commitments        commit block: config, slice trees, data-set root, audit set, initial checkpoints
11. deletion-claims    every slice claim is the current entry of the shard's slice lineage (commit
                       block, then each request's re-commit block); deleted records were in their
                       old slices, as the committed assignment places them; re-committed slices are
                       the old ones minus exactly the deleted records; every deleted key is absent
                       from every shard's current slices; held-out records are committed test or
                       audit records, absent from every current slice of every shard
12. ordering           rollback checkpoint of the current lineage, before the first use of each record
13. schedule           every lineage's checkpoints and steps follow the committed SISA schedule
14. clean-manifests    no retraining step uses a record deleted by this or an earlier request, and
                       every disclosed step (retraining and original training) trains on its
                       committed batch: the stage's slice records (disclosed, rebuilt to the logged
                       roots) in the order the committed seed gives
15. models             model entries chain; final constituent weights match the final model
16. openings           openings match their commitments, the request digests and the audit root
17. sampling           the deletion lineage of every retrained shard (complete) and the verifier's own
                       sample of the other segments (k from the verifier's policy, never the
                       manifest) are fully disclosed
18. replay             replaying every segment of step 17 reproduces its logged end checkpoint
19. residual           deleted records look like never-seen records (membership inference with a
                       positive control; canaries with --canary); inconclusive never counts as a pass

This module checks proofs only and never imports torch; steps 18 and 19 import
:mod:`verifier._replay` / :mod:`verifier._models` (and so torch) lazily, only when they run.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from verifiable_mu._canonical import canonical_json
from verifiable_mu._dsse import IN_TOTO_PAYLOAD_TYPE, STATEMENT_TYPE, verify_envelope
from verifiable_mu._errors import (
    EXIT_INTERNAL,
    InternalError,
    InvalidBundle,
    MalformedInput,
    SignatureFailed,
    UnsupportedVersion,
    VerificationFailed,
    VmuError,
)
from verifiable_mu._extras import require
from verifiable_mu._keys import VerifyingKey
from verifiable_mu._log import LogEntry
from verifiable_mu._merkle import EMPTY_ROOT
from verifiable_mu._note import Checkpoint, NoteVerifier, open_checkpoint
from verifiable_mu._records import RecordOpening, record_key
from verifiable_mu._sampling import (
    AUDIT_DISCLOSE_MAX,
    DEFAULT_REPLAY,
    SegmentRef,
    challenge_seed,
    escape_probability,
    fiat_shamir_seed,
    grinding_note,
    head_body,
    sample_audit,
    sample_segments,
    single_escape,
    split_population,
)
from verifiable_mu._seeds import assigned_slices, derive_slices, epoch_order, shard_size, step_seed
from verifiable_mu._sorted_tree import SliceDescriptor, SortedTree, dataset_root, record_leaf_hash
from verifiable_mu._tags import TAG_CHALLENGE, TAG_MODEL, TAG_REQUEST, tagged_hash
from verifiable_mu._witness import Cosignature, WitnessKey, verify_cosignatures

from ._bounds import check_model_fits, checkpoint_is_finite
from ._bundle import (
    Archive,
    Bundle,
    JsonBudget,
    Limits,
    Manifest,
    load_file,
    open_archive,
    open_manifest,
    parse_json_bounded,
    parse_large_members,
    parse_signed_members,
)
from ._entries import (
    PREDICATE_DELETION,
    AuditBody,
    CheckpointBody,
    ConfigBody,
    DatasetBody,
    DeletionBody,
    Disclosure,
    ModelBody,
    SliceBody,
    StepBody,
    Transcript,
)
from ._errors import (
    BatchNotCommitted,
    ChallengeMismatch,
    CommitBlockInvalid,
    DeletionClaimFailed,
    EntryKindMismatch,
    HeadMismatch,
    ManifestContainsDeleted,
    ModelMismatch,
    OpeningMismatch,
    OrderingViolation,
    ResidualTraceFound,
    ScheduleViolation,
    SegmentMissing,
    UntrustedKey,
    WitnessQuorumMissing,
)
from ._policy import EXIT_REDUCED, unmet_requirements

__all__ = ["ESCAPE_FRACTIONS", "STEPS", "CheckResult", "ExpectedHead", "Verification", "VerifyOptions", "step_seed", "verify"]

STEPS: tuple[tuple[int, str, str], ...] = (
    (1, "archive", "the file is a safe, readable zip archive"),
    (2, "manifest", "manifest version, member list and member digests"),
    (3, "members", "every member parses"),
    (4, "trust", "the signing key is the pinned key"),
    (5, "final-head", "the final signed tree head verifies"),
    (6, "transcripts", "deletion transcript signatures verify"),
    (7, "tree-heads", "tree heads verify and are consistent; requests are 1..N"),
    (8, "transcript-proofs", "transcript log entries are included under their heads"),
    (9, "log-runs", "disclosed log runs are included under the final head"),
    (10, "commitments", "config, slice trees, data-set root, audit set, initial checkpoints"),
    (11, "deletion-claims", "slice claims follow the shards' slice lineage; deleted records are absent from every shard"),
    (12, "ordering", "rollback checkpoints precede the first use of each deleted record"),
    (13, "schedule", "checkpoints and steps follow the committed SISA schedule"),
    (14, "clean-manifests", "no retraining step uses a deleted record; every disclosed batch is the committed one"),
    (15, "models", "model entries chain; final weights match the final model"),
    (16, "openings", "openings match commitments, request digests and the audit root"),
    (17, "sampling", "the deletion lineage and the verifier's sample are fully disclosed"),
    (18, "replay", "the deletion lineage and the sampled segments reproduce their logged end checkpoints"),
    (19, "residual", "deleted records look like never-seen records; canaries no longer fire (statistical)"),
)
ESCAPE_FRACTIONS = (0.01, 0.05, 0.1)
_NAMES = {n: name for n, name, _ in STEPS}
_VERDICTS = {0: "accepted", 1: "rejected", 2: "unusable", EXIT_REDUCED: "accepted-reduced", EXIT_INTERNAL: "internal-error"}


@dataclass(slots=True)
class CheckResult:
    step: int
    name: str
    status: str  # "pass", "fail", "error" (unusable input), "skipped", "inconclusive" (step 19 only)
    detail: str = ""
    seconds: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ExpectedHead:
    """The final tree head the verifier expects (``--expect-head``): a root, and when taken from a
    note also its origin and size."""

    root: bytes
    size: int | None = None
    origin: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyOptions:
    trust_key: VerifyingKey | None = None
    trust_origin: str | None = None  # the log the pinned key is for (a C2SP verifier key names it)
    challenge: bytes | None = None
    # Uniform draws from the sampled population (the verifier's policy; the manifest's ``replay``
    # is ignored). The deletion lineage is replayed in full on top of them.
    replay: int = DEFAULT_REPLAY
    unsafe_no_replay: bool = False  # step 18 replays nothing (warning UNSAFE NO REPLAY)
    requests: tuple[int, ...] | None = None  # the request counts the verifier accepts (step 7)
    expect_head: ExpectedHead | None = None  # the final head the verifier expects (step 5)
    replay_mode: str = "auto"  # auto | exact | distance
    allow_factories: tuple[str, ...] = ()
    limits: Limits = Limits()
    residual: bool = True  # step 19; False: skipped (the report says so)
    alpha: float = 0.05
    n_boot: int = 1000
    canary: Any = None  # a verifiable_mu._canary.Trigger from the data subject
    require_residual: bool = False  # an inconclusive step 19 rejects instead of warning
    backend: str = "local"  # replay backend: local | ray
    ray_address: str | None = None
    # Split-view defences (specs/09, steps 5 and 7): witnesses whose cosignatures the final head
    # must carry (threshold: how many; None: all of them), and signed heads of this log the
    # verifier saw before, which the bundle's history must extend.
    witnesses: tuple[WitnessKey, ...] = ()
    witness_threshold: int | None = None
    known_heads: tuple[bytes, ...] = ()
    # The policy the verdict is judged under (verifier/_policy.py): "default", or "agency", under
    # which an accepted bundle with an unmet requirement exits 3 ("accepted-reduced"), never 0.
    policy: str = "default"


@dataclass(slots=True)
class _Lineage:
    shard: int
    generation: int
    stratum: int | None
    start: CheckpointBody
    checkpoints: list[CheckpointBody]  # after start, in log order
    stage_base: dict[int, int]  # stage -> step count when the stage starts
    stage_n: dict[int, int]  # stage -> records trained on
    slice_roots: tuple[bytes, ...] = ()  # root of each slice j as this lineage trained on it
    orders: dict[tuple[int, int], tuple[bytes, ...]] = field(default_factory=dict)  # (stage, epoch) -> visiting order

    def at_stage_end(self, stage: int) -> CheckpointBody | None:
        found = None
        for c in [self.start, *self.checkpoints]:
            if c.stage == stage:
                found = c
        return found

    @property
    def final(self) -> CheckpointBody:
        return self.checkpoints[-1] if self.checkpoints else self.start


@dataclass(slots=True)
class Verification:
    """The state and the outcome of one verification."""

    options: VerifyOptions
    results: list[CheckResult] = field(default_factory=list)
    # Called with each step's final result, in step order, as soon as it is known (the CLI
    # streams them); ``emitted`` is the last step handed over.
    listener: Callable[[CheckResult], None] | None = field(default=None, repr=False)
    emitted: int = 0
    # Called with a short line while a long step runs (replay segments, residual phases).
    progress: Callable[[str], None] | None = field(default=None, repr=False)
    warnings: list[str] = field(default_factory=list)
    failure: VmuError | None = None
    failed_step: int | None = None
    bundle: Bundle | None = None
    sha256: str = ""
    # filled as the steps run
    archive: Archive | None = None
    members: dict[str, bytes] = field(default_factory=dict)
    json_budget: JsonBudget | None = None
    manifest: Manifest | None = None
    key: VerifyingKey | None = None
    note_verifier: NoteVerifier | None = None
    final: Checkpoint | None = None
    cosignatures: list[Cosignature] = field(default_factory=list)
    transcripts: list[Transcript] = field(default_factory=list)
    heads: list[tuple[Checkpoint, Checkpoint]] = field(default_factory=list)
    entries: dict[int, LogEntry] = field(default_factory=dict)
    config: ConfigBody | None = None
    slices0: dict[tuple[int, int], SliceBody] = field(default_factory=dict)
    slices_now: dict[tuple[int, int], SliceBody] = field(default_factory=dict)  # after the last request
    derived_slices: dict[bytes, tuple[tuple[bytes, ...], tuple[bytes, ...]]] = field(default_factory=dict)
    audit: AuditBody | None = None
    lineages: list[_Lineage] = field(default_factory=list)
    openings: dict[bytes, RecordOpening] = field(default_factory=dict)
    population: list[SegmentRef] = field(default_factory=list)
    complete: list[SegmentRef] = field(default_factory=list)  # the deletion lineage, replayed in full
    sampled_population: int = 0  # the segments the uniform draws come from
    sample: list[SegmentRef] = field(default_factory=list)  # the uniform draws, in draw order
    seed: bytes = b""
    replay_report: dict[str, Any] | None = None
    residual_report: dict[str, Any] | None = None
    canary_report: dict[str, Any] | None = None
    temporal_reports: list[dict[str, Any]] = field(default_factory=list)
    inconclusive: str | None = None
    nonfinite_shards: list[int] = field(default_factory=list)  # final constituents with NaN or inf weights
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def unmet(self) -> list[str]:
        """The requirements of the policy in effect that this verification did not meet."""
        return unmet_requirements(self.options.policy, self.options, self.results, self.nonfinite_shards)

    @property
    def exit_code(self) -> int:
        """0 accepted, 1 rejected, 2 unusable input, 3 accepted with reduced checks, 70 a bug
        (:class:`~verifiable_mu._errors.InternalError`: nothing was judged)."""
        if self.failure is None:
            return EXIT_REDUCED if self.unmet else 0
        if isinstance(self.failure, InternalError):
            return EXIT_INTERNAL
        return 2 if isinstance(self.failure, MalformedInput) else 1

    @property
    def verdict(self) -> str:
        return _VERDICTS[self.exit_code]

    @property
    def replayed(self) -> int:
        return len(self.replay_report["segments"]) if self.replay_report else 0

    @property
    def uniform_replayed(self) -> int:
        """Replayed segments that came from the uniform draws (the k of (1-f)^k)."""
        return len(self.sample) if self.replayed else 0

    @property
    def sampled_by(self) -> str | None:
        """Who chose the sample: the verifier (its own challenge) or the owner (Fiat-Shamir)."""
        if not self.seed:
            return None
        return "verifier" if self.options.challenge is not None else "owner"

    def escape(self) -> dict[str, float]:
        """``(1-f)^k`` for the uniform draws replayed (an upper bound for a verifier-chosen seed)."""
        return {str(f): escape_probability(f, self.uniform_replayed) for f in ESCAPE_FRACTIONS}

    def single_escape(self) -> float:
        """The chance that one forged segment of the sampled population escapes the draws replayed
        (``1 - k/N``); 1 when nothing was replayed."""
        if not self.replayed:
            return 1.0 if self.sampled_population else 0.0
        return single_escape(self.sampled_population, self.uniform_replayed)

    def sampling_statement(self) -> str:
        """One honest sentence on what the replay covered, for every verdict."""
        if not self.seed:
            return "no sample was drawn"
        n, k = self.sampled_population, self.uniform_replayed
        shards = sorted({r.shard for r in self.complete})
        done = ("NOT replayed (--unsafe-no-replay)" if self.options.unsafe_no_replay else "replayed in full"
                if self.replayed else "not replayed (verification stopped before step 18)")
        text = (f"deletion lineage of shard(s) {shards} ({len(self.complete)} segments) {done}; "
                f"{k} of the {n} other segments sampled and replayed: one forged segment among them "
                f"escapes with probability {self.single_escape():.3g} (1 - k/N)")
        if self.sampled_by == "owner":
            text += "; " + grinding_note(n, k)
        else:
            text += "; sampled by the verifier (its challenge)"
        return text


# --- helpers -----------------------------------------------------------------------------------


def _entry(v: Verification, index: int, what: str) -> LogEntry:
    e = v.entries.get(index)
    if e is None:
        raise SegmentMissing(f"{what}: log entry {index} is not disclosed in the bundle")
    return e


_B = TypeVar("_B")


def _claimed(parse: Callable[[LogEntry], _B], e: LogEntry, what: str, exc: type[VerificationFailed]) -> _B:
    """Parse a proven entry a claim names, failing with the claiming step's error (``exc``) when
    the entry is of another kind (steps 12 and 13 run as one unit, told apart by error type)."""
    try:
        return parse(e)
    except EntryKindMismatch as x:
        raise exc(f"{what}: {x}") from x


def _model_digest(shards: Sequence[bytes]) -> bytes:
    return tagged_hash(TAG_MODEL, b"".join(shards))


def _stage_plan(
    v: Verification, start_step: int, stages: list[tuple[int, int]], what: str = "schedule"
) -> tuple[list[tuple[int, int]], dict[int, int]]:
    """Expected (stage, step) of every checkpoint after the start, and each stage's base step."""
    cfg = v.config
    assert cfg is not None
    B, E, K = cfg.batch_size, cfg.stage_epochs, cfg.checkpoint_every
    # The signed config sizes this list: bound it by what the bundle discloses before building it
    # (every planned checkpoint must be a disclosed log entry of its own).
    planned = sum((max(E * -(-n // B) - 1, 0) // K if K else 0) + 1 for _, n in stages)
    if planned > len(v.entries):
        raise ScheduleViolation(f"{what}: the committed schedule has {planned} checkpoints, more than the "
                                f"{len(v.entries)} log entries the bundle discloses")
    out: list[tuple[int, int]] = []
    base: dict[int, int] = {}
    step = start_step
    for r, n in stages:
        base[r] = step
        total = E * (-(-n // B))
        if K:
            out += [(r, step + j) for j in range(K, total, K)]
        out.append((r, step + total))
        step += total
    return out, base


def _check_step(v: Verification, st: StepBody, lin: _Lineage, counter: int, what: str) -> None:
    """A step entry of ``lin`` with global counter ``counter`` (step 13 rules)."""
    cfg = v.config
    assert cfg is not None
    if (st.shard, st.generation) != (lin.shard, lin.generation):
        raise ScheduleViolation(f"{what}: step entry {st.index} is for shard {st.shard} generation {st.generation}")
    if st.step != counter:
        raise ScheduleViolation(f"{what}: step entry {st.index} has step counter {st.step}, expected {counter}")
    stage = max((r for r, b in lin.stage_base.items() if b <= counter), default=None)
    if stage is None or st.stage != stage:
        raise ScheduleViolation(f"{what}: step entry {st.index} is logged in stage {st.stage}, expected {stage}")
    n = lin.stage_n[stage]
    nb = -(-n // cfg.batch_size)
    j = counter - lin.stage_base[stage]
    epoch, b = divmod(j, nb)
    if st.epoch != epoch:
        raise ScheduleViolation(f"{what}: step entry {st.index} is in epoch {st.epoch}, expected {epoch}")
    want = min(cfg.batch_size, n - b * cfg.batch_size)
    if cfg.compact != (st.batch is None):
        raise ScheduleViolation(
            f"{what}: step entry {st.index} " + ("lists a batch, which a format-2 log's steps do not" if cfg.compact
                                                 else "lacks its batch list, which a format-1 log's steps carry")
        )  # fmt: skip
    if st.batch is not None and len(st.batch) != want:
        raise ScheduleViolation(f"{what}: step entry {st.index} has a batch of {len(st.batch)} records, expected {want}")
    if st.batch is not None and len(set(st.batch)) != len(st.batch):
        raise ScheduleViolation(f"{what}: step entry {st.index} uses a record twice in one batch")
    if st.lr != cfg.lr:
        raise ScheduleViolation(f"{what}: step entry {st.index} logs learning rate {st.lr}, the config says {cfg.lr}")
    seed = step_seed(cfg.seed, shard=lin.shard, generation=lin.generation, stage=stage, epoch=epoch, step=counter)
    if st.seed != seed:
        raise ScheduleViolation(f"{what}: step entry {st.index} has seed {st.seed}, the committed derivation gives {seed}")


def _batch_position(v: Verification, st: StepBody, lin: _Lineage) -> int:
    """``b``: a step that passed :func:`_check_step` trains on batch ``b`` of its epoch."""
    cfg = v.config
    assert cfg is not None
    return st.step - lin.stage_base[st.stage] - st.epoch * -(-lin.stage_n[st.stage] // cfg.batch_size)


def _committed_batch(v: Verification, st: StepBody, lin: _Lineage, what: str) -> tuple[bytes, ...]:
    """The batch the committed seed and the stage's slice records fix for a step that passed
    :func:`_check_step` (batch :func:`_batch_position` of epoch ``st.epoch`` of its stage)."""
    cfg = v.config
    assert cfg is not None
    b = _batch_position(v, st, lin)
    order = _epoch_order(v, lin, st.stage, st.epoch, what)
    return order[b * cfg.batch_size : (b + 1) * cfg.batch_size]


def _batch_of(v: Verification, st: StepBody, what: str) -> tuple[bytes, ...]:
    """A step's batch: listed in a format-1 entry; recomputed from the committed order for a
    format-2 entry, whose lineage steps 11-13 have built (specs/06 section 5)."""
    if st.batch is not None:
        return st.batch
    lin = next((x for x in v.lineages if (x.shard, x.generation) == (st.shard, st.generation)), None)
    if lin is None or st.stage not in lin.stage_base:
        raise ScheduleViolation(f"{what}: step entry {st.index} (shard {st.shard}, generation {st.generation}, stage "
                                f"{st.stage}) lies in no lineage the bundle establishes")
    return _committed_batch(v, st, lin, what)


def _check_batch(v: Verification, st: StepBody, lin: _Lineage, what: str) -> None:
    """A step that passed :func:`_check_step` trains on exactly the batch the committed seed and
    the stage's slice records fix (step 14; step 17 again for sampled steps). A format-2 step has
    no other batch: this checks that the bundle holds the slice records that fix it."""
    committed = _committed_batch(v, st, lin, what)
    if st.batch is not None and tuple(st.batch) != committed:
        b = _batch_position(v, st, lin)
        raise BatchNotCommitted(
            f"{what}: step entry {st.index} does not train on its committed batch (batch {b} of epoch {st.epoch} of "
            f"stage {st.stage}, fixed by the committed seed and the stage's slice records)"
        )


def _epoch_order(v: Verification, lin: _Lineage, stage: int, epoch: int, what: str) -> tuple[bytes, ...]:
    """The commitments of stage ``stage``'s records in the order epoch ``epoch`` visits them:
    slices 0..stage-1 as the lineage trained on them (records in key order, from the bundle's
    slice members, whose roots step 3 checked, or rebuilt from the openings in step 11), permuted
    by the committed epoch seed."""
    got = lin.orders.get((stage, epoch))
    if got is not None:
        return got
    cfg, b = v.config, v.bundle
    assert cfg is not None and b is not None
    rows: list[bytes] = []
    for j in range(stage):
        root = lin.slice_roots[j]
        found = _records_of(v, root)
        if found is None:
            raise SegmentMissing(f"{what}: the bundle does not disclose the records of slice {j} (root "
                                 f"{root.hex()[:16]}...), which fix the batches of stage {stage}")
        rows += found[1]
    if len(rows) != lin.stage_n[stage]:
        raise BatchNotCommitted(f"{what}: stage {stage} trains on {lin.stage_n[stage]} records, its slices hold {len(rows)}")
    perm = epoch_order(cfg.seed, shard=lin.shard, generation=lin.generation, stage=stage, epoch=epoch, n=len(rows))
    got = lin.orders[(stage, epoch)] = tuple(rows[i] for i in perm.tolist())
    return got


# --- the steps ---------------------------------------------------------------------------------


def _step_01(v: Verification, source: str | bytes) -> None:
    data = bytes(source) if isinstance(source, (bytes, bytearray)) else load_file(source, v.options.limits)
    v.sha256 = hashlib.sha256(data).hexdigest()
    v.archive = open_archive(data, v.options.limits)


def _step_02(v: Verification) -> None:
    assert v.archive is not None
    v.manifest, v.members = open_manifest(v.archive, v.options.limits)
    v.archive = None


def _step_03(v: Verification) -> None:
    """First part: the members steps 4-6 check signatures on (key, final head, envelopes)."""
    assert v.manifest is not None
    v.json_budget = JsonBudget(v.options.limits)
    v.bundle = parse_signed_members(v.members, v.manifest, v.options.limits, v.json_budget)


def _step_03_large(v: Verification) -> None:
    """Second part, run once the signatures of steps 4-6 verified: the large members."""
    assert v.bundle is not None
    v.bundle = parse_large_members(v.bundle, v.members, v.options.limits, v.json_budget)
    v.members = {}


def _step_04(v: Verification) -> None:
    b = v.bundle
    assert b is not None
    if v.options.trust_key is None:
        v.warnings.append(
            f"UNPINNED KEY: signatures were checked against the key the bundle carries ({b.public_key.key_id[:16]}...); "
            "pass --trust-key with the owner's published key to know who signed"
        )
        v.key = b.public_key
    else:
        if b.public_key != v.options.trust_key:
            raise UntrustedKey(
                f"the bundle carries key {b.public_key.key_id[:16]}..., not the pinned key "
                f"{v.options.trust_key.key_id[:16]}..."
            )
        if v.options.trust_origin is not None and v.options.trust_origin != b.manifest.origin:
            raise UntrustedKey(
                f"the pinned verifier key is for log {v.options.trust_origin!r}, but the bundle is of log "
                f"{b.manifest.origin!r}"
            )
        v.key = v.options.trust_key
    v.note_verifier = NoteVerifier.from_public_key(name=b.manifest.origin, key=v.key.public_key)


def _open_head(v: Verification, note: bytes, what: str) -> Checkpoint:
    assert v.note_verifier is not None and v.bundle is not None
    try:
        return open_checkpoint(note, [v.note_verifier], origin=v.bundle.manifest.origin)
    except SignatureFailed as e:
        raise SignatureFailed(f"{what}: {e}") from e
    except MalformedInput as e:
        raise InvalidBundle(f"{what}: {e}") from e


def _step_05(v: Verification) -> None:
    assert v.bundle is not None and v.note_verifier is not None
    v.final = f = _open_head(v, v.bundle.final_head, "final signed tree head")
    want = v.options.expect_head
    if want is not None and (f.root_hash != want.root or want.size not in (None, f.size)
                             or want.origin not in (None, f.origin)):
        raise HeadMismatch(f"the final tree head (size {f.size}, root {f.root_hash.hex()[:16]}...) is not the head the "
                           f"verifier expects (--expect-head: size {want.size}, root {want.root.hex()[:16]}...)")
    ws = v.options.witnesses
    k = len(ws) if v.options.witness_threshold is None else v.options.witness_threshold
    if not ws and v.options.witness_threshold is None:
        return
    if not ws or not 1 <= k <= len(ws) or len({(w.name, w.key_id) for w in ws}) != len(ws):
        raise MalformedInput(f"the witness threshold must be between 1 and the number of distinct witnesses ({len(ws)}), "
                             f"not {k}")
    try:
        v.cosignatures = verify_cosignatures(v.bundle.final_head, v.note_verifier, ws)
    except SignatureFailed as e:
        raise SignatureFailed(f"final signed tree head: {e}") from e
    if len(v.cosignatures) < k:
        raise WitnessQuorumMissing(
            f"the final signed tree head carries valid cosignatures of {len(v.cosignatures)} of the {len(ws)} given "
            f"witnesses, {k} needed: no quorum of witnesses vouches that this is the one history of the log"
        )


def _step_06(v: Verification) -> None:
    b = v.bundle
    assert b is not None and v.key is not None
    for name, env in zip(b.manifest.transcripts, b.transcripts, strict=False):
        # The signature is checked first (verify_envelope), and only then is the payload parsed.
        try:
            payload = verify_envelope(env, [v.key], payload_type=IN_TOTO_PAYLOAD_TYPE)
        except SignatureFailed as e:
            raise SignatureFailed(f"{name}: {e}") from e
        except MalformedInput as e:
            raise InvalidBundle(f"{name}: {e}") from e
        stmt = parse_json_bounded(payload, what=f"{name} statement", max_bytes=v.options.limits.max_json_bytes,
                                  max_depth=v.options.limits.max_json_depth,
                                  max_memory=v.options.limits.max_json_memory, budget=v.json_budget)
        _check_statement(stmt, name)
        t = Transcript.parse(stmt, env.payload, name)
        if t.origin != b.manifest.origin:
            raise HeadMismatch(f"{name} is for log {t.origin!r}, the bundle is for {b.manifest.origin!r}")
        v.transcripts.append(t)


def _check_statement(stmt: Any, what: str) -> None:
    """An in-toto Statement v1 with the deletion-transcript predicate type (specs/05, specs/07)."""
    if not isinstance(stmt, dict):
        raise InvalidBundle(f"{what}: the statement must be a JSON object")
    if stmt.get("_type") != STATEMENT_TYPE:
        raise UnsupportedVersion(f"{what}: statement _type {str(stmt.get('_type'))[:80]!r} is not supported")
    if set(stmt) != {"_type", "subject", "predicateType", "predicate"}:
        raise InvalidBundle(f"{what}: the statement must have exactly _type, subject, predicateType, predicate")
    if stmt["predicateType"] != PREDICATE_DELETION:
        raise InvalidBundle(f"{what}: predicateType is {str(stmt['predicateType'])[:80]!r}, expected {PREDICATE_DELETION!r}")
    subj = stmt["subject"]
    if (not isinstance(subj, list) or not 1 <= len(subj) <= 1024
            or any(not isinstance(x, dict) or set(x) != {"name", "digest"} or not isinstance(x["digest"], dict)
                   or set(x["digest"]) != {"sha256"} for x in subj)):
        raise InvalidBundle(f"{what}: the statement must have 1 to 1024 subjects, each a name and a sha256 digest")


def _step_07(v: Verification) -> None:
    b = v.bundle
    assert b is not None and v.final is not None
    allowed = v.options.requests
    if allowed is not None and len(v.transcripts) not in allowed:
        raise HeadMismatch(f"the bundle holds requests 1..{len(v.transcripts)}; the verifier expects "
                           f"{_counts(allowed)} (--requests)")
    prev_after = 0
    for i, (name, t) in enumerate(zip(b.manifest.transcripts, v.transcripts, strict=False)):
        if t.request != i + 1:
            raise HeadMismatch(f"{name} is request {t.request}; a bundle holds requests 1..N in order (expected {i + 1})")
        if name != f"transcripts/{t.request:06d}.dsse.json":
            raise HeadMismatch(f"{name} holds request {t.request}")
        before = _open_head(v, t.head_before, f"{name} head_before")
        after = _open_head(v, t.head_after, f"{name} head_after")
        if before.size < prev_after:
            raise HeadMismatch(f"{name}: head_before (size {before.size}) is older than the previous request's head_after")
        if (t.consistency.old_size, t.consistency.new_size) != (before.size, after.size):
            raise HeadMismatch(f"{name}: the consistency proof is for sizes {t.consistency.old_size} -> {t.consistency.new_size}")
        t.consistency.verify(old_root=before.root_hash, new_root=after.root_hash)
        c = b.consistency[i]
        if (c.old_size, c.new_size) != (after.size, v.final.size):
            raise HeadMismatch(f"bundle consistency proof {i} is for sizes {c.old_size} -> {c.new_size}, expected "
                               f"{after.size} -> {v.final.size}")
        c.verify(old_root=after.root_hash, new_root=v.final.root_hash)
        v.heads.append((before, after))
        prev_after = after.size
    _known_heads(v)


def _known_heads(v: Verification) -> None:
    """Each ``--known-head`` (a signed head of this log the verifier saw before) must be part of
    the history the bundle proves: same root where the bundle has a head of its size, else a
    consistency proof to the final head (``known`` in log/entries.json); never newer than it."""
    b, final = v.bundle, v.final
    assert b is not None and final is not None
    roots = {final.size: final.root_hash}
    for before, after in v.heads:
        roots.setdefault(before.size, before.root_hash)
        roots.setdefault(after.size, after.root_hash)
    for i, note in enumerate(v.options.known_heads):
        w = f"known head {i + 1}"
        k = _open_head(v, note, w)
        if k.size > final.size:
            raise HeadMismatch(f"{w} has size {k.size}, the bundle's final head only {final.size}: the bundle shows an "
                               "older state of the log than one already seen")
        if k.size in roots:
            if roots[k.size] != k.root_hash:
                raise HeadMismatch(f"{w} (size {k.size}) has another root than the bundle's head of that size: two "
                                   "signed histories of one log (split view)")
            continue
        proof = next((c for c in b.known if c.old_size == k.size and c.new_size == final.size), None)
        if proof is None:
            raise SegmentMissing(f"{w} (size {k.size}) is not a head of the bundle and the bundle carries no consistency "
                                 f"proof from size {k.size} to its final head (vmu bundle --known-head)")
        try:
            proof.verify(old_root=k.root_hash, new_root=final.root_hash)
        except VerificationFailed as e:
            raise HeadMismatch(f"{w} (size {k.size}) is not a prefix of the bundle's history (split view): {e}") from e


def _counts(allowed: Sequence[int]) -> str:
    a = sorted(set(allowed))
    if len(a) > 2 and a == list(range(a[0], a[-1] + 1)):
        return f"{a[0]} to {a[-1]} requests"
    return " or ".join(str(x) for x in a) + " request(s)"


def _step_08(v: Verification) -> None:
    for t, (_, after) in zip(v.transcripts, v.heads, strict=False):
        for what, d in t.disclosures():
            if d.inclusion.tree_size != after.size:
                raise HeadMismatch(f"request {t.request} {what}: inclusion proof is for tree size "
                                   f"{d.inclusion.tree_size}, head_after has {after.size}")
            d.inclusion.verify(leaf=d.entry.leaf_hash, root=after.root_hash)


def _step_09(v: Verification) -> None:
    b = v.bundle
    assert b is not None and v.final is not None
    for i, run in enumerate(b.runs):
        if run.proof.tree_size != v.final.size:
            raise HeadMismatch(f"log run {i} is proven against tree size {run.proof.tree_size}, the final head has {v.final.size}")
        run.proof.verify(leaves=[e.leaf_hash for e in run.entries], root=v.final.root_hash)
        for e in run.entries:
            v.entries[e.index] = e
    # An entry a transcript discloses and a run discloses is the same entry (same leaf).
    for t in v.transcripts:
        for what, d in t.disclosures():
            known = v.entries.get(d.entry.index)
            if known is not None and known.leaf_hash != d.entry.leaf_hash:
                raise HeadMismatch(f"request {t.request} {what}: entry {known.index} differs from the bundle's log run")
            if known is None:
                v.entries[d.entry.index] = d.entry


def _step_10(v: Verification) -> None:
    e0 = _entry(v, 0, "commit block")
    cfg = v.config = ConfigBody.parse(e0)
    S, R = cfg.shards, cfg.slices
    descriptors = []
    for s in range(S):
        for r in range(R):
            sb = SliceBody.parse(_entry(v, 1 + s * R + r, "commit block"))
            if (sb.shard, sb.slice, sb.generation) != (s, r, 0):
                raise CommitBlockInvalid(f"log entry {sb.index} is slice ({sb.shard}, {sb.slice}) generation "
                                         f"{sb.generation}, expected ({s}, {r}) generation 0")
            if sb.size == 0 and sb.root != EMPTY_ROOT:
                raise CommitBlockInvalid(f"slice ({s}, {r}) is empty but its root is not the empty root")
            v.slices0[(s, r)] = sb
            descriptors.append(SliceDescriptor(shard=s, slice=r, size=sb.size, root=sb.root))
    n_train = sum(d.size for d in descriptors)
    if n_train != cfg.n_train:
        raise CommitBlockInvalid(f"the slices hold {n_train} records, the config says {cfg.n_train}")
    ds = DatasetBody.parse(_entry(v, 1 + S * R, "commit block"))
    if ds.version != 0 or ds.slices != S * R:
        raise CommitBlockInvalid(f"data-set entry {ds.index} is version {ds.version} with {ds.slices} slices")
    if dataset_root(descriptors) != ds.root:
        raise CommitBlockInvalid("the data-set root is not the root over the logged slice descriptors")
    v.audit = AuditBody.parse(_entry(v, 2 + S * R, "commit block"))
    for s in range(S):
        c = CheckpointBody.parse(_entry(v, 3 + S * R + s, "commit block"))
        if (c.shard, c.generation, c.stage, c.step) != (s, 0, 0, 0):
            raise CommitBlockInvalid(f"log entry {c.index} is not the initial checkpoint of shard {s}")


def _lineage_checkpoints(v: Verification, lin: _Lineage, stages: list[tuple[int, int]], what: str) -> list[tuple[int, int]]:
    expected, base = _stage_plan(v, lin.start.step, stages, what)
    lin.stage_base = base
    lin.stage_n = dict(stages)
    return expected


def _step_13_original(v: Verification) -> None:
    cfg, b = v.config, v.bundle
    assert cfg is not None and b is not None
    if sorted(b.manifest.original) != list(range(cfg.shards)):
        raise ScheduleViolation(f"the manifest must list the original lineage of every shard 0..{cfg.shards - 1}")
    for s in range(cfg.shards):
        idx = b.manifest.original[s]
        what = f"original training of shard {s}"
        cks = [CheckpointBody.parse(_entry(v, i, what)) for i in idx]
        if idx[0] != 3 + cfg.shards * cfg.slices + s:
            raise ScheduleViolation(f"{what}: the lineage must start at the initial checkpoint (entry "
                                    f"{3 + cfg.shards * cfg.slices + s}), not entry {idx[0]}")
        if any(a >= c for a, c in zip(idx, idx[1:], strict=False)):
            raise ScheduleViolation(f"{what}: checkpoint entries are not in log order")
        lin = _Lineage(shard=s, generation=0, stratum=None, start=cks[0], checkpoints=cks[1:], stage_base={}, stage_n={},
                       slice_roots=tuple(v.slices0[(s, j)].root for j in range(cfg.slices)))
        n_r = [sum(v.slices0[(s, j)].size for j in range(r)) for r in range(1, cfg.slices + 1)]
        expected = _lineage_checkpoints(v, lin, [(r, n_r[r - 1]) for r in range(1, cfg.slices + 1)], what)
        got = [(c.stage, c.step) for c in cks[1:]]
        for c in cks[1:]:
            if (c.shard, c.generation) != (s, 0):
                raise ScheduleViolation(f"{what}: entry {c.index} is a checkpoint of shard {c.shard} generation {c.generation}")
        if got != expected:
            raise ScheduleViolation(f"{what}: checkpoints at (stage, step) {got[:4]}... do not follow the committed "
                                    f"schedule {expected[:4]}...")
        v.lineages.append(lin)


def _current(v: Verification, shard: int) -> list[_Lineage]:
    return [lin for lin in v.lineages if lin.shard == shard]


def _records_of(v: Verification, root: bytes) -> tuple[tuple[bytes, ...], tuple[bytes, ...]] | None:
    """The keys and commitments (key order) of the slice tree ``root``: from the bundle's
    slice-records member (step 3 rebuilt its root), or derived from the openings (step 11)."""
    b = v.bundle
    assert b is not None
    keys, commits = b.slice_keys.get(root), b.slice_records.get(root)
    if keys is not None and commits is not None:
        return keys, commits
    return v.derived_slices.get(root)


def _derive_original_slices(v: Verification) -> None:
    """Generation-0 slices the bundle need not list: a shard's records that its disclosed original
    steps use and the bundle opens (key = hash of the id, commitment = hash of the opening) or
    deletes (key and commitment from the transcript), put in their slices by rank (:func:`verifiable_mu._seeds.derive_slices`); kept only where the rebuilt
    root is the committed one."""
    cfg, b = v.config, v.bundle
    assert cfg is not None and b is not None
    # Keys of the records the bundle opens for training, and of the deleted records (their keys
    # and commitments are the transcripts' own: a damaged deleted opening is step 16's finding).
    key_of = {o.commitment(): record_key(o.id) for o in b.openings.training}
    key_of.update((r.commitment, r.key) for t in v.transcripts for r in t.records)
    used: dict[int, set[bytes]] = {}
    for e in v.entries.values():
        if e.kind == "step":
            st = StepBody.parse(e)
            if st.generation == 0 and st.batch is not None:  # format 2: the bundle lists the slices instead
                used.setdefault(st.shard, set()).update(st.batch)
    for s, commits in used.items():
        if not 0 <= s < cfg.shards:
            continue
        pairs = [(key_of[c], c) for c in commits if c in key_of]
        sizes = [v.slices0[(s, j)].size for j in range(cfg.slices)]
        for j, tree in enumerate(derive_slices(cfg.seed, pairs, sizes)):
            if tree.root == v.slices0[(s, j)].root:
                v.derived_slices[tree.root] = (tuple(k for k, _ in tree), tuple(c for _, c in tree))


def _slice_pairs(v: Verification, sb: SliceBody, what: str) -> list[tuple[bytes, bytes]]:
    """The ``(key, commitment)`` records of the slice entry ``sb`` (:func:`_records_of`)."""
    got = _records_of(v, sb.root)
    if got is None:
        raise SegmentMissing(f"{what}: the bundle does not disclose the records of slice ({sb.shard}, {sb.slice}) "
                             f"(root {sb.root.hex()[:16]}...)")
    return list(zip(*got, strict=True))


def _check_assignment(v: Verification, shard: int, what: str) -> None:
    """The generation-0 slices of ``shard`` hold exactly what the committed assignment
    (``sha256-rank-v1``, specs/06 section 1) gives the shard: as many records as its ranks, each in
    the slice its position in rank order fixes."""
    cfg = v.config
    assert cfg is not None
    where: dict[bytes, int] = {}
    for j in range(cfg.slices):
        for k, _ in _slice_pairs(v, v.slices0[(shard, j)], what):
            where[k] = j
    want_n = shard_size(cfg.n_train, cfg.shards, shard)
    if len(where) != want_n:
        raise DeletionClaimFailed(f"{what}: shard {shard}'s committed slices hold {len(where)} records, the assignment "
                                  f"gives it {want_n} of {cfg.n_train}")
    for k, j in assigned_slices(cfg.seed, list(where), cfg.slices).items():
        if where[k] != j:
            raise DeletionClaimFailed(f"{what}: record key {k.hex()[:16]}... is committed in slice {where[k]} of shard "
                                      f"{shard}, the committed assignment (sha256-rank-v1) puts it in slice {j}")


def _step_11(v: Verification) -> None:
    """Deletion claims against each shard's slice lineage: the commit block's generation-0 slice
    entries, then every request's re-commit block (deletion entry, the new slice entries, the
    data-set entry). A slice claim is accepted only if it is the lineage's current entry."""
    cfg = v.config
    assert cfg is not None
    S, R = cfg.shards, cfg.slices
    _derive_original_slices(v)
    cur: dict[tuple[int, int], SliceBody] = dict(v.slices0)  # the current slice entry of every (shard, slice)
    gens: dict[int, int] = dict.fromkeys(range(S), 0)
    assigned: set[int] = set()
    deleted_keys: set[bytes] = set()
    held_out_keys: set[bytes] = set()
    for t in v.transcripts:
        w = f"request {t.request}"
        d = DeletionBody.parse(t.deletion.entry)
        if d.request != t.request:
            raise DeletionClaimFailed(f"{w}: the deletion entry is for request {d.request}")
        commits = sorted([r.commitment for r in t.records] + [h.commitment for h in t.held_out_records()])
        if len(set(commits)) != len(commits) or list(d.commitments) != commits:
            raise DeletionClaimFailed(f"{w}: the transcript's records are not the commitments of its deletion entry")
        if t.count != len(t.records):
            raise DeletionClaimFailed(f"{w}: count {t.count} differs from the {len(t.records)} records listed")
        shards = sorted(sc.shard for sc in t.shards)
        if len(set(shards)) != len(shards) or shards != sorted({r.shard for r in t.records}) or list(d.shards) != shards:
            raise DeletionClaimFailed(f"{w}: retrained shards {shards} are not the shards of the deleted records")
        by_shard: dict[int, list[Any]] = {}
        for r in t.records:
            if r.shard >= S or r.slice >= R:
                raise DeletionClaimFailed(f"{w}: record {r.commitment.hex()[:16]} claims shard {r.shard} slice {r.slice}")
            if (r.membership.key, r.membership.commitment) != (r.key, r.commitment):
                raise DeletionClaimFailed(f"{w}: the membership proof of {r.commitment.hex()[:16]} is for another record")
            old = SliceBody.parse(r.old_slice.entry)
            now = cur[(r.shard, r.slice)]
            if old.index != now.index:
                raise DeletionClaimFailed(
                    f"{w}: record {r.commitment.hex()[:16]} points at slice entry {old.index}, which is not the current "
                    f"entry of slice ({r.shard}, {r.slice}) in the shard's lineage (entry {now.index})")
            try:
                SliceDescriptor(shard=old.shard, slice=old.slice, size=old.size, root=old.root).verify_membership(
                    r.membership, key=r.key)
            except VerificationFailed as e:
                raise DeletionClaimFailed(f"{w}: record {r.commitment.hex()[:16]} was not in its slice: {e}") from e
            if r.shard not in assigned:  # the record's slice follows from the committed assignment
                _check_assignment(v, r.shard, w)
                assigned.add(r.shard)
            by_shard.setdefault(r.shard, []).append(r)
        # The re-commit block: right after the deletion entry, for each retrained shard in order,
        # one slice entry of the new generation per slice from_stage-1..R-1, then the data-set entry.
        pos = d.index + 1
        for sc in sorted(t.shards, key=lambda x: x.shard):
            ws = f"{w} shard {sc.shard}"
            recs = by_shard[sc.shard]
            if sc.from_stage != min(r.slice for r in recs) + 1:
                raise DeletionClaimFailed(f"{ws}: retraining starts at stage {sc.from_stage}, the first deleted slice "
                                          f"is used from stage {min(r.slice for r in recs) + 1}")
            if sc.generation != gens[sc.shard] + 1:
                raise DeletionClaimFailed(f"{ws}: retraining is generation {sc.generation}, the shard's lineage is at "
                                          f"generation {gens[sc.shard]}")
            for j in range(sc.from_stage - 1, R):
                ent = _entry(v, pos, f"{w} re-commit block")
                sb = SliceBody.parse(ent) if ent.kind == "slice" else None
                if sb is None or (sb.shard, sb.slice, sb.generation) != (sc.shard, j, sc.generation):
                    got = f"a {ent.kind} entry" if sb is None else f"slice ({sb.shard}, {sb.slice}) generation {sb.generation}"
                    raise DeletionClaimFailed(f"{w}: log entry {pos} of the re-commit block is {got}, expected slice "
                                              f"({sc.shard}, {j}) generation {sc.generation}")
                # Content: the old slice minus exactly this request's deleted records of it (a slice
                # that held none keeps its records, so nothing can be added under a new id).
                gone = {r.key for r in recs if r.slice == j}
                old_pairs = _slice_pairs(v, cur[(sc.shard, j)], ws)
                tree = SortedTree.build((k, c) for k, c in old_pairs if k not in gone)
                if (tree.root, len(tree)) != (sb.root, sb.size):
                    raise DeletionClaimFailed(
                        f"{ws}: re-committed slice {j} (entry {sb.index}, {sb.size} records) is not its previous "
                        f"entry ({cur[(sc.shard, j)].index}, {len(old_pairs)} records) minus exactly the "
                        f"{len(gone)} deleted record(s)")
                cur[(sc.shard, j)] = sb
                pos += 1
            gens[sc.shard] = sc.generation
        ent = _entry(v, pos, f"{w} re-commit block")
        ds = DatasetBody.parse(ent) if ent.kind == "dataset" else None
        if ds is None or ds.version != t.request or ds.slices != S * R:
            raise DeletionClaimFailed(f"{w}: log entry {pos} ends the re-commit block but is not the data-set entry of "
                                      f"version {t.request}")
        descriptors = [SliceDescriptor(shard=s, slice=j, size=cur[(s, j)].size, root=cur[(s, j)].root)
                       for s in range(S) for j in range(R)]
        if ds.root != dataset_root(descriptors):
            raise DeletionClaimFailed(f"{w}: the data-set entry {ds.index} is not the root over the current slices")
        for sc in t.shards:
            ws = f"{w} shard {sc.shard}"
            if len(sc.slices) != R:
                raise DeletionClaimFailed(f"{ws}: {len(sc.slices)} slices are listed, the shard has {R}")
            keys = sorted(r.key for r in by_shard[sc.shard])
            for j, x in enumerate(sc.slices):
                sb = SliceBody.parse(x.slice.entry)
                if sb.index != cur[(sc.shard, j)].index:
                    raise DeletionClaimFailed(f"{ws}: slices[{j}] is slice entry {sb.index}, not the current entry of "
                                              f"slice ({sc.shard}, {j}) in the shard's lineage "
                                              f"(entry {cur[(sc.shard, j)].index})")
                if sorted(p.key for p in x.non_membership) != keys:
                    raise DeletionClaimFailed(f"{ws}: slice {j} lacks a non-membership proof for some deleted record")
                desc = SliceDescriptor(shard=sb.shard, slice=sb.slice, size=sb.size, root=sb.root)
                for p in x.non_membership:
                    try:
                        desc.verify_non_membership(p, key=p.key)
                    except VerificationFailed as e:
                        raise DeletionClaimFailed(f"{ws}: a deleted record is still in slice {j}: {e}") from e
        if t.held_out is not None:
            _check_held_out(v, t, cur, deleted_keys | held_out_keys)
            held_out_keys |= {h.key for h in t.held_out.records}
        deleted_keys |= {r.key for r in t.records}
    v.slices_now = cur
    _check_absent_everywhere(v, deleted_keys)


def _check_held_out(v: Verification, t: Any, cur: dict[tuple[int, int], SliceBody], earlier: set[bytes]) -> None:
    """The held-out records of request ``t`` (specs/07 ``held_out``): each is a committed record of
    the test or audit split (its membership proof against the commit block's audit entry), none
    was deleted before, and all of them are proven absent from every current slice of every shard
    after the request (``cur``: the slice lineage at this request's head), so no retraining is owed."""
    cfg = v.config
    assert cfg is not None and v.audit is not None and t.held_out is not None
    S, R = cfg.shards, cfg.slices
    w = f"request {t.request} held_out"
    ho = t.held_out
    keys = [h.key for h in ho.records]
    if any(a >= b for a, b in zip(keys, keys[1:], strict=False)):
        raise DeletionClaimFailed(f"{w}: records are not in strictly ascending key order")
    trained = {r.key for r in t.records}
    for h in ho.records:
        c = h.commitment.hex()[:16]
        if h.key in trained:
            raise DeletionClaimFailed(f"{w}: record {c} is claimed both trained and held out")
        if h.key in earlier:
            raise DeletionClaimFailed(f"{w}: record {c} was already deleted by an earlier request")
    if ho.audit.entry.index != v.audit.index:
        raise DeletionClaimFailed(f"{w}: audit is entry {ho.audit.entry.index}, not the commit block's audit entry "
                                  f"{v.audit.index}")
    if len(ho.slices) != S * R:
        raise DeletionClaimFailed(f"{w}: {len(ho.slices)} absence proofs are given, every current slice of every "
                                  f"shard needs one ({S} x {R})")
    for i, x in enumerate(ho.slices):
        s, j = divmod(i, R)
        sb = SliceBody.parse(x.slice.entry)
        if sb.index != cur[(s, j)].index:
            raise DeletionClaimFailed(f"{w}: slices[{i}] is slice entry {sb.index}, not the current entry of slice "
                                      f"({s}, {j}) after the request (entry {cur[(s, j)].index})")
        try:
            x.absence.verify(root=sb.root, size=sb.size, keys=keys)
        except VerificationFailed as e:
            raise DeletionClaimFailed(f"{w}: the records claimed held out are not proven absent from training "
                                      f"slice ({s}, {j}): {e}") from e
    # Never trained on is not enough: the record must be a committed record of its split.
    for h in ho.records:
        c = h.commitment.hex()[:16]
        if (h.membership.key, h.membership.commitment) != (h.key, h.commitment):
            raise DeletionClaimFailed(f"{w}: the membership proof of {c} is for another record")
        if h.split == "audit":
            root, size = v.audit.root, v.audit.size
        elif v.audit.test_root is None or v.audit.test_size is None:
            raise DeletionClaimFailed(f"{w}: record {c} is claimed in the test split, but this log commits no test "
                                      "split (its audit entry has no test_root)")
        else:
            root, size = v.audit.test_root, v.audit.test_size
        if h.membership.tree_size != size:
            raise DeletionClaimFailed(f"{w}: record {c} is proven in a tree of {h.membership.tree_size} records, the "
                                      f"committed {h.split} split has {size}")
        try:
            h.membership.verify(root=root, key=h.key)
        except VerificationFailed as e:
            raise DeletionClaimFailed(f"{w}: record {c} is not a committed record of the {h.split} split: {e}") from e


def _check_absent_everywhere(v: Verification, deleted: set[bytes]) -> None:
    """Every deleted key is absent from every shard's current slices after the last request, not
    only from the retrained shards': from the slice's disclosed records, or else from the bundle's
    non-membership proof against the slice's current entry. (Slices only change by re-commits,
    which remove exactly the deleted records, so absence at the end means absence since each
    deletion.)"""
    b = v.bundle
    assert b is not None
    if not deleted:  # held-out records only: step 11 proved them absent per request
        return
    for (s, j), sb in sorted(v.slices_now.items()):
        got = _records_of(v, sb.root)
        if got is not None:
            kept = deleted.intersection(got[0])
            if kept:
                raise DeletionClaimFailed(f"deleted record key {min(kept).hex()[:16]}... is still in slice ({s}, {j}) "
                                          f"(entry {sb.index})")
            continue
        proof = b.absence.get(sb.root)
        if proof is None:
            raise DeletionClaimFailed(f"the bundle does not prove the deleted record keys absent from slice ({s}, {j}) "
                                      f"(entry {sb.index})")
        try:
            proof.verify(root=sb.root, size=sb.size, keys=sorted(deleted))
        except VerificationFailed as e:
            raise DeletionClaimFailed(f"the deleted record keys are not proven absent from slice ({s}, {j}): {e}") from e


def _step_12(v: Verification) -> None:
    """Ordering rule, and which checkpoint each rollback must be."""
    cfg = v.config
    assert cfg is not None
    gens: dict[int, int] = {s: 0 for s in range(cfg.shards)}
    for ti, (t, (before, after)) in enumerate(zip(v.transcripts, v.heads, strict=False)):
        w = f"request {t.request}"
        d = t.deletion.entry.index
        if not before.size <= d < after.size:
            raise OrderingViolation(f"{w}: the deletion entry {d} is not between head_before ({before.size}) and head_after")
        for i, r in enumerate(t.records):
            fu = _claimed(StepBody.parse, r.first_use.entry, f"{w} records[{i}] first_use", OrderingViolation)
            sc = next(x for x in t.shards if x.shard == r.shard)
            rb = _claimed(CheckpointBody.parse, sc.rollback.entry, f"{w} shard {sc.shard} rollback", OrderingViolation)
            if r.commitment not in _batch_of(v, fu, f"{w} records[{i}] first_use"):
                raise OrderingViolation(f"{w}: the first-use step {fu.index} does not use record {r.commitment.hex()[:16]}")
            if fu.shard != r.shard or fu.stage != r.slice + 1:
                raise OrderingViolation(f"{w}: record {r.commitment.hex()[:16]} of slice {r.slice} is first used in "
                                        f"shard {fu.shard} stage {fu.stage}, expected stage {r.slice + 1}")
            if not (rb.index < fu.index and rb.step <= fu.step and rb.stage <= r.slice):
                raise OrderingViolation(f"{w}: rollback checkpoint {rb.index} (stage {rb.stage}, step {rb.step}) does not "
                                        f"precede the first use {fu.index} (step {fu.step}) of {r.commitment.hex()[:16]}")
        for sc in t.shards:
            ws = f"{w} shard {sc.shard}"
            rb = _claimed(CheckpointBody.parse, sc.rollback.entry, f"{ws} rollback", OrderingViolation)
            if rb.shard != sc.shard or rb.stage != sc.from_stage - 1:
                raise OrderingViolation(f"{ws}: rollback checkpoint {rb.index} is shard {rb.shard} stage {rb.stage}, "
                                        f"expected stage {sc.from_stage - 1}")
            if sc.generation != gens[sc.shard] + 1:
                raise OrderingViolation(f"{ws}: retraining is generation {sc.generation}, expected {gens[sc.shard] + 1}")
            # The checkpoint of stage from_stage-1 in the lineage current before this request.
            want = None
            for lin in _current(v, sc.shard):  # generation 0 first, then each earlier request in order
                c = lin.at_stage_end(rb.stage)
                if c is not None:
                    want = c
            if want is None or want.index != rb.index:
                raise OrderingViolation(f"{ws}: rollback to entry {rb.index} is not the stage-{rb.stage} checkpoint of the "
                                        f"shard's current lineage (entry {None if want is None else want.index})")
            if not rb.index < d < sc.retraining_start < sc.retraining_end <= t.model_after.entry.index:
                raise OrderingViolation(f"{ws}: rollback {rb.index}, deletion {d}, retraining [{sc.retraining_start}, "
                                        f"{sc.retraining_end}) and model {t.model_after.entry.index} are out of order")
            _step_13_retraining(v, t, ti, sc, rb)
            gens[sc.shard] = sc.generation


def _step_13_retraining(v: Verification, t: Transcript, ti: int, sc: Any, rb: CheckpointBody) -> None:
    """Schedule of one retraining: the disclosed range is exactly its steps and checkpoints."""
    cfg = v.config
    assert cfg is not None
    w = f"request {t.request} shard {sc.shard} retraining"
    bodies = [SliceBody.parse(x.slice.entry) for x in sc.slices]
    sizes = [sb.size for sb in bodies]
    stages = [(r, sum(sizes[:r])) for r in range(sc.from_stage, cfg.slices + 1)]
    lin = _Lineage(shard=sc.shard, generation=sc.generation, stratum=ti, start=rb, checkpoints=[], stage_base={}, stage_n={},
                   slice_roots=tuple(sb.root for sb in bodies))
    expected = _lineage_checkpoints(v, lin, stages, w)
    pos = sc.retraining_start
    counter = rb.step
    for stage, step in expected:
        while counter < step:
            st = StepBody.parse(_entry(v, pos, w))
            _check_step(v, st, lin, counter, w)
            pos += 1
            counter += 1
        c = CheckpointBody.parse(_entry(v, pos, w))
        if (c.shard, c.generation, c.stage, c.step) != (sc.shard, sc.generation, stage, step):
            raise ScheduleViolation(f"{w}: entry {pos} is checkpoint (shard {c.shard}, generation {c.generation}, stage "
                                    f"{c.stage}, step {c.step}), expected stage {stage} step {step}")
        lin.checkpoints.append(c)
        pos += 1
    if pos != sc.retraining_end:
        raise ScheduleViolation(f"{w}: the schedule ends at entry {pos}, the transcript says {sc.retraining_end}")
    fc = sc.final_checkpoint.entry
    if fc.index != pos - 1 or fc.leaf_hash != _entry(v, pos - 1, w).leaf_hash:
        raise ScheduleViolation(f"{w}: the final checkpoint {fc.index} is not the last entry of the retraining")
    v.lineages.append(lin)


def _step_13(v: Verification) -> None:
    _step_13_original(v)
    _step_12(v)  # walks the requests in order; checks each retraining's schedule as it goes


def _step_14(v: Verification) -> None:
    deleted: set[bytes] = set()
    lin_of = {(lin.shard, lin.generation): lin for lin in v.lineages}
    for t in v.transcripts:
        deleted |= {r.commitment for r in t.records}
        for sc in t.shards:
            lin = lin_of[(sc.shard, sc.generation)]
            w = f"request {t.request} shard {sc.shard} retraining"
            for i in range(sc.retraining_start, sc.retraining_end):
                e = v.entries[i]
                if e.kind == "step":
                    st = StepBody.parse(e)
                    bad = deleted.intersection(_batch_of(v, st, w))
                    if bad:
                        raise ManifestContainsDeleted(
                            f"request {t.request}: retraining step entry {i} of shard {sc.shard} uses deleted record "
                            f"{sorted(bad)[0].hex()[:16]}..."
                        )
                    _check_batch(v, st, lin, w)
    _check_original_batches(v)


def _check_original_batches(v: Verification) -> None:
    """Every disclosed step of the original training (generation 0) lies where its lineage's
    schedule puts it, passes the step rules of step 13, and trains on its committed batch: records
    of its own shard's slices 0..stage-1, in the committed order (so a record of another shard, or
    of a later slice, in a batch is rejected)."""
    lin_of = {lin.shard: lin for lin in v.lineages if lin.generation == 0}
    for i in sorted(v.entries):
        e = v.entries[i]
        if e.kind != "step":
            continue
        st = StepBody.parse(e)
        if st.generation != 0:
            continue
        lin = lin_of.get(st.shard)
        w = f"original training of shard {st.shard}"
        if lin is None:
            raise ScheduleViolation(f"{w}: step entry {i} is for shard {st.shard}, the config has {len(lin_of)} shards")
        end = next((c for c in lin.checkpoints if c.step > st.step), None)
        if end is None or i != end.index - (end.step - st.step):
            raise ScheduleViolation(f"{w}: step entry {i} (step {st.step}) is not where the shard's lineage has its "
                                    f"step {st.step}")
        _check_step(v, st, lin, st.step, w)
        _check_batch(v, st, lin, w)


def _step_15(v: Verification) -> None:
    cfg, b = v.config, v.bundle
    assert cfg is not None and b is not None
    finals: dict[int, bytes] = {lin.shard: lin.final.digest for lin in v.lineages if lin.generation == 0}
    prev: Disclosure | None = None
    file_sha256: dict[bytes, bytes] = {}
    for t in v.transcripts:
        w = f"request {t.request}"
        mb, ma = ModelBody.parse(t.model_before.entry), ModelBody.parse(t.model_after.entry)
        if prev is None:
            if mb.reason != "train" or list(mb.shards) != [finals[s] for s in range(cfg.shards)]:
                raise ModelMismatch(f"{w}: model_before is not the model the original training ended with")
        elif prev.entry.index != t.model_before.entry.index:
            raise ModelMismatch(f"{w}: model_before (entry {t.model_before.entry.index}) is not the previous request's "
                                f"model_after (entry {prev.entry.index})")
        for sc in t.shards:
            finals[sc.shard] = CheckpointBody.parse(sc.final_checkpoint.entry).digest
        if ma.reason != "forget" or ma.request != t.request:
            raise ModelMismatch(f"{w}: model_after is not the model logged for this request")
        if list(ma.shards) != [finals[s] for s in range(cfg.shards)]:
            raise ModelMismatch(f"{w}: model_after's constituents are not the ends of the shards' current lineages")
        for m in (mb, ma):
            if m.digest != _model_digest(m.shards):
                raise ModelMismatch(f"{w}: model entry {m.index} has a digest that is not the hash of its constituents")
        if t.subject_digest is not None:  # an older transcript: one subject, the model digest
            if t.subject_digest != ma.digest:
                raise ModelMismatch(f"{w}: the statement's subject is not the model_after digest")
        else:
            if [d for d, _ in t.subject_files] != list(ma.shards):
                raise ModelMismatch(f"{w}: the statement's subjects are not the checkpoint files of model_after's "
                                    "constituents, in shard order")
            for s, (d, file_sha) in enumerate(t.subject_files):
                if d not in b.checkpoints:  # the bundle holds the final model's files; earlier ones by name only
                    continue
                if d not in file_sha256:  # a shard no later request touched is in every transcript: hash once
                    file_sha256[d] = hashlib.sha256(b.checkpoints[d]).digest()
                if file_sha256[d] != file_sha:
                    raise ModelMismatch(f"{w}: subject {s} gives SHA-256 {file_sha.hex()[:16]}... for "
                                        f"checkpoints/{d.hex()}.safetensors, the bundle's file hashes to "
                                        f"{file_sha256[d].hex()[:16]}...")
        prev = t.model_after
    assert prev is not None
    for s, d in enumerate(ModelBody.parse(prev.entry).shards):
        if d not in b.checkpoints:
            raise ModelMismatch(f"the bundle lacks the weights of shard {s} of the final model ({d.hex()[:16]}...)")
    # The config's model, sized by its signed fields, must be the one the checkpoint files hold,
    # checked here, before steps 18-19 build any model (specs/09, "Resource bounds").
    check_model_fits(cfg.model, b.checkpoints)
    final_shards = ModelBody.parse(prev.entry).shards
    v.nonfinite_shards = [s for s, d in enumerate(final_shards) if not checkpoint_is_finite(b.checkpoints[d])]
    if v.nonfinite_shards:
        v.warnings.append(
            f"NON-FINITE MODEL: the final constituent(s) of shard(s) {', '.join(map(str, v.nonfinite_shards))} hold NaN "
            "or infinite weights; the deletion may be carried out as logged, but the model is unusable (training "
            "diverged; the prover refuses to commit such a stage, so this log was not written by it as released)"
        )


def _step_16(v: Verification) -> None:
    b = v.bundle
    assert b is not None and v.audit is not None
    op = b.openings
    seen: dict[bytes, RecordOpening] = {}
    for part, lst in (("deleted", op.deleted), ("audit", op.audit), ("training", op.training)):
        for o in lst:
            c = o.commitment()
            if c in seen:
                raise OpeningMismatch(f"record {o.id!r} is disclosed twice ({part})")
            seen[c] = o
    deleted = {o.commitment(): o for o in op.deleted}
    claimed: dict[bytes, tuple[Any, Any]] = {r.commitment: (t, r) for t in v.transcripts for r in t.records}
    claimed.update((h.commitment, (t, h)) for t in v.transcripts for h in t.held_out_records())
    if set(deleted) != set(claimed):
        missing = set(claimed) - set(deleted)
        raise OpeningMismatch(
            f"the deleted-record openings do not match the deleted commitments "
            f"({len(missing)} missing, {len(set(deleted) - set(claimed))} unexpected)"
        )
    for c, (t, r) in claimed.items():
        if record_key(deleted[c].id) != r.key:
            raise OpeningMismatch(f"request {t.request}: opening {deleted[c].id!r} does not have the record's key")
    for t in v.transcripts:
        ids = sorted(deleted[c].id for c in [r.commitment for r in t.records]
                     + [h.commitment for h in t.held_out_records()])
        want = tagged_hash(TAG_REQUEST, canonical_json({"n": str(t.request), "ids": ids}))
        if DeletionBody.parse(t.deletion.entry).request_digest != want:
            raise OpeningMismatch(f"request {t.request}: the deletion entry's request digest does not match the ids opened")
    held_audit = {h.membership.index: (h.key, h.commitment)
                  for t in v.transcripts for h in t.held_out_records() if h.split == "audit"}
    if op.audit_proof is not None:
        # A sampled audit set: the openings, in position order, are proven in the committed audit
        # tree by one multiproof; step 17 checks that these are the positions the challenge selects.
        if op.audit_proof.tree_size != v.audit.size:
            raise OpeningMismatch(f"the audit proof is for a tree of {op.audit_proof.tree_size} records, the "
                                  f"committed audit set has {v.audit.size}")
        # A held-out audit record deleted by a bundled request is opened among the deleted records;
        # its leaf (from the transcript, proven in step 11) stands at its own position.
        opened = iter(op.audit)
        leaves = []
        for pos in op.audit_proof.positions:
            if pos in held_audit:
                leaves.append(record_leaf_hash(*held_audit[pos]))
                continue
            nxt = next(opened, None)
            if nxt is None:
                raise OpeningMismatch(f"the audit proof proves {len(op.audit_proof.positions)} positions, the bundle "
                                      f"opens {len(op.audit)} audit records and deletes "
                                      f"{sum(p in held_audit for p in op.audit_proof.positions)} of them")
            leaves.append(record_leaf_hash(record_key(nxt.id), nxt.commitment()))
        if next(opened, None) is not None:
            raise OpeningMismatch(f"the bundle opens more audit records ({len(op.audit)}) than the audit proof proves")
        try:
            op.audit_proof.verify(leaves=leaves, root=v.audit.root)
        except VerificationFailed as e:
            raise OpeningMismatch(f"the {len(leaves)} audit openings are not in the committed audit set at the "
                                  f"positions proven: {e}") from e
    else:
        pairs = [(record_key(o.id), o.commitment()) for o in op.audit] + list(held_audit.values())
        try:
            tree = SortedTree.build(pairs)
        except MalformedInput as e:
            raise OpeningMismatch(f"the audit openings and the deleted audit records overlap: {e}") from e
        if (tree.root, len(tree)) != (v.audit.root, v.audit.size):
            raise OpeningMismatch(f"the {len(op.audit)} audit openings and {len(held_audit)} deleted audit record(s) do "
                                  f"not rebuild the committed audit set ({v.audit.size} records)")
    # No other record is disclosed (specs/08 section 4): every training opening is in the batch of
    # a disclosed step, whose replay or batch check needs it.
    used: set[bytes] = set()
    for entry in v.entries.values():
        if entry.kind == "step":
            used.update(_batch_of(v, StepBody.parse(entry), "openings"))
    extra = [o for o in op.training if o.commitment() not in used]
    if extra:
        raise OpeningMismatch(f"the bundle opens training record {extra[0].id!r} (and {len(extra) - 1} more), which no "
                              "disclosed step uses: a bundle discloses no record that a check does not need")
    v.openings = seen


def _step_17(v: Verification) -> None:
    b = v.bundle
    assert b is not None and v.final is not None
    m = b.manifest
    want = v.options.challenge
    # The seed binds the requests (their deletion entries, fixed by the log) and the final head's
    # body: not the free timestamp/extension lines or signatures the owner can redo for free.
    deletions = [t.deletion.entry.leaf_hash for t in v.transcripts]
    body = head_body(v.final.origin, v.final.size, v.final.root_hash)
    if want is not None:
        if m.challenge_mode != "interactive" or m.challenge != want:
            raise ChallengeMismatch("the bundle does not answer this verifier's challenge (it was built for "
                                    f"{'Fiat-Shamir' if m.challenge is None else 'challenge ' + m.challenge.hex()[:16] + '...'})")
        v.seed = challenge_seed(want, deletions, body)
        if v.options.expect_head is None:
            v.warnings.append("UNPINNED HEAD: the owner could pick the final tree head after seeing the challenge "
                              "(one new head per retry); pass --expect-head with the head you saw before the challenge")
        if v.options.requests is None:
            v.warnings.append("UNPINNED REQUESTS: the owner could pick how many requests the bundle holds after seeing "
                              "the challenge; pass --requests with the count you expect")
    else:
        if m.challenge_mode == "interactive":
            raise ChallengeMismatch("the bundle answers an interactive challenge; pass the challenge you issued with --challenge")
        v.seed = fiat_shamir_seed(deletions, body)
    pop: list[SegmentRef] = []
    for lin in v.lineages:
        chain = [lin.start, *lin.checkpoints]
        for a, c in zip(chain, chain[1:], strict=False):
            pop.append(SegmentRef(shard=lin.shard, generation=lin.generation, stage=c.stage, start_index=a.index,
                                  end_index=c.index, start_step=a.step, end_step=c.step, stratum=lin.stratum))
    pop.sort(key=lambda r: r.end_index)
    v.population = pop
    gen0_rollback: dict[int, int] = {}
    for t in v.transcripts:
        for sc in t.shards:
            rb = CheckpointBody.parse(sc.rollback.entry)
            if rb.generation == 0:
                gen0_rollback[sc.shard] = max(gen0_rollback.get(sc.shard, -1), rb.index)
    complete, rest = split_population(pop, gen0_rollback)
    v.complete, v.sampled_population = complete, len(rest)
    op = b.openings
    if op.audit_proof is not None:
        assert v.audit is not None
        want_audit = sample_audit(v.seed, v.audit.size, AUDIT_DISCLOSE_MAX)
        if list(op.audit_proof.positions) != want_audit:
            raise ChallengeMismatch("the bundle's audit-set sample is not the one the challenge selects "
                                    f"({len(op.audit_proof.positions)} records disclosed, {len(want_audit)} selected)")
    # k is the verifier's policy (VerifyOptions.replay); the manifest's replay/sample are ignored.
    drawn = [rest[i] for i in sample_segments(len(rest), v.options.replay, v.seed)]
    v.sample = drawn
    if v.sampled_by == "owner":
        v.warnings.append(grinding_note(v.sampled_population, 0 if v.options.unsafe_no_replay else len(drawn)))
    if not drawn and rest and not v.options.unsafe_no_replay:
        v.warnings.append(f"NO SAMPLED REPLAY: none of the {len(rest)} segments outside the deletion lineage is "
                          "replayed (--replay 0)")
    if v.options.unsafe_no_replay:
        return
    lin_of = {(lin.shard, lin.generation): lin for lin in v.lineages}
    complete_ends = {r.end_index for r in complete}
    for r in [*complete, *drawn]:
        kind = "segment of the deletion lineage" if r.end_index in complete_ends else "sampled segment"
        w = f"{kind} ending at entry {r.end_index} (shard {r.shard}, generation {r.generation}, stage {r.stage})"
        lin = lin_of[(r.shard, r.generation)]
        for j in range(r.steps):
            idx = r.end_index - r.steps + j
            st = StepBody.parse(_entry(v, idx, w))
            _check_step(v, st, lin, r.start_step + j, w)
            _check_batch(v, st, lin, w)  # original training too: its slices' records are in the bundle
            for rec in _batch_of(v, st, w):
                if rec not in v.openings:
                    raise SegmentMissing(f"{w}: the bundle does not open record {rec.hex()[:16]}... used by step {idx}")
        for idx in (r.start_index, r.end_index):
            dg = CheckpointBody.parse(_entry(v, idx, w)).digest
            if dg not in b.checkpoints:
                raise SegmentMissing(f"{w}: the bundle lacks checkpoint {dg.hex()[:16]}... (entry {idx})")


def _step_18(v: Verification) -> None:
    if v.options.unsafe_no_replay:
        v.warnings.append("UNSAFE NO REPLAY: no segment was replayed (--unsafe-no-replay); the training, the "
                          "retraining included, was not checked, only the proofs")
        v.replay_report = {"segments": [], "mode": None}
        return
    require(("torch",), "replaying segments", "pass --unsafe-no-replay to check the proofs only (steps 1-17)")
    from . import _replay  # torch is imported here, and only here

    b, cfg = v.bundle, v.config
    assert b is not None and cfg is not None
    work = []
    for r in [*v.complete, *v.sample]:
        steps = [StepBody.parse(v.entries[r.end_index - r.steps + j]) for j in range(r.steps)]
        start = CheckpointBody.parse(v.entries[r.start_index])
        end = CheckpointBody.parse(v.entries[r.end_index])
        work.append(_replay.SegmentWork(
            ref=r,
            steps=tuple((s.seed, _batch_of(v, s, "replay")) for s in steps),
            hints=tuple(s.hints for s in steps),
            start_file=b.checkpoints[start.digest],
            start_digest=start.digest,
            end_file=b.checkpoints[end.digest],
            end_digest=end.digest,
        ))
    plan = _replay.ReplayPlan(
        model=cfg.model, hyper=cfg.hyper, platform=cfg.platform, segments=tuple(work), openings=v.openings,
        mode=v.options.replay_mode, allow_factories=v.options.allow_factories, model_source=dict(b.model_source),
    )
    if v.options.backend == "local":
        v.replay_report = _replay.replay(plan, progress=v.progress)
    else:
        v.replay_report = _replay.replay(plan, backend=v.options.backend, ray_address=v.options.ray_address,
                                         progress=v.progress)
    if v.replay_report.get("warning"):
        v.warnings.append(v.replay_report["warning"])


def _residual_seed(deleted: Sequence[RecordOpening]) -> int:
    """Step 19's generator seed (specs/10-residual.md section 4): a function of the set of deleted
    records only, so that a deletion split over several requests is tested exactly as one request
    holding the same records (the Fiat-Shamir seed depends on the transcripts)."""
    digest = tagged_hash(TAG_CHALLENGE, b"residual\x00", *sorted(o.commitment() for o in deleted))
    return int.from_bytes(digest[:8], "big") >> 1


def _step_19_shadow(v: Verification, pool: Sequence[RecordOpening], seed: int) -> Any:
    """The shadow-model attack of step 19 (reported only; verifier/_shadow.py): two shadows of the
    logged model and hyper-parameters on halves of the audit and retained records, ``epochs``
    epochs (the config's). None (the attack is skipped, with the reason) for a pool too small."""
    import numpy as np

    from verifiable_mu.training import Hyper, build_model

    from . import _shadow
    from ._segment import model_factory

    cfg, b = v.config, v.bundle
    assert cfg is not None and b is not None
    if len(pool) < _shadow.MIN_POOL:
        return None
    spec, factory = model_factory(cfg.model, v.options.allow_factories, dict(b.model_source), "loading")
    X = np.stack([np.asarray(o.features, dtype=np.float32).reshape(-1) for o in pool])
    y = np.asarray([o.label for o in pool], dtype=np.int64)
    return _shadow.train_shadow_attack(lambda s: build_model(spec, init_seed=s, factory=factory),
                                       Hyper.from_json(cfg.hyper), X, y, epochs=cfg.epochs, seed=seed % 2**31)


def _step_19(v: Verification) -> None:
    """Residual-information tests (specs/10-residual.md) on the models whose provenance steps
    1-18 established: post = the final constituents, pre = the constituents before the first
    request in the bundle (the positive control)."""
    if not v.options.residual:
        v.warnings.append("NO RESIDUAL TESTS: step 19 was turned off (--no-residual)")
        return
    require(("torch", "scipy", "sklearn"), "the residual tests", "pass --no-residual to skip them")
    from . import _canary, _models, _residual, _robust, _temporal  # torch: imported by _models' loader

    b, cfg = v.bundle, v.config
    assert b is not None and cfg is not None and v.transcripts
    if not any(t.records for t in v.transcripts):
        # Only held-out records were deleted: no model was trained on them, so there is no
        # residual to measure (step 11 proved them absent from every slice). Never a pass.
        reason = ("no trained record was deleted: the bundled requests delete only held-out (test or audit) "
                  "records, which no model was trained on, so there is nothing to test")
        v.inconclusive = f"residual tests inconclusive: {reason}"
        if v.options.require_residual:
            raise ResidualTraceFound(f"{v.inconclusive} (and --require-residual was given)")
        v.warnings.append(f"INCONCLUSIVE: {reason}")
        return
    pre_d = ModelBody.parse(v.transcripts[0].model_before.entry).shards
    post_d = ModelBody.parse(v.transcripts[-1].model_after.entry).shards

    def files(digests: Sequence[bytes], what: str) -> list[tuple[bytes, bytes]]:
        missing = [d for d in digests if d not in b.checkpoints]
        if missing:
            raise SegmentMissing(f"the bundle lacks the {what} checkpoint {missing[0].hex()[:16]}... needed by step 19")
        return [(d, b.checkpoints[d]) for d in digests]

    src = dict(b.model_source)
    post = _models.load_models(cfg.model, files(post_d, "final"), allow_factories=v.options.allow_factories,
                               model_source=src)
    pre = _models.load_models(cfg.model, files(pre_d, "pre-deletion"), allow_factories=v.options.allow_factories,
                              model_source=src)
    shard_of = {r.commitment: r.shard for t in v.transcripts for r in t.records}
    op = b.openings
    # Held-out deleted records were never trained on: they are neither deleted records of the
    # residual tests nor audit records any more (specs/09 step 19).
    held = {h.commitment for t in v.transcripts for h in t.held_out_records()}
    dels = sorted((o for o in op.deleted if o.commitment() in shard_of), key=lambda o: o.commitment())
    audit_open = [o for o in op.audit if o.commitment() not in held]
    retained_shard: dict[bytes, int] = {}
    for e in v.entries.values():
        if e.kind == "step":
            st = StepBody.parse(e)
            for c in _batch_of(v, st, "residual"):
                retained_shard.setdefault(c, st.shard)
    retained = [o for o in op.training if o.commitment() in retained_shard and o.commitment() not in shard_of]

    def stack(lst: Sequence[RecordOpening]) -> tuple[Any, Any]:
        import numpy as np

        if not lst:
            return None, None
        return (
            np.stack([np.asarray(o.features, dtype=np.float32).reshape(-1) for o in lst]),
            np.asarray([o.label for o in lst], dtype=np.int64),
        )

    dX, dy = stack(dels)
    aX, ay = stack(audit_open)
    rX, ry = stack(retained)
    if v.progress is not None:
        v.progress(f"step 19: membership tests on {len(dels)} deleted and {len(op.audit)} audit records "
                   f"({len(post)} models after, {len(pre)} before)")
    shadow = _step_19_shadow(v, [*audit_open, *retained], _residual_seed(dels))
    rep = _residual.residual_tests(
        shadow=shadow,
        post_models=post,
        pre_models=pre,
        shard_of_deleted=[shard_of[o.commitment()] for o in dels],
        deleted_X=dX,
        deleted_y=dy,
        audit_X=aX,
        audit_y=ay,
        retained_X=rX,
        retained_y=ry,
        retained_shard=[retained_shard[o.commitment()] for o in retained] if retained else None,
        alpha=v.options.alpha,
        n_boot=v.options.n_boot,
        seed=_residual_seed(dels),
    )
    v.residual_report = rep.to_json()
    # Informative only: robust accuracy under PGD on the audit records, before and after.
    rob = _robust.robustness([getattr(f, "module", None) for f in pre], [getattr(f, "module", None) for f in post],
                             aX, ay) if aX is not None else None
    v.residual_report["robustness"] = rob.to_json() if rob else None
    if v.options.canary is not None:
        can = _canary.canary_test(
            trigger=v.options.canary,
            post_models=post,
            pre_models=pre,
            marked_shards=sorted(set(shard_of.values())),
            query_X=aX,
            query_y=ay,
            alpha=v.options.alpha,
        )
        v.canary_report = can.to_json()
    # Informative only: how the deleted slices' influence decayed over the original lineage.
    for t in v.transcripts:
        for sc in t.shards:
            by_stage: dict[int, dict[int, tuple[int, bytes]]] = {0: {}, 1: {}}
            for e in v.entries.values():
                if e.kind != "checkpoint":
                    continue
                ck = CheckpointBody.parse(e)
                if ck.shard != sc.shard or ck.generation not in (0, sc.generation):
                    continue
                lin = 0 if ck.generation == 0 else 1
                prev = by_stage[lin].get(ck.stage)
                if prev is None or ck.index > prev[0]:
                    by_stage[lin][ck.stage] = (ck.index, ck.digest)
            orig = {r: d for r, (_, d) in by_stage[0].items()}
            new = {r: d for r, (_, d) in by_stage[1].items() if r >= sc.from_stage}
            if sc.generation == 0 or not new or any(d not in b.checkpoints for d in [*orig.values(), *new.values()]):
                continue
            try:
                tr = _temporal.temporal_memory(
                    original={r: _models.load_params(d, b.checkpoints[d]) for r, d in orig.items()},
                    retrained={r: _models.load_params(d, b.checkpoints[d]) for r, d in new.items()},
                    start_stage=sc.from_stage,
                    shard=sc.shard,
                )
            except MalformedInput as e:
                v.warnings.append(f"temporal residual memory of shard {sc.shard} not computed: {e}")
                continue
            v.temporal_reports.append({"request": t.request, **tr.to_json()})
    verdict = rep.verdict
    if v.canary_report is not None and v.canary_report.get("verdict") == "fail":
        verdict = "fail"
    if verdict == "fail":
        raise ResidualTraceFound(f"the deleted records still leave a measurable trace: {rep.reason}")
    if verdict != "pass":
        v.inconclusive = f"residual tests inconclusive: {rep.reason}"
        if v.options.require_residual:
            raise ResidualTraceFound(f"{v.inconclusive} (and --require-residual was given)")
        v.warnings.append(f"INCONCLUSIVE: {rep.reason}")


_ORDER: tuple[tuple[int, Callable[..., None]], ...] = (
    (4, _step_04),
    (5, _step_05),
    (6, _step_06),
    (7, _step_07),
    (8, _step_08),
    (9, _step_09),
    (10, _step_10),
    (11, _step_11),
    # Steps 12 and 13 are interleaved (each rollback needs the lineages before it), so they run
    # as one unit and a failure is attributed by its exception type.
    (13, _step_13),
    (14, _step_14),
    (15, _step_15),
    (16, _step_16),
    (17, _step_17),
    (18, _step_18),
    (19, _step_19),
)


def _out_of_memory(step: int, e: BaseException) -> InvalidBundle:
    """An allocation the bundle asked for failed: unusable input (exit 2), never an internal error.
    The bounds of specs/09 ("Resource bounds") keep honest and hostile bundles below them; this
    is the last line for a machine with less memory than they assume."""
    what = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
    return InvalidBundle(f"{_NAMES[step]} ran out of memory on this bundle ({what}); "
                         "the bundle asks for more memory than this machine can give")


def _is_oom(e: BaseException) -> bool:
    """MemoryError; torch's CPU allocator failing (a RuntimeError naming the allocation); or a
    library (torch, numpy) that cannot be mapped into the address space left (an ImportError)."""
    if isinstance(e, MemoryError):
        return True
    msg = str(e)
    if isinstance(e, RuntimeError):
        return "DefaultCPUAllocator" in msg or "can't allocate memory" in msg or "not enough memory" in msg
    return isinstance(e, ImportError) and ("failed to map segment" in msg or "Cannot allocate memory" in msg)


class _CallerError(Exception):
    """An exception raised by a callback of the caller of :func:`verify` (``on_result``,
    ``on_progress``): it is the caller's, so :func:`verify` raises it again as it was (a closed
    pipe, Ctrl-C), never turns it into a verdict."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _guarded(fn: Callable[[Any], None] | None) -> Callable[[Any], None] | None:
    if fn is None:
        return None

    def call(arg: Any) -> None:
        try:
            fn(arg)
        except Exception as e:
            raise _CallerError(e) from e

    return call


def _run(v: Verification, step: int, fn: Callable[..., None], *args: Any) -> bool:
    t0 = time.perf_counter()
    try:
        try:
            fn(v, *args)
        except (_CallerError, VmuError):
            raise
        except Exception as exc:
            if _is_oom(exc):
                raise _out_of_memory(step, exc) from exc
            raise InternalError.wrap(exc) from exc  # no documented error covers it: a bug, not a verdict
    except VmuError as e:
        e.at_step(step, _NAMES[step])
        if step == 13 and isinstance(e, OrderingViolation):
            step = 12
            v.results.append(CheckResult(12, _NAMES[12], "fail", str(e), time.perf_counter() - t0))
        else:
            if step == 13:
                v.results.append(CheckResult(12, _NAMES[12], "pass"))
            v.results.append(CheckResult(step, _NAMES[step], "error" if isinstance(e, (MalformedInput, InternalError)) else "fail",
                                         str(e), time.perf_counter() - t0))
        v.failure, v.failed_step = e, step
        return False
    if step == 13:
        v.results.append(CheckResult(12, _NAMES[12], "pass", ""))
    status, detail = "pass", ""
    if step == 19 and not v.options.residual:
        status, detail = "skipped", "turned off (--no-residual)"
    elif step == 18 and v.options.unsafe_no_replay:
        status, detail = "skipped", "turned off (--unsafe-no-replay)"
    elif step == 18:
        detail = (f"{len(v.complete)} segments of the deletion lineage (complete) and {len(v.sample)} of "
                  f"{v.sampled_population} other segments (sampled by the {v.sampled_by}) reproduce")
    elif step == 19 and v.inconclusive:
        status, detail = "inconclusive", v.inconclusive
    v.results.append(CheckResult(step, _NAMES[step], status, detail, time.perf_counter() - t0))
    return True


def _emit(v: Verification) -> None:
    """Hand the listener every final result that follows the last one handed over, in step order
    (step 3 becomes final only after steps 4-6, so 4-6 wait for it)."""
    if v.listener is None:
        return
    have = {r.step: r for r in v.results}
    while v.emitted + 1 in have:
        v.emitted += 1
        v.listener(have[v.emitted])


def verify(
    source: str | bytes,
    options: VerifyOptions = VerifyOptions(),
    *,
    on_result: Callable[[CheckResult], None] | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> Verification:
    """Run every step on the bundle at ``source`` (a path or the bundle's bytes).

    Never raises, whatever the input: the outcome is in the returned object (``exit_code``,
    ``verdict``, ``results``, ``failure``). A documented error is a rejection (exit 1,
    :class:`VerificationFailed`) or unusable input (exit 2, :class:`MalformedInput`); any other
    exception in a step is a bug, reported as :class:`InternalError` at that step (exit 70,
    verdict ``internal-error``). Only what the callbacks themselves raise (and
    ``KeyboardInterrupt``) propagates. ``on_result`` (optional) is called with each step's
    result in step order as soon as it is final (``vmu-verify`` prints them as they come);
    ``on_progress`` (optional) with a short line while step 18 replays a segment or step 19
    starts a phase.
    """
    v = Verification(options=options, listener=_guarded(on_result), progress=_guarded(on_progress))
    try:
        return _verify(v, source)
    except _CallerError as e:
        raise e.error from e.error.__cause__
    except Exception as bug:  # outside every step (the runner itself): still a verdict, exit 70
        err = InternalError.wrap(bug, "the verifier's runner")
        err.__cause__ = bug
        v.failure, v.failed_step = err, max((r.step for r in v.results), default=1)
        return v


def _verify(v: Verification, source: str | bytes) -> Verification:
    t0 = time.perf_counter()
    ok = (
        _run(v, 1, _step_01, source)
        and _run(v, 2, _step_02)
        and _run(v, 3, _step_03)
    )
    if ok:
        # Step 3 parsed only the signed members; it ends with the large members, after step 6.
        part1 = v.results.pop()
        _emit(v)
        for step, fn in _ORDER:
            if step == 7:
                ok3 = _run(v, 3, _step_03_large)
                v.results[-1].seconds += part1.seconds
                if not ok3:
                    break
            if step == 18:
                v.timings["proof_checks_s"] = time.perf_counter() - t0
            if step == 19:
                t19 = time.perf_counter()
                v.timings["replay_s"] = t19 - t0 - v.timings["proof_checks_s"]
            ok_step = _run(v, step, fn)
            _emit(v)
            if not ok_step:
                break
    if "proof_checks_s" not in v.timings:
        v.timings["proof_checks_s"] = time.perf_counter() - t0
    v.timings["total_s"] = time.perf_counter() - t0
    done = {r.step for r in v.results}
    if ok and 3 not in done:  # stopped in steps 4-6: only the signed members were parsed
        v.results.append(CheckResult(3, _NAMES[3], "pass", "signed members only: the large members are parsed after "
                                     "steps 4-6 pass", part1.seconds))
        done.add(3)
    for n, name, _ in STEPS:
        if n not in done:
            v.results.append(CheckResult(n, name, "skipped", "not run: an earlier step failed"))
    v.results.sort(key=lambda r: r.step)
    _emit(v)
    return v
