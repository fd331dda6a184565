"""Bounded memory at 10^6 records (issue 17): a training worker and the bundle writer read only
the rows they need from the workspace's data file, streamed in chunks, and get exactly the bytes
a whole load would give."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

from prover import _sisa


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
@pytest.mark.parametrize("shape", [(97, 5), (97, 3, 4), (1, 2)])
def test_load_rows_is_exactly_the_rows_of_a_whole_load(tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                                                      save: Any, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(7)
    X = rng.standard_normal(shape).astype(np.float32)
    y = rng.integers(0, 3, shape[0])
    path = os.path.join(os.fspath(tmp_path), "d.npz")
    save(path, X=X, y=y)
    monkeypatch.setattr(_sisa, "_READ_BYTES", 64)  # many chunks, rows split across them
    for rows in (np.arange(shape[0]), np.unique(rng.integers(0, shape[0], 30)), np.asarray([shape[0] - 1]),
                 np.empty(0, dtype=np.int64)):
        _sisa._DATA_CACHE.clear()
        Xr, yr = _sisa._load_rows(path, rows.astype(np.int64))
        assert Xr.dtype == np.float32 and Xr.shape == (len(rows), *shape[1:])
        assert np.array_equal(Xr, X[rows]) and np.array_equal(yr, y[rows])


def test_load_rows_reads_a_fortran_ordered_file_whole(tmp_path: Any) -> None:
    X = np.asfortranarray(np.arange(24, dtype=np.float32).reshape(6, 4))
    path = os.path.join(os.fspath(tmp_path), "f.npz")
    np.savez(path, X=X, y=np.arange(6))
    _sisa._DATA_CACHE.clear()
    Xr, yr = _sisa._load_rows(path, np.asarray([1, 4]))
    assert np.array_equal(Xr, X[[1, 4]]) and np.array_equal(yr, [1, 4])


def test_bundle_and_forget_never_load_the_whole_data_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Workspace.data`` holds every record (256 MB of features and a million ids at 10^6):
    neither ``forget`` nor ``write_bundle`` touches it; both read only the rows they need."""
    from conftest_verifier import honest, trained_copy

    from prover import Workspace
    from prover._bundle import write_bundle
    from verifier import VerifyOptions, verify

    h = honest()
    ws_dir = trained_copy(h, "no-data")

    def refuse(self: Any) -> Any:
        raise AssertionError("the whole data set was loaded")

    monkeypatch.setattr(Workspace, "data", property(refuse))
    _sisa._DATA_CACHE.clear()
    with Workspace.open(ws_dir) as ws:
        ws.progress = False
        ws.forget(h.first_ids, workers=1)
        out = os.path.join(os.path.dirname(ws_dir), "b.vmu")
        write_bundle(ws, out, replay=2)
    with open(out, "rb") as f:
        v = verify(f.read(), VerifyOptions(residual=False, replay=2))
    assert v.exit_code == 0, repr(v.failure)
