"""The state one verification shares between its steps (specs/09-verification.md): the
checklist (``STEPS``), the options, the results, and the :class:`Verification` the steps fill
in as they run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from verifiable_mu._errors import EXIT_INTERNAL, InternalError, MalformedInput, VerificationFailed, VmuError
from verifiable_mu._keys import VerifyingKey
from verifiable_mu._log import LogEntry
from verifiable_mu._note import Checkpoint, NoteVerifier
from verifiable_mu._records import RecordOpening
from verifiable_mu._sampling import DEFAULT_REPLAY, SegmentRef, escape_probability, grinding_note, single_escape
from verifiable_mu._witness import Cosignature, WitnessKey

from ._bundle import Archive, Bundle, JsonBudget, Limits, Manifest
from ._entries import AuditBody, CheckpointBody, ConfigBody, SliceBody, Transcript
from ._errors import EntryKindMismatch, SegmentMissing
from ._policy import EXIT_REDUCED, unmet_requirements

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
NAMES = {n: name for n, name, _ in STEPS}
VERDICTS = {0: "accepted", 1: "rejected", 2: "unusable", EXIT_REDUCED: "accepted-reduced", EXIT_INTERNAL: "internal-error"}


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
    # "complete": every segment of the deletion lineage is replayed; "sampled": ``replay`` uniform
    # draws from it (specs/08 section 5, "Sampled lineage"); the verifier's choice, never the bundle's.
    lineage: str = "complete"
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
class Lineage:
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


_B = TypeVar("_B")


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
    source: str | bytes = field(default=b"", repr=False)  # the bundle's path or bytes (step 1)
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
    lineages: list[Lineage] = field(default_factory=list)
    openings: dict[bytes, RecordOpening] = field(default_factory=dict)
    population: list[SegmentRef] = field(default_factory=list)
    complete: list[SegmentRef] = field(default_factory=list)  # the deletion lineage segments replayed (all, or drawn)
    lineage_population: int = 0  # the deletion lineage's segments (what a sampled lineage draws from)
    replay_records: dict[str, Any] | None = None  # records the replayed segments open, by kind (step 17)
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
    # Step 13's finding, made while step 12 walked the requests and built each retraining's lineage
    # (a schedule violation, or anything else that went wrong on that walk): step 13 reports it.
    schedule_finding: Exception | None = field(default=None, repr=False)
    # Parsed log entry bodies, by (index, parser): each proven entry is parsed once (see body()).
    bodies: dict[tuple[int, Any], Any] = field(default_factory=dict, repr=False)

    def body(self, parse: Callable[[LogEntry], _B], e: LogEntry) -> _B:
        """The body of log entry ``e`` as ``parse`` (a body class's ``parse``) reads it, parsed
        once per verification. Only for entries steps 8-9 proved: one leaf, so one body, per index."""
        key = (e.index, parse)
        if key not in self.bodies:
            self.bodies[key] = parse(e)
        return cast(_B, self.bodies[key])

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
        return VERDICTS[self.exit_code]

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
        if self.options.lineage == "sampled":
            p = single_escape(self.lineage_population, len(self.complete) if self.replayed else 0)
            done = (f"sampled: {len(self.complete)} of its {self.lineage_population} segments "
                    + ("replayed" if self.replayed else "drawn, not replayed")
                    + f", one forged lineage segment escapes with probability {p:.3g}")
            text = f"deletion lineage of shard(s) {shards} {done}; "
        else:
            text = f"deletion lineage of shard(s) {shards} ({len(self.complete)} segments) {done}; "
        text += (
                f"{k} of the {n} other segments sampled and replayed: one forged segment among them "
                f"escapes with probability {self.single_escape():.3g} (1 - k/N)")
        if self.sampled_by == "owner":
            text += "; " + grinding_note(n, k)
        else:
            text += "; sampled by the verifier (its challenge)"
        return text


#: What a step returns when it passes: ``(status, detail)`` for its result; None is ``("pass", "")``.
Outcome = tuple[str, str]
#: A step (or a part of one): it checks, fills in the state, and raises a documented error on a finding.
Step = Callable[[Verification], "Outcome | None"]


def need_entry(v: Verification, index: int, what: str) -> LogEntry:
    e = v.entries.get(index)
    if e is None:
        raise SegmentMissing(f"{what}: log entry {index} is not disclosed in the bundle")
    return e


def parse_claimed(v: Verification, parse: Callable[[LogEntry], _B], e: LogEntry, what: str,
                  exc: type[VerificationFailed]) -> _B:
    """Parse a proven entry a claim names, failing with the claiming step's error (``exc``) when
    the entry is of another kind (step 12's error, not a finding of step 13's)."""
    try:
        return v.body(parse, e)
    except EntryKindMismatch as x:
        raise exc(f"{what}: {x}") from x


