"""Build the golden bundles of tests/golden/: one honest bundle and bundles named after what is
wrong with them, each with the verdict it must get in ``expected.json`` (checked by
tests/test_golden.py). They pin the bundle format: a change that makes an old golden verify
differently is a format change, and the goldens are rebuilt on purpose, not by accident.

    PYTHONPATH=.:tests python tests/golden/make_golden.py

Real digits data, the logistic-regression model (small checkpoints, so the files stay small),
3 shards x 3 slices, two deletion requests; the wrong bundles are made by the cheating-prover
and tamper helpers of the test suite (tests/conftest_verifier.py, tests/test_tamper.py), which
re-sign whatever they change.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), os.path.dirname(os.path.dirname(HERE))]

import conftest_verifier as cv  # noqa: E402
import test_tamper as tt  # noqa: E402

#: golden file -> the tamper case that makes it (None: the honest bundle)
GOLDEN = {
    "bundle_honest.vmu": None,
    "bundle_unsupported_version.vmu": "step_02_unsupported_version",
    "bundle_old_slice_not_current.vmu": "step_11_old_slice_not_current",
    "bundle_rollback_after_first_use.vmu": "step_12_rollback_after_first_use",
    "bundle_deleted_record_in_retraining.vmu": "step_14_deleted_record_in_retraining",
    "bundle_batch_not_committed.vmu": "step_14_batch_not_committed",
    "bundle_fabricated_checkpoint.vmu": "step_18_fabricated_checkpoint",
}


def main() -> int:
    os.environ.setdefault("SOURCE_DATE_EPOCH", "1795000000")
    root = tempfile.mkdtemp(prefix="vmu-golden-")
    try:
        h = cv.build_honest(root, model="logreg")
        expected = {}
        for name, case_name in GOLDEN.items():
            if case_name is None:
                data, replay = h.bundle, 8  # the verifier's default draws (DEFAULT_REPLAY)
                expected[name] = {"exit": 0, "step": None, "error": None, "match": None, "replay": replay}
            else:
                case = tt.CASES[case_name]
                data, opts = case.make(h)
                replay = opts.replay
                expected[name] = {"exit": case.exit, "step": case.step, "error": case.error, "match": case.match,
                                  "replay": replay}
            with open(os.path.join(HERE, name), "wb") as f:
                f.write(data)
            print(f"{name}: {len(data):,} bytes")
        with open(os.path.join(HERE, "expected.json"), "w") as f:
            json.dump(expected, f, indent=1, sort_keys=True)
            f.write("\n")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
