"""Typed log entry bodies (version 1 and 2 logs): the one definition of their wire form.

The log stores bodies as free JSON objects; each class here reads one kind strictly
(``from_json``: every field's type checked, unknown or missing fields refused with
:class:`~verifiable_mu._errors.InvalidBundle`, unsupported versions with
:class:`~verifiable_mu._errors.UnsupportedVersion`) and writes it back (``to_json``):
``X.from_json(x.to_json(), index=x.index) == x``. Field meanings: specs/06-training.md (config,
slice, dataset, audit, checkpoint, step, model), specs/07-deletion-transcript.md (deletion).

``parse(entry)`` reads the body of a log entry of the class's kind; an entry of another kind
raises :class:`~verifiable_mu._errors.EntryKindMismatch` (a false claim about signed content,
exit 1 in the verifier).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ._errors import EntryKindMismatch, InvalidBundle, MalformedInput, UnsupportedVersion
from ._log import LogEntry
from ._modelcode import parse_code
from ._platform import FINGERPRINT_FIELDS, PLATFORM_FIELDS
from ._scaling import Scaling
from ._wire_common import U32, Fields

if TYPE_CHECKING:
    from typing import Self

__all__ = [
    "ASSIGNMENT",
    "MAX_HINTS",
    "AuditBody",
    "CheckpointBody",
    "ConfigBody",
    "DatasetBody",
    "DeletionBody",
    "EntryBody",
    "ModelBody",
    "SliceBody",
    "StepBody",
]

#: The only record-to-shard assignment a log may name (specs/06 section 2).
ASSIGNMENT = "sha256-rank-v1"
_FLOAT = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:e[-+]?[0-9]+)?")
_HEX = re.compile(r"[0-9a-f]*")
#: At most this many rounding hints in one step (an honest step has about one per 2^13 gradient
#: values; specs/06 section 3a).
MAX_HINTS = 1 << 16


class EntryBody:
    """What every body class shares: its entry kind and how an entry is read."""

    __slots__ = ()
    KIND: ClassVar[str] = ""

    @classmethod
    def from_json(cls, d: Any, *, index: int = 0, what: str | None = None) -> Self:
        raise NotImplementedError

    @classmethod
    def parse(cls, e: LogEntry) -> Self:
        """The body of log entry ``e``, which must be of this class's kind."""
        if e.kind != cls.KIND:
            raise EntryKindMismatch(f"log entry {e.index} is of kind {e.kind!r}, the claim says {cls.KIND!r}")
        return cls.from_json(e.body, index=e.index, what=f"log entry {e.index} ({cls.KIND})")

    @classmethod
    def _what(cls, index: int, what: str | None) -> str:
        return what if what is not None else f"log entry {index} ({cls.KIND})"


def _float_str(b: Fields, k: str) -> float:
    v = b.str(k, 64)
    if not _FLOAT.fullmatch(v):
        raise InvalidBundle(f"{b.what}: {k} must be a decimal number string")
    return float(v)


def _check_hyper(what: str, fmt: int, hyper: Fields) -> Any:
    """The ``hyper`` object (specs/06 section 3): returns its arithmetic (None in format 1)."""
    arithmetic = hyper.d.get("arithmetic")
    if (fmt, arithmetic) not in ((1, None), (2, "float32"), (2, "portable-v1")):
        raise UnsupportedVersion(
            f"{what}: log format {fmt} with arithmetic {str(arithmetic)[:40]!r} is not supported (format 1 has "
            "no arithmetic field and float32 steps; format 2 has arithmetic 'float32' or 'portable-v1')"
        )
    for k in ("lr", "momentum", "weight_decay"):
        _float_str(hyper, k)
    if "dp" in hyper.d:  # specs/06 section 3b: DP-SGD, float32 steps only
        if arithmetic != "float32":
            raise UnsupportedVersion(f"{what}: DP-SGD is defined for float32 steps only, not {str(arithmetic)[:40]!r}")
        dp = Fields(f"{what} hyper dp", hyper.obj("dp"), {"clip", "noise_multiplier", "delta"})
        for k in ("clip", "noise_multiplier", "delta"):
            _float_str(dp, k)
        clip, noise, delta = (float(dp.d[k]) for k in ("clip", "noise_multiplier", "delta"))
        if not (0 < clip < 1e6 and 0 < noise < 1e6 and 0 < delta < 1):
            raise InvalidBundle(f"{what} hyper dp: clip and noise multiplier must be > 0 and delta in (0, 1)")
    return arithmetic


