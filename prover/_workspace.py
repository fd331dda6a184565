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

:class:`Workspace` is the front: it holds the directory, the lock and the keys, and runs the
phases, each in a module of its own: the prover's tables (``_state_schema``) and all their SQL
(``_state``), commit (``_commit``), training (``_train``), unlearning (``_unlearn``), prediction
(``_predict``), status (``_status``); also the files (``_layout``), settings (``_config``), model code (``_model``).
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from verifiable_mu._dsse import PREDICATE_DELETION
from verifiable_mu._keys import SigningKey, VerifyingKey
from verifiable_mu._log import LogEntry, TransparencyLog
from verifiable_mu._note import NoteSigner
from verifiable_mu._scaling import Scaling
from verifiable_mu._tags import TAG_MODEL, tagged_hash

from . import _commit, _layout, _model, _predict, _sisa, _train, _unlearn
from ._config import (
    CKPT_DIR,
    DATA_FILE,
    DB_FILE,
    FORMAT_VERSION,
    SPLITS,
    TRANSCRIPT_DIR,
    ForgetReport,
    TrainReport,
    WorkspaceConfig,
    check_origin,
    default_origin,
    legacy_origin,
)
from ._data import Dataset, load_npz, load_source
from ._errors import BadInput, WorkspaceError
from ._state import DeletionPlan, Record, State, create_tables
from ._status import status as _status
from ._transcript import build_transcript

__all__ = [
    "Workspace", "WorkspaceConfig", "TrainReport", "ForgetReport", "FORMAT_VERSION", "PREDICATE_DELETION", "SPLITS",
    "check_origin", "default_origin",
]

#: From this many records on, the commit's garbage is collected and handed back to the OS before
#: training (at 10^6 records it is hundreds of MiB; below, the collection costs more than it frees).
RELEASE_MEMORY_RECORDS = 100_000


