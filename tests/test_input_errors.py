"""Input errors an owner meets (issue 16): each names the row and the id, says what to do, never
suggests loading pickles, and exits 2 (130 on Ctrl-C); library arguments are type-checked
before torch is imported; ``vmu status --ids SPLIT`` lists a split."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from prover import Workspace, WorkspaceConfig, from_arrays, load_npz
from prover._errors import BadInput
from prover.cli import main as vmu_main

ROOT = Path(__file__).resolve().parents[1]
SMALL = WorkspaceConfig(shards=2, slices=2, epochs=2, workers=1)


def _data(n: int = 40, k: int = 3) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(0)
    return rng.random((n, 4), dtype=np.float32), np.arange(n) % k, [f"r{i}" for i in range(n)]


def _npz(tmp_path: Path, name: str, **arrays: Any) -> str:
    path = str(tmp_path / name)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "change, fragment",
    [
        ("nan", "X row 7 (id 'r7') contains NaN or an infinite value (1 row(s) do)"),
        ("negative", "y row 5 (id 'r5') is -1: labels must be class indices 0..K-1"),
        ("duplicate", "record id 'r3' is given twice (rows 3 and 9): ids must be unique"),
        ("fraction", "y row 2 is 2.5: labels must be integer class indices 0..K-1"),
        ("text", "y holds text labels ('a', 'b', 'c', ...): encode them as integers 0..K-1 first"),
        ("gap", "labels run from 0 to 4 but class(es) 1, 3 never occur: encode the labels as 0..K-1"),
    ],
)
def test_data_errors_name_the_row_and_the_id(change: str, fragment: str) -> None:
    X, y, ids = _data()
    y = y.astype(object)
    if change == "nan":
        X[7, 2] = np.nan
    elif change == "negative":
        y[5] = -1
    elif change == "duplicate":
        ids[9] = "r3"
    elif change == "fraction":
        y = y.astype(np.float64)
        y[2] = 2.5
    elif change == "text":
        y = np.asarray(["abc"[int(v)] for v in y])
    elif change == "gap":
        y = np.asarray([(0, 2, 4)[int(v)] for v in y])
    if y.dtype == object:
        y = y.astype(np.int64)
    with pytest.raises(BadInput, match=re.escape(fragment)):
        from_arrays(X, y, ids)


def test_gaps_in_the_labels_are_allowed_with_n_classes(tmp_path: Path) -> None:
    X, y, ids = _data()
    y = np.asarray([(0, 2, 4)[int(v)] for v in y])
    ds = from_arrays(X, y, ids, n_classes=6)
    assert ds.n_classes == 6
    with pytest.raises(BadInput, match=r"y row 2 \(id 'r2'\) is 4, not below --n-classes 4"):
        from_arrays(X, y, ids, n_classes=4)
    path = _npz(tmp_path, "gap.npz", X=X, y=y, ids=np.asarray(ids))
    with Workspace.create(tmp_path / "ws", data=path, config=SMALL, n_classes=6) as ws:
        assert ws.data.n_classes == 6
    with Workspace.open(tmp_path / "ws") as ws:  # the count survives reopening (it is stored with the data)
        assert ws.data.n_classes == 6


def test_cli_gap_in_labels_exit_2_one_line_and_n_classes_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    X, y, ids = _data()
    path = _npz(tmp_path, "gap.npz", X=X, y=np.asarray([(0, 2, 4)[int(v)] for v in y]), ids=np.asarray(ids))
    assert vmu_main(["init", str(tmp_path / "a"), "--data", path]) == 2
    err = capsys.readouterr().err
    assert "or pass --n-classes 5 if those classes are real" in err and err.count("\n") == 1
    assert not (tmp_path / "a").exists()
    assert vmu_main(["init", str(tmp_path / "b"), "--data", path, "--n-classes", "5", "--shards", "2", "--slices", "2"]) == 0


def test_object_arrays_are_refused_without_suggesting_pickle(tmp_path: Path) -> None:
    X, y, _ = _data()
    path = _npz(tmp_path, "obj.npz", X=X, y=y, ids=np.asarray([object()] * len(y), dtype=object))
    with pytest.raises(BadInput) as ei:
        load_npz(path)
    msg = str(ei.value)
    assert "holds Python objects (an object array), which vmu never loads" in msg
    assert "allow_pickle" not in msg and "pickle=True" not in msg
    assert "ids=np.asarray(ids, dtype=str)" in msg


def test_forget_with_a_string_is_refused_before_torch_is_imported(tmp_path: Path) -> None:
    """``ws.forget("17")`` would have deleted records '1' and '7'."""
    code = f"""