def _check_model(what: str, model: Fields) -> None:
    """The ``model`` object (specs/06 sections 4 and 5b)."""
    model.str("name", 256)
    if "code" in model.d:  # specs/06 section 5b: only a factory model carries (and must carry) it
        if model.d["name"] in ("mlp", "logreg", "cnn"):
            raise InvalidBundle(f"{what} model: the built-in model {model.d['name']!r} carries no code digests")
        try:
            parse_code(model.d["code"], f"{what} model code")
        except MalformedInput as x:
            raise InvalidBundle(str(x)) from x
    model.int("n_features", 1, 2**24)
    model.int("n_classes", 1, 2**20)
    model.int("hidden", 0, 2**20)
    shape = model.d["input_shape"]
    if not isinstance(shape, list) or not 1 <= len(shape) <= 8 or not all(type(x) is int and 0 < x < 2**24 for x in shape):
        raise InvalidBundle(f"{what} model: input_shape must be a list of positive integers")


def _check_platform(what: str, platform: Fields) -> None:
    for k in FINGERPRINT_FIELDS:
        if k in platform.d:
            platform.str(k, 128)
    platform.str("torch", 64)
    platform.str("device", 16)
    platform.int("threads", 1, 256)
    if platform.d["dtype"] != "float32" or platform.d["deterministic"] is not True:
        raise UnsupportedVersion(f"{what}: only deterministic float32 training is supported")


_CONFIG_FIELDS = {"format", "shards", "slices", "epochs", "stage_epochs", "checkpoint_every", "seed", "assignment",
                  "model", "hyper", "platform", "n_train", "data_digest"}


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigBody(EntryBody):
    KIND: ClassVar[str] = "config"

    index: int
    shards: int
    slices: int
    epochs: int
    stage_epochs: int
    checkpoint_every: int
    seed: int
    batch_size: int
    lr: str
    model: dict[str, Any]
    hyper: dict[str, Any]
    platform: dict[str, Any]
    n_train: int
    portable: bool = False
    compact: bool = False  # format 2: step entries carry no batch list (specs/06 section 5)
    scaling: dict[str, Any] | None = None  # the logged feature scaling (specs/06 section 5c), checked
    data_digest: str = ""

    @classmethod
    def from_json(cls, d: Any, *, index: int = 0, what: str | None = None) -> Self:
        what = cls._what(index, what)
        b = Fields(what, d, _CONFIG_FIELDS, {"scaling"})
        fmt = b.d["format"]
        if fmt not in (1, 2) or type(fmt) is not int:
            raise UnsupportedVersion(f"{what}: log format {str(fmt)[:20]!r} is not supported (only 1 and 2)")
        if b.d["assignment"] != ASSIGNMENT:
            raise UnsupportedVersion(f"{what}: assignment {str(b.d['assignment'])[:40]!r} is not supported")
        hyper = Fields(f"{what} hyper", b.obj("hyper"), {"lr", "momentum", "weight_decay", "batch_size"},
                       {"arithmetic", "dp"})
        arithmetic = _check_hyper(what, fmt, hyper)
        model = Fields(f"{what} model", b.obj("model"), {"name", "n_features", "n_classes", "input_shape", "hidden"},
                       {"code"})
        _check_model(what, model)
        platform = Fields(f"{what} platform", b.obj("platform"), set(PLATFORM_FIELDS), set(FINGERPRINT_FIELDS))
        _check_platform(what, platform)
        data_digest = b.str("data_digest", 128)
        scaling = b.d.get("scaling")
        if scaling is not None:
            try:
                Scaling.from_json(scaling, model.d["n_features"])
            except MalformedInput as x:
                raise InvalidBundle(f"{what}: {x}") from x
        return cls(
            index=index,
            shards=b.int("shards", 1, 1 << 16),
            slices=b.int("slices", 1, 1 << 16),
            epochs=b.int("epochs", 1, 1 << 20),
            stage_epochs=b.int("stage_epochs", 1, 1 << 20),
            checkpoint_every=b.int("checkpoint_every", 0, 2**40),
            seed=b.dec("seed"),
            batch_size=hyper.int("batch_size", 1, 1 << 24),
            lr=hyper.d["lr"],
            model=model.d,
            hyper=hyper.d,
            platform=platform.d,
            n_train=b.int("n_train", 0, 2**40),
            portable=arithmetic == "portable-v1",
            compact=fmt == 2,
            scaling=scaling,
            data_digest=data_digest,
        )

    @property
    def format(self) -> int:
        return 2 if self.compact else 1

    def to_json(self) -> dict[str, Any]:
        out = {"format": self.format, "shards": self.shards, "slices": self.slices, "epochs": self.epochs,
               "stage_epochs": self.stage_epochs, "checkpoint_every": self.checkpoint_every, "seed": str(self.seed),
               "assignment": ASSIGNMENT, "model": self.model, "hyper": self.hyper, "platform": self.platform,
               "n_train": self.n_train, "data_digest": self.data_digest}
        if self.scaling is not None:
            out["scaling"] = self.scaling
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class SliceBody(EntryBody):
    KIND: ClassVar[str] = "slice"

    index: int
    shard: int
    slice: int
    generation: int
    root: bytes
    size: int

    @classmethod
    def from_json(cls, d: Any, *, index: int = 0, what: str | None = None) -> Self:
        b = Fields(cls._what(index, what), d, {"shard", "slice", "generation", "root", "size"})
        return cls(index=index, shard=b.int("shard"), slice=b.int("slice"), generation=b.int("generation"),
                   root=b.hex("root"), size=b.dec("size"))

    def to_json(self) -> dict[str, Any]:
        return {"shard": self.shard, "slice": self.slice, "generation": self.generation, "root": self.root.hex(),
                "size": str(self.size)}


