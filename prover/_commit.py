"""The commit phase: every record, the split and the assignment, the slice trees, the audit and
test trees and the initial models, logged in one transaction before any step runs (specs/06
sections 1 and 5)."""

from __future__ import annotations

import contextlib
import dataclasses
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from verifiable_mu._records import SALT_SIZE, commit_records, new_salt_array, record_keys
from verifiable_mu._scaling import fit_standardize
from verifiable_mu._seeds import BackgroundCommit, DurableBatch
from verifiable_mu._sorted_tree import SliceDescriptor, SortedTree, dataset_root
from verifiable_mu._tags import TAG_MODEL, tagged_hash

from . import _sisa
from ._config import WorkspaceConfig
from ._data import Dataset
from ._errors import BadInput
from ._state import State

__all__ = ["commit_block", "split_roles", "init_seed"]

_ROLES = {0: "train", 1: "audit", 2: "test"}


def init_seed(seed: int, shard: int) -> int:
    """The seed of shard ``shard``'s initial weights."""
    return int.from_bytes(tagged_hash(TAG_MODEL, b"init", struct.pack(">QI", seed, shard))[:8], "big") >> 1


def split_roles(cfg: WorkspaceConfig, n: int) -> np.ndarray:
    """role per row: 0 train, 1 audit, 2 test (from the committed seed)."""
    rng = np.random.default_rng([cfg.seed, 0x5EED])
    perm = rng.permutation(n)
    n_test = int(round(n * cfg.test_fraction))
    n_audit = int(round(n * cfg.audit_fraction))
    role = np.zeros(n, dtype=np.int64)
    role[perm[:n_test]] = 2
    role[perm[n_test : n_test + n_audit]] = 1
    return role


@dataclass(frozen=True, slots=True)
class _Assignment:
    """Every record's split, salt, commitment and key, and a training record's shard and slice (-1: none)."""

    role: np.ndarray
    salts: np.ndarray
    commits: list[bytes]
    keys: list[bytes]
    shard: np.ndarray
    slice: np.ndarray

    def rows(self, shard: int, slc: int) -> np.ndarray:
        return np.flatnonzero((self.shard == shard) & (self.slice == slc))

    def tree(self, rows: np.ndarray) -> SortedTree:
        return SortedTree.build((self.keys[i], self.commits[i]) for i in rows)


def _assign(cfg: WorkspaceConfig, ds: Dataset) -> _Assignment:
    n = len(ds.ids)
    role = split_roles(cfg, n)
    train_rows = np.flatnonzero(role == 0)
    if len(train_rows) < cfg.shards * cfg.slices:
        raise BadInput(f"{len(train_rows)} training records cannot fill {cfg.shards} shards x {cfg.slices} slices")
    salts = new_salt_array(n)
    commits = commit_records(ds.ids, ds.X, ds.y, salts)
    keys = record_keys(ds.ids)
    shard, slc = _sisa.assign([keys[i] for i in train_rows], seed=cfg.seed, shards=cfg.shards, slices=cfg.slices)
    rec_shard = np.full(n, -1, dtype=np.int64)
    rec_slice = np.full(n, -1, dtype=np.int64)
    rec_shard[train_rows] = shard
    rec_slice[train_rows] = slc
    return _Assignment(role=role, salts=salts, commits=commits, keys=keys, shard=rec_shard, slice=rec_slice)


def dp_noise_for(cfg: WorkspaceConfig, a: _Assignment) -> float:
    """The noise multiplier for the target epsilon, from the committed slice sizes (verifiable_mu._dp)."""
    from verifiable_mu import _dp
    from verifiable_mu._errors import MalformedInput
    from verifiable_mu._extras import require

    require(("opacus",), "DP-SGD's privacy accounting")
    scheds = {s: _dp.schedule([len(a.rows(s, r)) for r in range(cfg.slices)],
                              _sisa.stage_epochs(cfg.epochs, cfg.slices), cfg.batch_size) for s in range(cfg.shards)}
    try:
        return float(_dp.noise_for_epsilon(cfg.dp_epsilon, cfg.dp_delta, scheds))
    except MalformedInput as e:
        raise BadInput(str(e)) from e


def _initial_models(cfg: WorkspaceConfig, spec: Any, store: str) -> tuple[list[bytes], BackgroundCommit]:
    """Each shard's initial model saved to the store; the files sync on a thread (wait for it
    before the transaction that names them commits)."""
    from verifiable_mu.training import build_model, checkpoint_from_model, save_checkpoint, zero_momentum

    digests = []
    files = DurableBatch(store)  # made durable together, before the log names them
    try:
        for s in range(cfg.shards):
            model = build_model(spec, init_seed=init_seed(cfg.seed, s))
            digests.append(save_checkpoint(checkpoint_from_model(model, zero_momentum(model)), store, batch=files))
    except BaseException:
        files.discard()
        raise
    return digests, files.commit_in_background()


