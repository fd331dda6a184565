"""Which training segments a verifier replays: challenge, Fiat-Shamir and uniform sampling.

Both the bundle writer (prover) and the verifier import this module, so the two sides draw the
same sample from the same seed; the verifier never takes the sample from the bundle, it only
checks that the bundle holds what it drew (specs/09-verification.md, step 14).

* **Seed.** Interactive: ``SHA-256(TAG_CHALLENGE || "interactive" || 0x00 || u32be(len c) || c)``
  for the verifier's challenge ``c`` (16 to 64 random bytes). Offline (Fiat-Shamir):
  ``SHA-256(TAG_CHALLENGE || "fiat-shamir" || 0x00 || u32be(T) || d_1 || ... || d_T ||
  u64be(len h) || h)`` where ``d_i = SHA-256(TAG_TRANSCRIPT || payload_i)`` is the digest of the
  i-th deletion transcript's signed DSSE payload and ``h`` the bytes of the final signed tree head.
* **Stream.** Block ``j`` is ``SHA-256(TAG_CHALLENGE || "stream" || 0x00 || seed || u64be(j))``;
  each block gives four big-endian u64 words, used in order. ``below(n)`` takes the next word
  ``w`` and returns ``w mod n`` unless ``w >= 2^64 - (2^64 mod n)`` (then it takes another word):
  exact uniformity, no modulo bias.
* **Sample.** The population is a list of segments in ascending order of their end checkpoint's
  log index. First, for each stratum in order (a stratum is one deletion request's retraining), one
  of its segments not yet chosen is drawn uniformly ("stratum draws"). Then ``k`` more segments are
  drawn uniformly without replacement from all segments not yet chosen (or all that are left):
  the "uniform draws", which the escape bound ``(1-f)^k`` counts. The result is in draw order;
  the sample for ``k`` is a prefix of the sample for any ``k' > k`` drawn from the same seed, so a
  verifier may ask for fewer segments than a bundle discloses.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from ._errors import MalformedInput
from ._tags import TAG_CHALLENGE, TAG_TRANSCRIPT, tagged_hash

__all__ = [
    "AUDIT_DISCLOSE_MAX",
    "MAX_CHALLENGE_BYTES",
    "MIN_CHALLENGE_BYTES",
    "SAMPLING_VERSION",
    "SeedStream",
    "SegmentRef",
    "challenge_seed",
    "escape_probability",
    "fiat_shamir_seed",
    "sample_audit",
    "sample_segments",
    "transcript_digest",
]

SAMPLING_VERSION = 1
MIN_CHALLENGE_BYTES = 16
MAX_CHALLENGE_BYTES = 64
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


def challenge_seed(challenge: bytes) -> bytes:
    """The sampling seed for a verifier-supplied challenge (16 to 64 bytes)."""
    if not isinstance(challenge, (bytes, bytearray)):
        raise MalformedInput("the challenge must be bytes")
    if not MIN_CHALLENGE_BYTES <= len(challenge) <= MAX_CHALLENGE_BYTES:
        raise MalformedInput(
            f"the challenge must be {MIN_CHALLENGE_BYTES} to {MAX_CHALLENGE_BYTES} bytes "
            f"({2 * MIN_CHALLENGE_BYTES} to {2 * MAX_CHALLENGE_BYTES} hex digits), got {len(challenge)}"
        )
    return tagged_hash(TAG_CHALLENGE, b"interactive\x00", struct.pack(">I", len(challenge)), bytes(challenge))


def transcript_digest(payload: bytes) -> bytes:
    """``SHA-256(TAG_TRANSCRIPT || payload)`` of a deletion transcript's signed DSSE payload."""
    return tagged_hash(TAG_TRANSCRIPT, bytes(payload))


def fiat_shamir_seed(transcript_digests: Sequence[bytes], final_head_note: bytes) -> bytes:
    """The sampling seed of an offline bundle, bound to its transcripts and final signed head."""
    for d in transcript_digests:
        if not isinstance(d, bytes) or len(d) != 32:
            raise MalformedInput("transcript digests must be 32 bytes")
    return tagged_hash(
        TAG_CHALLENGE,
        b"fiat-shamir\x00",
        struct.pack(">I", len(transcript_digests)),
        *transcript_digests,
        struct.pack(">Q", len(final_head_note)),
        bytes(final_head_note),
    )


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


def sample_segments(population_size: int, strata: Sequence[Sequence[int]], k: int, seed: bytes) -> list[int]:
    """Draw segment positions (indices into the ordered population) as described above.

    ``strata`` lists, per deletion request, the positions of its retraining segments. One position
    per non-empty stratum is drawn first, then ``k`` uniform draws from the rest; the result has
    ``(number of stratum draws) + min(k, what is left)`` positions.
    """
    if population_size < 0 or k < 0:
        raise ValueError("population size and k must be non-negative")
    rng = SeedStream(seed)
    chosen: list[int] = []
    taken: set[int] = set()
    for stratum in strata:
        avail = sorted(i for i in set(stratum) if i not in taken)
        if any(not 0 <= i < population_size for i in avail):
            raise ValueError("stratum position outside the population")
        if not avail:
            continue
        j = avail[rng.below(len(avail))]
        chosen.append(j)
        taken.add(j)
    remaining = [i for i in range(population_size) if i not in taken]
    target = len(chosen) + k
    while len(chosen) < target and remaining:
        j = remaining.pop(rng.below(len(remaining)))
        chosen.append(j)
    return chosen


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
    """``(1 - f)^k``: the chance that none of ``k`` uniformly sampled segments is one of a
    fraction ``f`` of forged segments (sampling with replacement; without replacement, and with
    the extra stratum draws, the chance is lower, so this is an upper bound)."""
    return float((1.0 - f) ** k)
