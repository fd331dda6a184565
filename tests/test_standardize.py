"""``vmu init --standardize`` (issue 17): feature scaling fitted on the training split, signed in
the config entry, applied by the prover and by the verifier's replay from the signed config only
(specs/06 section 5c)."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile

import numpy as np
import pytest
import torch
from conftest_verifier import Honest, build_honest, forge, members_of, rezip

from prover import TrainingDiverged, Workspace, WorkspaceConfig, from_arrays
from verifiable_mu._canonical import canonical_json
from verifiable_mu._errors import MalformedInput
from verifiable_mu._scaling import SCALING_KIND, Scaling, fit_standardize
from verifier import VerifyOptions, verify

_CACHE: dict[str, Honest] = {}


def _standardized() -> Honest:
    """The conftest's honest workspace (digits, two requests), made with ``standardize=True``."""
    if "h" not in _CACHE:
        root = tempfile.mkdtemp(prefix="vmu-standardize-")
        atexit.register(shutil.rmtree, root, True)
        _CACHE["h"] = build_honest(root, standardize=True)
    return _CACHE["h"]


def _raw_features(n: int = 900, d: int = 16, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Four learnable classes on features of a raw tabular scale (thousands, offset): what the
    10^6 make_classification run of issue 17 looked like to SGD with momentum at lr 0.05."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    centers = rng.normal(0, 1, (4, d))
    X = (centers[y] + rng.normal(0, 1, (n, d))) * rng.uniform(500, 5000, d) + rng.uniform(-3000, 3000, d)
    return X.astype(np.float32), y


# --- the core -----------------------------------------------------------------------------------


def test_fit_uses_only_the_given_rows_and_apply_is_float32_elementwise() -> None:
    X = np.arange(24, dtype=np.float32).reshape(6, 2, 2) * np.float32(1.5)
    rows = np.asarray([0, 2, 5])
    s = fit_standardize(X, rows)
    flat = X.reshape(6, -1)[rows].astype(np.float64)
    assert np.array_equal(s.mean, flat.mean(axis=0).astype(np.float32))
    assert np.array_equal(s.std, flat.std(axis=0).astype(np.float32))
    got = s.apply(X)
    assert got.shape == X.shape and got.dtype == np.float32
    want = ((X.reshape(6, -1) - s.mean) / s.std).astype(np.float32).reshape(X.shape)
    assert np.array_equal(got, want)
    # a constant feature gets std 1, never a division by zero
    c = fit_standardize(np.ones((4, 3), dtype=np.float32), np.arange(4))
    assert np.array_equal(c.std, np.ones(3, dtype=np.float32))
    assert Scaling.from_json(s.to_json(), 4).to_json() == s.to_json()


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda d: d.update(kind="minmax-v1"), "scaling kind 'minmax-v1' is not supported"),
        (lambda d: d.update(mean=d["mean"][:-8]), "scaling mean must be 32 hex digits"),
        (lambda d: d.update(std=d["std"].upper()), "scaling std must be lower-case hex"),
        (lambda d: d.update(mean="0000c07f" + d["mean"][8:]), "scaling mean holds a value that is not finite"),
        (lambda d: d.update(std="00000000" + d["std"][8:]), "scaling std must hold finite, positive, normal"),
        (lambda d: d.update(std="000000bf" + d["std"][8:]), "scaling std must hold finite, positive, normal"),
        (lambda d: d.update(extra=1), "exactly the fields kind, mean, std"),
    ],
)
def test_a_malformed_scaling_is_refused(edit, fragment: str) -> None:  # type: ignore[no-untyped-def]
    d = fit_standardize(np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32), np.arange(10)).to_json()
    assert d["kind"] == SCALING_KIND
    edit(d)
    with pytest.raises(MalformedInput, match=fragment):
        Scaling.from_json(d, 4)


# --- the prover ---------------------------------------------------------------------------------


