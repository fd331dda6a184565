"""Committed model code (issue 16; specs/06 section 5b, specs/08 section 1, specs/09 step 18).

The owner trains with its own ``MODULE:FACTORY`` model; the config entry of the log commits the
digest of the factory's source files and of the built model's structure. An agency replays the
factory only with ``--allow-factory``, only after the code it would run (the bundle's shipped
source, else its own copy) matches the committed digests, and after the built model's structure
matches. The owner runs in subprocesses whose PYTHONPATH holds its module; the agency in
subprocesses whose PYTHONPATH does not (or holds its own, modified copy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest_verifier import members_of, rezip
from verifiable_mu._errors import InvalidBundle
from verifiable_mu._modelcode import (
    ModelCodeError,
    compare_files,
    isolated_import,
    locate_source,
    parse_code,
    source_digest,
)

ROOT = Path(__file__).resolve().parents[1]
FACTORY = "vmu_testnet.net:make"
NET_PY = '''"""A small owner model: a two-layer MLP whose width an environment variable can change."""
import os

from torch import nn

from . import blocks


def make(n_features, n_classes, input_shape):
    hidden = int(os.environ.get("VMU_TESTNET_HIDDEN", "12"))
    return nn.Sequential(nn.Flatten(), nn.Linear(n_features, hidden), blocks.act(), nn.Linear(hidden, n_classes))
'''
BLOCKS_PY = '''from torch import nn


def act():
    return nn.ReLU()
'''


def _write_pkg(root: Path, net: str = NET_PY, blocks: str = BLOCKS_PY) -> Path:
    pkg = root / "vmu_testnet"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "net.py").write_text(net)
    (pkg / "blocks.py").write_text(blocks)
    return root


def _env(pythonpath: Path | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VMU_TESTNET_HIDDEN")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([str(pythonpath)] if pythonpath else []))
    env.update(extra)
    return env


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, check=False,
                          timeout=300)


def _vmu(args: list[str], owner: Path, cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return _run(["-m", "prover", *args], _env(owner, **extra), cwd)


def _verify(bundle: Path, path: Path | None, cwd: Path, *flags: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return _run(["-m", "verifier", str(bundle), "--no-residual", "--replay", "2", *flags], _env(path, **extra), cwd)


def _with_member(owner: dict[str, Any], tmp_path: Path, path: str, blob: bytes) -> subprocess.CompletedProcess[str]:
    """Verify (agency without the module) the source-carrying bundle with ``model/source/<path>``
    set to ``blob`` and the unsigned manifest's digests recomputed."""
    members = members_of(owner["with"].read_bytes())
    members["model/source/" + path] = blob
    bad = tmp_path / "changed.vmu"
    bad.write_bytes(rezip(members))
    return _verify(bad, None, tmp_path, "--allow-factory", FACTORY)


