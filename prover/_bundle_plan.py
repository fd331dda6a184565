"""The plan of a proof bundle (specs/08-bundle.md): the workspace's state as
:func:`prover._bundle.write_bundle` reads it once, the segments it discloses and draws, the log
runs, and the checkpoint files to ship. Entry bodies are read as logged where a cheating prover
(the test suite's) may have broken the format's bounds; the transcripts through the core's
typed parser.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from verifiable_mu._dsse import Envelope
from verifiable_mu._errors import MalformedInput
from verifiable_mu._json import parse_json_strict
from verifiable_mu._log import TransparencyLog
from verifiable_mu._note import NoteVerifier, open_checkpoint
from verifiable_mu._range import RangeProof, range_path
from verifiable_mu._sampling import (
    LINEAGE_MODES,
    SegmentRef,
    challenge_seed,
    fiat_shamir_seed,
    head_body,
    lineage_seed,
    sample_segments,
    split_population,
)
from verifiable_mu._wire_bundle import (
    CommitBlock,
    LogDoc,
    LogRun,
    transcript_member,
)
from verifiable_mu._wire_entries import CheckpointBody, EntryBody, ModelBody
from verifiable_mu._wire_transcript import ShardClaim, Transcript

from ._errors import BadInput, WorkspaceError

if TYPE_CHECKING:
    from ._state import State
    from ._workspace import Workspace


__all__ = ["Lineage", "Plan", "affected", "checkpoint_digests", "draw", "lineage_segments", "log_doc", "open_own_head",
           "population", "read_transcripts", "start"]

_B = TypeVar("_B", bound=EntryBody)
Lineage = list[CheckpointBody]  # the checkpoint entries of one (shard, generation), in log order


def lineage_segments(
    ckpts: Sequence[CheckpointBody], *, shard: int, generation: int, stratum: int | None
) -> list[SegmentRef]:
    """Consecutive checkpoint pairs of one lineage, as segments."""
    return [
        SegmentRef(shard=shard, generation=generation, stage=end.stage, start_index=start.index,
                   end_index=end.index, start_step=start.step, end_step=end.step, stratum=stratum)
        for start, end in zip(ckpts[:-1], ckpts[1:], strict=True)
    ]


def _merge(intervals: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def open_own_head(ws: Workspace, note: bytes) -> int:
    """The size of a signed head of this workspace's log, read with the core note parser
    (its signature is checked against the log's own key)."""
    return open_checkpoint(note, [NoteVerifier.from_vkey(ws.note_vkey)], origin=ws.log_origin).size


@dataclass(slots=True)
class Plan:
    """What the phases of :func:`write_bundle` share: the workspace's state as read once, and
    what each phase decided (filled in order)."""

    ws: Workspace
    log: TransparencyLog
    state: State
    requests: list[int]
    note: bytes  # the final signed head
    size: int
    root: bytes
    config: dict[str, Any]  # the config entry's body, as logged (not held to the verifier's bounds)
    block: CommitBlock
    envs: list[tuple[str, bytes]] = field(default_factory=list)  # (member name, signed transcript)
    transcripts: list[Transcript] = field(default_factory=list)  # read back from envs, request order
    by_lineage: dict[tuple[int, int], Lineage] = field(default_factory=lambda: defaultdict(list))
    segments: list[SegmentRef] = field(default_factory=list)
    original: dict[int, tuple[int, ...]] = field(default_factory=dict)
    retrain_ranges: list[tuple[int, int]] = field(default_factory=list)
    complete: list[SegmentRef] = field(default_factory=list)
    drawn: list[SegmentRef] = field(default_factory=list)
    seed: bytes = b""
    challenge: bytes | None = None
    original_stages: set[tuple[int, int]] = field(default_factory=set)  # (shard, stage) of disclosed original steps
    original_used: dict[int, set[bytes]] = field(default_factory=lambda: defaultdict(set))

    @property
    def picked(self) -> list[SegmentRef]:
        return self.complete + self.drawn

    def shard_claims(self) -> Iterable[tuple[int, Transcript, ShardClaim]]:
        """(request, transcript, shard claim) of every retrained shard of every bundled request."""
        for n, t in zip(self.requests, self.transcripts, strict=True):
            for sh in t.shards:
                yield n, t, sh

    def retraining(self, sh: ShardClaim) -> Lineage:
        """The checkpoint entries of a shard claim's retraining."""
        return [c for c in self.by_lineage[(sh.shard, sh.generation)]
                if sh.retraining_start <= c.index < sh.retraining_end]

    def body(self, index: int, kind: type[_B]) -> _B:
        """The typed body of log entry ``index``."""
        return kind.parse(self.log.entry(index))

    def slice_pairs(self, shard: int, slc: int, after: int) -> list[tuple[bytes, bytes]]:
        """The (key, commitment) pairs of slice (shard, slc) once requests 1..after were done."""
        return sorted(self.state.slice_records(shard, slc, after=after))


def start(ws: Workspace, transcript: int | None, replay: int, lineage: str, include_model_source: bool) -> Plan:
    """Check the arguments and the workspace; read the final head and the commit block's shape."""
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
    state = ws._state
    done = state.finished_requests()
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
    # The config is read as logged, not through the verifier's strict parser: the writer packages
    # whatever the workspace logged (the test suite's cheating provers log out-of-bounds configs).
    cfg = log.entry(0).body
    return Plan(ws=ws, log=log, state=state, requests=requests, note=head.note, size=head.size, root=head.root_hash,
                 config=cfg, block=CommitBlock(int(cfg["shards"]), int(cfg["slices"])))


def read_transcripts(p: Plan) -> None:
    """The signed transcripts of the bundled requests, read back with the core parsers."""
    for n in p.requests:
        rel = p.state.request_transcript(n)
        with open(os.path.join(p.ws.path, rel), "rb") as f:
            data = f.read()
        what = f"the signed transcript of request {n} ({rel})"
        try:
            payload = Envelope.from_bytes(data).payload
            t = Transcript.from_json(parse_json_strict(payload, what=what), payload=payload, what=what)
        except MalformedInput as e:
            raise WorkspaceError(f"{what} cannot be read back: {e}") from e
        p.envs.append((transcript_member(n), data))
        p.transcripts.append(t)


def population(p: Plan) -> list[SegmentRef]:
    """Group the signed log's checkpoint entries by lineage and cut them into segments; the
    deletion lineage of every retrained shard goes to ``p.complete`` (replayed in full by the
    verifier, specs/08 section 5). Returns the other segments (the population to sample)."""
    for e in p.log.entries(0, p.size):
        if e.kind == "checkpoint":
            c = CheckpointBody.parse(e)
            p.by_lineage[(c.shard, c.generation)].append(c)
    for s in range(p.block.shards):
        ck = p.by_lineage[(s, 0)]
        p.original[s] = tuple(c.index for c in ck)
        p.segments += lineage_segments(ck, shard=s, generation=0, stratum=None)
    gen0_rollback: dict[int, int] = {}
    for stratum, t in enumerate(p.transcripts):
        for sh in t.shards:
            rb = CheckpointBody.parse(sh.rollback.entry)
            p.segments += lineage_segments([rb, *p.retraining(sh)], shard=sh.shard, generation=sh.generation,
                                           stratum=stratum)
            p.retrain_ranges.append((sh.retraining_start, sh.retraining_end))
            if rb.generation == 0:
                gen0_rollback[sh.shard] = max(gen0_rollback.get(sh.shard, -1), rb.index)
    p.segments.sort(key=lambda r: r.end_index)
    p.complete, rest = split_population(p.segments, gen0_rollback)
    return rest


def draw(p: Plan, rest: list[SegmentRef], challenge: bytes | None, replay: int, lineage: str) -> None:
    """The seed (the verifier's challenge, or Fiat-Shamir) and the segments it draws."""
    deletions = [p.log.entry(t.deletion.entry.index).leaf_hash for t in p.transcripts]
    final_body = head_body(p.log.origin, p.size, p.root)
    p.challenge = challenge
    p.seed = challenge_seed(challenge, deletions, final_body) if challenge is not None \
        else fiat_shamir_seed(deletions, final_body)
    p.drawn = [rest[i] for i in sample_segments(len(rest), replay, p.seed)]
    if lineage == "sampled":  # the draws a verifier with --lineage sampled makes (specs/08 section 5)
        p.complete = [p.complete[i] for i in sample_segments(len(p.complete), replay, lineage_seed(p.seed))]


def _disclosed_intervals(p: Plan) -> list[tuple[int, int]]:
    """The log ranges to disclose: the commit block, every retraining, each request's re-commit
    block (deletion entry, new slice entries, data-set entry: the verifier rebuilds every shard's
    slice lineage from them, specs/06 section 5), every original checkpoint, and each picked
    segment's steps and start checkpoint."""
    intervals = [(0, p.block.end), *p.retrain_ranges]
    for t in p.transcripts:
        del_idx = t.deletion.entry.index
        end = del_idx + 1
        while end < p.size and p.log.entry(end).kind != "dataset":
            end += 1
        intervals.append((del_idx, min(end + 1, p.size)))
    for ck in p.original.values():
        intervals += [(i, i + 1) for i in ck]
    for r in p.picked:
        intervals.append((min(max(0, r.end_index - r.steps), r.end_index), r.end_index + 1))
        intervals.append((r.start_index, r.start_index + 1))
    return intervals


def log_doc(p: Plan, known_sizes: Sequence[int]) -> LogDoc:
    """``log/entries.json``: the disclosed runs with range proofs, a consistency proof from each
    transcript's head and from each known head to the final head."""
    runs = []
    for a, b in _merge(_disclosed_intervals(p)):
        disclosed = tuple(p.log.entries(a, b))
        for e in disclosed:  # step bodies as logged (a cheating prover's may break the format's bounds)
            if e.kind == "step" and int(e.body["generation"]) == 0:
                p.original_stages.add((int(e.body["shard"]), int(e.body["stage"])))
                p.original_used[int(e.body["shard"])] |= set(p.ws.batch_of(e))
        proof = RangeProof(start=a, end=b, tree_size=p.size, path=tuple(range_path(p.log.mth, a, b, p.size)))
        runs.append(LogRun(start=a, entries=disclosed, proof=proof))
    consistency = tuple(
        p.log.consistency_proof(open_own_head(p.ws, t.head_after), p.size) for t in p.transcripts
    )
    known = sorted({int(k) for k in known_sizes})
    if any(not 0 < k <= p.size for k in known) or len(known) > 64:
        raise BadInput(f"a known head must have a size between 1 and the final head's {p.size} (at most 64 of them)")
    known_proofs = tuple(p.log.consistency_proof(k, p.size) for k in known if k < p.size) if known else None
    return LogDoc(runs=tuple(runs), consistency=consistency, known=known_proofs)


def _stage_ends(ckpts: Lineage) -> set[str]:
    """The digest of each stage's last checkpoint: the temporal test reads no other (with
    --checkpoint-every a lineage has many more, which would only make the bundle bigger)."""
    last: dict[int, CheckpointBody] = {}
    for c in ckpts:
        if c.stage not in last or c.index > last[c.stage].index:
            last[c.stage] = c
    return {c.digest.hex() for c in last.values()}


def affected(p: Plan) -> list[int]:
    return sorted({sh.shard for _, _, sh in p.shard_claims()})


def checkpoint_digests(p: Plan) -> set[str]:
    """The checkpoint files to ship: the final model, both ends of every picked segment, and for
    the residual-information tests (specs/10-residual.md) the pre-deletion constituents of the
    affected shards (the positive control) and the stage ends of their original lineage and of
    every retraining (the temporal residual memory). Their digests are in disclosed entries."""
    digests = {d.hex() for d in ModelBody.parse(p.transcripts[-1].model_after.entry).shards}
    for r in p.picked:
        for idx in (r.start_index, r.end_index):
            digests.add(p.body(idx, CheckpointBody).digest.hex())
    for _, t, sh in p.shard_claims():
        digests.add(ModelBody.parse(t.model_before.entry).shards[sh.shard].hex())
    for s in affected(p):
        digests |= _stage_ends(p.by_lineage[(s, 0)])
    for _, _, sh in p.shard_claims():
        digests |= _stage_ends(p.retraining(sh))
    return digests


