"""Steps 1-4 of specs/09-verification.md: archive, manifest, members, trust."""

from __future__ import annotations

import hashlib

from verifiable_mu._note import NoteVerifier

from ._bundle import JsonBudget, load_file, open_archive, open_manifest, parse_large_members, parse_signed_members
from ._errors import UntrustedKey
from ._state import Outcome, Verification


def step_01(v: Verification) -> None:
    source = v.source
    data = bytes(source) if isinstance(source, (bytes, bytearray)) else load_file(source, v.options.limits)
    v.sha256 = hashlib.sha256(data).hexdigest()
    v.archive = open_archive(data, v.options.limits)


def step_02(v: Verification) -> None:
    assert v.archive is not None
    v.manifest, v.members = open_manifest(v.archive, v.options.limits)
    v.archive = None


def step_03(v: Verification) -> Outcome:
    """First part: the members steps 4-6 check signatures on (key, final head, envelopes). Its
    result stands only if verification stops before the second part."""
    assert v.manifest is not None
    v.json_budget = JsonBudget(v.options.limits)
    v.bundle = parse_signed_members(v.members, v.manifest, v.options.limits, v.json_budget)
    return "pass", "signed members only: the large members are parsed after steps 4-6 pass"


def step_03_large(v: Verification) -> None:
    """Second part, run once the signatures of steps 4-6 verified: the large members."""
    assert v.bundle is not None
    v.bundle = parse_large_members(v.bundle, v.members, v.options.limits, v.json_budget)
    v.members = {}


def step_04(v: Verification) -> None:
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


