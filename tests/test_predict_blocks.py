"""Prediction in blocks of rows, prover and verifier (benchmarks/bench_scale.py found both ran one
forward pass over every row: the CNN on 16x16 images holds 1.6 GB of activations per 20,000 rows,
and 256-row passes are faster than one large one on the CPU)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from prover import Workspace


def _batch_sizes() -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    """Batch sizes seen by top-level forward passes (every module: the largest is what counts)."""
    seen: list[int] = []
    handle = torch.nn.modules.module.register_module_forward_hook(lambda _m, inp, _out: seen.append(len(inp[0])))
    return seen, handle


def test_prover_predicts_in_blocks_of_rows(trained_template: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import prover._predict as W

    with Workspace.open(trained_template) as ws:
        X = ws.data.X[:50]
        whole = ws.predict_proba(X)
        monkeypatch.setattr(W, "PREDICT_ROWS", 7)
        seen, handle = _batch_sizes()
        try:
            blocks = ws.predict_proba(X)
        finally:
            handle.remove()
        assert set(seen) == {7, 50 % 7}  # seven blocks of 7 rows and one of 1, no pass over all 50
        assert np.allclose(blocks, whole, rtol=0, atol=1e-6)
        assert ws.predict_proba(X[:0]).shape == (0, whole.shape[1])


def test_verifier_models_predict_in_blocks_of_rows(tmp_path: os.PathLike, monkeypatch: pytest.MonkeyPatch) -> None:
    import verifier._models as M
    from verifiable_mu.training import ModelSpec, build_model, checkpoint_from_model, save_checkpoint, zero_momentum

    spec = ModelSpec(name="cnn", n_features=64, n_classes=10, input_shape=(8, 8))
    model = build_model(spec, init_seed=5)
    digest = save_checkpoint(checkpoint_from_model(model, zero_momentum(model)), tmp_path)
    with open(os.path.join(tmp_path, digest.hex() + ".safetensors"), "rb") as f:
        data = f.read()
    X = np.random.default_rng(0).random((50, 64), dtype=np.float32)
    (whole,) = M.load_models(spec.to_json(), [(digest, data)])
    p_whole = whole(X)
    monkeypatch.setattr(M, "PROBA_ROWS", 7)
    seen, handle = _batch_sizes()
    try:
        p_blocks = whole(X)
    finally:
        handle.remove()
    assert set(seen) == {7, 50 % 7}
    assert p_blocks.shape == (50, 10) and p_blocks.dtype == np.float64
    assert np.allclose(p_blocks, p_whole, rtol=0, atol=1e-6)
    assert whole(X[:0]).shape == (0, 10)
