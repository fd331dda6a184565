"""Verifiable DP-SGD (issue 14; specs/06 section 3b): the step against an obviously correct slow
version, the accounting against opacus, and a DP workspace that trains, forgets and verifies with
exact replay, with epsilon recomputed by the verifier; a prover that claims DP but trains without
noise is rejected at step 18."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from verifiable_mu import _dp
from verifiable_mu.training import Hyper, ModelSpec, build_model, dp_step, zero_momentum

SPEC = ModelSpec(name="mlp", n_features=64, n_classes=10, input_shape=(64,), hidden=16)
HYPER = Hyper(lr=0.05, momentum=0.9, weight_decay=1e-4, batch_size=8, dp_clip=0.7, dp_noise=1.3, dp_delta=1e-5)


def _slow_dp_step(model: torch.nn.Module, mom: dict, xb: torch.Tensor, yb: torch.Tensor, h: Hyper, seed: int) -> None:
    """One record at a time: its own backward pass, clipped; then the sum, the noise, momentum."""
    names = sorted(n for n, _ in model.named_parameters())
    params = dict(model.named_parameters())
    total = {n: torch.zeros_like(params[n]) for n in names}
    for i in range(len(xb)):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(xb[i : i + 1]), yb[i : i + 1]).backward()
        norm = torch.sqrt(sum((params[n].grad ** 2).sum() for n in names))
        c = min(1.0, h.dp_clip / (float(norm) + 1e-12))
        for n in names:
            total[n] += params[n].grad * c
    gen = torch.Generator().manual_seed(seed ^ 0x44502D53_47440001)
    with torch.no_grad():
        for n in names:
            g = (total[n] + torch.randn(total[n].shape, generator=gen) * (h.dp_noise * h.dp_clip)) / len(xb)
            g = g + params[n] * h.weight_decay
            mom[n].mul_(h.momentum).add_(g)
            params[n].add_(mom[n], alpha=-h.lr)


def test_dp_step_equals_the_record_by_record_version() -> None:
    rng = np.random.default_rng(0)
    xb = torch.from_numpy(rng.random((8, 64), dtype=np.float32))
    yb = torch.from_numpy(rng.integers(0, 10, 8))
    fast, slow = build_model(SPEC, init_seed=3), build_model(SPEC, init_seed=3)
    mf, ms = zero_momentum(fast), zero_momentum(slow)
    for seed in (11, 12, 13):
        dp_step(fast, mf, xb, yb, HYPER, seed)
        _slow_dp_step(slow, ms, xb, yb, HYPER, seed)
    for (n, a), (_, b) in zip(fast.state_dict().items(), slow.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=n)


def test_dp_step_is_deterministic_and_the_noise_comes_from_the_seed() -> None:
    rng = np.random.default_rng(1)
    xb = torch.from_numpy(rng.random((8, 64), dtype=np.float32))
    yb = torch.from_numpy(rng.integers(0, 10, 8))
    runs = []
    for seed in (5, 5, 6):
        m = build_model(SPEC, init_seed=0)
        dp_step(m, zero_momentum(m), xb, yb, HYPER, seed)
        runs.append(torch.cat([p.reshape(-1) for p in m.parameters()]))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


@pytest.mark.parametrize(
    ("kw", "fragment"),
    [
        ({"dp_clip": 1.0}, "noise multiplier > 0"),
        ({"dp_clip": 1.0, "dp_noise": float("nan"), "dp_delta": 1e-5}, "finite"),
        ({"dp_clip": 1.0, "dp_noise": 1.0}, "delta in (0, 1)"),
        ({"dp_clip": 1.0, "dp_noise": 1.0, "dp_delta": 1e-5, "arithmetic": "portable-v1"}, "float32 arithmetic only"),
    ],
)
def test_bad_dp_hyper_parameters_are_refused(kw: dict, fragment: str) -> None:
    from verifiable_mu._errors import MalformedInput

    with pytest.raises(MalformedInput, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        Hyper(**kw)


def test_dp_hyper_round_trips_and_an_unknown_dp_field_is_refused() -> None:
    from verifiable_mu._errors import MalformedInput

    j = HYPER.to_json()
    assert j["dp"] == {"clip": "0.7", "noise_multiplier": "1.3", "delta": "1e-05"}
    assert Hyper.from_json(j) == HYPER
    with pytest.raises(MalformedInput, match="exactly 'clip', 'noise_multiplier' and 'delta'"):
        Hyper.from_json({**j, "dp": {**j["dp"], "epsilon": "1"}})


def test_accounting_is_opacus_rdp_and_the_noise_meets_its_target() -> None:
    from opacus.accountants import RDPAccountant

    sched = _dp.schedule([100, 100, 100], stage_epochs=3, batch_size=20)
    assert sched == [(0.2, 15), (0.1, 30), (20 / 300, 45)]
    acc = RDPAccountant()
    for q, steps in sched:
        for _ in range(steps):
            acc.step(noise_multiplier=1.1, sample_rate=q)
    assert _dp.epsilon(1.1, 1e-5, {0: sched}) == pytest.approx(acc.get_epsilon(delta=1e-5), rel=1e-9)
    two = {0: sched, 1: _dp.schedule([50, 50, 50], stage_epochs=3, batch_size=20)}
    assert _dp.epsilon(1.1, 1e-5, two) == max(_dp.epsilon(1.1, 1e-5, {k: v}) for k, v in two.items())
    sigma = _dp.noise_for_epsilon(2.0, 1e-5, two)
    assert _dp.epsilon(sigma, 1e-5, two) <= 2.0 < _dp.epsilon(sigma * 0.99, 1e-5, two)


def test_dp_workspace_trains_forgets_and_verifies_with_exact_replay(tmp_path: Path) -> None:
    from prover import Workspace, WorkspaceConfig
    from prover._bundle import write_bundle
    from verifier import VerifyOptions, verify
    from verifier._report import to_json

    cfg = WorkspaceConfig(shards=3, slices=2, epochs=3, workers=1, dp_epsilon=3.0, dp_delta=1e-5)
    with Workspace.create(tmp_path / "ws", data="digits", config=cfg) as ws:
        ws.progress = False
        ws.train()
        assert 0 < ws.config.dp_noise < 100  # chosen at commit from the committed slice sizes
        ws.forget([ws.split_ids("train")[3]])
        write_bundle(ws, str(tmp_path / "b.zip"), replay=8)
    with Workspace.open(tmp_path / "ws") as ws:  # the chosen noise multiplier was saved with the settings
        assert ws.config.dp_noise > 0
    v = verify(str(tmp_path / "b.zip"), VerifyOptions(residual=False))
    assert v.exit_code == 0, v.failure
    rep = to_json(v)
    assert rep["replay"]["mode"] == "exact"
    assert rep["dp"]["epsilon"] == pytest.approx(3.0, rel=0.01) and rep["dp"]["epsilon"] <= 3.0
    assert rep["dp"]["delta"] == 1e-5 and rep["dp"]["noise_multiplier"] > 0


def test_a_prover_that_claims_dp_but_adds_no_noise_is_rejected_at_step_18(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Cheating prover: the signed config says DP-SGD, the training ran plain SGD (no clipping, no
    noise). Every replayed segment differs from the logged checkpoints: rejected, step 18."""
    import verifiable_mu.training as T
    from prover import Workspace, WorkspaceConfig
    from prover._bundle import write_bundle
    from verifier import VerifyOptions, verify

    cfg = WorkspaceConfig(shards=2, slices=2, epochs=2, workers=1, dp_noise=1.0, dp_delta=1e-5)
    with monkeypatch.context() as m:
        m.setattr(T, "dp_step", lambda model, mom, xb, yb, hyper, seed: T.sgd_step(model, mom, xb, yb, hyper, seed))
        with Workspace.create(tmp_path / "ws", data="digits", config=cfg) as ws:
            ws.progress = False
            ws.train()
            ws.forget([ws.split_ids("train")[0]])
            write_bundle(ws, str(tmp_path / "b.zip"), replay=8)
    v = verify(str(tmp_path / "b.zip"), VerifyOptions(residual=False))
    assert v.exit_code == 1 and v.failure is not None
    from verifier._errors import ReplayMismatch

    assert isinstance(v.failure, ReplayMismatch) and v.failed_step == 18 and "differs" in str(v.failure)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--dp-epsilon", "2"], "--dp-delta must be in (0, 1)"),
        (["--dp-epsilon", "2", "--dp-delta", "1e-5", "--arithmetic", "portable"], "needs --arithmetic float32"),
        (["--dp-epsilon", "-1", "--dp-delta", "1e-5"], "must be >= 0"),
        (["--dp-noise", "1", "--dp-delta", "1e-5", "--dp-clip", "0"], "--dp-clip must be > 0"),
    ],
)
def test_vmu_init_refuses_bad_dp_options_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       args: list[str], fragment: str) -> None:
    from prover.cli import main as vmu_main

    assert vmu_main(["init", str(tmp_path / "ws"), *args]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
