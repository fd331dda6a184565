"""Committed model code: the digests that bind a ``MODULE:FACTORY`` model (specs/06-training.md
section 5b). Torch-free: the structure digest takes a list of parameter descriptions.

* The **source files** of a factory ``M:F`` are the Python source of ``M``'s top-level module
  ``T`` (the part of ``M`` before its first dot), found on ``sys.path`` without running any of
  it: ``T.py`` when ``T`` is a plain module, else every ``*.py`` file under the package directory
  of ``T`` (``__pycache__`` and names starting with ``.`` skipped). Each is named by its path
  relative to the ``sys.path`` entry ``T`` was found in, with ``/`` separators (so ``T.py`` or
  ``T/...``), and the list is sorted by that path (as UTF-8 bytes).
* ``source digest = SHA-256(TAG_MODEL_SOURCE || RFC 8785 {"files": [{"path", "sha256"}...],
  "version": 1})``, ``sha256`` the hex SHA-256 of the file's bytes.
* ``structure digest = SHA-256(TAG_MODEL_STRUCTURE || RFC 8785 {"parameters": [{"dtype", "name",
  "shape"}...], "version": 1})`` over the built model's ``named_parameters()`` in name order.

:func:`isolated_import` imports a module from given file bytes only (a private temporary
directory first on ``sys.path`` for that one import), so that the code that runs is exactly the
code that was hashed.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

from ._canonical import canonical_json
from ._errors import MalformedInput
from ._tags import TAG_MODEL_SOURCE, TAG_MODEL_STRUCTURE, tagged_hash

__all__ = [
    "MAX_SOURCE_FILES",
    "MAX_SOURCE_FILE_BYTES",
    "MAX_SOURCE_BYTES",
    "SOURCE_PATH_RE",
    "ModelCodeError",
    "code_json",
    "compare_files",
    "file_list",
    "isolated_import",
    "locate_source",
    "parse_code",
    "source_digest",
    "split_factory",
    "structure_digest",
]

#: Bounds on a factory's source files (the committed list and the bundle's members).
MAX_SOURCE_FILES = 256
MAX_SOURCE_FILE_BYTES = 1 << 20
MAX_SOURCE_BYTES = 8 << 20
#: A source file's relative path: components of [A-Za-z0-9_.-] not starting with '.', ending in .py.
SOURCE_PATH_RE = re.compile(r"(?:[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}/){0,15}[A-Za-z0-9_][A-Za-z0-9_.-]{0,96}\.py")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_LOCK = threading.Lock()


class ModelCodeError(MalformedInput):
    """The model code cannot be found, read, imported or built, or differs from the committed code."""


def split_factory(name: str) -> tuple[str, str]:
    """``"pkg.mod:make"`` -> ``("pkg.mod", "make")``; raise :class:`ModelCodeError` on a bad path."""
    mod, sep, fn = name.partition(":")
    if not sep or not all(_IDENT.fullmatch(p) for p in mod.split(".")) or not _IDENT.fullmatch(fn):
        raise ModelCodeError(f"model {name!r} is not MODULE:FACTORY (a dotted module name, a colon, a function name)")
    return mod, fn


def _check_files(files: Mapping[str, bytes], what: str) -> None:
    if not files:
        raise ModelCodeError(f"{what}: no source files")
    if len(files) > MAX_SOURCE_FILES:
        raise ModelCodeError(f"{what}: {len(files)} source files (at most {MAX_SOURCE_FILES})")
    total = 0
    for path, data in files.items():
        if not SOURCE_PATH_RE.fullmatch(path):
            raise ModelCodeError(f"{what}: {path[:120]!r} is not a valid source file path")
        if len(data) > MAX_SOURCE_FILE_BYTES:
            raise ModelCodeError(f"{what}: {path} is {len(data)} bytes (at most {MAX_SOURCE_FILE_BYTES})")
        total += len(data)
    if total > MAX_SOURCE_BYTES:
        raise ModelCodeError(f"{what}: the source files hold {total} bytes (at most {MAX_SOURCE_BYTES})")


def locate_source(module: str) -> dict[str, bytes]:
    """The source files of ``module``'s top-level module as they are importable here (path ->
    bytes), found without running any of them. :class:`ModelCodeError` if it is not importable,
    not Python source, or over the bounds."""
    top = module.split(".")[0]
    saved = sys.modules.get(top)
    try:
        spec = importlib.util.find_spec(top) if saved is None else None
    except (ImportError, ValueError) as e:
        raise ModelCodeError(f"cannot find module {top!r}: {e}") from e
    if saved is not None:  # already imported in this process: locate it by the files it came from
        spec = getattr(saved, "__spec__", None)
    if spec is None:
        raise ModelCodeError(f"module {top!r} is not importable here (no such module on the Python path)")
    origin = spec.origin
    locations = list(spec.submodule_search_locations or [])
    if spec.submodule_search_locations is not None:
        if not origin or os.path.basename(origin) != "__init__.py" or len(locations) != 1:
            raise ModelCodeError(f"module {top!r} is a namespace package; a model factory's package needs an __init__.py")
        pkg_dir = locations[0]
        root = os.path.dirname(pkg_dir)
        paths = []
        for d, dirs, names in os.walk(pkg_dir):
            dirs[:] = sorted(x for x in dirs if x != "__pycache__" and not x.startswith("."))
            paths += [os.path.join(d, n) for n in names if n.endswith(".py") and not n.startswith(".")]
    else:
        if not origin or not origin.endswith(".py") or not os.path.isfile(origin):
            raise ModelCodeError(f"module {top!r} is not Python source ({origin}); a model factory must be a .py module")
        root = os.path.dirname(origin)
        paths = [origin]
    files: dict[str, bytes] = {}
    for p in paths:
        rel = os.path.relpath(p, root).replace(os.sep, "/")
        try:
            with open(p, "rb") as f:
                files[rel] = f.read(MAX_SOURCE_FILE_BYTES + 1)
        except OSError as e:
            raise ModelCodeError(f"cannot read {p}: {e.strerror or e}") from e
        if len(files) > MAX_SOURCE_FILES:
            break
    _check_files(files, f"module {top!r}")
    return dict(sorted(files.items(), key=lambda kv: kv[0].encode()))


def file_list(files: Mapping[str, bytes]) -> list[dict[str, str]]:
    """``[{"path", "sha256"}...]`` sorted by path (as UTF-8 bytes)."""
    return [{"path": p, "sha256": hashlib.sha256(files[p]).hexdigest()} for p in sorted(files, key=str.encode)]


def source_digest(files: Sequence[Mapping[str, str]]) -> bytes:
    return tagged_hash(TAG_MODEL_SOURCE, canonical_json({"version": 1, "files": [dict(f) for f in files]}))


def structure_digest(parameters: Sequence[tuple[str, Sequence[int], str]]) -> bytes:
    """Over ``(name, shape, dtype)`` of every parameter; sorted by name here."""
    params = [{"name": n, "shape": [int(x) for x in s], "dtype": d} for n, s, d in sorted(parameters, key=lambda t: t[0])]
    return tagged_hash(TAG_MODEL_STRUCTURE, canonical_json({"version": 1, "parameters": params}))


def code_json(files: Mapping[str, bytes], structure: bytes) -> dict[str, Any]:
    """The config's ``model.code`` object (specs/06 section 5b)."""
    lst = file_list(files)
    return {"files": lst, "source": source_digest(lst).hex(), "structure": structure.hex()}