@dataclass(frozen=True, slots=True, kw_only=True)
class DatasetBody(EntryBody):
    KIND: ClassVar[str] = "dataset"

    index: int
    version: int
    root: bytes
    slices: int

    @classmethod
    def from_json(cls, d: Any, *, index: int = 0, what: str | None = None) -> Self:
        b = Fields(cls._what(index, what), d, {"version", "root", "slices"})
        return cls(index=index, version=b.int("version"), root=b.hex("root"), slices=b.int("slices"))

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "root": self.root.hex(), "slices": self.slices}


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditBody(EntryBody):
    KIND: ClassVar[str] = "audit"

    index: int
    root: bytes
    size: int
    test_root: bytes | None = None  # the committed test split; absent in logs written before it was
    test_size: int | None = None

    @classmethod
    def from_json(cls, d: Any, *, index: int = 0, what: str | None = None) -> Self:
        b = Fields(cls._what(index, what), d, {"root", "size"}, {"test_root", "test_size"})
        if ("test_root" in b.d) != ("test_size" in b.d):
            raise InvalidBundle(f"{b.what}: test_root and test_size come together")
        if "test_root" in b.d:
            return cls(index=index, root=b.hex("root"), size=b.dec("size"), test_root=b.hex("test_root"),
                       test_size=b.dec("test_size"))
        return cls(index=index, root=b.hex("root"), size=b.dec("size"))

    def to_json(self) -> dict[str, Any]:
        out = {"root": self.root.hex(), "size": str(self.size)}
        if self.test_root is not None and self.test_size is not None:
            out |= {"test_root": self.test_root.hex(), "test_size": str(self.test_size)}
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointBody(EntryBody):
    KIND: ClassVar[str] = "checkpoint"

    index: int
    shard: int
    generation: int
    stage: int
    step: int
    digest: bytes

    @classmethod
    def from_json(cls, d: Any, *, index: int = 0, what: str | None = None) -> Self:
        b = Fields(cls._what(index, what), d, {"shard", "generation", "stage", "step", "digest"})
        return cls(index=index, shard=b.int("shard"), generation=b.int("generation"), stage=b.int("stage"),
                   step=b.dec("step"), digest=b.hex("digest"))

    def to_json(self) -> dict[str, Any]:
        return {"shard": self.shard, "generation": self.generation, "stage": self.stage, "step": str(self.step),
                "digest": self.digest.hex()}


