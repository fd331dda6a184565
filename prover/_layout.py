"""The workspace directory: a new one built all or nothing, the settings file read and rewritten,
the lock that one writing process holds, and the signing key."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
from typing import Any

from verifiable_mu._keys import SigningKey, VerifyingKey
from verifiable_mu._log import TransparencyLog

from ._config import (
    CKPT_DIR,
    CONFIG_FILE,
    DATA_FILE,
    DB_FILE,
    FORMAT_VERSION,
    KEY_FILE,
    PUB_FILE,
    READS_VERSIONS,
    TRANSCRIPT_DIR,
    WorkspaceConfig,
)
from ._data import Dataset
from ._errors import BadInput, UnsupportedWorkspace, WorkspaceError, WorkspaceLocked
from ._state import create_tables

__all__ = ["build", "read_settings", "rewrite_config", "take_lock", "load_key"]


def build(path: str, ds: Dataset, config: WorkspaceConfig, *, origin: str, model_code: dict[str, Any] | None) -> None:
    """Make the workspace directory ``path`` (absent, or an empty directory): the data, a new
    signing key, the settings and the empty state database. Built in a temporary directory
    beside the target, then renamed: init is all or nothing."""
    parent = os.path.dirname(path) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".vmu-init-", dir=parent)
    try:
        ds.save_npz(os.path.join(tmp, DATA_FILE))
        key = SigningKey.generate()
        key.save(os.path.join(tmp, KEY_FILE))
        with open(os.path.join(tmp, PUB_FILE), "wb") as f:
            f.write(key.public_key.to_pem())
        os.makedirs(os.path.join(tmp, CKPT_DIR))
        os.makedirs(os.path.join(tmp, TRANSCRIPT_DIR))
        cfg: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "name": os.path.basename(path),
            "origin": origin,
            "config": config.to_json(),
            "data_digest": ds.digest(),
            "created": int(time.time()),
        }
        if model_code is not None:
            cfg["model_code"] = model_code
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        log = TransparencyLog.open(os.path.join(tmp, DB_FILE), origin=origin, create=True)
        create_tables(log)
        log.close()
        if os.path.isdir(path):
            os.rmdir(path)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_settings(path: str) -> dict[str, Any]:
    """The settings file of the workspace at ``path``, of a format version this vmu reads."""
    cfg_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(cfg_path):
        raise BadInput(f"{path} is not a verifiable-mu workspace (no {CONFIG_FILE}); create one with 'vmu init'")
    try:
        with open(cfg_path) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise WorkspaceError(f"cannot read {cfg_path}: {e}") from e
    version = cfg.get("format_version") if isinstance(cfg, dict) else None
    if version not in READS_VERSIONS or type(version) is not int:
        raise UnsupportedWorkspace(
            f"workspace format version {version!r} is not supported by this vmu (it reads versions "
            f"{', '.join(map(str, READS_VERSIONS))})"
        )
    return cfg  # type: ignore[no-any-return]


def rewrite_config(path: str, config: WorkspaceConfig) -> None:
    """Replace the training settings in the workspace's settings file (atomically)."""
    from verifiable_mu._seeds import atomic_write

    cfg_path = os.path.join(path, CONFIG_FILE)
    with open(cfg_path) as f:
        doc = json.load(f)
    doc["config"] = config.to_json()
    atomic_write(cfg_path, json.dumps(doc, indent=2, sort_keys=True).encode())


def load_key(path: str) -> SigningKey:
    """The workspace's signing key, checked against its public key file."""
    try:
        key = SigningKey.load(os.path.join(path, KEY_FILE))
    except FileNotFoundError as e:
        raise BadInput(f"the workspace's signing key {KEY_FILE} is missing") from e
    pub = _load_pub(os.path.join(path, PUB_FILE))
    if pub is not None and pub != key.public_key:
        raise BadInput(f"{KEY_FILE} does not match {PUB_FILE}: the signing key was replaced")
    return key


def take_lock(path: str) -> int:
    """Take the workspace's lock (flock, non-blocking) and write our pid into it; its fd."""
    lock_path = os.path.join(path, ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        finally:
            os.close(fd)
        raise WorkspaceLocked(
            f"another vmu process (pid {holder}) is working on {path}; wait for it to finish and try again"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _load_pub(path: str) -> VerifyingKey | None:
    if not os.path.exists(path):
        return None
    return VerifyingKey.load(path)
