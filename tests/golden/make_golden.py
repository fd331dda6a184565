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

from prover import Workspace, WorkspaceConfig  # noqa: E402
from prover._bundle import write_bundle  # noqa: E402
from verifiable_mu._keys import SigningKey  # noqa: E402

#: golden file -> the tamper case that makes it (None: the honest bundle)
GOLDEN = {
    "bundle_honest.vmu": None,
    "bundle_unsupported_version.vmu": "step_02_unsupported_version",
    "bundle_rollback_after_first_use.vmu": "step_12_rollback_after_first_use",
    "bundle_deleted_record_in_retraining.vmu": "step_14_deleted_record_in_retraining",
    "bundle_batch_not_committed.vmu": "step_14_batch_not_committed",
    "bundle_fabricated_checkpoint.vmu": "step_18_fabricated_checkpoint",
}


def honest_logreg(root: str) -> cv.Honest:
    ws_dir = os.path.join(root, "ws")
    cfg = WorkspaceConfig(shards=cv.SHARDS, slices=cv.SLICES, epochs=cv.EPOCHS, model="logreg", workers=1, device="cpu")
    with Workspace.create(ws_dir, data="digits", config=cfg) as ws:
        ws.progress = False
        ws.train(workers=1)
        ws.forget(cv.FIRST_IDS, workers=1)
        shard_of = dict(ws._db().execute("SELECT id, shard FROM p_records WHERE role='train'").fetchall())
        sl = dict(ws._db().execute("SELECT id, slice FROM p_records WHERE role='train'").fetchall())
        s0 = shard_of[cv.FIRST_IDS[0]]
        cand = [i for i in shard_of if shard_of[i] == s0 and sl[i] == cv.SLICES - 1 and i not in cv.FIRST_IDS]
        second = [sorted(cand, key=int)[0]]
        ws.forget(second, workers=1)
        path = os.path.join(root, "honest.vmu")
        write_bundle(ws, path, replay=6)
    with open(path, "rb") as f:
        data = f.read()
    return cv.Honest(
        root=root, ws_dir=ws_dir, bundle_path=path, bundle=data,
        key=SigningKey.load(os.path.join(ws_dir, "signing-key.pem")),
        pub_pem=os.path.join(ws_dir, "signing-key.pub.pem"), first_ids=cv.FIRST_IDS, second_ids=second,
    )


def main() -> int:
    os.environ.setdefault("SOURCE_DATE_EPOCH", "1795000000")
    root = tempfile.mkdtemp(prefix="vmu-golden-")
    try:
        h = honest_logreg(root)
        expected = {}
        for name, case_name in GOLDEN.items():
            if case_name is None:
                data, replay = h.bundle, 6
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