def parse_code(d: Any, what: str = "model code") -> dict[str, Any]:
    """Check a ``model.code`` object's form (and that ``source`` is the digest of ``files``);
    raise :class:`ModelCodeError`."""
    if not isinstance(d, dict) or set(d) != {"files", "source", "structure"}:
        raise ModelCodeError(f"{what} must be an object with exactly files, source and structure")
    files = d["files"]
    if not isinstance(files, list) or not 1 <= len(files) <= MAX_SOURCE_FILES:
        raise ModelCodeError(f"{what}: files must be a list of 1 to {MAX_SOURCE_FILES} entries")
    paths = []
    for i, f in enumerate(files):
        if not isinstance(f, dict) or set(f) != {"path", "sha256"}:
            raise ModelCodeError(f"{what}: files[{i}] must be an object with exactly path and sha256")
        if not isinstance(f["path"], str) or not SOURCE_PATH_RE.fullmatch(f["path"]):
            raise ModelCodeError(f"{what}: files[{i}] path is not a valid source file path")
        if not isinstance(f["sha256"], str) or not _HEX64.fullmatch(f["sha256"]):
            raise ModelCodeError(f"{what}: files[{i}] sha256 must be 64 lower-case hex digits")
        paths.append(f["path"].encode())
    if paths != sorted(set(paths)):
        raise ModelCodeError(f"{what}: files must be sorted by path, each path once")
    for k in ("source", "structure"):
        if not isinstance(d[k], str) or not _HEX64.fullmatch(d[k]):
            raise ModelCodeError(f"{what}: {k} must be 64 lower-case hex digits")
    if source_digest(files).hex() != d["source"]:
        raise ModelCodeError(f"{what}: source is not the digest of its files")
    return d


