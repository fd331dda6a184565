"""Training that diverges stops loudly before anything of the stage is committed (issue 17):
no non-finite checkpoint is ever logged or signed, in float32 and in portable arithmetic."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from prover import TrainingDiverged, Workspace, WorkspaceConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ws(tmp_path: os.PathLike, arithmetic: str) -> Workspace:
    cfg = WorkspaceConfig(shards=2, slices=2, epochs=2, lr=1e30, workers=1, device="cpu", arithmetic=arithmetic)
    ws = Workspace.create(os.path.join(os.fspath(tmp_path), "ws"), data="digits", config=cfg)
    ws.progress = False
    return ws


@pytest.mark.parametrize("arithmetic", ["float32", "portable"])
def test_divergence_stops_the_stage_before_it_is_committed(tmp_path: os.PathLike, arithmetic: str) -> None:
    ws = _ws(tmp_path, arithmetic)
    try:
        with pytest.raises(TrainingDiverged, match=r"training diverged in shard \d, stage \d, at step \d+") as e:
            ws.train(workers=1)
        assert "Lower the learning rate (--lr, now 1e+30)" in str(e.value)
        kinds = [x.kind for x in ws.log.entries()]
        assert "step" not in kinds and "model" not in kinds  # only the commit block
        assert not [n for n in os.listdir(ws.store) if ".tmp." in n]  # the stage's staged files are removed
        for name in os.listdir(ws.store):  # every stored checkpoint is finite (only the initial ones)
            assert all(bool(torch.isfinite(t).all()) for t in load_file(os.path.join(ws.store, name)).values())
        assert not ws.trained
    finally:
        ws.close()


def test_cli_reports_divergence_in_one_line(tmp_path: os.PathLike) -> None:
    d = os.path.join(os.fspath(tmp_path), "ws")
    env = dict(os.environ, PYTHONPATH=ROOT)
    run = [sys.executable, "-m", "prover.cli"]
    r = subprocess.run([*run, "init", d, "--shards", "2", "--slices", "2", "--epochs", "2", "--lr", "1e30", "--workers", "1"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*run, "train", d], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode == 1
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "training diverged in shard " in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_step_15_flags_a_non_finite_constituent() -> None:
    """An owner running other code signs a model whose weights are NaN: the proofs hold (the
    deletion may be carried out as logged), but every verdict says the model is unusable."""
    from conftest_verifier import cheat, forge, honest

    from verifiable_mu import training as T
    from verifier import VerifyOptions, verify

    h = honest()
    assert verify(h.bundle, VerifyOptions(residual=False)).nonfinite_shards == []
    state: dict[str, int] = {}

    def mutate(ctx) -> None:  # type: ignore[no-untyped-def]
        touched = {s for k, b in ctx.entries if k == "deletion" for s in b["shards"]}
        shard = min(set(range(ctx.entries[0][1]["shards"])) - touched)
        last = max(i for i, (k, b) in enumerate(ctx.entries) if k == "checkpoint" and b["shard"] == shard)
        ck = T.load_checkpoint(os.path.join(ctx.ws.store, ctx.entries[last][1]["digest"] + ".safetensors"))
        name = sorted(k for k in ck if k.startswith("param/"))[0]
        ck[name] = ck[name].clone()
        ck[name].view(-1)[0] = float("nan")
        cheat(ctx, {last: {"digest": T.save_checkpoint(ck, ctx.ws.store).hex()}})
        state["shard"] = shard

    data = forge(h, mutate, name="nan-model")
    v = verify(data, VerifyOptions(residual=False, replay=0))  # the NaN segment lies outside the deletion lineage
    assert v.exit_code == 0, repr(v.failure)
    assert v.nonfinite_shards == [state["shard"]]
    assert any(w.startswith("NON-FINITE MODEL") and f"shard(s) {state['shard']}" in w for w in v.warnings), v.warnings
    from verifier._report import to_json

    assert to_json(v)["nonfinite_shards"] == [state["shard"]]
    # Under the agency policy such a model is never accepted (exit 3, the requirement named), even
    # with every other requirement met; without the NaN the requirement holds.
    a = verify(data, VerifyOptions(residual=False, replay=0, policy="agency"))
    assert a.exit_code == 3 and a.verdict == "accepted-reduced"
    assert any(u.startswith(f"finite-models: the final constituent of shard(s) {state['shard']} holds NaN") for u in a.unmet)
    ok = verify(h.bundle, VerifyOptions(residual=False, replay=0, policy="agency"))
    assert ok.exit_code == 3 and not any(u.startswith("finite-models") for u in ok.unmet)
