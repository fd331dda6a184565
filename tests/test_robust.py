"""Robust accuracy before and after a deletion (issue 14; specs/10 section 7b): PGD on a model
whose answer is known, and the figures of step 19 on an honest bundle's proven models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from verifier import _robust


class _Sign(torch.nn.Module):
    """Two classes on one feature: class 0 when x > 0.5, else class 1, with a steep margin."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = 50.0 * (x[:, :1] - 0.5)
        return torch.cat([z, -z], dim=1)


def test_pgd_flips_exactly_the_records_within_epsilon_of_the_boundary() -> None:
    m = _Sign().eval()
    # distances to the boundary 0.5: 0.02, 0.05 (inside epsilon = 0.1), 0.3, 0.4 (outside)
    X = np.array([[0.52], [0.45], [0.8], [0.1]], dtype=np.float32)
    y = np.array([0, 1, 0, 1])
    rep = _robust.robustness([m], [m], X, y)
    assert rep is not None
    assert rep.clean_before == rep.clean_after == 1.0
    assert rep.robust_before == rep.robust_after == 0.5  # the two near the boundary flip, the two far ones hold
    j = rep.to_json()
    assert j["epsilon"] == _robust.EPSILON and j["steps"] == _robust.STEPS and j["informative_only"] is True


def test_nothing_to_attack_gives_no_figures() -> None:
    m = _Sign().eval()
    assert _robust.robustness([m], [m], np.zeros((0, 1), np.float32), np.zeros(0, np.int64)) is None
    assert _robust.robustness([None], [m], np.zeros((2, 1), np.float32), np.zeros(2, np.int64)) is None


def test_parameters_keep_their_requires_grad() -> None:
    lin = torch.nn.Linear(1, 2)
    lin.bias.requires_grad_(False)
    _robust.robustness([lin], [lin], np.array([[0.3]], np.float32), np.array([0]))
    assert lin.weight.requires_grad is True and lin.bias.requires_grad is False


@pytest.mark.slow
def test_step_19_reports_robustness_of_the_proven_models() -> None:
    import conftest_verifier

    from verifier import VerifyOptions, verify
    from verifier._report import to_json

    h = conftest_verifier.honest_50()
    rob = to_json(verify(h.bundle, VerifyOptions(n_boot=200)))["residual"]["robustness"]
    assert rob["records"] > 100 and rob["records_are"].startswith("audit records")
    for side in ("before", "after"):
        assert rob[side]["clean_accuracy"] > 0.8  # the digits ensemble on never-seen records
        assert rob[side]["robust_accuracy"] < rob[side]["clean_accuracy"]  # the attack bites