@pytest.fixture(scope="module")
def owner(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A workspace trained with the owner's factory, one deletion, and two bundles: with and
    without the model source."""
    root = tmp_path_factory.mktemp("modelcode")
    code = _write_pkg(root / "owner_code")
    rng = np.random.default_rng(3)
    X = rng.normal(size=(90, 6)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0.5).astype(np.int64)
    np.savez(root / "data.npz", X=X, y=y, ids=np.asarray([f"r{i}" for i in range(90)], dtype=str))
    ws = root / "ws"
    steps = [
        ["init", str(ws), "--data", str(root / "data.npz"), "--model", FACTORY, "--shards", "2", "--slices", "2",
         "--epochs", "2", "--workers", "1", "--device", "cpu"],
        ["train", str(ws)],
    ]
    for args in steps:
        p = _vmu(args, code, root)
        assert p.returncode == 0, p.stderr
    ids = _vmu(["status", str(ws), "--ids", "train"], code, root).stdout.split()
    p = _vmu(["forget", str(ws), "--ids", ids[0]], code, root)
    assert p.returncode == 0, p.stderr
    for name, extra in (("with_source.vmu", ["--include-model-source"]), ("without_source.vmu", [])):
        p = _vmu(["bundle", str(ws), "--out", str(root / name), "--replay", "2", *extra], code, root)
        assert p.returncode == 0, p.stderr
    return {"root": root, "code": code, "ws": ws, "with": root / "with_source.vmu", "without": root / "without_source.vmu"}


# --- the owner's side ----------------------------------------------------------------------------


def test_the_config_entry_commits_the_code_and_the_bundle_ships_it(owner: dict[str, Any]) -> None:
    from prover import Workspace

    with Workspace.open(owner["ws"]) as ws:
        model = ws.log.entry(0).body["model"]
    code = parse_code(model["code"])
    assert [f["path"] for f in code["files"]] == ["vmu_testnet/__init__.py", "vmu_testnet/blocks.py",
                                                  "vmu_testnet/net.py"]
    assert code["source"] == source_digest(code["files"]).hex()
    sys.path.insert(0, str(owner["code"]))
    try:
        assert compare_files(code["files"], locate_source("vmu_testnet")) is None
    finally:
        sys.path.remove(str(owner["code"]))
    with_src = members_of(owner["with"].read_bytes())
    assert with_src["model/source/vmu_testnet/net.py"] == NET_PY.encode()
    assert not any(n.startswith("model/") for n in members_of(owner["without"].read_bytes()))


def test_custom_model_end_to_end_agency_without_the_module(owner: dict[str, Any], tmp_path: Path) -> None:
    # The agency's Python path lacks vmu_testnet: the bundle's shipped source is what runs.
    p = _verify(owner["with"], None, tmp_path, "--allow-factory", FACTORY, "--json", str(tmp_path / "r.json"))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "accepted" in p.stdout.lower() and "model code: vmu_testnet.net:make ran from the bundle's model source" in p.stdout
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["replay"]["model_code"]["from"] == "bundle" and rep["replay"]["model_code"]["files"] == 3


def test_agency_with_an_identical_copy_verifies_a_bundle_without_source(owner: dict[str, Any], tmp_path: Path) -> None:
    copy = _write_pkg(tmp_path / "agency_code")
    p = _verify(owner["without"], copy, tmp_path, "--allow-factory", FACTORY)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "ran from this machine's copy" in p.stdout


def test_step18_factory_refused_without_allow_factory(owner: dict[str, Any], tmp_path: Path) -> None:
    p = _verify(owner["with"], None, tmp_path)
    assert p.returncode == 2, p.stderr
    assert "step 18" in p.stderr and f"--allow-factory {FACTORY}" in p.stderr


def test_step18_modified_copy_on_the_agency_path_code_differs(owner: dict[str, Any], tmp_path: Path) -> None:
    changed = NET_PY.replace("blocks.act()", "nn.LeakyReLU()")
    assert changed != NET_PY
    copy = _write_pkg(tmp_path / "agency_code", net=changed)
    p = _verify(owner["without"], copy, tmp_path, "--allow-factory", FACTORY)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "step 18" in p.stderr
    assert "unusable input: model code differs from the committed code" in p.stderr
    assert "vmu_testnet/net.py" in p.stderr and "on this machine" in p.stderr


def test_step18_tampered_shipped_source_code_differs(owner: dict[str, Any], tmp_path: Path) -> None:
    p = _with_member(owner, tmp_path, "vmu_testnet/blocks.py", BLOCKS_PY.replace("nn.ReLU()", "nn.Tanh()").encode())
    assert p.returncode == 2, p.stdout + p.stderr
    assert "step 18" in p.stderr
    assert "model code differs from the committed code" in p.stderr and "vmu_testnet/blocks.py" in p.stderr


def test_step18_extra_shipped_source_file_code_differs(owner: dict[str, Any], tmp_path: Path) -> None:
    p = _with_member(owner, tmp_path, "vmu_testnet/extra.py", b"X = 1\n")
    assert p.returncode == 2, p.stdout + p.stderr
    assert "model code differs from the committed code" in p.stderr and "vmu_testnet/extra.py" in p.stderr


def test_step18_same_code_other_structure_is_refused(owner: dict[str, Any], tmp_path: Path) -> None:
    # The source matches byte for byte, but here the factory reads an environment variable that
    # changes a layer's size: the built model is not the committed one.
    p = _verify(owner["with"], None, tmp_path, "--allow-factory", FACTORY, VMU_TESTNET_HIDDEN="13")
    assert p.returncode == 2, p.stdout + p.stderr
    assert "step 18" in p.stderr
    assert "model code differs from the committed code" in p.stderr and "structure" in p.stderr


def test_step18_no_module_and_no_shipped_source_is_unusable(owner: dict[str, Any], tmp_path: Path) -> None:
    p = _verify(owner["without"], None, tmp_path, "--allow-factory", FACTORY)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "step 18" in p.stderr and "not importable" in p.stderr and "--include-model-source" in p.stderr


def test_step3_oversized_shipped_source_is_refused(owner: dict[str, Any], tmp_path: Path) -> None:
    p = _with_member(owner, tmp_path, "vmu_testnet/big.py", os.urandom((1 << 19) + 1).hex().encode())  # incompressible
    assert p.returncode == 2, p.stdout + p.stderr
    assert "step 3" in p.stderr and "vmu_testnet/big.py" in p.stderr


def test_train_refuses_code_changed_since_init(owner: dict[str, Any], tmp_path: Path) -> None:
    code = _write_pkg(tmp_path / "code")
    ws = tmp_path / "ws"
    data = owner["root"] / "data.npz"
    p = _vmu(["init", str(ws), "--data", str(data), "--model", FACTORY, "--shards", "2", "--slices", "2",
              "--epochs", "1", "--device", "cpu"], code, tmp_path)
    assert p.returncode == 0, p.stderr
    cfg = json.loads((ws / "vmu-workspace.json").read_text())
    assert [f["path"] for f in cfg["model_code"]["files"]][-1] == "vmu_testnet/net.py"
    (code / "vmu_testnet" / "blocks.py").write_text(BLOCKS_PY + "# changed\n")
    p = _vmu(["train", str(ws)], code, tmp_path)
    assert p.returncode == 2, p.stderr
    assert "differs from the code committed at init" in p.stderr and "vmu_testnet/blocks.py" in p.stderr


@pytest.mark.parametrize(
    ("net", "model", "fragment"),
    [
        (NET_PY, "no_such_module_xyz:make", "not importable"),
        (NET_PY, "vmu_testnet.net:nope", "nope"),
        (NET_PY, "vmu_testnet.net:make:x", "is not MODULE:FACTORY"),
        (NET_PY.replace("    hidden =", "    raise RuntimeError('no GPU here')\n    hidden ="), FACTORY, "raised RuntimeError"),
        (NET_PY + "\n\ndef make2(**kw):\n    return 3\n", "vmu_testnet.net:make2", "did not return a torch.nn.Module"),
        ("import nonexistent_dep_xyz\n" + NET_PY, FACTORY, "nonexistent_dep_xyz"),
    ],
    ids=["missing-module", "missing-function", "bad-path", "factory-raises", "not-a-module", "import-fails"],
)
def test_init_fails_fast_on_a_bad_factory(owner: dict[str, Any], tmp_path: Path, net: str, model: str,
                                          fragment: str) -> None:
    code = _write_pkg(tmp_path / "code", net=net)
    ws = tmp_path / "ws"
    p = _vmu(["init", str(ws), "--data", str(owner["root"] / "data.npz"), "--model", model], code, tmp_path)
    assert p.returncode == 2, p.stderr
    assert fragment in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert not ws.exists()


def test_bundle_include_model_source_refused_for_a_builtin_model(owner: dict[str, Any], tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    p = _vmu(["init", str(ws), "--data", str(owner["root"] / "data.npz"), "--model", "logreg"], owner["code"], tmp_path)
    assert p.returncode == 0, p.stderr
    p = _vmu(["bundle", str(ws), "--out", str(tmp_path / "b.vmu"), "--include-model-source"], owner["code"], tmp_path)
    assert p.returncode == 2, p.stderr
    assert "is built in; it has no source to include" in p.stderr


# --- units ---------------------------------------------------------------------------------------


def test_isolated_import_runs_exactly_the_given_bytes(tmp_path: Path) -> None:
    files = {"vmu_iso/__init__.py": b"WHERE = 'given bytes'\n"}
    other = _write_pkg(tmp_path)
    (other / "vmu_iso").mkdir()
    (other / "vmu_iso" / "__init__.py").write_text("WHERE = 'on the path'\n")
    sys.path.insert(0, str(other))
    try:
        mod = isolated_import("vmu_iso", files)
        assert mod.WHERE == "given bytes"
        assert "vmu_iso" not in sys.modules
        assert str(other) in sys.path
    finally:
        sys.path.remove(str(other))


def test_old_factory_config_without_code_is_refused() -> None:
    from verifier._segment import model_factory

    model = {"name": FACTORY, "n_features": 6, "n_classes": 3, "input_shape": [6], "hidden": 128}
    with pytest.raises(ModelCodeError, match="commits no digest of the code"):
        model_factory(model, (FACTORY,), {})


def test_config_code_field_is_checked() -> None:
    from verifiable_mu._log import LogEntry
    from verifier._entries import ConfigBody

    files = [{"path": "m.py", "sha256": "0" * 64}]
    good = {"files": files, "source": source_digest(files).hex(), "structure": "1" * 64}
    body = {"format": 2, "shards": 1, "slices": 1, "epochs": 1, "stage_epochs": 1, "checkpoint_every": 0, "seed": "0",
            "assignment": "sha256-rank-v1",
            "model": {"name": "m:make", "n_features": 2, "n_classes": 2, "input_shape": [2], "hidden": 1, "code": good},
            "hyper": {"lr": "0.1", "momentum": "0.0", "weight_decay": "0.0", "batch_size": 1, "arithmetic": "float32"},
            "platform": {"torch": "2", "device": "cpu", "threads": 1, "deterministic": True, "dtype": "float32"},
            "n_train": 1, "data_digest": "x"}
    ConfigBody.parse(LogEntry(index=0, kind="config", body=body, leaf_hash=bytes(32)))
    bad = json.loads(json.dumps(body))
    bad["model"]["code"]["source"] = "2" * 64
    with pytest.raises(InvalidBundle, match="source is not the digest of its files"):
        ConfigBody.parse(LogEntry(index=0, kind="config", body=bad, leaf_hash=bytes(32)))
    builtin = json.loads(json.dumps(body))
    builtin["model"]["name"] = "mlp"
    with pytest.raises(InvalidBundle, match="carries no code digests"):
        ConfigBody.parse(LogEntry(index=0, kind="config", body=builtin, leaf_hash=bytes(32)))


def test_step19_loads_the_factory_only_as_the_committed_code(owner: dict[str, Any]) -> None:
    """Step 19 (when step 18 replayed nothing) loads the final constituents through the same
    checks: the shipped source works without the module; a tampered file is refused."""
    from prover import Workspace
    from verifier._models import load_models

    with Workspace.open(owner["ws"]) as ws:
        model = ws.log.entry(0).body["model"]
        digest = bytes.fromhex(ws.log.entry(ws.log.size - 1).body["shards"][0])
    members = members_of(owner["with"].read_bytes())
    source = {n[len("model/source/"):]: b for n, b in members.items() if n.startswith("model/source/")}
    files = [(digest, members[f"checkpoints/{digest.hex()}.safetensors"])]
    (proba,) = load_models(model, files, allow_factories=(FACTORY,), model_source=source)
    assert proba(np.zeros((2, 6), dtype=np.float32)).shape == (2, 3)
    source["vmu_testnet/net.py"] += b"# one more line\n"
    with pytest.raises(ModelCodeError, match="model code differs from the committed code: file vmu_testnet/net.py"):
        load_models(model, files, allow_factories=(FACTORY,), model_source=source)


def test_a_worker_with_other_model_code_refuses_to_train(owner: dict[str, Any], tmp_path: Path) -> None:
    """A pool process or Ray node trains only if its own copy of the factory is the committed one."""
    from prover import Workspace
    from prover._errors import WorkspaceError
    from prover._sisa import _check_model_code

    with Workspace.open(owner["ws"]) as ws:
        model = ws.log.entry(0).body["model"]
    copy = _write_pkg(tmp_path / "worker_code", blocks=BLOCKS_PY.replace("ReLU", "ReLU6"))
    sys.path.insert(0, str(copy))
    try:
        with pytest.raises(WorkspaceError, match="this worker's model code differs from the committed code: file "
                                                 "vmu_testnet/blocks.py"):
            _check_model_code(model, None)
    finally:
        sys.path.remove(str(copy))
        for k in [k for k in sys.modules if k.split(".")[0] == "vmu_testnet"]:
            del sys.modules[k]
