"""The prover's workspace: committed SISA training, unlearning, signed deletion transcripts.

A workspace is a directory::

    vmu-workspace.json    configuration (format version, data digest, schedule, model, seed)
    signing-key.pem       Ed25519 private key, mode 0600
    signing-key.pub.pem   its public key
    data.npz              the data set (X, y, ids), copied in at init
    state.db              SQLite: the transparency log and the prover's own tables,
                          updated together in one transaction per stage
    checkpoints/          content-addressed safetensors files <digest>.safetensors
    transcripts/          DSSE envelopes of deletion transcripts, <n>.dsse.json
    .lock                 held (flock) by the one vmu process that may write

Every change to state.db is a transaction: a process killed at any moment leaves the previous
state, and running the same command again finishes the job (the steps it redoes are
deterministic, so the log gets the same entries it would have got).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import secrets
import shutil
import sqlite3
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from verifiable_mu._canonical import canonical_json
from verifiable_mu._dsse import PREDICATE_DELETION, sign_statement
from verifiable_mu._keys import SigningKey, VerifyingKey
from verifiable_mu._log import TransparencyLog
from verifiable_mu._note import NoteSigner
from verifiable_mu._records import SALT_SIZE, commit_records, new_salt_array, record_keys
from verifiable_mu._scaling import Scaling, fit_standardize
from verifiable_mu._seeds import DurableBatch, atomic_write
from verifiable_mu._sorted_tree import SliceDescriptor, SortedTree, dataset_root
from verifiable_mu._tags import TAG_MODEL, TAG_REQUEST, tagged_hash

from . import _sisa
from ._data import Dataset, load_npz, load_source
from ._errors import BadInput, UnsupportedWorkspace, WorkspaceError, WorkspaceLocked

__all__ = ["Workspace", "WorkspaceConfig", "TrainReport", "ForgetReport", "FORMAT_VERSION", "PREDICATE_DELETION"]

FORMAT_VERSION = 2  # 2: the config may name its arithmetic; version 1 workspaces are float32
_READS_VERSIONS = (1, 2)
#: Rows per forward pass when predicting: bounds the activations held at once, and is faster
#: than one large pass (the CNN on 16x16 images, 6,800 rows: 1.3-2.2 s in one pass, 0.8 s in
#: passes of 128-256 rows; the digits MLP: the same either way).
PREDICT_ROWS = 256
EVAL_BLOCK = 65_536  # test rows scored per predict_proba call in evaluate()
#: From this many records on, the commit's garbage is collected and handed back to the OS before
#: training (at 10^6 records it is hundreds of MiB; below, the collection costs more than it frees).
RELEASE_MEMORY_RECORDS = 100_000
#: Below this many estimated steps, ``workers=0`` (auto) trains inline instead of starting processes.
AUTO_PARALLEL_STEPS = 20_000
CONFIG_FILE = "vmu-workspace.json"
KEY_FILE = "signing-key.pem"
PUB_FILE = "signing-key.pub.pem"
DATA_FILE = "data.npz"
DB_FILE = "state.db"
CKPT_DIR = "checkpoints"
TRANSCRIPT_DIR = "transcripts"


_DP_FLOATS = ("dp_epsilon", "dp_delta", "dp_clip", "dp_noise")


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkspaceConfig:
    """Everything that fixes the training run; logged in the first log entry."""

    shards: int = 5
    slices: int = 4
    epochs: int = 20
    model: str = "mlp"
    hidden: int = 128
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 0
    threads: int = 1
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 32
    test_fraction: float = 0.2
    audit_fraction: float = 0.1
    workers: int = 0  # 0: min(cores, shards)
    data_source: str = "digits"
    #: "float32" (replay is bit-exact on the same platform only) or "portable" (float64 gradients
    #: rounded to a grid with logged hints: bit-exact on any platform; specs/06 section 3a)
    arithmetic: str = "float32"
    #: the log's format (specs/06 section 5): 2, step entries carry no batch list (the committed
    #: order fixes every batch); 1, the earlier format whose step entries list their batch (kept
    #: for logs written before, and for tests that forge batch lists)
    log_format: int = 2
    #: DP-SGD (specs/06 section 3b): a target epsilon at dp_delta (the noise multiplier is chosen
    #: at commit from the committed slice sizes), or the noise multiplier itself; 0: off
    dp_epsilon: float = 0.0
    dp_delta: float = 0.0
    dp_clip: float = 1.0
    dp_noise: float = 0.0
    #: standardize every feature with a mean and std fitted on the training split at commit time,
    #: logged in the config entry (specs/06 section 5c); False for workspaces made before it
    standardize: bool = False

    def __post_init__(self) -> None:
        checks = [
            (1 <= self.shards <= 1024, "--shards must be between 1 and 1024"),
            (1 <= self.slices <= 1024, "--slices must be between 1 and 1024"),
            (1 <= self.epochs <= 10_000, "--epochs must be between 1 and 10000"),
            (0 <= self.seed < 2**63, "--seed must be a non-negative 63-bit integer"),
            (self.checkpoint_every >= 0, "--checkpoint-every must be >= 0 (0: only at slice ends)"),
            (1 <= self.threads <= 256, "--threads must be >= 1"),
            (self.batch_size >= 1, "--batch-size must be >= 1"),
            (self.lr > 0, "--lr must be > 0"),
            (0 <= self.test_fraction < 0.9 and 0 <= self.audit_fraction < 0.9, "split fractions must be in [0, 0.9)"),
            (self.device in ("auto", "cpu", "cuda"), "--device must be auto, cpu or cuda"),
            (self.workers >= 0, "--workers must be >= 0"),
            (self.arithmetic in ("float32", "portable"), "--arithmetic must be float32 or portable"),
            (self.log_format in (1, 2), "the log format must be 1 or 2"),
            (self.log_format == 2 or self.arithmetic == "float32", "portable arithmetic needs log format 2"),
            (not self.dp or self.arithmetic == "float32", "DP-SGD (--dp-epsilon/--dp-noise) needs --arithmetic float32"),
            (not self.dp or 0 < self.dp_delta < 1, "--dp-delta must be in (0, 1) with --dp-epsilon or --dp-noise"),
            (not self.dp or 0 < self.dp_clip < 1e6, "--dp-clip must be > 0"),
            (self.dp_epsilon >= 0 and self.dp_noise >= 0, "--dp-epsilon and --dp-noise must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise BadInput(msg)

    def to_json(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for k in ("lr", "momentum", "weight_decay", "test_fraction", "audit_fraction", *_DP_FLOATS):
            d[k] = repr(float(d[k]))
        if not self.dp:  # a workspace without DP keeps the file it always had
            for k in _DP_FLOATS:
                del d[k]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> WorkspaceConfig:
        try:
            kw = dict(d)
            for k in ("lr", "momentum", "weight_decay", "test_fraction", "audit_fraction"):
                kw[k] = float(kw[k])
            for k in _DP_FLOATS:
                if k in kw:
                    kw[k] = float(kw[k])
            return cls(**kw)
        except (TypeError, ValueError, KeyError) as e:
            raise WorkspaceError(f"workspace configuration is damaged: {e}") from e

    def hyper_json(self) -> dict[str, Any]:
        return {
            "lr": repr(float(self.lr)),
            "momentum": repr(float(self.momentum)),
            "weight_decay": repr(float(self.weight_decay)),
            "batch_size": self.batch_size,
            **({"arithmetic": "portable-v1" if self.portable else "float32"} if self.log_format == 2 else {}),
            **({"dp": {"clip": repr(float(self.dp_clip)), "noise_multiplier": repr(float(self.dp_noise)),
                       "delta": repr(float(self.dp_delta))}} if self.dp_noise > 0 else {}),
        }

    @property
    def dp(self) -> bool:
        return self.dp_epsilon > 0 or self.dp_noise > 0

    @property
    def portable(self) -> bool:
        return self.arithmetic == "portable"


@dataclass(frozen=True, slots=True)
class TrainReport:
    shards: int
    steps: int
    seconds: float
    tree_head: str
    log_size: int


@dataclass(frozen=True, slots=True)
class ForgetReport:
    request: int
    deleted: tuple[str, ...]
    shards_retrained: tuple[int, ...]
    slices_retrained: int
    steps: int
    seconds: float  # compute time of the request, summed over interrupted and resumed runs
    full_training_seconds: float  # the same for the original training
    speedup: float
    transcript_path: str
    tree_head: str
    steps_total: int = 0  # steps retrained for the request, over all its runs
    full_training_steps: int = 0  # steps of the original training
    step_ratio: float = 0.0  # full_training_steps / steps_total (what the speed-up would be if steps cost alike)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS p_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS p_records(
    row INTEGER PRIMARY KEY, id TEXT NOT NULL, role TEXT NOT NULL,
    shard INTEGER, slice INTEGER, salt BLOB NOT NULL, commitment BLOB NOT NULL, key BLOB NOT NULL,
    deleted_by INTEGER);
CREATE TABLE IF NOT EXISTS p_stage(
    shard INTEGER NOT NULL, stage INTEGER NOT NULL, generation INTEGER NOT NULL, step INTEGER NOT NULL,
    digest BLOB NOT NULL, ckpt_index INTEGER NOT NULL, first_step_index INTEGER, last_step_index INTEGER,
    PRIMARY KEY(shard, stage));
CREATE TABLE IF NOT EXISTS p_slices(
    shard INTEGER NOT NULL, slice INTEGER NOT NULL, generation INTEGER NOT NULL, root BLOB NOT NULL,
    size INTEGER NOT NULL, log_index INTEGER NOT NULL, PRIMARY KEY(shard, slice, generation));
CREATE TABLE IF NOT EXISTS p_shards(
    shard INTEGER PRIMARY KEY, generation INTEGER NOT NULL, target_from INTEGER);
CREATE TABLE IF NOT EXISTS p_batches(idx INTEGER PRIMARY KEY, rows BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS p_requests(
    n INTEGER PRIMARY KEY, ids TEXT NOT NULL, status TEXT NOT NULL, deletion_index INTEGER NOT NULL,
    size_before INTEGER NOT NULL, head_before BLOB NOT NULL, started REAL NOT NULL, seconds REAL,
    transcript TEXT, plan TEXT NOT NULL);
"""