def compare_files(committed: Sequence[Mapping[str, str]], files: Mapping[str, bytes]) -> str | None:
    """``None`` when ``files`` are exactly the committed ones, else which file differs."""
    want = {f["path"]: f["sha256"] for f in committed}
    got = {f["path"]: f["sha256"] for f in file_list(files)}
    for p in sorted(set(want) | set(got), key=str.encode):
        if p not in got:
            return f"file {p} is missing"
        if p not in want:
            return f"file {p} is not among the committed files"
        if got[p] != want[p]:
            return f"file {p} has SHA-256 {got[p][:16]}..., the committed code {want[p][:16]}..."
    return None


def isolated_import(module: str, files: Mapping[str, bytes]) -> ModuleType:
    """Import ``module`` from ``files`` (relative path -> bytes) and from nothing else of its
    package: the files are written to a private temporary directory (mode 0700) that is put
    first on ``sys.path`` for this import only; any module of the same top-level name already
    loaded is set aside during the import and put back after, and the imported ones are taken
    out of ``sys.modules`` again (the returned module and what it imported at import time stay
    alive through their references). No bytecode is written. The directory is removed after."""
    _check_files(files, "model source")
    top = module.split(".")[0]
    tmp = tempfile.mkdtemp(prefix="vmu-model-")
    with _LOCK:
        saved = {k: v for k, v in sys.modules.items() if k == top or k.startswith(top + ".")}
        dont_write = sys.dont_write_bytecode
        try:
            for rel, data in files.items():
                path = os.path.join(tmp, *rel.split("/"))
                os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
                with open(path, "wb") as f:
                    f.write(data)
            for k in saved:
                del sys.modules[k]
            sys.path.insert(0, tmp)
            sys.dont_write_bytecode = True
            importlib.invalidate_caches()
            try:
                mod = importlib.import_module(module)
            except Exception as e:  # the owner's code raised while importing
                raise ModelCodeError(f"importing the model module {module!r} failed: {type(e).__name__}: {e}") from e
            got = getattr(mod, "__file__", None) or ""
            if not os.path.realpath(got).startswith(os.path.realpath(tmp) + os.sep):
                raise ModelCodeError(f"module {module!r} was not loaded from the checked source files")
            return mod
        finally:
            sys.dont_write_bytecode = dont_write
            if tmp in sys.path:
                sys.path.remove(tmp)
            for k in [k for k in sys.modules if k == top or k.startswith(top + ".")]:
                del sys.modules[k]
            sys.modules.update(saved)
            importlib.invalidate_caches()
            shutil.rmtree(tmp, ignore_errors=True)