class Workspace:
    """A model owner's workspace. Create with :meth:`create`, reopen with :meth:`open`."""

    def __init__(
        self, *, path: str, name: str, data_digest: str, config: WorkspaceConfig, key: SigningKey, log: TransparencyLog,
        lock_fd: int,
    ):
        self.path = path
        self._name = name
        self._data_digest = data_digest
        self.config = config
        self._key = key
        self._log = log
        self._lock_fd = lock_fd
        self._data: Dataset | None = None
        self._platform_cache: dict[str, Any] | None = None
        self._note_signer = NoteSigner.from_private_key(name=log.origin, key=key.private_key)
        self._state = State(log, self._note_signer)
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
        if config.model not in _model.BUILT_IN and ":" not in config.model:
            raise BadInput(f"unknown model {config.model!r} (use mlp, logreg, cnn or MODULE:FACTORY)")
        model_code = _model.model_code(config, ds)  # a factory is imported and built now: fail fast
        _layout.build(path, ds, config, origin=origin, model_code=model_code)
        ws = cls.open(path)
        ws._data = ds  # just validated and written; spare the caller reading it back
        return ws

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Workspace:
        """Open an existing workspace and take its lock."""
        path = os.path.abspath(os.fspath(path))
        cfg = _layout.read_settings(path)
        config = WorkspaceConfig.from_json(cfg["config"])
        lock_fd = _layout.take_lock(path)
        try:
            key = _layout.load_key(path)
            log = TransparencyLog.open(os.path.join(path, DB_FILE), origin=cfg.get("origin") or legacy_origin(cfg["name"]))
            create_tables(log)
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

    @property
    def committed(self) -> bool:
        return self._state.meta("committed") == "1"

    @property
    def trained(self) -> bool:
        return self._state.meta("trained") == "1"

    def _db(self) -> sqlite3.Connection:
        return self._state.db

    def _meta(self, key: str) -> str | None:
        return self._state.meta(key)

    def _device(self) -> str:
        from verifiable_mu.training import resolve_device

        return resolve_device(self.config.device).type

    def _split(self, n: int) -> np.ndarray:
        """role per row: 0 train, 1 audit, 2 test (from the committed seed)."""
        return _commit.split_roles(self.config, n)

    def _live_rows_by_slice(self, shard: int) -> dict[int, tuple[list[int], list[bytes]]]:
        return self._state.live_rows_by_slice(shard)

    def _shard_digests(self) -> list[bytes]:
        return _train.shard_digests(self._state, self.config)

    def model_digest(self) -> bytes:
        return tagged_hash(TAG_MODEL, b"".join(self._shard_digests()))

    def batch_of(self, entry: LogEntry) -> list[bytes]:
        """The record commitments of a step entry's batch, in batch order: listed in a format-1
        entry, else from the prover's own table of batch rows."""
        if "batch" in entry.body:
            return [bytes.fromhex(c) for c in _sisa.batch_commitments(entry.body["batch"])]
        return self._state.step_batch(entry.index)

    # --- the model ---------------------------------------------------------------------------

    def _model_spec(self) -> Any:
        """The workspace's :class:`verifiable_mu.training.ModelSpec`."""
        from verifiable_mu.training import ModelSpec

        if self.committed and self._log.size:  # the logged spec: no need to load the data set for it
            return ModelSpec.from_json(self._log.entry(0).body["model"])
        return _model.model_spec(self.config, self.data)

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
        if self.config.model in _model.BUILT_IN:
            return None
        logged = self.committed and self._log.size
        want = self._log.entry(0).body["model"].get("code") if logged else None
        now = _model.model_code(self.config, None if logged else self.data, self._model_spec())
        assert now is not None
        return _model.check_code(self.config, want or self._model_code_at_init, now)

    def _scaling_json(self) -> dict[str, Any] | None:
        """The logged feature scaling (specs/06 section 5c), or None: the signed config entry's."""
        return self._log.entry(0).body.get("scaling") if self._log.size else None

    def _scaling(self) -> Scaling | None:
        d = self._scaling_json()
        return None if d is None else Scaling.from_json(d, self._model_spec().n_features)

    def _logged_platform(self) -> dict[str, Any]:
        """The ``platform`` of the workspace's logged config (entry 0)."""
        if self._platform_cache is None:
            entry = self._log.entry(0)
            if entry.kind != "config":
                raise WorkspaceError("the log does not start with the config entry")
            self._platform_cache = dict(entry.body["platform"])
        return self._platform_cache

    # --- commit ------------------------------------------------------------------------------

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
                _commit.release_freed_memory()  # the commit's million small objects are garbage now

    def _commit(self) -> None:
        """The commit block, in one transaction, before any step runs (prover/_commit.py)."""
        spec = self._model_spec()
        _commit.commit_block(
            self._state, self.config, self.data, store=self.store, spec=spec, model_json=lambda: self._model_json(spec),
            data_digest=self._data_digest, set_noise=self._set_dp_noise,
        )

    def _set_dp_noise(self, noise: float) -> WorkspaceConfig:
        """Write DP-SGD's noise multiplier, chosen at commit, to the workspace's settings."""
        cfg = dataclasses.replace(self.config, dp_noise=noise)
        _layout.rewrite_config(self.path, cfg)
        self.config = cfg
        return cfg

    # --- training ----------------------------------------------------------------------------

    def _shard_task(self, shard: int, *, record: bool = True, from_scratch: bool = False) -> _sisa.ShardTask | None:
        """The work left for ``shard`` (None when complete); ``from_scratch``: all stages from the
        initial weights (benchmarks compare that with and without verifiability)."""
        model = self._model_spec().to_json()
        code = self._log.entry(0).body["model"].get("code") if self._log.size else None
        if code is not None:  # each worker (a pool process, a Ray node) checks its own copy of the code
            model["code"] = code
        settings = _train.TaskSettings(
            model=model, device=self._device(), store=self.store, data_path=self.data_path, record=record,
            scaling=self._scaling_json(),
            # A float32 log replays bit for bit only on its own platform; a portable one anywhere.
            platform=self._logged_platform() if record and not self.config.portable else None,
        )
        return _train.shard_task(self._state, self.config, shard, settings, from_scratch=from_scratch)

    def _commit_stage(self, task: _sisa.ShardTask, res: _sisa.StageResult) -> int:
        """Append one stage's steps and checkpoints and move the shard's state, atomically."""
        return _train.commit_stage(self._state, self.config, task, res)

    def _run_shards(
        self, tasks: list[_sisa.ShardTask], *, backend: str = "local", workers: int | None = None,
        ray_address: str | None = None,
    ) -> int:
        """Run shard tasks (in parallel when allowed) and commit their stages in shard order."""
        return _train.run_shards(self._state, self.config, tasks, commit=self._commit_stage, backend=backend,
                                 workers=workers, ray_address=ray_address, progress=self.progress)  # fmt: skip

    def _warm_up(self) -> None:
        """Imports and first-step costs, paid before a run starts its clock (imports that
        would otherwise happen lazily inside it: numpy.random ~70 ms, the backends)."""
        import numpy.random  # noqa: F401

        from verifiable_mu.training import Hyper, configure_determinism, warm_up

        self.check_model_code()  # a factory must still be the code committed at init

        from . import _backend  # noqa: F401

        configure_determinism(self.config.threads)
        spec = self._model_spec()
        warm_up(spec, Hyper.from_json(self.config.hyper_json()), tuple(spec.input_shape), self._device())

    def train(self, *, backend: str = "local", workers: int | None = None, ray_address: str | None = None) -> TrainReport:
        """Commit (once) and train every shard that still has stages to run; resumable."""
        self._warm_up()  # import torch and pay its first-step costs before the clock starts
        st = self._state
        st.account = None  # a new run: whatever an interrupted one left open is not charged
        self._resume_pending_request(backend=backend, workers=workers, ray_address=ray_address)
        st.start_account("train")
        # Every transaction of the run commits with synchronous=NORMAL (atomic, consistent after a
        # crash); the full-synchronous commit of each signed head makes all before it durable.
        with self._log.relaxed_sync():
            self.commit()
            with self._log.transaction():
                st.charge_phase()  # the commit block: records hashed, slice trees built
            tasks = [t for t in (self._shard_task(s) for s in range(self.config.shards)) if t is not None]
            steps = self._run_shards(tasks, backend=backend, workers=workers, ray_address=ray_address)
            signed = True
            if not self.trained:
                with self._log.transaction():
                    _train.log_model(st, self.config, "train", None)
                    st.charge_phase()
                    st.set_meta("trained", "1")
                st.sign_head()
            elif tasks:
                st.sign_head()
            else:
                signed = False
        if not signed:  # nothing new to sign: the charge itself commits with a full sync
            with self._log.transaction():
                st.charge(0, 0.0)
        st.account = None
        head = self._log.latest_tree_head()
        return TrainReport(shards=self.config.shards, steps=steps, seconds=st.account_totals("train")[0],
                           tree_head=head.note.decode() if head else "", log_size=self._log.size)  # fmt: skip

    # --- prediction --------------------------------------------------------------------------

    def constituents(self) -> list[Any]:
        """The S constituent models (torch modules, eval mode, CPU)."""
        return _predict.constituents(self._model_spec(), self.store, self._shard_digests())

    def predict_proba(self, X: np.ndarray, *, aggregation: str = "mean") -> np.ndarray:
        """Aggregated class probabilities: mean of softmax (default) or majority vote."""
        return _predict.predict_proba(self.constituents(), self._scaling(), X, aggregation=aggregation)

    def split_ids(self, split: str) -> list[str]:
        """The ids of one split, in data order: ``train``, ``test`` and ``audit`` without deleted
        records, ``deleted`` every deleted record (``vmu status --ids SPLIT``)."""
        if split not in SPLITS:
            raise BadInput(f"unknown split {split!r} (use {', '.join(SPLITS)})")
        if not self.committed:
            raise BadInput("the splits are fixed when the workspace is committed: run 'vmu train' first")
        return self._state.split_column("id", split)

    def split_rows(self, role: str) -> np.ndarray:
        return np.asarray(self._state.split_column("row", role), dtype=np.int64)

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
        return _predict.accuracy(self.constituents(), self._scaling(), X, y, aggregation=aggregation)

    # --- unlearning ----------------------------------------------------------------------------

    def _validate_ids(self, ids: Sequence[str]) -> list[Record]:
        """Each id's ``(row, id, shard, slice, commitment, key)``; shard and slice are None for a
        held-out record (test or audit split: never trained on, deleted without retraining)."""
        return _unlearn.validate_ids(self._state, ids, commits_test_split=self._commits_test_split)

    def _commits_test_split(self) -> bool:
        """Whether the commit block's audit entry commits the test split (``test_root``)."""
        cfg = self.config
        return "test_root" in self._log.entry(2 + cfg.shards * cfg.slices).body

    def forget(
        self, ids: Sequence[str], *, backend: str = "local", workers: int | None = None, ray_address: str | None = None
    ) -> ForgetReport:
        """Unlearn the records ``ids`` in one request and write its signed transcript."""
        ids = _unlearn.check_ids(ids)
        run = _train.RunOptions(backend=backend, workers=workers, ray_address=ray_address)
        self._state.account = None  # a new run: whatever an interrupted one left open is not charged
        pending = self._state.pending_request()
        if pending is not None and sorted(pending[1]) == sorted(ids):  # the same request, interrupted: finish it
            self._warm_up()
            return self._finish_request(pending[0], self._state.request_plan(pending[0]), **run)
        if not self.trained:
            raise WorkspaceError("the workspace is not trained yet: run 'vmu train' first")
        # Validated before torch is imported (a typo costs no start-up). A pending request's
        # records are already marked deleted, so the answer is the one after it completes.
        recs = self._validate_ids(ids)
        self._warm_up()  # import torch and pay its first-step costs before the clock starts
        if pending is not None:
            self._resume_pending_request(**run)
        started, clock = time.time(), time.perf_counter()
        plan = _unlearn.plan_request(self._state, recs, batch_of=self.batch_of)
        n = _unlearn.open_request(self._state, self.config, ids, recs, plan, started=started, clock=clock)
        return self._finish_request(n, plan, **run)

    def _resume_pending_request(self, *, backend: str, workers: int | None, ray_address: str | None = None) -> None:
        p = self._state.pending_request()
        if p is not None:
            self._finish_request(p[0], self._state.request_plan(p[0]), backend=backend, workers=workers,
                                 ray_address=ray_address)  # fmt: skip

    def _finish_request(
        self, n: int, plan: DeletionPlan, *, backend: str, workers: int | None, ray_address: str | None = None
    ) -> ForgetReport:
        """Retrain what request ``n``'s plan rolled back, log the model, sign the head and the transcript."""
        st = self._state
        if st.account != f"request_{n}":  # a resumed request: its own clock starts now
            st.start_account(f"request_{n}")
        tasks = [t for t in (self._shard_task(s) for s in sorted(plan.from_stage)) if t is not None]
        steps = self._run_shards(tasks, backend=backend, workers=workers, ray_address=ray_address)
        with self._log.transaction():
            if st.meta("model_request") != str(n):
                _train.log_model(st, self.config, "forget", n)
                st.set_meta("model_request", str(n))
        st.sign_head()
        tpath = _unlearn.write_transcript(build_transcript(self, n), self._key, os.path.join(self.path, TRANSCRIPT_DIR), n)
        seconds, steps_total = st.end_account()  # compute time of every run of this request
        st.close_request(n, seconds=seconds, transcript=os.path.relpath(tpath, self.path))
        return _unlearn.report(st, self.config, n, plan, steps=steps, seconds=seconds, steps_total=steps_total,
                               transcript_path=tpath)

    # --- status -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return _status(self._state, self.config, path=self.path, vkey=self.note_vkey, public_key=self.public_key)

    def transcript_paths(self) -> list[str]:
        d = os.path.join(self.path, TRANSCRIPT_DIR)
        return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".dsse.json"))
