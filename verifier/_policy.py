"""Verification policies (``vmu-verify --policy``, specs/09-verification.md "Policies").

A policy names the checks a verdict must rest on. ``default`` is the tool's historical behaviour:
every reduction the options allow (an unpinned key, fewer draws, no residual tests, ...) is a
warning and an accepted bundle exits 0. ``agency`` is the profile for scripted use: a bundle
whose every check passed but under which one of its requirements was not met is *accepted with
reduced checks*, exit 3, never 0, and the verdict names each unmet requirement. A rejection
stays exit 1 and unusable input exit 2: the policy never turns those into something else.

The requirements are judged from the verifier's own options and the step results, never from
the bundle. Missing flags are not refused up front: the bundle is still verified (a false claim
still gives exit 1) and the verdict lists what was not met, so one rule covers the reductions
known before the run (flags) and the one known only after it (step 19 inconclusive).

Leaf module: it imports nothing from the verifier, so ``_checks`` can use it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from verifiable_mu._canonical import canonical_json
from verifiable_mu._sampling import DEFAULT_REPLAY

__all__ = [
    "EXIT_REDUCED",
    "POLICIES",
    "POLICY_URI_BASE",
    "policy_descriptor",
    "policy_document",
    "unmet_requirements",
]

#: Exit code (and verdict ``accepted-reduced``) of a bundle whose checks passed under a policy
#: whose requirements were not all met.
EXIT_REDUCED = 3
POLICY_URI_BASE = "https://github.com/verifiable-mu/verifiable-mu/vmu-verify/policy/"

#: Requirement id -> what it asks, per policy (the order is the order they are reported in).
_REQUIREMENTS: dict[str, tuple[tuple[str, str], ...]] = {
    "default": (),
    "agency": (
        ("pinned-key", "the owner's key is pinned (--trust-key)"),
        ("interactive-challenge", "the sample is drawn by the verifier's own challenge (--challenge), with the "
                                  "final head and the request count fixed before it was issued "
                                  "(--expect-head, --requests)"),
        ("complete-replay", f"the deletion lineage is replayed in full and at least {DEFAULT_REPLAY} other segments "
                            "are sampled (no --unsafe-no-replay, no --lineage sampled, --replay not below the default)"),
        ("residual-passed", "step 19 ran and passed (no --no-residual; an inconclusive result does not count)"),
        ("finite-models", "every final constituent model has finite weights and momentum (step 15 found no NaN or "
                          "infinity)"),
    ),
}
POLICIES: tuple[str, ...] = tuple(_REQUIREMENTS)


def _check(name: str) -> tuple[tuple[str, str], ...]:
    try:
        return _REQUIREMENTS[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r} (known: {', '.join(POLICIES)})") from None


def policy_document(name: str) -> dict[str, Any]:
    """The policy as a JSON document; its RFC 8785 canonical bytes are what the VSA's policy
    digest covers (a plain SHA-256 of a document, like any file digest)."""
    return {
        "type": "vmu.verification-policy",
        "version": 1,
        "name": name,
        "uri": POLICY_URI_BASE + name,
        "requirements": [{"id": i, "text": t} for i, t in _check(name)],
    }


def policy_descriptor(name: str) -> dict[str, Any]:
    """``{"uri", "digest": {"sha256"}}`` naming the policy (the VSA's ``policy`` field)."""
    doc = policy_document(name)
    return {"uri": doc["uri"], "digest": {"sha256": hashlib.sha256(canonical_json(doc)).hexdigest()}}


def unmet_requirements(
    name: str, options: Any, results: Sequence[Any], nonfinite_shards: Sequence[int] = ()
) -> list[str]:
    """The requirements of policy ``name`` that this verification did not meet, as
    ``"<id>: <why>"`` lines. ``options`` is a ``VerifyOptions``, ``results`` the step results,
    ``nonfinite_shards`` the shards whose final constituent step 15 found non-finite."""
    ids = {i for i, _ in _check(name)}
    status = {r.step: r.status for r in results}
    out: list[str] = []
    if "pinned-key" in ids and options.trust_key is None:
        out.append("pinned-key: no --trust-key (signatures were checked against the bundle's own key)")
    if "interactive-challenge" in ids:
        if options.challenge is None:
            out.append("interactive-challenge: no --challenge (the owner drew the sample: Fiat-Shamir)")
        else:
            if options.expect_head is None:
                out.append("interactive-challenge: no --expect-head (the owner could pick the head after the challenge)")
            if options.requests is None:
                out.append("interactive-challenge: no --requests (the owner could pick the request count after the "
                           "challenge)")
    if "complete-replay" in ids:
        if options.unsafe_no_replay:
            out.append("complete-replay: --unsafe-no-replay (nothing was replayed)")
        elif options.replay < DEFAULT_REPLAY:
            out.append(f"complete-replay: --replay {options.replay} is below the default {DEFAULT_REPLAY}")
        if not options.unsafe_no_replay and getattr(options, "lineage", "complete") != "complete":
            out.append("complete-replay: --lineage sampled (the deletion lineage was sampled, not replayed in full)")
    if "residual-passed" in ids:
        st = status.get(19)
        if not options.residual:
            out.append("residual-passed: step 19 was skipped (--no-residual)")
        elif st == "inconclusive":
            out.append("residual-passed: step 19 was inconclusive")
        elif st != "pass":
            out.append(f"residual-passed: step 19 is {st or 'missing'}")
    if "finite-models" in ids and nonfinite_shards:
        out.append(f"finite-models: the final constituent of shard(s) {', '.join(map(str, nonfinite_shards))} holds "
                   "NaN or infinite values (a diverged model the owner signed)")
    return out
