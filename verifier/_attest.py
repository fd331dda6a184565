"""A signed verdict: an in-toto Verification Summary Attestation (SLSA VSA v1) in a DSSE
envelope (``vmu-verify --attest OUT --signing-key KEY``; specs/09-verification.md, "Signed
verdict").

The statement's subject is the bundle file (its SHA-256); the predicate says who verified it
(``verifier``), when (``timeVerified``), under which policy (``policy``: URI and the SHA-256 of
the policy document), with what result (``verificationResult``), and, in the extension field
``vmuVerification``, which checks ran with which status. The envelope is signed with the
project's DSSE code (:func:`verifiable_mu._dsse.sign_statement`): payload type
``application/vnd.in-toto+json``, signature over DSSE's PAE, which binds the payload type, so a
VSA signature can never stand for a deletion transcript or any other payload type.
"""

from __future__ import annotations

import base64
import datetime as _dt
from typing import Any

from verifiable_mu import __version__
from verifiable_mu._dsse import Envelope, make_statement, sign_statement
from verifiable_mu._errors import EXIT_INTERNAL
from verifiable_mu._keys import SigningKey

from ._checks import Verification
from ._policy import policy_descriptor

__all__ = ["EXTENSION", "PREDICATE_VSA", "VERIFIER_ID", "build_vsa", "resource_uri", "sign_vsa"]

PREDICATE_VSA = "https://slsa.dev/verification_summary/v1"
VERIFIER_ID = "https://github.com/verifiable-mu/verifiable-mu/vmu-verify"
#: The extension field (in-toto parsing rules: consumers ignore fields they do not know).
EXTENSION = "vmuVerification"
#: verifiedLevels of a PASSED verdict: a custom level (no SLSA_ prefix: we claim no SLSA track).
LEVEL_PREFIX = "VMU_UNLEARNING_VERIFIED_"


def resource_uri(sha256_hex: str) -> str:
    """The bundle named by its content: RFC 6920 ``ni:///sha-256;<base64url, no padding>``."""
    b64 = base64.urlsafe_b64encode(bytes.fromhex(sha256_hex)).rstrip(b"=").decode("ascii")
    return f"ni:///sha-256;{b64}"


def _rfc3339(t: _dt.datetime) -> str:
    return t.astimezone(_dt.timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_vsa(v: Verification, *, name: str, now: _dt.datetime | None = None) -> dict[str, Any]:
    """The in-toto Statement v1 of a VSA for verification ``v`` of the bundle file ``name``.

    Only for a verdict on a readable bundle (exit 0, 1 or 3): unusable input (exit 2) and a bug
    (exit 70: nothing was judged) get no attestation, and the caller must not ask for one.
    """
    if v.exit_code in (2, EXIT_INTERNAL) or not v.sha256:
        raise ValueError("no attestation for unusable input or an internal error")
    passed = v.exit_code == 0
    policy = v.options.policy
    predicate = {
        "verifier": {"id": VERIFIER_ID, "version": {"vmu-verify": __version__}},
        "timeVerified": _rfc3339(now or _dt.datetime.now(_dt.timezone.utc)),
        "resourceUri": resource_uri(v.sha256),
        "policy": policy_descriptor(policy),
        "verificationResult": "PASSED" if passed else "FAILED",
        "verifiedLevels": [LEVEL_PREFIX + policy.upper()] if passed else ["FAILED"],
        EXTENSION: {
            "version": 1,
            "policy": policy,
            "verdict": v.verdict,
            "exitCode": v.exit_code,
            "unmetRequirements": v.unmet if v.failure is None else [],
            "checks": [{"step": r.step, "name": r.name, "status": r.status} for r in v.results],
            "failure": None if v.failure is None else {
                "step": v.failed_step, "error": type(v.failure).__name__, "message": str(v.failure)[:1000]},
            "warnings": list(v.warnings),
            "keyId": v.key.key_id if v.key else None,
            "keyPinned": v.options.trust_key is not None,
            "challengeMode": "interactive" if v.options.challenge is not None else ("fiat-shamir" if v.seed else None),
            "requests": [t.request for t in v.transcripts],
            "finalTreeSize": v.final.size if v.final else None,
        },
    }
    return make_statement(subjects=[(name, {"sha256": v.sha256})], predicate_type=PREDICATE_VSA, predicate=predicate)


def sign_vsa(statement: dict[str, Any], key: SigningKey) -> Envelope:
    """The DSSE envelope of a VSA statement (RFC 8785 payload, one Ed25519 signature)."""
    return sign_statement(statement, [key])