def _batch(b: Fields) -> tuple[bytes, ...]:
    """``batch``: the batch's commitments, 64 lower-case hex characters each, concatenated."""
    v = b.d["batch"]
    if not isinstance(v, str) or len(v) % 64 or len(v) > 64 << 24 or not _HEX.fullmatch(v):
        raise InvalidBundle(f"{b.what}: batch must be concatenated 64-character lower-case hex commitments")
    raw = bytes.fromhex(v)
    return tuple(raw[i : i + 32] for i in range(0, len(raw), 32))


def _hints(b: Fields) -> tuple[tuple[int, int, int], ...]:
    v = b.d["hints"]
    if not isinstance(v, list) or len(v) > MAX_HINTS:
        raise InvalidBundle(f"{b.what}: hints must be a list of at most {MAX_HINTS} [tensor, element, value] triples")
    out = []
    for h in v:
        if (
            not isinstance(h, list) or len(h) != 3 or not all(type(x) is int for x in h)
            or not 0 <= h[0] < 1 << 16 or not -1 <= h[1] < 1 << 40 or not -(1 << 31) <= h[2] < 1 << 31
        ):  # fmt: skip
            raise InvalidBundle(f"{b.what}: each hint must be [tensor 0..65535, element -1..2^40, value 32-bit int]")
        out.append((h[0], h[1], h[2]))
    return tuple(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class StepBody(EntryBody):
    KIND: ClassVar[str] = "step"

    index: int
    shard: int
    generation: int
    stage: int
    epoch: int
    step: int
    seed: int
    lr: str
    batch: tuple[bytes, ...] | None  # format 1 only; format 2's batches follow from the committed order
    hints: tuple[tuple[int, int, int], ...] | None = None  # portable-v1 steps only

    @classmethod
    def from_json(cls, d: Any, *, index: int = 0, what: str | None = None) -> Self:
        b = Fields(cls._what(index, what), d, {"shard", "generation", "stage", "epoch", "step", "seed", "lr"},
                   {"hints", "batch"})
        return cls(index=index, shard=b.int("shard"), generation=b.int("generation"), stage=b.int("stage"),
                   epoch=b.int("epoch"), step=b.dec("step"), seed=b.dec("seed"), lr=b.str("lr", 64),
                   batch=_batch(b) if "batch" in b.d else None, hints=_hints(b) if "hints" in b.d else None)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"shard": self.shard, "generation": self.generation, "stage": self.stage,
                               "epoch": self.epoch, "step": str(self.step), "seed": str(self.seed), "lr": self.lr}
        if self.batch is not None:
            out["batch"] = b"".join(self.batch).hex()
        if self.hints is not None:
            out["hints"] = [list(h) for h in self.hints]
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class DeletionBody(EntryBody):
    KIND: ClassVar[str] = "deletion"

    index: int
    request: int
    request_digest: bytes
    commitments: tuple[bytes, ...]
    shards: tuple[int, ...]

    @classmethod
    def from_json(cls, d: Any, *, index: int = 0, what: str | None = None) -> Self:
        b = Fields(cls._what(index, what), d, {"request", "request_digest", "commitments", "shards"})
        sh = b.d["shards"]
        if not isinstance(sh, list) or not all(type(x) is int and 0 <= x <= U32 for x in sh):
            raise InvalidBundle(f"{b.what}: shards must be a list of shard numbers")
        return cls(index=index, request=b.dec("request"), request_digest=b.hex("request_digest"),
                   commitments=b.hexlist("commitments"), shards=tuple(sh))

    def to_json(self) -> dict[str, Any]:
        return {"request": str(self.request), "request_digest": self.request_digest.hex(),
                "commitments": [c.hex() for c in self.commitments], "shards": list(self.shards)}


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelBody(EntryBody):
    KIND: ClassVar[str] = "model"

    index: int
    reason: str
    shards: tuple[bytes, ...]
    digest: bytes
    request: int | None

    @classmethod
    def from_json(cls, d: Any, *, index: int = 0, what: str | None = None) -> Self:
        b = Fields(cls._what(index, what), d, {"reason", "shards", "digest"}, {"request"})
        return cls(index=index, reason=b.str("reason", 32), shards=b.hexlist("shards", 1 << 16),
                   digest=b.hex("digest"), request=b.dec("request") if "request" in b.d else None)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reason": self.reason, "shards": [s.hex() for s in self.shards],
                               "digest": self.digest.hex()}
        if self.request is not None:
            out["request"] = str(self.request)
        return out
