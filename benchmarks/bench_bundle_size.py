"""How the bundle for one deletion grows with the data set (issue 4: "bundle size for one deletion,
excluding weights and checkpoints, stays under 1 MiB and grows logarithmically with the data set").

Data: scikit-learn's digits tiled 1x, 4x, 16x with a little noise (so every record is distinct),
MLP, 4 slices, 20 epochs, one deleted record, replay K = 8, the median and the largest size over
7 verifier challenges (the sampled segments decide which records are opened). Two series:

* shards grow with the data (5, 20, 80 shards: a constant ~250 records per shard) -- the proofs
  and the disclosed runs of the log grow with log(n);
* shards fixed at 5 -- the retraining range of the affected shard (its step manifests, which
  the verifier must read to check that no step used the deleted record) grows with the shard.

Run: ``python benchmarks/bench_bundle_size.py`` (about a minute).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np

from prover import Workspace, WorkspaceConfig, from_arrays, load_digits_dataset
from prover._bundle import write_bundle

CHALLENGES = 7


def size_for(root: str, tiles: int, shards: int) -> tuple[int, int, int]:
    ds = load_digits_dataset()
    rng = np.random.default_rng(tiles)
    X = np.concatenate([ds.X + rng.normal(0, 0.01, ds.X.shape).astype(np.float32) for _ in range(tiles)])
    y = np.concatenate([ds.y] * tiles)
    path = os.path.join(root, f"w{tiles}_{shards}")
    ws = Workspace.create(path, data=from_arrays(X, y), config=WorkspaceConfig(shards=shards, workers=1))
    ws.progress = False
    ws.train()
    rid = ws.log.connection.execute("SELECT id FROM p_records WHERE role='train' AND shard=0 AND slice=1").fetchone()[0]
    ws.forget([rid])
    # Which segments are sampled (and so which records are opened) depends on the challenge; the
    # size is given for several verifier challenges: median and largest.
    sizes = []
    for c in range(CHALLENGES):
        info = write_bundle(ws, os.path.join(root, f"b{tiles}_{shards}.vmu"), replay=8, challenge=bytes([c + 1]) * 16)
        sizes.append(info.bytes_without_checkpoints)
    n = len(X)
    ws.close()
    shutil.rmtree(path, ignore_errors=True)
    return n, int(statistics.median(sizes)), max(sizes)


def main() -> int:
    root = tempfile.mkdtemp(prefix="vmu-bsize-")
    try:
        print(f"bundle without checkpoints over {CHALLENGES} verifier challenges")
        print("records  shards  records/shard      median  (MiB)      largest  (MiB)")
        for tiles, shards in ((1, 5), (4, 20), (16, 80), (4, 5), (16, 5)):
            n, med, top = size_for(root, tiles, shards)
            print(
                f"{n:>7}  {shards:>6}  {n * 0.7 / shards:>13.0f}  {med:>10,}  {med / 2**20:>5.2f}  "
                f"{top:>11,}  {top / 2**20:>5.2f}"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
