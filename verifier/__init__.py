"""verifiable-mu's independent verifier: checks proof bundles, replays sampled training segments.

It imports the shared core (:mod:`verifiable_mu`) and never the prover. Importing this package or
:mod:`verifier._checks` does not import torch; only the replay step does.

    from verifier import verify, VerifyOptions
    v = verify("bundle.zip", VerifyOptions(replay=8))
    v.exit_code   # 0 accepted, 1 rejected, 2 unusable input, 3 accepted with reduced checks
                  # (only with VerifyOptions(policy="agency"), see verifier/_policy.py), 70 a bug
                  # (InternalError: nothing was judged); verify() never raises
    print(v.failure.diagnostics())  # on a failure: what failed, the step, what to do
"""

from ._bundle import Bundle, Limits, Manifest, read_bundle
from ._canary import CanaryReport, canary_test
from ._checks import STEPS, CheckResult, ExpectedHead, Verification, VerifyOptions, verify
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
    ReplayMismatch,
    ResidualTraceFound,
    ScheduleViolation,
    SegmentMissing,
    UntrustedKey,
    WitnessQuorumMissing,
)
from ._html import overall_verdict, render_html
from ._report import REPORT_SCHEMA, REPORT_VERSION, render_text, report_schema, to_json
from ._residual import Reference, ResidualReport, residual_tests
from ._temporal import TemporalReport, temporal_memory

__all__ = [
    "CanaryReport",
    "Reference",
    "ResidualReport",
    "ResidualTraceFound",
    "TemporalReport",
    "canary_test",
    "overall_verdict",
    "render_html",
    "residual_tests",
    "temporal_memory",
    "REPORT_VERSION",
    "STEPS",
    "Bundle",
    "ChallengeMismatch",
    "CheckResult",
    "CommitBlockInvalid",
    "DeletionClaimFailed",
    "EntryKindMismatch",
    "ExpectedHead",
    "HeadMismatch",
    "Limits",
    "Manifest",
    "ManifestContainsDeleted",
    "BatchNotCommitted",
    "ModelMismatch",
    "OpeningMismatch",
    "OrderingViolation",
    "ReplayMismatch",
    "ScheduleViolation",
    "SegmentMissing",
    "UntrustedKey",
    "WitnessQuorumMissing",
    "Verification",
    "VerifyOptions",
    "read_bundle",
    "render_text",
    "report_schema",
    "REPORT_SCHEMA",
    "to_json",
    "verify",
]
