"""Steps 5-9 of specs/09-verification.md: final-head, transcripts, tree-heads,
transcript-proofs, log-runs (the signed log and its proofs)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from verifiable_mu._dsse import IN_TOTO_PAYLOAD_TYPE, STATEMENT_TYPE, verify_envelope
from verifiable_mu._errors import InvalidBundle, MalformedInput, SignatureFailed, UnsupportedVersion, VerificationFailed
from verifiable_mu._note import Checkpoint, open_checkpoint
from verifiable_mu._witness import verify_cosignatures

from ._bundle import parse_json_bounded
from ._entries import PREDICATE_DELETION, Transcript
from ._errors import HeadMismatch, SegmentMissing, WitnessQuorumMissing
from ._state import Verification


def _open_head(v: Verification, note: bytes, what: str) -> Checkpoint:
    assert v.note_verifier is not None and v.bundle is not None
    try:
        return open_checkpoint(note, [v.note_verifier], origin=v.bundle.manifest.origin)
    except SignatureFailed as e:
        raise SignatureFailed(f"{what}: {e}") from e
    except MalformedInput as e:
        raise InvalidBundle(f"{what}: {e}") from e


def step_05(v: Verification) -> None:
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


def step_06(v: Verification) -> None:
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


def step_07(v: Verification) -> None:
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


def step_08(v: Verification) -> None:
    for t, (_, after) in zip(v.transcripts, v.heads, strict=False):
        for what, d in t.disclosures():
            if d.inclusion.tree_size != after.size:
                raise HeadMismatch(f"request {t.request} {what}: inclusion proof is for tree size "
                                   f"{d.inclusion.tree_size}, head_after has {after.size}")
            d.inclusion.verify(leaf=d.entry.leaf_hash, root=after.root_hash)


def step_09(v: Verification) -> None:
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


