"""Shared fixtures. Training fixtures use a small SISA configuration on digits so the whole
suite stays within a few minutes on 2 cores."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from typing import Any

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


# --- the local Ray instance the Ray test modules share (tests/test_ray.py, tests/test_ray_verifier.py) ---

_ENV_KEYS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "PYTHONPATH")


def reset_token_cache() -> None:
    """Forget the Ray token this process has read (Ray caches it for the life of the process)."""
    try:
        from ray._raylet import AuthenticationTokenLoader  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - another Ray layout
        return
    AuthenticationTokenLoader.instance().reset_cache()


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One local Ray instance for the module, 2 CPUs, token authentication on (Ray's default for
    a new local instance), the token in a private temporary file; shut down after."""
    ray = pytest.importorskip("ray", reason="the Ray backend is an optional extra: pip install '.[ray]'")
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    if ray.is_initialized():
        ray.shutdown()
    saved = {k: os.environ.get(k) for k in _ENV_KEYS}
    token_path = str(tmp_path_factory.mktemp("ray-auth") / "auth_token")
    fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ADDRESS"):
        os.environ.pop(k, None)
    os.environ["RAY_AUTH_TOKEN_PATH"] = token_path
    # Ray workers are started with the driver's environment: let them import this checkout.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, saved["PYTHONPATH"]) if p)
    reset_token_cache()  # another module's Ray instance may have cached its token
    try:
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
        assert is_token_auth_enabled(), "Ray 2.60 should start a local instance with token authentication on"
        assert ray.cluster_resources()["CPU"] == 2
        yield {"ray": ray, "token_path": token_path}
    finally:
        ray.shutdown()
        reset_token_cache()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
