"""``vmu status``: a workspace's shards, log, deletions and keys, as one JSON-ready dict."""

from __future__ import annotations

from typing import Any

from verifiable_mu._keys import VerifyingKey

from ._config import WorkspaceConfig
from ._state import State

__all__ = ["status"]


def status(state: State, cfg: WorkspaceConfig, *, path: str, vkey: str, public_key: VerifyingKey) -> dict[str, Any]:
    shards = [
        {"shard": s, "generation": gen, "records": state.live_count(s), "complete": target is None,
         "last_stage": state.last_stage(s, gen)}
        for s, gen, target in state.shards()
    ]
    head = state.log.latest_tree_head()
    return {
        "path": path,
        "origin": state.log.origin,
        "vkey": vkey,
        "key_id": public_key.key_id,  # the keyid of every DSSE signature (transcripts)
        "public_key": public_key.raw.hex(),  # raw Ed25519 public key, 32 bytes in hex
        "shards": cfg.shards,
        "slices": cfg.slices,
        "epochs": cfg.epochs,
        "model": cfg.model,
        "committed": state.meta("committed") == "1",
        "trained": state.meta("trained") == "1",
        "log_size": state.log.size,
        "signed_size": head.size if head else 0,
        "deleted_records": state.deleted_count(),
        "requests": list(state.requests()),
        "shard_state": shards,
        "train_seconds": state.account_totals("train")[0],
        "public_key_id": public_key.key_id,
    }
