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
    #: Classes the model has (labels 0..n_classes-1). None: every label from 0 to the largest must
    #: occur (a gap is almost always a label-encoding mistake; pass the count to allow one).
    classes: int | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        if n == 0:
            raise BadInput("the data set is empty")
        if self.X.shape[0] != n or self.y.shape != (n,):
            raise BadInput(f"X has {self.X.shape[0]} rows, y has {self.y.shape}, ids has {n}: they must agree")
        if len(set(self.ids)) != n:
            seen: dict[str, int] = {}
            for row, i in enumerate(self.ids):
                if i in seen:
                    raise BadInput(f"record id {i!r} is given twice (rows {seen[i]} and {row}): ids must be unique")
                seen[i] = row
        finite = np.isfinite(self.X.reshape(n, -1)).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise BadInput(
                f"X row {bad[0]} (id {self.ids[bad[0]]!r}) contains NaN or an infinite value ({len(bad)} row(s) do); "
                "drop or impute them before 'vmu init'"
            )
        if self.y.min() < 0:
            row = int(np.argmin(self.y))
            raise BadInput(f"y row {row} (id {self.ids[row]!r}) is {int(self.y[row])}: labels must be class indices 0..K-1")
        top = int(self.y.max())
        if self.classes is None:
            missing = sorted(set(range(top + 1)) - {int(c) for c in np.unique(self.y)})
            if missing:
                shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
                raise BadInput(
                    f"labels run from 0 to {top} but class(es) {shown} never occur: encode the labels as 0..K-1 "
                    f"(e.g. sklearn.preprocessing.LabelEncoder), or pass --n-classes {top + 1} if those classes are real "
                    "and only absent from this data"
                )
        elif top >= self.classes:
            row = int(np.argmax(self.y))
            raise BadInput(f"y row {row} (id {self.ids[row]!r}) is {top}, not below --n-classes {self.classes}")

    @property
    def n_classes(self) -> int:
        return self.classes if self.classes is not None else int(self.y.max()) + 1

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
        arrays: dict[str, Any] = {"X": self.X, "y": self.y, "ids": np.asarray(self.ids, dtype=str)}
        if self.classes is not None:
            arrays["n_classes"] = np.asarray(self.classes, dtype=np.int64)
        np.savez(tmp, **arrays)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)


def from_arrays(X: Any, y: Any, ids: Any = None, n_classes: int | None = None) -> Dataset:
    try:
        Xa = np.ascontiguousarray(np.asarray(X), dtype=np.float32)
        ya = np.asarray(y)
    except (TypeError, ValueError) as e:
        raise BadInput(f"X and y must be numeric arrays: {e}") from e
    if Xa.ndim < 2:
        raise BadInput("X must have one row per record (at least 2 dimensions)")
    if ya.ndim == 1 and ya.dtype.kind in "USO":
        shown = ", ".join(repr(str(v)) for v in np.unique(ya.astype(str))[:3])
        raise BadInput(
            f"y holds text labels ({shown}, ...): encode them as integers 0..K-1 first (e.g. "
            "sklearn.preprocessing.LabelEncoder().fit_transform(y)) and keep the mapping"
        )
    if ya.ndim != 1 or ya.dtype.kind not in "iub":
        if ya.ndim == 1 and ya.dtype.kind == "f" and np.isfinite(ya).all() and np.all(ya == np.round(ya)):
            ya = ya.astype(np.int64)
        elif ya.ndim == 1 and ya.dtype.kind == "f":
            row = int(np.flatnonzero(~np.isfinite(ya) | (ya != np.round(ya)))[0])
            raise BadInput(f"y row {row} is {float(ya[row])!r}: labels must be integer class indices 0..K-1")
        else:
            raise BadInput(f"y must be a 1-d array of integer class labels (it has shape {ya.shape})")
    if Xa.shape[0] > MAX_RECORDS:
        raise BadInput(f"too many records ({Xa.shape[0]} > {MAX_RECORDS})")
    if ids is None:
        id_t = tuple(str(i) for i in range(Xa.shape[0]))
    else:
        id_t = tuple(str(i) for i in np.asarray(ids).tolist())
        if any(not 1 <= len(i.encode()) <= 256 for i in id_t):
            raise BadInput("every record id must be 1..256 UTF-8 bytes")
    if n_classes is not None and (type(n_classes) is not int or n_classes < 2):
        raise BadInput(f"--n-classes must be an integer >= 2, not {n_classes!r}")
    return Dataset(ids=id_t, X=Xa, y=ya.astype(np.int64), classes=n_classes)


def load_digits_dataset() -> Dataset:
    """scikit-learn's bundled digits (1,797 8x8 images), scaled to [0, 1]; ids '0'..'1796'."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return from_arrays((X / 16.0).astype(np.float32), y)


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    d = load_digits_dataset()
    return d.X, d.y


def load_npz(path: str, n_classes: int | None = None) -> Dataset:
    """A .npz with arrays ``X``, ``y`` and optional ``ids`` and ``n_classes`` (no pickles)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if "X" not in z.files or "y" not in z.files:
                raise BadInput(f"{path}: a data file must hold arrays 'X' and 'y' (found {', '.join(z.files) or 'none'})")
            X, y = z["X"], z["y"]
            ids = z["ids"] if "ids" in z.files else None
            if n_classes is None and "n_classes" in z.files:
                n_classes = int(z["n_classes"])
    except BadInput:
        raise
    except ValueError as e:
        if "allow_pickle" in str(e):  # never suggest loading pickles: say what to save instead
            raise BadInput(
                f"{path} holds Python objects (an object array), which vmu never loads: save X and y as numeric arrays "
                "and ids as a string array, e.g. np.savez(path, X=X, y=y, ids=np.asarray(ids, dtype=str))"
            ) from None
        raise BadInput(f"cannot read data file {path}: {e}") from e
    except (OSError, zipfile.BadZipFile, EOFError, KeyError) as e:
        raise BadInput(f"cannot read data file {path}: {e}") from e
    return from_arrays(X, y, ids, n_classes)


def from_torch_dataset(ds: Any, ids: Any = None) -> Dataset:
    """Stack a map-style torch ``Dataset`` of ``(features, label)`` pairs."""
    xs, ys = [], []
    for i in range(len(ds)):
        x, lab = ds[i]
        xs.append(np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float32))
        ys.append(int(lab))
    return from_arrays(np.stack(xs), np.asarray(ys, dtype=np.int64), ids)


def load_source(source: str, n_classes: int | None = None) -> Dataset:
    if source == "digits":
        return load_digits_dataset() if n_classes is None else from_arrays(*_digits_arrays(), n_classes=n_classes)
    if source.endswith(".npz"):
        return load_npz(source, n_classes)
    raise BadInput(f"unknown data source {source!r} (use 'digits' or a path to a .npz file)")