def test_raw_scale_features_diverge_and_standardized_ones_train(tmp_path: os.PathLike) -> None:
    """The issue's diverging configuration in small: raw-scale features, the default lr. Without
    scaling the guard stops the stage; with --standardize the same data trains to finite weights
    and a useful accuracy, and the config entry carries the scaling fitted on the training split."""
    X, y = _raw_features()
    base = dict(shards=2, slices=2, epochs=2, workers=1, device="cpu")
    plain = Workspace.create(os.path.join(os.fspath(tmp_path), "plain"), data=from_arrays(X, y),
                             config=WorkspaceConfig(**base))  # fmt: skip
    plain.progress = False
    try:
        with pytest.raises(TrainingDiverged, match=r"training diverged in shard \d, stage \d"):
            plain.train(workers=1)
    finally:
        plain.close()
    ws = Workspace.create(os.path.join(os.fspath(tmp_path), "std"), data=from_arrays(X, y),
                          config=WorkspaceConfig(standardize=True, **base))  # fmt: skip
    ws.progress = False
    try:
        ws.train(workers=1)
        cfg = ws.log.entry(0).body
        train_rows = ws.split_rows("train")
        assert cfg["scaling"] == fit_standardize(ws.data.X, train_rows).to_json()  # the training split only
        assert cfg["scaling"] != fit_standardize(ws.data.X, np.arange(len(X))).to_json()
        for m in ws.constituents():
            assert all(bool(torch.isfinite(p).all()) for p in m.parameters())
        acc = ws.evaluate()
        assert acc is not None and acc > 0.6, acc  # prediction scales its input the same way
    finally:
        ws.close()


def test_old_workspaces_keep_their_unscaled_config(tmp_path: os.PathLike) -> None:
    cfg = WorkspaceConfig.from_json({k: v for k, v in WorkspaceConfig().to_json().items() if k != "standardize"})
    assert cfg.standardize is False


# --- the verifier -------------------------------------------------------------------------------


def test_a_standardized_bundle_verifies_with_the_deletion_lineage_replayed() -> None:
    h = _standardized()
    v = verify(h.bundle, VerifyOptions(residual=False, replay=2))
    assert v.exit_code == 0, repr(v.failure)
    assert v.replay_report and v.replay_report["segments"], v.replay_report
    members = members_of(h.bundle)
    cfg = json.loads(members["log/entries.json"])["runs"][0]["entries"][0]["body"]
    assert cfg["scaling"]["kind"] == SCALING_KIND


def test_step_9_scaling_edited_in_the_bundle() -> None:
    """Anyone but the owner editing the signed config's scaling breaks the signed root."""
    h = _standardized()
    m = members_of(h.bundle)
    doc = json.loads(m["log/entries.json"])
    sc = doc["runs"][0]["entries"][0]["body"]["scaling"]
    sc["std"] = np.full(len(sc["std"]) // 8, 2.0, dtype="<f4").tobytes().hex()
    m["log/entries.json"] = canonical_json(doc)
    v = verify(rezip(m), VerifyOptions(residual=False, replay=0))
    assert v.exit_code == 1 and v.failed_step == 9, (v.failed_step, repr(v.failure))
    assert "do not lead to the root" in str(v.failure)


def test_step_18_owner_signs_a_scaling_it_did_not_train_with() -> None:
    """The owner trains with one scaling and signs another: the replay, which applies the signed
    one, does not reproduce the logged checkpoints."""
    h = _standardized()

    def mutate(ctx) -> None:  # type: ignore[no-untyped-def]
        sc = ctx.entries[0][1]["scaling"]
        std = np.frombuffer(bytes.fromhex(sc["std"]), dtype="<f4") * np.float32(1.25)
        sc["std"] = std.astype("<f4").tobytes().hex()

    v = verify(forge(h, mutate, name="scaling"), VerifyOptions(residual=False, replay=0))
    assert v.exit_code == 1 and v.failed_step == 18, (v.failed_step, repr(v.failure))
    assert "does not reproduce" in str(v.failure) or "differs" in str(v.failure), str(v.failure)


def test_step_10_owner_signs_a_malformed_scaling() -> None:
    h = _standardized()

    def mutate(ctx) -> None:  # type: ignore[no-untyped-def]
        sc = ctx.entries[0][1]["scaling"]
        sc["std"] = "00000000" + sc["std"][8:]

    v = verify(forge(h, mutate, name="scaling0"), VerifyOptions(residual=False, replay=0))
    assert v.exit_code == 2 and v.failed_step == 10, (v.failed_step, repr(v.failure))
    assert "scaling std must hold finite, positive, normal float32 values" in str(v.failure)