#: The record sets ``split_ids`` lists.
SPLITS = ("train", "test", "audit", "deleted")
#: Longest log origin accepted (it is the signed notes' key name and every checkpoint's first line).
ORIGIN_MAX = 200


def _origin(name: str) -> str:
    """The origin of a workspace created before origins were stored (its directory name)."""
    return f"verifiable-mu.local/{name}"


def default_origin(path: str) -> str:
    """A new workspace's log origin: ``verifiable-mu.local/<directory name, made safe>-<8 random hex>``.

    The directory name keeps it readable; characters a note key name cannot carry (spaces, ``+``,
    anything outside ``[A-Za-z0-9._-]``) become ``-``; the random suffix makes two workspaces of
    the same name different logs (a verifier pins one origin and one key)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", os.path.basename(path)).strip("-.")[:48] or "workspace"
    return f"verifiable-mu.local/{slug}-{secrets.token_hex(4)}"


def check_origin(origin: object) -> str:
    """Return ``origin`` if it can name a log: 1 to 200 printable ASCII characters, no space and
    no ``+`` (C2SP signed-note key names and tlog checkpoint origins); raise :class:`BadInput`."""
    if not isinstance(origin, str) or not origin:
        raise BadInput("--origin must not be empty")
    if len(origin) > ORIGIN_MAX:
        raise BadInput(f"--origin is {len(origin)} characters long; at most {ORIGIN_MAX}")
    bad = sorted({c for c in origin if not 0x21 <= ord(c) <= 0x7E or c == "+"})
    if bad:
        raise BadInput(
            f"--origin {origin!r} contains {', '.join(repr(c) for c in bad)}: a log origin is printable ASCII without "
            "spaces or '+' (it names the log in every signed checkpoint), e.g. example.com/models/churn"
        )
    return origin


class Workspace:
    """A model owner's workspace. Create with :meth:`create`, reopen with :meth:`open`."""

    def __init__(
        self,
        *,
        path: str,
        name: str,
        data_digest: str,
        config: WorkspaceConfig,
        key: SigningKey,
        log: TransparencyLog,
        lock_fd: int,
    ):
        self.path = path
        self._name = name
        self._data_digest = data_digest
        self._account: str | None = None  # the run whose compute time stage commits charge (see _charge)
        self._account_clock = 0.0
        self.config = config
        self._key = key
        self._log = log
        self._lock_fd = lock_fd
        self._data: Dataset | None = None
        self._platform_cache: dict[str, Any] | None = None
        self._commit_of_row: np.ndarray | None = None  # (rows, 32) uint8: row -> commitment
        self._note_signer = NoteSigner.from_private_key(name=log.origin, key=key.private_key)
        self.progress: bool = sys.stderr.isatty()
        self._model_code_at_init: dict[str, Any] | None = None

    # --- lifecycle ---------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        data: Dataset | str = "digits",
        config: WorkspaceConfig | None = None,
        origin: str | None = None,
        n_classes: int | None = None,
    ) -> Workspace:
        """Create a new workspace at ``path`` (must not exist, or be an empty directory).

        ``origin`` names the log in its signed checkpoints (default: :func:`default_origin`);
        ``n_classes`` allows labels that leave classes out (default: labels must be 0..K-1, all
        present)."""
        path = os.path.abspath(os.fspath(path))
        origin = check_origin(origin) if origin is not None else default_origin(path)
        config = config or WorkspaceConfig()
        if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
            raise BadInput(f"{path} already exists and is not an empty directory")
        if isinstance(data, str):
            ds = load_source(data, n_classes)
        elif n_classes is not None:
            ds = Dataset(ids=data.ids, X=data.X, y=data.y, classes=n_classes)
        else:
            ds = data
        if isinstance(data, str):
            config = WorkspaceConfig.from_json({**config.to_json(), "data_source": data})
        if config.model not in ("mlp", "logreg", "cnn") and ":" not in config.model:
            raise BadInput(f"unknown model {config.model!r} (use mlp, logreg, cnn or MODULE:FACTORY)")
        model_code = _model_code(config, ds)  # a factory is imported and built now: fail fast
        parent = os.path.dirname(path) or "."
        os.makedirs(parent, exist_ok=True)
        # Build in a temporary directory beside the target, then rename: init is all or nothing.
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
            log.connection.executescript(_SCHEMA)
            log.close()
            if os.path.isdir(path):
                os.rmdir(path)
            os.rename(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        ws = cls.open(path)
        ws._data = ds  # just validated and written; spare the caller reading it back
        return ws

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Workspace:
        """Open an existing workspace and take its lock."""
        path = os.path.abspath(os.fspath(path))
        cfg_path = os.path.join(path, CONFIG_FILE)
        if not os.path.isfile(cfg_path):
            raise BadInput(f"{path} is not a verifiable-mu workspace (no {CONFIG_FILE}); create one with 'vmu init'")
        try:
            with open(cfg_path) as f:
                cfg = json.load(f)
        except (OSError, ValueError) as e:
            raise WorkspaceError(f"cannot read {cfg_path}: {e}") from e
        version = cfg.get("format_version") if isinstance(cfg, dict) else None
        if version not in _READS_VERSIONS or type(version) is not int:
            raise UnsupportedWorkspace(
                f"workspace format version {version!r} is not supported by this vmu (it reads versions "
                f"{', '.join(map(str, _READS_VERSIONS))})"
            )
        config = WorkspaceConfig.from_json(cfg["config"])
        lock_fd = _take_lock(path)
        try:
            try:
                key = SigningKey.load(os.path.join(path, KEY_FILE))
            except FileNotFoundError as e:
                raise BadInput(f"the workspace's signing key {KEY_FILE} is missing") from e
            pub = _load_pub(os.path.join(path, PUB_FILE))
            if pub is not None and pub != key.public_key:
                raise BadInput(f"{KEY_FILE} does not match {PUB_FILE}: the signing key was replaced")
            log = TransparencyLog.open(os.path.join(path, DB_FILE), origin=cfg.get("origin") or _origin(cfg["name"]))
            log.connection.executescript(_SCHEMA)
        except BaseException:
            os.close(lock_fd)
            raise
        ws = cls(
            path=path, name=cfg["name"], data_digest=cfg["data_digest"], config=config, key=key, log=log, lock_fd=lock_fd
        )
        ws._model_code_at_init = cfg.get("model_code")
        return ws

    def close(self) -> None:
        if self._lock_fd >= 0:
            self._log.close()
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- accessors -----------------------------------------------------------------------

    @property
    def log(self) -> TransparencyLog:
        return self._log

    @property
    def log_origin(self) -> str:
        return self._log.origin

    @property
    def public_key(self) -> VerifyingKey:
        return self._key.public_key

    @property
    def note_vkey(self) -> str:
        return self._note_signer.vkey

    @property
    def store(self) -> str:
        return os.path.join(self.path, CKPT_DIR)

    @property
    def data_path(self) -> str:
        return os.path.join(self.path, DATA_FILE)

    @property
    def data(self) -> Dataset:
        if self._data is None:
            ds = load_npz(self.data_path)
            if ds.digest() != self._data_digest:
                raise BadInput(f"{DATA_FILE} does not match the digest recorded at init: the data file was changed")
            self._data = ds
        return self._data

    def _db(self) -> sqlite3.Connection:
        return self._log.connection

    def _meta(self, key: str) -> str | None:
        row = self._db().execute("SELECT value FROM p_meta WHERE key=?", (key,)).fetchone()
        return None if row is None else row[0]

    def _set_meta(self, key: str, value: str) -> None:
        self._db().execute("INSERT OR REPLACE INTO p_meta(key, value) VALUES(?, ?)", (key, value))

    # --- compute time and steps, summed over interrupted and resumed runs ---------------------
    # A run (train, or one request's forget) keeps an account in the workspace's meta table,
    # charged inside the transactions that commit its work: each stage commit charges the stage's
    # own compute time (measured where it ran) and the commit's; the driver's own phases (the
    # commit block, the request's rollback, the closing model entry and transcript) charge their
    # wall time. A stage computed but not committed when a run is interrupted is never charged
    # (it is redone, and charged, on resume), and neither is the time between the runs.

    def _start_account(self, account: str) -> None:
        self._account, self._account_clock = account, time.perf_counter()

    def _charge(self, steps: int, seconds: float) -> None:
        """Inside a transaction: add ``seconds`` and ``steps`` to the open account (if any)."""
        account = self._account
        if account is None:
            return
        secs = float(self._meta(f"{account}_seconds") or 0.0) + seconds
        self._set_meta(f"{account}_seconds", repr(secs))
        self._set_meta(f"{account}_steps", str(int(self._meta(f"{account}_steps") or 0) + steps))

    def _charge_phase(self) -> None:
        """Inside a transaction: charge the driver's wall time since the last charge point."""
        now = time.perf_counter()
        self._charge(0, now - self._account_clock)
        self._account_clock = now

    def _end_account(self) -> tuple[float, int]:
        """Charge the run's closing phase and close the account; return its totals."""
        account = self._account
        with self._log.transaction():
            self._charge_phase()
        self._account = None
        return float(self._meta(f"{account}_seconds") or 0.0), int(self._meta(f"{account}_steps") or 0)

    @property
    def committed(self) -> bool:
        return self._meta("committed") == "1"

    @property
    def trained(self) -> bool:
        return self._meta("trained") == "1"

    def _device(self) -> str:
        from verifiable_mu.training import resolve_device

        return resolve_device(self.config.device).type

    # --- commit phase ----------------------------------------------------------------------

    def _split(self, n: int) -> np.ndarray:
        """role per row: 0 train, 1 audit, 2 test (from the committed seed)."""
        rng = np.random.default_rng([self.config.seed, 0x5EED])
        perm = rng.permutation(n)
        n_test = int(round(n * self.config.test_fraction))
        n_audit = int(round(n * self.config.audit_fraction))
        role = np.zeros(n, dtype=np.int64)
        role[perm[:n_test]] = 2
        role[perm[n_test : n_test + n_audit]] = 1
        return role

    def _choose_dp_noise(self, cfg: WorkspaceConfig, rec_shard: np.ndarray, rec_slice: np.ndarray) -> WorkspaceConfig:
        """The noise multiplier for the target epsilon, from the committed slice sizes
        (verifiable_mu._dp); written to the workspace's settings before the config entry is logged,
        so training, replay and the verifier's recomputed epsilon all use it."""
        from verifiable_mu import _dp
        from verifiable_mu._errors import MalformedInput
        from verifiable_mu._extras import require

        require(("opacus",), "DP-SGD's privacy accounting")
        scheds = {s: _dp.schedule([int(np.count_nonzero((rec_shard == s) & (rec_slice == r))) for r in range(cfg.slices)],
                                  _sisa.stage_epochs(cfg.epochs, cfg.slices), cfg.batch_size) for s in range(cfg.shards)}
        try:
            noise = _dp.noise_for_epsilon(cfg.dp_epsilon, cfg.dp_delta, scheds)
        except MalformedInput as e:
            raise BadInput(str(e)) from e
        cfg = dataclasses.replace(cfg, dp_noise=noise)
        path = os.path.join(self.path, CONFIG_FILE)
        with open(path) as f:
            doc = json.load(f)
        doc["config"] = cfg.to_json()
        atomic_write(path, json.dumps(doc, indent=2, sort_keys=True).encode())
        self.config = cfg
        return cfg

    def commit(self) -> None:
        """Commit the records, assignment, slice trees, audit set and initial models (once;
        :meth:`train` does it first). Separate so a committed workspace can be copied."""
        if not self.committed:
            with self._log.relaxed_sync():  # the head _commit signs at its end makes it all durable
                self._commit()
            # Training needs none of it: the workers read their own rows from the data file.
            large = self._data is not None and len(self._data.ids) >= RELEASE_MEMORY_RECORDS
            self._data = None
            if large:  # a full collection costs ~80 ms with torch loaded: only where it frees much
                _release_freed_memory()  # the commit's million small objects are garbage now

    def _commit(self) -> None:
        """Commit every record, the assignment, the slice trees, the audit set and the initial
        models, all in one transaction, before any step runs."""
        from verifiable_mu.training import (
            build_model,
            checkpoint_from_model,
            platform_info,
            resolve_device,
            save_checkpoint,
            zero_momentum,
        )

        cfg = self.config
        ds = self.data
        n = len(ds.ids)
        role = self._split(n)
        train_rows = np.flatnonzero(role == 0)
        if len(train_rows) < cfg.shards * cfg.slices:
            raise BadInput(
                f"{len(train_rows)} training records cannot fill {cfg.shards} shards x {cfg.slices} slices"
            )
        salts = new_salt_array(n)
        commits = commit_records(ds.ids, ds.X, ds.y, salts)
        keys = record_keys(ds.ids)
        shard, slc = _sisa.assign([keys[i] for i in train_rows], seed=cfg.seed, shards=cfg.shards, slices=cfg.slices)
        rec_shard = np.full(n, -1, dtype=np.int64)
        rec_slice = np.full(n, -1, dtype=np.int64)
        rec_shard[train_rows] = shard
        rec_slice[train_rows] = slc
        if cfg.dp_epsilon > 0 and cfg.dp_noise == 0:
            cfg = self._choose_dp_noise(cfg, rec_shard, rec_slice)
        spec = self._model_spec()
        device = resolve_device(cfg.device)
        init_digests = []
        files = DurableBatch(self.store)  # made durable together, before the log names them
        try:
            for s in range(cfg.shards):
                model = build_model(spec, init_seed=_init_seed(cfg.seed, s))
                init_digests.append(save_checkpoint(checkpoint_from_model(model, zero_momentum(model)), self.store, batch=files))
        except BaseException:
            files.discard()
            raise
        # Synced on a thread while the trees are built and the records stored; waited for before
        # the transaction that names them commits.
        init_files = files.commit_in_background()
        try:
            descriptors = []
            slice_roots: dict[tuple[int, int], tuple[bytes, int]] = {}
            for s in range(cfg.shards):
                for r in range(cfg.slices):
                    rows = np.flatnonzero((rec_shard == s) & (rec_slice == r))
                    tree = SortedTree.build((keys[i], commits[i]) for i in rows)
                    slice_roots[(s, r)] = (tree.root, len(tree))
                    descriptors.append(SliceDescriptor(shard=s, slice=r, size=len(tree), root=tree.root))
            audit_rows = np.flatnonzero(role == 1)
            audit_tree = SortedTree.build((keys[i], commits[i]) for i in audit_rows)
            # The test split is committed too (specs/06 sections 1 and 5), so that a deletion request for a
            # test record can be proven to name a committed record that no slice holds.
            test_tree = SortedTree.build((keys[i], commits[i]) for i in np.flatnonzero(role == 2))
            ds_root = dataset_root(descriptors)
            roles = {0: "train", 1: "audit", 2: "test"}
            db = self._db()
            with self._log.transaction():
                # Each column as a Python list first (one C-level conversion each), zipped into rows.
                is_train = (role == 0).tolist()
                salt_raw = salts.tobytes()
                db.executemany(
                    "INSERT INTO p_records(row, id, role, shard, slice, salt, commitment, key) VALUES(?,?,?,?,?,?,?,?)",
                    zip(
                        range(n),
                        ds.ids,
                        [roles[r] for r in role.tolist()],
                        [s if t else None for s, t in zip(rec_shard.tolist(), is_train, strict=True)],
                        [r if t else None for r, t in zip(rec_slice.tolist(), is_train, strict=True)],
                        [salt_raw[i : i + SALT_SIZE] for i in range(0, n * SALT_SIZE, SALT_SIZE)],
                        commits,
                        keys,
                        strict=True,
                    ),
                )
                # One sort after the bulk insert is cheaper than keeping the index up to date row by row.
                db.execute("CREATE UNIQUE INDEX IF NOT EXISTS p_records_id ON p_records(id)")
                items: list[tuple[str, dict[str, Any]]] = [
                    (
                        "config",
                        {
                            "format": cfg.log_format,
                            "shards": cfg.shards,
                            "slices": cfg.slices,
                            "epochs": cfg.epochs,
                            "stage_epochs": _sisa.stage_epochs(cfg.epochs, cfg.slices),
                            "checkpoint_every": cfg.checkpoint_every,
                            "seed": str(cfg.seed),
                            "assignment": "sha256-rank-v1",
                            "model": self._model_json(spec),
                            "hyper": cfg.hyper_json(),
                            "platform": platform_info(device, cfg.threads),
                            "n_train": len(train_rows),
                            "data_digest": self._data_digest,
                            **({"scaling": fit_standardize(ds.X, train_rows).to_json()} if cfg.standardize else {}),
                        },
                    )
                ]
                slice_at: dict[tuple[int, int], int] = {}
                for s in range(cfg.shards):
                    for r in range(cfg.slices):
                        root, size = slice_roots[(s, r)]
                        slice_at[(s, r)] = len(items)
                        items.append(
                            ("slice", {"shard": s, "slice": r, "generation": 0, "root": root.hex(), "size": str(size)})
                        )
                items.append(("dataset", {"version": 0, "root": ds_root.hex(), "slices": len(descriptors)}))
                items.append(
                    (
                        "audit",
                        {
                            "root": audit_tree.root.hex(),
                            "size": str(len(audit_tree)),
                            "test_root": test_tree.root.hex(),
                            "test_size": str(len(test_tree)),
                        },
                    )
                )
                ckpt_at = []
                for s in range(cfg.shards):
                    ckpt_at.append(len(items))
                    items.append(
                        (
                            "checkpoint",
                            {"shard": s, "generation": 0, "stage": 0, "step": "0", "digest": init_digests[s].hex()},
                        )
                    )
                base = self._log.append_many(items).start
                db.executemany(
                    "INSERT INTO p_slices(shard, slice, generation, root, size, log_index) VALUES(?,?,?,?,?,?)",
                    (
                        (s, r, 0, slice_roots[(s, r)][0], slice_roots[(s, r)][1], base + slice_at[(s, r)])
                        for s in range(cfg.shards)
                        for r in range(cfg.slices)
                    ),
                )
                db.executemany(
                    "INSERT INTO p_stage(shard, stage, generation, step, digest, ckpt_index) VALUES(?,?,?,?,?,?)",
                    ((s, 0, 0, 0, init_digests[s], base + ckpt_at[s]) for s in range(cfg.shards)),
                )
                db.executemany(
                    "INSERT INTO p_shards(shard, generation, target_from) VALUES(?,?,?)",
                    ((s, 0, 1) for s in range(cfg.shards)),
                )
                self._set_meta("committed", "1")
                init_files.wait()  # the initial models' files are durable before the log names them
        finally:
            init_files.wait_quietly()
        self._sign_head()

    # --- training ----------------------------------------------------------------------------

    def _live_rows_by_slice(self, shard: int) -> dict[int, tuple[list[int], list[bytes]]]:
        """``slice -> (rows, commitments)`` of a shard's live training records, in key order
        (one query for the whole shard)."""
        out: dict[int, tuple[list[int], list[bytes]]] = {}
        for r, row, c in self._db().execute(
            "SELECT slice, row, commitment FROM p_records WHERE role='train' AND shard=? AND deleted_by IS NULL "
            "ORDER BY slice, key",
            (shard,),
        ):
            got = out.get(r)
            if got is None:
                got = out[r] = ([], [])
            got[0].append(row)
            got[1].append(c)
        return out

    def _shard_task(self, shard: int, *, record: bool = True, from_scratch: bool = False) -> _sisa.ShardTask | None:
        """The work left for ``shard`` (None when complete); ``from_scratch``: all stages from the
        initial weights (benchmarks compare that with and without verifiability)."""
        db = self._db()
        gen, target_from = db.execute("SELECT generation, target_from FROM p_shards WHERE shard=?", (shard,)).fetchone()
        if from_scratch:
            target_from = 1
            gen = 0
        elif target_from is None:
            return None
        done = None if from_scratch else db.execute(
            "SELECT stage, step, digest FROM p_stage WHERE shard=? AND stage>=? - 1 AND generation=? "
            "ORDER BY stage DESC LIMIT 1",
            (shard, target_from, gen),
        ).fetchone()
        if from_scratch:
            digest = bytes.fromhex(
                next(e for e in self._log.entries(0, self._log.size) if e.kind == "checkpoint" and e.body["shard"] == shard)
                .body["digest"]
            )
            done = (0, 0, digest)
        elif done is None:  # resume point is the rollback checkpoint of an older generation
            done = db.execute(
                "SELECT stage, step, digest FROM p_stage WHERE shard=? AND stage=?", (shard, target_from - 1)
            ).fetchone()
        last_stage, step, digest = done
        cfg = self.config
        ep = _sisa.stage_epochs(cfg.epochs, cfg.slices)
        stages = []
        by_slice = self._live_rows_by_slice(shard)
        rows_l: list[int] = []
        commits: list[bytes] = []
        for r in range(cfg.slices):
            got = by_slice.get(r, ([], []))
            rows_l += got[0]
            commits += got[1]
            if r + 1 > last_stage:  # stage r + 1 trains on slices 0..r
                stages.append(
                    _sisa.StageTask(
                        stage=r + 1, rows=np.asarray(rows_l, dtype=np.int64), commitments=list(commits), epochs=ep
                    )
                )
        spec = self._model_spec()
        model = spec.to_json()
        code = self._log.entry(0).body["model"].get("code") if self._log.size else None
        if code is not None:  # each worker (a pool process, a Ray node) checks its own copy of the code
            model["code"] = code
        return _sisa.ShardTask(
            shard=shard,
            generation=gen,
            start_step=step,
            start_checkpoint=digest,
            stages=stages,
            model=model,
            hyper=cfg.hyper_json(),
            run_seed=cfg.seed,
            device=self._device(),
            threads=cfg.threads,
            checkpoint_every=cfg.checkpoint_every,
            log_format=cfg.log_format,
            store=self.store,
            data_path=self.data_path,
            record=record,
            scaling=self._scaling_json(),
            # A float32 log replays bit for bit only on its own platform; a portable one anywhere.
            platform=self._logged_platform() if record and not cfg.portable else None,
        )

    def _scaling_json(self) -> dict[str, Any] | None:
        """The logged feature scaling (specs/06 section 5c), or None: the signed config entry's."""
        return self._log.entry(0).body.get("scaling") if self._log.size else None

    def _scaling(self) -> Scaling | None:
        d = self._scaling_json()
        return None if d is None else Scaling.from_json(d, self._model_spec().n_features)

    def batch_of(self, entry: Any) -> list[bytes]:
        """The record commitments of a step entry's batch, in batch order: listed in a format-1
        entry, else from the prover's own table of batch rows."""
        if "batch" in entry.body:
            return [bytes.fromhex(c) for c in _sisa.batch_commitments(entry.body["batch"])]
        got = self._db().execute("SELECT rows FROM p_batches WHERE idx=?", (entry.index,)).fetchone()
        if got is None:
            raise WorkspaceError(f"the prover has no batch for step entry {entry.index}: the workspace is damaged")
        if self._commit_of_row is None:
            # One array, not a dict of a million bytes objects (32 MB at 10^6 records, not ~150).
            db = self._db()
            n = db.execute("SELECT COALESCE(MAX(row), -1) + 1 FROM p_records").fetchone()[0]
            arr = np.zeros((n, 32), dtype=np.uint8)
            cur = db.execute("SELECT row, commitment FROM p_records")
            while chunk := cur.fetchmany(65_536):
                arr[[r for r, _ in chunk]] = np.frombuffer(b"".join(c for _, c in chunk), dtype=np.uint8).reshape(-1, 32)
            self._commit_of_row = arr
        table = self._commit_of_row
        return [table[int(r)].tobytes() for r in np.frombuffer(got[0], dtype="<i4")]

    def _logged_platform(self) -> dict[str, Any]:
        """The ``platform`` of the workspace's logged config (entry 0)."""
        if self._platform_cache is None:
            entry = self._log.entry(0)
            if entry.kind != "config":
                raise WorkspaceError("the log does not start with the config entry")
            self._platform_cache = dict(entry.body["platform"])
        return self._platform_cache

    def _commit_stage(self, task: _sisa.ShardTask, res: _sisa.StageResult) -> int:
        """Append one stage's steps and checkpoints and move the shard's state, atomically."""
        t_commit = time.perf_counter()
        db = self._db()
        log = self._log
        ck = dict(res.checkpoints)
        with log.transaction():
            first = last = None
            items: list[tuple[str, dict[str, Any] | bytes]] = []
            for s in res.steps:
                items.append(("step", s.body))
                done = s.step + 1
                if done in ck:
                    items.append(
                        (
                            "checkpoint",
                            {
                                "shard": task.shard,
                                "generation": task.generation,
                                "stage": res.stage,
                                "step": str(done),
                                "digest": ck[done].hex(),
                            },
                        )
                    )
            if not res.steps:  # an emptied stage: no steps, the stage-end checkpoint all the same
                end_step, end_digest = res.checkpoints[-1]
                items.append(
                    (
                        "checkpoint",
                        {
                            "shard": task.shard,
                            "generation": task.generation,
                            "stage": res.stage,
                            "step": str(end_step),
                            "digest": end_digest.hex(),
                        },
                    )
                )
            rng = log.append_many(items)
            kinds = [k for k, _ in items]
            step_idx = [rng.start + i for i, k in enumerate(kinds) if k == "step"]
            # The prover's own record of each step's batch (data rows): the log's format-2 step
            # entries do not list it, and bundles and rollbacks need it.
            db.executemany("INSERT OR REPLACE INTO p_batches(idx, rows) VALUES(?,?)",
                           zip(step_idx, (s.rows for s in res.steps), strict=True))  # fmt: skip
            first, last = (step_idx[0], step_idx[-1]) if step_idx else (None, None)
            end_step, end_digest = res.checkpoints[-1]
            ckpt_index = rng.start + len(items) - 1
            db.execute(
                "INSERT OR REPLACE INTO p_stage(shard, stage, generation, step, digest, ckpt_index, first_step_index, "
                "last_step_index) VALUES(?,?,?,?,?,?,?,?)",
                (task.shard, res.stage, task.generation, end_step, end_digest, ckpt_index, first, last),
            )
            if res.stage == self.config.slices:
                db.execute("UPDATE p_shards SET target_from=NULL WHERE shard=?", (task.shard,))
            self._charge(len(res.steps), res.seconds + (time.perf_counter() - t_commit))
            self._account_clock = time.perf_counter()  # the driver's next phase starts after this commit
            _fault_point("inside")
        _fault_point("after")
        return len(res.steps)

    def _run_shards(
        self,
        tasks: list[_sisa.ShardTask],
        *,
        backend: str = "local",
        workers: int | None = None,
        ray_address: str | None = None,
    ) -> int:
        """Run shard tasks (in parallel when allowed) and commit their stages in shard order."""
        from ._backend import run_tasks

        total_stages = sum(len(t.stages) for t in tasks)
        if workers is None:
            workers = self.config.workers
        if workers == 0:
            # auto: a process pool costs seconds to start (each worker imports torch), so small
            # jobs run inline; large ones use min(cores, shards) processes.
            steps_est = sum(
                st.epochs * -(-len(st.rows) // self.config.batch_size) for t in tasks for st in t.stages
            )
            workers = 1 if steps_est < AUTO_PARALLEL_STEPS else 0
        bar = _progress(total_stages, "training stages", self.progress)
        steps = 0
        # Stage commits need atomicity, not an fsync each: in WAL mode synchronous=NORMAL keeps
        # every commit atomic and the database consistent after a crash, and the FULL-synchronous
        # commit that signs the next tree head makes all of them durable before anything is signed.
        try:
            with self._log.relaxed_sync():
                for task, results in run_tasks(tasks, backend=backend, workers=workers, ray_address=ray_address):
                    for res in results:
                        steps += self._commit_stage(task, res)
                        bar(1)
        finally:
            bar(None)
        return steps

    def train(self, *, backend: str = "local", workers: int | None = None, ray_address: str | None = None) -> TrainReport:
        """Commit (once) and train every shard that still has stages to run; resumable."""
        self._warm_up()  # import torch and pay its first-step costs before the clock starts

        self._account = None  # a new run: whatever an interrupted one left open is not charged
        self._resume_pending_request(backend=backend, workers=workers, ray_address=ray_address)
        self._start_account("train")
        # Every transaction of the run commits with synchronous=NORMAL (atomic, consistent after a
        # crash); the full-synchronous commit of each signed head makes all before it durable.
        with self._log.relaxed_sync():
            self.commit()
            with self._log.transaction():
                self._charge_phase()  # the commit block: records hashed, slice trees built
            tasks = [t for t in (self._shard_task(s) for s in range(self.config.shards)) if t is not None]
            steps = self._run_shards(tasks, backend=backend, workers=workers, ray_address=ray_address)
            signed = True
            if not self.trained:
                with self._log.transaction():
                    self._log_model("train", None)
                    self._charge_phase()
                    self._set_meta("trained", "1")
                self._sign_head()
            elif tasks:
                self._sign_head()
            else:
                signed = False
        if not signed:  # nothing new to sign: the charge itself commits with a full sync
            with self._log.transaction():
                self._charge(0, 0.0)
        self._account = None
        head = self._log.latest_tree_head()
        return TrainReport(
            shards=self.config.shards,
            steps=steps,
            seconds=float(self._meta("train_seconds") or 0.0),
            tree_head=head.note.decode() if head else "",
            log_size=self._log.size,
        )

    def _model_json(self, spec: Any) -> dict[str, Any]:
        """The config entry's ``model`` (specs/06 section 5): the spec, and for a factory the
        digests of its code (section 5b), which must be those recorded at init."""
        out: dict[str, Any] = spec.to_json()
        code = self.check_model_code()
        if code is not None:
            out["code"] = code
        return out

    def check_model_code(self) -> dict[str, Any] | None:
        """For a factory model: the committed ``model.code`` (the logged one once committed, else
        the one recorded at init), after checking that the factory importable now has the same
        source files and builds the same structure; :class:`BadInput` otherwise (training with
        other code would log steps that no verifier can replay). ``None`` for a built-in model."""
        from verifiable_mu._modelcode import compare_files

        if self.config.model in ("mlp", "logreg", "cnn"):
            return None
        want: dict[str, Any] | None = None
        if self.committed and self._log.size:
            want = self._log.entry(0).body["model"].get("code")
        want = want or self._model_code_at_init
        now = _model_code(self.config, self.data if not (self.committed and self._log.size) else None,
                          self._model_spec())
        assert now is not None
        if want is None:  # a workspace made before model code was committed: bind what runs now
            return now
        why = compare_files(want["files"], _source_of(self.config.model))
        if why is None and now["structure"] != want["structure"]:
            why = "the built model's structure (parameter names, shapes, dtypes) differs"
        if why is not None:
            raise BadInput(f"the model code differs from the code committed at init: {why}; restore that code (a "
                           "workspace's model cannot change)")
        return want

    def _model_spec(self) -> Any:
        """The workspace's :class:`verifiable_mu.training.ModelSpec`."""
        from verifiable_mu.training import ModelSpec

        if self.committed and self._log.size:  # the logged spec: no need to load the data set for it
            return ModelSpec.from_json(self._log.entry(0).body["model"])
        cfg, ds = self.config, self.data
        return ModelSpec(
            name=cfg.model, n_features=ds.n_features, n_classes=ds.n_classes, input_shape=ds.input_shape, hidden=cfg.hidden
        )

    def _warm_up(self) -> None:
        """Imports and first-step costs, paid before a run starts its clock (imports that
        would otherwise happen lazily inside it: numpy.random ~70 ms, the backends, transcripts)."""
        import numpy.random  # noqa: F401

        from verifiable_mu.training import Hyper, configure_determinism, warm_up

        self.check_model_code()  # a factory must still be the code committed at init

        from . import _backend, _transcript  # noqa: F401

        cfg = self.config
        configure_determinism(cfg.threads)
        spec = self._model_spec()
        warm_up(spec, Hyper.from_json(cfg.hyper_json()), tuple(spec.input_shape), self._device())

    def _shard_digests(self) -> list[bytes]:
        rows = self._db().execute(
            "SELECT digest FROM p_stage WHERE stage=? ORDER BY shard", (self.config.slices,)
        ).fetchall()
        if len(rows) != self.config.shards:
            raise WorkspaceError("not every shard is trained: run 'vmu train' first")
        return [r[0] for r in rows]

    def model_digest(self) -> bytes:
        return tagged_hash(TAG_MODEL, b"".join(self._shard_digests()))

    def _log_model(self, reason: str, request: int | None) -> int:
        digests = self._shard_digests()
        body: dict[str, Any] = {
            "reason": reason,
            "shards": [d.hex() for d in digests],
            "digest": tagged_hash(TAG_MODEL, b"".join(digests)).hex(),
        }
        if request is not None:
            body["request"] = str(request)
        idx = self._log.append("model", body)
        self._set_meta("model_index", str(idx))
        return idx

    # --- prediction --------------------------------------------------------------------------

    def constituents(self) -> list[Any]:
        """The S constituent models (torch modules, eval mode, CPU)."""
        import torch

        from verifiable_mu.training import build_model, load_checkpoint, load_into_model

        spec = self._model_spec()
        models = []
        for d in self._shard_digests():
            m = build_model(spec, init_seed=0)
            load_into_model(m, load_checkpoint(os.path.join(self.store, d.hex() + ".safetensors"), expected_digest=d), torch.device("cpu"))
            m.eval()
            models.append(m)
        return models

    def predict_proba(self, X: np.ndarray, *, aggregation: str = "mean") -> np.ndarray:
        """Aggregated class probabilities: mean of softmax (default) or majority vote."""
        import torch

        models = self.constituents()
        scaling = self._scaling()  # the models were trained on scaled features: scale the input the same way
        xt = torch.from_numpy(np.ascontiguousarray(X if scaling is None else scaling.apply(X), dtype=np.float32))
        # In blocks of rows: one forward pass over a whole test split holds every activation of
        # every row at once (the CNN on 16x16 images: 1.6 GB for 20,000 rows, linear in rows).
        with torch.no_grad():
            probs = np.stack(
                [
                    np.concatenate(
                        [
                            torch.softmax(m(xt[a : a + PREDICT_ROWS]), dim=1).numpy()
                            for a in range(0, max(len(xt), 1), PREDICT_ROWS)
                        ]
                    )
                    for m in models
                ]
            )
        if aggregation == "mean":
            return probs.mean(axis=0)  # type: ignore[no-any-return]
        if aggregation == "vote":
            votes = probs.argmax(axis=2)
            k = probs.shape[2]
            counts = np.stack([(votes == c).sum(axis=0) for c in range(k)], axis=1).astype(np.float64)
            return counts / len(models)  # type: ignore[no-any-return]
        raise BadInput(f"unknown aggregation {aggregation!r} (use mean or vote)")

    def split_ids(self, split: str) -> list[str]:
        """The ids of one split, in data order: ``train``, ``test`` and ``audit`` without deleted
        records, ``deleted`` every deleted record (``vmu status --ids SPLIT``)."""
        if split not in SPLITS:
            raise BadInput(f"unknown split {split!r} (use {', '.join(SPLITS)})")
        if not self.committed:
            raise BadInput("the splits are fixed when the workspace is committed: run 'vmu train' first")
        if split == "deleted":
            rows = self._db().execute("SELECT id FROM p_records WHERE deleted_by IS NOT NULL ORDER BY row")
        else:
            rows = self._db().execute("SELECT id FROM p_records WHERE role=? AND deleted_by IS NULL ORDER BY row", (split,))
        return [i for (i,) in rows]

    def split_rows(self, role: str) -> np.ndarray:
        return np.asarray(
            [
                r
                for (r,) in self._db().execute(
                    "SELECT row FROM p_records WHERE role=? AND deleted_by IS NULL ORDER BY row", (role,)
                )
            ],
            dtype=np.int64,
        )

    def evaluate(self, *, aggregation: str = "mean") -> float | None:
        """Accuracy of the aggregated model on the held-out test split."""
        if not self.trained:
            return None
        rows = self.split_rows("test")
        if len(rows) == 0:
            return None
        if self._data is not None:
            X, y = self._data.X[rows], self._data.y[rows]
        else:  # only the test rows, streamed from the data file (not the whole data set)
            X, y = _sisa._load_rows(self.data_path, rows)
        right = 0
        for a in range(0, len(rows), EVAL_BLOCK):  # bounded memory: the scaled copy is one block
            p = self.predict_proba(X[a : a + EVAL_BLOCK], aggregation=aggregation)
            right += int((p.argmax(axis=1) == y[a : a + EVAL_BLOCK]).sum())
        return right / len(rows)

    # --- unlearning ----------------------------------------------------------------------------

    def _validate_ids(self, ids: Sequence[str]) -> list[tuple[int, str, int | None, int | None, bytes, bytes]]:
        """Each id's ``(row, id, shard, slice, commitment, key)``; shard and slice are None for a
        held-out record (test or audit split: never trained on, deleted without retraining)."""
        if not ids:
            raise BadInput("no record ids were given")
        seen: set[str] = set()
        for i in ids:
            if i in seen:
                raise BadInput(f"record id {i!r} is given twice")
            seen.add(i)
        out = []
        db = self._db()
        for i in ids:
            row = db.execute(
                "SELECT row, role, shard, slice, commitment, key, deleted_by FROM p_records WHERE id=?", (i,)
            ).fetchone()
            if row is None:
                raise BadInput(f"unknown record id {i!r}")
            rownum, role, shard, slc, commitment, key, deleted_by = row
            if deleted_by is not None:
                raise BadInput(f"record {i!r} was already deleted (request {deleted_by})")
            if role not in ("train", "test", "audit"):
                raise WorkspaceError(f"record {i!r} has the unknown role {role!r}: the workspace is damaged")
            if role == "test" and not self._commits_test_split():
                raise BadInput(f"record {i!r} is in the test split, which this workspace's log does not commit "
                               "(it was committed by an older release): its deletion could not be proven")
            out.append((rownum, i, shard, slc, commitment, key))
        return out

    def _commits_test_split(self) -> bool:
        """Whether the commit block's audit entry commits the test split (``test_root``)."""
        cfg = self.config
        return "test_root" in self._log.entry(2 + cfg.shards * cfg.slices).body

    def forget(
        self, ids: Sequence[str], *, backend: str = "local", workers: int | None = None, ray_address: str | None = None
    ) -> ForgetReport:
        """Unlearn the records ``ids`` in one request and write its signed transcript."""
        if isinstance(ids, (str, bytes, bytearray)) or not hasattr(ids, "__iter__") or isinstance(ids, dict):
            one = ids.decode() if isinstance(ids, (bytes, bytearray)) else ids
            raise BadInput(
                f"ids must be a list of record ids, not a {type(ids).__name__}"
                + (f" (for one record: [{one!r}])" if isinstance(one, str) else "")
            )
        self._account = None  # a new run: whatever an interrupted one left open is not charged
        ids = [str(i) for i in ids]
        pending = self._pending_request()
        if pending is not None and sorted(pending[1]) == sorted(ids):  # the same request, interrupted: finish it
            self._warm_up()
            return self._finish_request(pending[0], backend=backend, workers=workers, ray_address=ray_address)
        if not self.trained:
            raise WorkspaceError("the workspace is not trained yet: run 'vmu train' first")
        # Validated before torch is imported (a typo costs no start-up). A pending request's
        # records are already marked deleted, so the answer is the one after it completes.
        recs = self._validate_ids(ids)
        self._warm_up()  # import torch and pay its first-step costs before the clock starts
        if pending is not None:
            self._resume_pending_request(backend=backend, workers=workers, ray_address=ray_address)
        t0 = time.time()
        clock = time.perf_counter()
        head_before = self._ensure_signed_head()
        size_before = self._log.size
        plan: dict[int, int] = {}
        trained: list[tuple[int, str, int, int, bytes, bytes]] = []
        for row, rid, shard, slc, c, k in recs:
            if shard is not None and slc is not None:  # held-out records retrain nothing
                plan[shard] = min(plan.get(shard, slc + 1), slc + 1)  # stages are 1-based
                trained.append((row, rid, shard, slc, c, k))
        db = self._db()
        evidence = self._evidence_before(trained, plan)
        with self._log.transaction():
            n = (db.execute("SELECT COALESCE(MAX(n), 0) FROM p_requests").fetchone()[0]) + 1
            request_digest = tagged_hash(TAG_REQUEST, canonical_json({"n": str(n), "ids": sorted(ids)}))
            del_idx = self._log.append(
                "deletion",
                {
                    "request": str(n),
                    "request_digest": request_digest.hex(),
                    "commitments": sorted(c.hex() for *_, c, _ in recs),
                    "shards": sorted(plan),
                },
            )
            db.executemany("UPDATE p_records SET deleted_by=? WHERE row=?", ((n, r[0]) for r in recs))
            db.execute(
                "INSERT INTO p_requests(n, ids, status, deletion_index, size_before, head_before, started, plan) "
                "VALUES(?,?,?,?,?,?,?,?)",
                (n, json.dumps(ids), "pending", del_idx, size_before, head_before, t0, json.dumps(evidence)),
            )
            self._account, self._account_clock = f"request_{n}", clock  # the request's clock started above
            self._charge_phase()
            # Roll back: new generation, new slice trees for the affected slices.
            for shard, from_stage in sorted(plan.items()):
                gen = db.execute("SELECT generation FROM p_shards WHERE shard=?", (shard,)).fetchone()[0] + 1
                db.execute("UPDATE p_shards SET generation=?, target_from=? WHERE shard=?", (gen, from_stage, shard))
                for r in range(from_stage - 1, self.config.slices):
                    rows = db.execute(
                        "SELECT key, commitment FROM p_records WHERE role='train' AND shard=? AND slice=? "
                        "AND deleted_by IS NULL",
                        (shard, r),
                    ).fetchall()
                    tree = SortedTree.build((k, c) for k, c in rows)
                    idx = self._log.append(
                        "slice",
                        {"shard": shard, "slice": r, "generation": gen, "root": tree.root.hex(), "size": str(len(tree))},
                    )
                    db.execute(
                        "INSERT INTO p_slices(shard, slice, generation, root, size, log_index) VALUES(?,?,?,?,?,?)",
                        (shard, r, gen, tree.root, len(tree), idx),
                    )
            self._log.append("dataset", {"version": n, "root": self._dataset_root().hex(), "slices": self.config.shards * self.config.slices})
        return self._finish_request(n, backend=backend, workers=workers, ray_address=ray_address)

    def _evidence_before(self, recs: Sequence[tuple[int, str, int, int, bytes, bytes]], plan: dict[int, int]) -> dict[str, Any]:
        """What the transcript must point to in the log as it was before this request: each
        record's slice entry and first use, each shard's rollback checkpoint, the model."""
        db = self._db()
        first_use: dict[str, int] = {}
        old_slice: dict[str, int] = {}
        for _, rid, shard, slc, commitment, _ in recs:
            first, last = db.execute(
                "SELECT first_step_index, last_step_index FROM p_stage WHERE shard=? AND stage=?", (shard, slc + 1)
            ).fetchone()
            hexc = commitment.hex()
            found = None
            for e in self._log.entries(first, last + 1):
                if e.kind == "step" and commitment in self.batch_of(e):
                    found = e.index
                    break
            if found is None:
                raise WorkspaceError(f"record {rid!r} is not used by any logged step of its slice: the log is damaged")
            first_use[hexc] = found
            old_slice[hexc] = db.execute(
                "SELECT log_index FROM p_slices WHERE shard=? AND slice=? ORDER BY generation DESC LIMIT 1", (shard, slc)
            ).fetchone()[0]
        rollback = {
            str(s): db.execute("SELECT ckpt_index FROM p_stage WHERE shard=? AND stage=?", (s, r - 1)).fetchone()[0]
            for s, r in plan.items()
        }
        return {
            "plan": {str(k): v for k, v in plan.items()},
            "first_use": first_use,
            "old_slice": old_slice,
            "rollback": rollback,
            "model_before": int(self._meta("model_index") or -1),
        }

    def _dataset_root(self) -> bytes:
        rows = self._db().execute(
            "SELECT shard, slice, size, root FROM p_slices p WHERE generation = "
            "(SELECT MAX(generation) FROM p_slices q WHERE q.shard=p.shard AND q.slice=p.slice) ORDER BY shard, slice"
        ).fetchall()
        return dataset_root([SliceDescriptor(shard=s, slice=r, size=z, root=root) for s, r, z, root in rows])

    def _pending_request(self) -> tuple[int, list[str]] | None:
        row = self._db().execute("SELECT n, ids FROM p_requests WHERE status='pending' ORDER BY n LIMIT 1").fetchone()
        return None if row is None else (row[0], json.loads(row[1]))

    def _resume_pending_request(self, *, backend: str, workers: int | None, ray_address: str | None = None) -> None:
        p = self._pending_request()
        if p is not None:
            self._finish_request(p[0], backend=backend, workers=workers, ray_address=ray_address)

    def _finish_request(
        self, n: int, *, backend: str, workers: int | None, ray_address: str | None = None
    ) -> ForgetReport:
        from ._transcript import build_transcript

        db = self._db()
        if self._account != f"request_{n}":  # a resumed request: its own clock starts now
            self._start_account(f"request_{n}")
        evidence = json.loads(db.execute("SELECT plan FROM p_requests WHERE n=?", (n,)).fetchone()[0])
        plan = {int(k): v for k, v in evidence["plan"].items()}
        tasks = [t for t in (self._shard_task(s) for s in sorted(plan)) if t is not None]
        steps = self._run_shards(tasks, backend=backend, workers=workers, ray_address=ray_address)
        with self._log.transaction():
            if self._meta("model_request") != str(n):
                self._log_model("forget", n)
                self._set_meta("model_request", str(n))
        self._sign_head()
        statement = build_transcript(self, n)
        env = sign_statement(statement, [self._key])
        tpath = os.path.join(self.path, TRANSCRIPT_DIR, f"{n:06d}.dsse.json")
        atomic_write(tpath, env.to_bytes())
        seconds, steps_total = self._end_account()  # compute time of every run of this request
        with self._log.transaction():
            db.execute(
                "UPDATE p_requests SET status='done', seconds=?, transcript=? WHERE n=?",
                (seconds, os.path.relpath(tpath, self.path), n),
            )
        ids = tuple(json.loads(db.execute("SELECT ids FROM p_requests WHERE n=?", (n,)).fetchone()[0]))
        full = float(self._meta("train_seconds") or 0.0)
        full_steps = int(self._meta("train_steps") or 0)
        head = self._log.latest_tree_head()
        return ForgetReport(
            request=n,
            deleted=ids,
            shards_retrained=tuple(sorted(plan)),
            slices_retrained=sum(self.config.slices - (r - 1) for r in plan.values()),
            steps=steps,
            seconds=seconds,
            full_training_seconds=full,
            speedup=full / seconds if seconds > 0 else float("inf"),
            steps_total=steps_total,
            full_training_steps=full_steps,
            step_ratio=full_steps / steps_total if steps_total else float("inf"),
            transcript_path=tpath,
            tree_head=head.note.decode() if head else "",
        )

    def _sign_head(self) -> bytes:
        """Sign a tree head over the whole log; timestamps never go backwards, even if the
        clock does."""
        last = self._log.latest_tree_head()
        ts = max(int(time.time()), (last.timestamp or 0) if last else 0)
        return self._log.sign_tree_head(self._note_signer, timestamp=ts)

    def _ensure_signed_head(self) -> bytes:
        head = self._log.latest_tree_head()
        if head is None or head.size != self._log.size:
            return self._sign_head()
        return head.note

    # --- status -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        db = self._db()
        cfg = self.config
        shards = []
        for s, gen, target in db.execute("SELECT shard, generation, target_from FROM p_shards ORDER BY shard"):
            stages = db.execute("SELECT MAX(stage) FROM p_stage WHERE shard=? AND generation=?", (s, gen)).fetchone()[0]
            size = db.execute(
                "SELECT COUNT(*) FROM p_records WHERE role='train' AND shard=? AND deleted_by IS NULL", (s,)
            ).fetchone()[0]
            shards.append({"shard": s, "generation": gen, "records": size, "complete": target is None, "last_stage": stages})
        reqs = db.execute("SELECT n, ids, status, seconds, transcript FROM p_requests ORDER BY n").fetchall()
        head = self._log.latest_tree_head()
        return {
            "path": self.path,
            "origin": self.log_origin,
            "vkey": self.note_vkey,
            "key_id": self.public_key.key_id,  # the keyid of every DSSE signature (transcripts)
            "public_key": self.public_key.raw.hex(),  # raw Ed25519 public key, 32 bytes in hex
            "shards": cfg.shards,
            "slices": cfg.slices,
            "epochs": cfg.epochs,
            "model": cfg.model,
            "committed": self.committed,
            "trained": self.trained,
            "log_size": self._log.size,
            "signed_size": head.size if head else 0,
            "deleted_records": db.execute("SELECT COUNT(*) FROM p_records WHERE deleted_by IS NOT NULL").fetchone()[0],
            "requests": [
                {"n": n, "ids": json.loads(i), "status": st, "seconds": sec, "transcript": tr} for n, i, st, sec, tr in reqs
            ],
            "shard_state": shards,
            "train_seconds": float(self._meta("train_seconds") or 0.0),
            "public_key_id": self.public_key.key_id,
        }

    def transcript_paths(self) -> list[str]:
        d = os.path.join(self.path, TRANSCRIPT_DIR)
        return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".dsse.json"))