import sys, numpy as np
from prover import Workspace, WorkspaceConfig, from_arrays
from prover._errors import BadInput
rng = np.random.default_rng(0)
X, y = rng.random((40, 4), dtype=np.float32), np.arange(40) % 3
ws = Workspace.create({str(tmp_path / 'ws')!r}, data=from_arrays(X, y), config=WorkspaceConfig(shards=2, slices=2))
for bad in ("17", b"17", 17, {{"17": 1}}):
    try:
        ws.forget(bad)
    except BadInput as e:
        print(type(bad).__name__, "|", e)
print("torch imported:", "torch" in sys.modules)
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert "str | ids must be a list of record ids, not a str (for one record: ['17'])" in lines
    assert "bytes | ids must be a list of record ids, not a bytes (for one record: ['17'])" in lines
    assert "int | ids must be a list of record ids, not a int" in lines
    assert "dict | ids must be a list of record ids, not a dict" in lines
    assert lines[-1] == "torch imported: False"


def test_bundle_out_path_errors_are_exit_2_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path / "never-opened")  # not even a workspace: the path is checked first
    assert vmu_main(["bundle", d, "--out", str(tmp_path / "no" / "such" / "b.vmu"), "--all"]) == 2
    err = capsys.readouterr().err
    assert f"the directory {tmp_path / 'no' / 'such'} does not exist" in err and err.count("\n") == 1
    assert vmu_main(["bundle", d, "--out", str(tmp_path), "--all"]) == 2
    assert "is a directory; give a file name" in capsys.readouterr().err


def test_ctrl_c_exits_130(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    def interrupted(*a: Any, **k: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(Workspace, "open", classmethod(lambda cls, *a, **k: interrupted()))
    assert vmu_main(["status", str(tmp_path)]) == 130
    assert "vmu: interrupted; run the same command again to finish the job" in capsys.readouterr().err
    import verifier.cli as vcli

    monkeypatch.setattr(vcli, "verify", interrupted)
    bundle = ROOT / "tests" / "golden" / "bundle_honest.vmu"
    assert vcli.main([str(bundle), "--no-residual"]) == 130
    assert capsys.readouterr().err.endswith("vmu-verify: interrupted: no verdict\n")


def test_status_ids_lists_each_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path / "ws")
    with Workspace.create(d, data="digits", config=SMALL) as ws:
        with pytest.raises(BadInput, match="the splits are fixed when the workspace is committed"):
            ws.split_ids("train")
        ws.progress = False
        ws.train()
        train = ws.split_ids("train")
        victim = train[0]
        ws.forget([victim])
    got = {}
    for split in ("train", "test", "audit", "deleted"):
        assert vmu_main(["status", d, "--ids", split]) == 0
        got[split] = capsys.readouterr().out.splitlines()
    assert got["deleted"] == [victim] and victim not in got["train"]
    assert len(got["train"]) == len(train) - 1
    assert not set(got["train"]) & set(got["test"]) and not set(got["test"]) & set(got["audit"])
    assert len(got["train"]) + len(got["test"]) + len(got["audit"]) + 1 == 1797
    with pytest.raises(SystemExit) as e:
        vmu_main(["status", d, "--ids", "everything"])
    assert e.value.code == 2
    assert os.path.isdir(d)


def test_forget_validates_ids_before_torch_is_imported(tmp_path: Path) -> None:
    d = str(tmp_path / "ws")
    with Workspace.create(d, data="digits", config=SMALL) as ws:
        ws.progress = False
        ws.train()
        deleted = ws.split_ids("train")[0]
        ws.forget([deleted])
    code = f"""
import sys
from prover import Workspace
from prover._errors import BadInput
with Workspace.open({d!r}) as ws:
    for bad in (["no-such-id"], [{deleted!r}]):
        try:
            ws.forget(bad)
        except BadInput as e:
            print("BadInput |", e)
print("torch imported:", "torch" in sys.modules)
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert any(ln.startswith("BadInput |") and "unknown record id" in ln for ln in lines), lines
    assert any(ln.startswith("BadInput |") and "already deleted" in ln for ln in lines), lines
    assert lines[-1] == "torch imported: False"
