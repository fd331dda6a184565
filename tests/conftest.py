"""Shared fixtures. Training fixtures use a small SISA configuration on digits so the whole
suite stays within a few minutes on 2 cores."""

from __future__ import annotations

import os
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

SMALL = dict(shards=3, slices=3, epochs=4, workers=1, seed=7)


@pytest.fixture(scope="session")
def trained_template(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A trained small workspace (closed); copy it before changing it."""
    from prover import Workspace, WorkspaceConfig

    path = str(tmp_path_factory.mktemp("tmpl") / "ws")
    ws = Workspace.create(path, data="digits", config=WorkspaceConfig(**SMALL))
    ws.progress = False
    ws.train()
    ws.close()
    return path


@pytest.fixture()
def trained_ws(trained_template: str, tmp_path: os.PathLike[str]) -> str:
    """A private copy of the trained workspace."""
    dst = os.path.join(os.fspath(tmp_path), "ws")
    shutil.copytree(trained_template, dst)
    return dst