_FAULT_COUNT = [0]


def _fault_point(where: str) -> None:
    """Crash-test hook: ``VMU_UNSAFE_FAULT_INJECTION=N:inside|after`` kills the process with
    ``os._exit(137)`` at the N-th stage commit (inside the open transaction, or just after it).
    For tests only; it warns on stderr whenever it is armed."""
    spec = os.environ.get("VMU_UNSAFE_FAULT_INJECTION")
    if not spec:
        return
    n, _, point = spec.partition(":")
    if point != where:
        return
    _FAULT_COUNT[0] += 1
    if _FAULT_COUNT[0] == int(n):
        print(f"vmu: UNSAFE fault injection: killing the process at stage commit {n} ({where})", file=sys.stderr)
        sys.stderr.flush()
        os._exit(137)


def _init_seed(seed: int, shard: int) -> int:
    return int.from_bytes(tagged_hash(TAG_MODEL, b"init", struct.pack(">QI", seed, shard))[:8], "big") >> 1


def _source_of(model: str) -> dict[str, bytes]:
    from verifiable_mu._modelcode import ModelCodeError, locate_source

    try:
        return locate_source(model.partition(":")[0])
    except ModelCodeError as e:
        raise BadInput(f"--model {model}: {e}") from e


def _release_freed_memory() -> None:
    """Hand memory that Python freed back to the OS (glibc's ``malloc_trim``), so that a phase
    after a large one (training after the commit) does not keep the large one's peak resident.
    A no-op where glibc is not the allocator."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _model_code(config: WorkspaceConfig, ds: Dataset | None, spec: Any = None) -> dict[str, Any] | None:
    """Import and build a factory model; its ``model.code`` (specs/06 section 5b), or ``None``
    for a built-in model. One-line :class:`BadInput` on any failure. ``spec``: the model spec when
    known (the logged one), else built from ``ds``."""
    if config.model in ("mlp", "logreg", "cnn"):
        return None
    from verifiable_mu._errors import MalformedInput
    from verifiable_mu.training import ModelSpec, commit_model_code

    if spec is None:
        assert ds is not None
        spec = ModelSpec(name=config.model, n_features=ds.n_features, n_classes=ds.n_classes,
                         input_shape=ds.input_shape, hidden=config.hidden)
    try:
        return commit_model_code(spec)
    except MalformedInput as e:
        msg = str(e)
        raise BadInput(msg if msg.startswith("--model") else f"--model {config.model}: {msg}") from e


def _take_lock(path: str) -> int:
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


def _progress(total: int, desc: str, enabled: bool) -> Callable[[int | None], None]:
    if not enabled or total == 0:
        return lambda _n: None
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="stage", leave=False)

    def update(n: int | None) -> None:
        if n is None:
            bar.close()
        else:
            bar.update(n)

    return update

