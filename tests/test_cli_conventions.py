"""Conventions a scripted user relies on (issue 12): --version, python -m, JSON alone on stdout
with --json -, and a quiet stop when the reader of stdout goes away."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "tests", "golden", "bundle_honest.vmu")
ENV = dict(os.environ, PYTHONPATH=ROOT)


@pytest.mark.parametrize(("module", "prog"), [("verifier", "vmu-verify"), ("prover", "vmu")])
def test_version_and_python_dash_m(module: str, prog: str) -> None:
    from verifiable_mu import __version__

    r = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, env=ENV, cwd=ROOT,
                       timeout=120)  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip() == f"{prog} (verifiable-mu) {__version__}", r
    assert __version__ != "unknown"  # the package is installed where the tests run


def test_json_dash_writes_only_json_to_stdout() -> None:
    r = subprocess.run([sys.executable, "-m", "verifier", GOLDEN, "--no-residual", "--replay", "6", "--json", "-"],
                       capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)  # nothing but the report
    assert report["verdict"] == "accepted" and report["exit_code"] == 0, report["verdict"]
    assert "verdict:" in r.stderr  # the human summary went to stderr


@pytest.mark.parametrize("module", ["verifier", "prover"])
def test_closed_stdout_stops_quietly(module: str) -> None:
    args = [GOLDEN, "--no-residual", "--unsafe-no-replay"] if module == "verifier" else ["--help"]
    p = subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=ENV, cwd=ROOT)  # fmt: skip
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()  # the reader is gone before anything is written (as with | head -0)
    err = p.stderr.read().decode()
    code = p.wait(timeout=300)
    assert "Broken pipe" not in err and "Traceback" not in err, err
    if module == "verifier":
        assert code == 141, (code, err)


def test_package_metadata_has_license_classifiers_and_urls() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert project["license"] == {"text": "Apache-2.0"}
    assert os.path.isfile(os.path.join(root, "LICENSE"))
    assert "License :: OSI Approved :: Apache Software License" in project["classifiers"]
    assert "Typing :: Typed" in project["classifiers"]
    assert {"Homepage", "Source", "Issues"} <= set(project["urls"])
    assert all(u.startswith("https://") for u in project["urls"].values())