def _config_body(cfg: WorkspaceConfig, ds: Dataset, a: _Assignment, *, model_json: dict[str, Any], data_digest: str) -> dict[str, Any]:
    """The body of the config entry, the log's first (specs/06 section 5)."""
    from verifiable_mu.training import platform_info, resolve_device

    train_rows = np.flatnonzero(a.role == 0)
    return {
        "format": cfg.log_format,
        "shards": cfg.shards,
        "slices": cfg.slices,
        "epochs": cfg.epochs,
        "stage_epochs": _sisa.stage_epochs(cfg.epochs, cfg.slices),
        "checkpoint_every": cfg.checkpoint_every,
        "seed": str(cfg.seed),
        "assignment": "sha256-rank-v1",
        "model": model_json,
        "hyper": cfg.hyper_json(),
        "platform": platform_info(resolve_device(cfg.device), cfg.threads),
        "n_train": len(train_rows),
        "data_digest": data_digest,
        **({"scaling": fit_standardize(ds.X, train_rows).to_json()} if cfg.standardize else {}),
    }


@dataclass(slots=True)
class _Block:
    """The commit block's log entries, and where the slice and initial checkpoint entries are in it."""

    items: list[tuple[str, dict[str, Any] | bytes]] = dataclasses.field(default_factory=list)
    slice_at: dict[tuple[int, int], tuple[int, bytes, int]] = dataclasses.field(default_factory=dict)
    ckpt_at: list[int] = dataclasses.field(default_factory=list)


def _block(cfg: WorkspaceConfig, a: _Assignment, config_body: dict[str, Any], init_digests: list[bytes]) -> _Block:
    """config, a slice entry per (shard, slice), dataset, audit (with the test split: specs/06
    sections 1 and 5, so that a deletion of a test record can be proven to name a committed record
    that no slice holds), and each shard's initial checkpoint."""
    out = _Block(items=[("config", config_body)])
    descriptors = []
    for s in range(cfg.shards):
        for r in range(cfg.slices):
            tree = a.tree(a.rows(s, r))
            out.slice_at[(s, r)] = (len(out.items), tree.root, len(tree))
            descriptors.append(SliceDescriptor(shard=s, slice=r, size=len(tree), root=tree.root))
            out.items.append(("slice", {"shard": s, "slice": r, "generation": 0, "root": tree.root.hex(), "size": str(len(tree))}))
    out.items.append(("dataset", {"version": 0, "root": dataset_root(descriptors).hex(), "slices": len(descriptors)}))
    audit_tree, test_tree = a.tree(np.flatnonzero(a.role == 1)), a.tree(np.flatnonzero(a.role == 2))
    out.items.append(("audit", {"root": audit_tree.root.hex(), "size": str(len(audit_tree)),
                                "test_root": test_tree.root.hex(), "test_size": str(len(test_tree))}))
    for s in range(cfg.shards):
        out.ckpt_at.append(len(out.items))
        out.items.append(("checkpoint", {"shard": s, "generation": 0, "stage": 0, "step": "0", "digest": init_digests[s].hex()}))
    return out


def _record_rows(ds: Dataset, a: _Assignment) -> zip[tuple[Any, ...]]:
    """The p_records rows: each column as a Python list first (one C-level conversion each), zipped."""
    n = len(ds.ids)
    is_train = (a.role == 0).tolist()
    salt_raw = a.salts.tobytes()
    return zip(
        range(n),
        ds.ids,
        [_ROLES[r] for r in a.role.tolist()],
        [s if t else None for s, t in zip(a.shard.tolist(), is_train, strict=True)],
        [r if t else None for r, t in zip(a.slice.tolist(), is_train, strict=True)],
        [salt_raw[i : i + SALT_SIZE] for i in range(0, n * SALT_SIZE, SALT_SIZE)],
        a.commits,
        a.keys,
        strict=True,
    )


def commit_block(
    state: State, cfg: WorkspaceConfig, ds: Dataset, *, store: str, spec: Any, model_json: Callable[[], dict[str, Any]],
    data_digest: str, set_noise: Callable[[float], WorkspaceConfig],
) -> None:
    """Commit every record, the assignment, the slice trees, the audit set and the initial models,
    all in one transaction, and sign the head over them. ``set_noise`` stores DP-SGD's noise
    multiplier in the workspace's settings before the config entry logs it (training, replay and
    the verifier's recomputed epsilon all use it)."""
    a = _assign(cfg, ds)
    if cfg.dp_epsilon > 0 and cfg.dp_noise == 0:
        cfg = set_noise(dp_noise_for(cfg, a))
    init_digests, init_files = _initial_models(cfg, spec, store)
    try:  # the trees are built and the records stored while the initial models' files sync
        with state.log.transaction():
            state.insert_records(_record_rows(ds, a))
            block = _block(cfg, a, _config_body(cfg, ds, a, model_json=model_json(), data_digest=data_digest), init_digests)
            base = state.log.append_many(block.items).start
            state.insert_slices((s, r, 0, root, size, base + at) for (s, r), (at, root, size) in block.slice_at.items())
            state.insert_initial_models((s, init_digests[s], base + block.ckpt_at[s]) for s in range(cfg.shards))
            state.set_meta("committed", "1")
            init_files.wait()  # the initial models' files are durable before the log names them
    finally:
        init_files.wait_quietly()
    state.sign_head()


def release_freed_memory() -> None:
    """Hand memory that Python freed back to the OS (glibc's ``malloc_trim``), so that a phase
    after a large one (training after the commit) does not keep the large one's peak resident.
    A no-op where glibc is not the allocator."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
