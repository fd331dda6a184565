"""Which training segments a verifier replays: the deletion lineage in full, the rest sampled.

Both the bundle writer (prover) and the verifier import this module, so the two sides compute the
same complete set and draw the same sample from the same seed; the verifier never takes either
from the bundle (the manifest is unsigned), it only checks that the bundle discloses what it needs
(specs/09-verification.md, step 17). specs/08-bundle.md section 5 is the normative text.

* **Complete set.** Every segment of the *deletion lineage* of every shard a bundled request
  retrains: its original (generation-0) segments up to the latest generation-0 rollback checkpoint
  of that shard, and every segment of every retraining of it. These are always replayed; no
  sampling is involved (:func:`split_population`).
* **Sampled population.** Every other segment, in ascending order of its end checkpoint's log
  index.
* **Binding.** ``u32be(T) || e_1 || ... || e_T || u32be(len b) || b``: ``T`` the number of bundled
  requests, ``e_i`` the leaf hash of request ``i``'s ``deletion`` log entry, ``b`` the final signed
  tree head's checkpoint *body* (origin, size and root lines; not the timestamp, extension or
  signature lines, which the owner can rewrite for free).
* **Seed.** Interactive: ``SHA-256(TAG_CHALLENGE || "interactive" || 0x00 || u32be(len c) || c ||
  binding)`` for the verifier's challenge ``c`` (16 to 64 random bytes). Offline (Fiat-Shamir):
  ``SHA-256(TAG_CHALLENGE || "fiat-shamir" || 0x00 || binding)``; the owner can re-draw it by
  producing another tree head (append an entry, sign), so an offline sample is *sampled by the
  owner* (:func:`grinding_note`).
* **Stream.** Block ``j`` is ``SHA-256(TAG_CHALLENGE || "stream" || 0x00 || seed || u64be(j))``;
  each block gives four big-endian u64 words, used in order. ``below(n)`` takes the next word
  ``w`` and returns ``w mod n`` unless ``w >= 2^64 - (2^64 mod n)`` (then it takes another word):
  exact uniformity, no modulo bias.
* **Sample.** ``k`` positions drawn uniformly without replacement from the sampled population
  (or all of it when it has at most ``k``), in draw order; the sample for ``k`` is a prefix of the
  sample for any ``k' > k`` from the same seed, so a bundle that discloses ``k'`` draws serves a
  verifier who asks for ``k``.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ._errors import MalformedInput
from ._tags import TAG_CHALLENGE, tagged_hash

__all__ = [
    "AUDIT_DISCLOSE_MAX",
    "DEFAULT_REPLAY",
    "MAX_CHALLENGE_BYTES",
    "MIN_CHALLENGE_BYTES",
    "SAMPLING_VERSION",
    "SeedStream",
    "SegmentRef",
    "challenge_from_hex",
    "challenge_seed",
    "escape_probability",
    "fiat_shamir_seed",
    "grinding_note",
    "head_body",
    "LINEAGE_MODES",
    "lineage_seed",
    "lineage_note",
    "sample_audit",
    "sample_segments",
    "single_escape",
    "split_population",
]

SAMPLING_VERSION = 2
MIN_CHALLENGE_BYTES = 16
MAX_CHALLENGE_BYTES = 64
#: Uniform draws from the sampled population: what ``vmu bundle`` discloses and what
#: ``vmu-verify`` replays unless told otherwise (the verifier's policy, never the manifest's).
DEFAULT_REPLAY = 8
#: How a verifier replays the deletion lineage: ``complete`` (every segment; the default and what
#: ``--policy agency`` requires) or ``sampled`` (``k`` uniform draws from it, a stated escape
#: probability per forged segment, for less disclosure and a smaller bundle; specs/08 section 5).
LINEAGE_MODES = ("complete", "sampled")
_TWO64 = 1 << 64


@dataclass(frozen=True, slots=True, kw_only=True)
class SegmentRef:
    """One replayable segment: the steps of (shard, generation) between two checkpoint entries.

    ``stratum`` is the position of the deletion request whose retraining it belongs to among the
    bundle's transcripts (0-based), or ``None`` for the original training (generation 0).
    """

    shard: int
    generation: int
    stage: int
    start_index: int  # log index of the checkpoint entry the segment starts from
    end_index: int  # log index of the checkpoint entry it must reproduce
    start_step: int
    end_step: int
    stratum: int | None = None

    @property
    def steps(self) -> int:
        return self.end_step - self.start_step


def head_body(origin: str, size: int, root: bytes) -> bytes:
    """The checkpoint body a seed binds: ``origin\nsize\nbase64(root)\n`` (the first three lines of
    a signed tree head; its timestamp, extension and signature lines are left out)."""
    if not isinstance(root, bytes) or len(root) != 32 or not isinstance(size, int) or size < 0:
        raise MalformedInput("a tree head body needs a size >= 0 and a 32-byte root")
    return f"{origin}\n{size}\n{base64.b64encode(root).decode('ascii')}\n".encode()


def _binding(deletions: Sequence[bytes], body: bytes) -> bytes:
    for d in deletions:
        if not isinstance(d, bytes) or len(d) != 32:
            raise MalformedInput("deletion entry leaf hashes must be 32 bytes")
    if not isinstance(body, bytes) or not body:
        raise MalformedInput("the final tree head body must be non-empty bytes")
    return b"".join([struct.pack(">I", len(deletions)), *deletions, struct.pack(">I", len(body)), body])


def challenge_from_hex(text: str, what: str = "--challenge") -> bytes:
    """An interactive challenge given as hex on a command line (both CLIs): its bytes, or
    :class:`MalformedInput` when it is not hex or not ``MIN_CHALLENGE_BYTES`` to
    ``MAX_CHALLENGE_BYTES`` long."""
    try:
        challenge = bytes.fromhex(text)
    except ValueError as e:
        raise MalformedInput(f"{what} must be hex: {e}") from e
    if not MIN_CHALLENGE_BYTES <= len(challenge) <= MAX_CHALLENGE_BYTES:
        raise MalformedInput(
            f"{what} must be {MIN_CHALLENGE_BYTES} to {MAX_CHALLENGE_BYTES} bytes "
            f"({2 * MIN_CHALLENGE_BYTES} to {2 * MAX_CHALLENGE_BYTES} hex digits)"
        )
    return challenge


def challenge_seed(challenge: bytes, deletions: Sequence[bytes], body: bytes) -> bytes:
    """The sampling seed for a verifier-supplied challenge (16 to 64 bytes), bound to the bundled
    requests' deletion entries (leaf hashes, in request order) and the final head's body."""
    if not isinstance(challenge, (bytes, bytearray)):
        raise MalformedInput("the challenge must be bytes")
    if not MIN_CHALLENGE_BYTES <= len(challenge) <= MAX_CHALLENGE_BYTES:
        raise MalformedInput(
            f"the challenge must be {MIN_CHALLENGE_BYTES} to {MAX_CHALLENGE_BYTES} bytes "
            f"({2 * MIN_CHALLENGE_BYTES} to {2 * MAX_CHALLENGE_BYTES} hex digits), got {len(challenge)}"
        )
    return tagged_hash(TAG_CHALLENGE, b"interactive\x00", struct.pack(">I", len(challenge)), bytes(challenge),
                       _binding(deletions, body))


def fiat_shamir_seed(deletions: Sequence[bytes], body: bytes) -> bytes:
    """The sampling seed of an offline bundle: the binding alone (chosen by the owner, see
    :func:`grinding_note`)."""
    return tagged_hash(TAG_CHALLENGE, b"fiat-shamir\x00", _binding(deletions, body))


def split_population(
    population: Sequence[SegmentRef], gen0_rollback: Mapping[int, int]
) -> tuple[list[SegmentRef], list[SegmentRef]]:
    """``(complete, sampled population)``, both in the population's order.

    ``gen0_rollback[s]`` is, for every shard a bundled request retrains, the largest log index of
    a generation-0 checkpoint that one of its retrainings rolled back to. Complete: the segments
    of such a shard that are a retraining (generation > 0) or original training ending at or
    before that checkpoint (the deletion lineage); sampled population: every other segment.
    """
    complete, rest = [], []
    for r in population:
        cut = gen0_rollback.get(r.shard)
        if cut is not None and (r.generation > 0 or r.end_index <= cut):
            complete.append(r)
        else:
            rest.append(r)
    return complete, rest


class SeedStream:
    """Deterministic uniform integers from a 32-byte seed (see the module docstring)."""

    __slots__ = ("_block", "_seed", "_words")

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, bytes) or len(seed) != 32:
            raise MalformedInput("a sampling seed is 32 bytes")
        self._seed = seed
        self._block = 0
        self._words: list[int] = []

    def _next_word(self) -> int:
        if not self._words:
            b = tagged_hash(TAG_CHALLENGE, b"stream\x00", self._seed, struct.pack(">Q", self._block))
            self._block += 1
            self._words = list(reversed(struct.unpack(">4Q", b)))
        return self._words.pop()

    def below(self, n: int) -> int:
        """A uniform integer in ``[0, n)``."""
        if n < 1:
            raise ValueError("below(n) needs n >= 1")
        limit = _TWO64 - (_TWO64 % n)
        while True:
            w = self._next_word()
            if w < limit:
                return w % n


def sample_segments(population_size: int, k: int, seed: bytes) -> list[int]:
    """``min(k, population_size)`` positions of ``[0, population_size)`` drawn uniformly without
    replacement, in draw order: ``below(len(left))`` into the ascending list of positions not yet
    chosen, which loses the chosen one."""
    if population_size < 0 or k < 0:
        raise ValueError("population size and k must be non-negative")
    rng = SeedStream(seed)
    remaining = list(range(population_size))
    chosen: list[int] = []
    while len(chosen) < k and remaining:
        chosen.append(remaining.pop(rng.below(len(remaining))))
    return chosen


def lineage_seed(seed: bytes) -> bytes:
    """The seed of the sampled deletion lineage's draws: ``SHA-256(TAG_CHALLENGE || "lineage" 0x00
    || seed)`` (its own stream, so the lineage draws never shift the other segments' draws)."""
    if not isinstance(seed, bytes) or len(seed) != 32:
        raise MalformedInput("a sampling seed is 32 bytes")
    return tagged_hash(TAG_CHALLENGE, b"lineage\x00", seed)


def lineage_note(population: int, k: int, sampled_by: str | None) -> str:
    """What a sampled deletion lineage is worth: one forged lineage segment escapes ``k`` draws
    with probability ``1 - min(k, N)/N``."""
    p = single_escape(population, k)
    text = (f"SAMPLED DELETION LINEAGE: {min(k, population)} of its {population} segments replayed; one forged "
            f"segment of the deletion lineage (the retraining included) escapes with probability {p:.3g} (1 - k/N)")
    if sampled_by == "owner" and p > 0:
        text += ("; the seed is the owner's (Fiat-Shamir): re-drawing it costs one new tree head per try, so against "
                 "a grinding owner this bounds nothing; use --challenge")
    return text


#: An audit set larger than this is disclosed as a challenge-selected sample of this many records
#: (with inclusion proofs in the committed audit tree), so a bundle does not grow with the data set.
AUDIT_DISCLOSE_MAX = 512


def sample_audit(seed: bytes, size: int, k: int = AUDIT_DISCLOSE_MAX) -> list[int]:
    """Ascending positions (in the audit tree's key order) of the audit records a bundle discloses:
    all of them when ``size <= k``, else ``k`` drawn uniformly without replacement by a sparse
    Fisher-Yates shuffle driven by ``SeedStream(SHA-256(TAG_CHALLENGE || "audit" 0x00 || seed))``."""
    if size < 0 or k < 0:
        raise ValueError("audit size and k must be non-negative")
    if size <= k:
        return list(range(size))
    rng = SeedStream(tagged_hash(TAG_CHALLENGE, b"audit\x00", seed))
    moved: dict[int, int] = {}
    out = []
    for i in range(k):
        j = i + rng.below(size - i)
        out.append(moved.get(j, j))
        moved[j] = moved.get(i, i)
    return sorted(out)


def escape_probability(f: float, k: int) -> float:
    """``(1 - f)^k``: the chance that none of ``k`` uniform draws is one of a fraction ``f`` of
    forged segments (with replacement; without replacement the chance is lower, so this is an
    upper bound). Meaningful only when the verifier chose the seed (see :func:`grinding_note`)."""
    return float((1.0 - f) ** k)


def single_escape(population: int, k: int) -> float:
    """The chance that one forged segment of a sampled population of ``population`` escapes ``k``
    draws without replacement: ``1 - min(k, N)/N`` (0 when every segment is drawn)."""
    if population <= 0:
        return 0.0
    return 1.0 - min(k, population) / population


def grinding_note(population: int, k: int) -> str:
    """What an offline (Fiat-Shamir) sample is worth against an owner who re-draws it."""
    p = single_escape(population, k)
    if k <= 0 or population <= 0:
        return ("SAMPLED BY THE OWNER (Fiat-Shamir); no segment outside the deletion lineage was drawn, so those "
                "segments are not checked at all")
    if p == 0.0:
        return ("SAMPLED BY THE OWNER (Fiat-Shamir), but all of the segments outside the deletion lineage were "
                "drawn, so the owner's choice of seed left nothing out")
    return (
        f"SAMPLED BY THE OWNER: the Fiat-Shamir seed is fixed by the owner's own deletion entries and final tree "
        f"head; each retry costs the owner one new tree head (append one log entry, one signature: microseconds). "
        f"A single forged segment among the {population} sampled segments escapes one try with probability "
        f"{p:.3g} and g tries with 1 - {1 - p:.3g}^g, so against a grinding owner the sampled replay bounds "
        f"nothing; the deletion lineage, replayed in full, is not affected. Use --challenge for a bound."
    )
