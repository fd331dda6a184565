"""Data sets a model owner brings: scikit-learn's digits, a .npz file, arrays, a torch Dataset."""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._errors import BadInput

__all__ = ["Dataset", "load_digits_dataset", "load_npz", "from_arrays", "from_torch_dataset", "load_source"]

MAX_RECORDS = 50_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Dataset:
    """Validated records: string ids (unique), float32 features, int64 labels."""

    ids: tuple[str, ...]
    X: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.ids)
        if n == 0:
            raise BadInput("the data set is empty")
        if self.X.shape[0] != n or self.y.shape != (n,):
            raise BadInput(f"X has {self.X.shape[0]} rows, y has {self.y.shape}, ids has {n}: they must agree")
        if len(set(self.ids)) != n:
            raise BadInput("record ids are not unique")
        if not np.isfinite(self.X).all():
            raise BadInput("X contains NaN or infinite values")
        if self.y.min() < 0:
            raise BadInput("labels must be non-negative class indices")

    @property
    def n_classes(self) -> int:
        return int(self.y.max()) + 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.X.shape[1:])

    @property
    def n_features(self) -> int:
        return int(np.prod(self.input_shape))

    def digest(self) -> str:
        h = hashlib.sha256()
        # The arrays' buffers, not tobytes() copies (a second copy of X: 1 GB at 10^6 16x16 images).
        h.update(np.ascontiguousarray(self.X, dtype="<f4").data)
        h.update(np.ascontiguousarray(self.y, dtype="<i8").data)
        h.update("\n".join(self.ids).encode())
        return h.hexdigest()

    def save_npz(self, path: str) -> None:
        tmp = f"{path}.tmp.{os.getpid()}.npz"
        np.savez(tmp, X=self.X, y=self.y, ids=np.asarray(self.ids, dtype=str))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)


def from_arrays(X: Any, y: Any, ids: Any = None) -> Dataset:
    try:
        Xa = np.ascontiguousarray(np.asarray(X), dtype=np.float32)
        ya = np.asarray(y)
    except (TypeError, ValueError) as e:
        raise BadInput(f"X and y must be numeric arrays: {e}") from e
    if Xa.ndim < 2:
        raise BadInput("X must have one row per record (at least 2 dimensions)")
    if ya.ndim != 1 or ya.dtype.kind not in "iub":
        if ya.ndim == 1 and ya.dtype.kind == "f" and np.all(ya == np.round(ya)):
            ya = ya.astype(np.int64)
        else:
            raise BadInput("y must be a 1-d array of integer class labels")
    if Xa.shape[0] > MAX_RECORDS:
        raise BadInput(f"too many records ({Xa.shape[0]} > {MAX_RECORDS})")
    if ids is None:
        id_t = tuple(str(i) for i in range(Xa.shape[0]))
    else:
        id_t = tuple(str(i) for i in np.asarray(ids).tolist())
        if any(not 1 <= len(i.encode()) <= 256 for i in id_t):
            raise BadInput("every record id must be 1..256 UTF-8 bytes")
    return Dataset(ids=id_t, X=Xa, y=ya.astype(np.int64))


def load_digits_dataset() -> Dataset:
    """scikit-learn's bundled digits (1,797 8x8 images), scaled to [0, 1]; ids '0'..'1796'."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return from_arrays((X / 16.0).astype(np.float32), y)


def load_npz(path: str) -> Dataset:
    """A .npz with arrays ``X``, ``y`` and optional ``ids`` (no pickles)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if "X" not in z.files or "y" not in z.files:
                raise BadInput(f"{path}: a data file must hold arrays 'X' and 'y' (found {', '.join(z.files) or 'none'})")
            X, y = z["X"], z["y"]
            ids = z["ids"] if "ids" in z.files else None
    except BadInput:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as e:
        raise BadInput(f"cannot read data file {path}: {e}") from e
    return from_arrays(X, y, ids)


def from_torch_dataset(ds: Any, ids: Any = None) -> Dataset:
    """Stack a map-style torch ``Dataset`` of ``(features, label)`` pairs."""
    xs, ys = [], []
    for i in range(len(ds)):
        x, lab = ds[i]
        xs.append(np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float32))
        ys.append(int(lab))
    return from_arrays(np.stack(xs), np.asarray(ys, dtype=np.int64), ids)


def load_source(source: str) -> Dataset:
    if source == "digits":
        return load_digits_dataset()
    if source.endswith(".npz"):
        return load_npz(source)
    raise BadInput(f"unknown data source {source!r} (use 'digits' or a path to a .npz file)")
