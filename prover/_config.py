"""A workspace's settings and reports: :class:`WorkspaceConfig` (what fixes the training run,
logged in the first log entry), the file layout, log origins, and what ``train`` and ``forget``
report."""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from typing import Any

from ._errors import BadInput, WorkspaceError

__all__ = [
    "WorkspaceConfig", "TrainReport", "ForgetReport", "FORMAT_VERSION", "SPLITS", "check_origin", "default_origin",
]

FORMAT_VERSION = 2  # 2: the config may name its arithmetic; version 1 workspaces are float32
READS_VERSIONS = (1, 2)
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


#: The record sets ``split_ids`` lists.
SPLITS = ("train", "test", "audit", "deleted")
#: Longest log origin accepted (it is the signed notes' key name and every checkpoint's first line).
ORIGIN_MAX = 200


def legacy_origin(name: str) -> str:
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
