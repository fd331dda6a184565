"""The proof-only install (issue 12): ``pip install verifiable-mu`` without the ``full`` extra.

It checks every proof (steps 1-17) with numpy, cryptography, rfc8785 and safetensors only, and
says in one line (exit code 2, nothing judged) that replay, the residual tests, ``--html`` and the
prover need the extras.

The tests run in two places:

* in the full test environment, each command runs in a subprocess whose import system refuses
  torch, scipy, scikit-learn, tqdm, jinja2 and matplotlib (as the proof-only install lacks them);
* in CI, scripts/check.sh also runs this file in a second virtual environment that has none of
  them installed (``VMU_PROOF_ONLY=1``, ``pytest --noconftest``), where the commands run as they
  are and the first test checks that the environment really lacks them.

This file imports nothing of the project and nothing outside the standard library and pytest.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
REAL = os.environ.get("VMU_PROOF_ONLY") == "1"  # running in the proof-only environment itself
ABSENT = ("torch", "scipy", "sklearn", "tqdm", "jinja2", "matplotlib")

_BLOCK = f"""
import sys
class _Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {ABSENT!r}:
            raise ModuleNotFoundError("No module named " + repr(name), name=name)
        return None
sys.meta_path.insert(0, _Absent())
import importlib.util
_find = importlib.util.find_spec
def _find_spec(name, package=None):
    if name.split(".")[0] in {ABSENT!r}:
        return None
    return _find(name, package)
importlib.util.find_spec = _find_spec
from MODULE import main
sys.exit(main(sys.argv[1:]))
"""


def _run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m <module>.cli args`` as the proof-only install runs it."""
    if REAL:
        cmd = [sys.executable, "-m", module.split(".")[0], *args]
    else:
        cmd = [sys.executable, "-c", _BLOCK.replace("MODULE", module), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False, timeout=300)


def _verify(*args: str) -> subprocess.CompletedProcess[str]:
    return _run("verifier.cli", *args)


def test_the_environment_lacks_the_full_extra() -> None:
    """In the proof-only environment the heavy modules are really absent; elsewhere the blocker
    makes them absent for the subprocess (checked here by importing one through it)."""
    if REAL:
        assert [m for m in ABSENT if importlib.util.find_spec(m) is not None] == []
    else:
        code = _BLOCK.split("from MODULE")[0] + "import torch\n"
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        assert p.returncode == 1 and "No module named 'torch'" in p.stderr


def test_proofs_of_the_honest_bundle_pass_without_the_full_extra() -> None:
    p = _verify(str(GOLDEN / "bundle_honest.vmu"), "--unsafe-no-replay", "--no-residual")
    assert p.returncode == 0, p.stderr
    for step in range(1, 18):
        assert f"] {step:2d}. " in p.stdout and f"[ PASS] {step:2d}. " in p.stdout
    assert "[ skip] 18. replay: turned off (--unsafe-no-replay)" in p.stdout
    assert "UNSAFE NO REPLAY" in p.stdout and "Traceback" not in p.stderr


_EXPECTED = json.loads((GOLDEN / "expected.json").read_text())
_PROOF_CASES = sorted(k for k, v in _EXPECTED.items() if v["step"] is not None and v["step"] <= 17)


@pytest.mark.parametrize("name", _PROOF_CASES)
def test_golden_rejections_of_steps_1_to_17_without_the_full_extra(name: str) -> None:
    """Every golden bundle that fails a proof step fails it the same way without torch."""
    exp = _EXPECTED[name]
    p = _verify(str(GOLDEN / name), "--unsafe-no-replay", "--no-residual")
    assert p.returncode == exp["exit"], p.stderr
    assert f"step {exp['step']}: " in p.stderr and exp["match"] in p.stderr
    assert "Traceback" not in p.stderr


def test_step_18_without_torch_is_unusable_input_naming_the_full_extra() -> None:
    p = _verify(str(GOLDEN / "bundle_honest.vmu"), "--no-residual")
    assert p.returncode == 2
    assert ("vmu-verify: unusable: step 18: replaying segments needs torch, which this install lacks: install it "
            "with pip install 'verifiable-mu[full]', or pass --unsafe-no-replay") in p.stderr
    assert "[ PASS] 17. sampling" in p.stdout and "Traceback" not in p.stderr


def test_step_19_without_the_full_extra_is_unusable_input() -> None:
    p = _verify(str(GOLDEN / "bundle_honest.vmu"), "--unsafe-no-replay")
    assert p.returncode == 2
    assert "vmu-verify: unusable: step 19: the residual tests needs torch and scipy and sklearn" in p.stderr
    assert "pip install 'verifiable-mu[full]', or pass --no-residual" in p.stderr and "Traceback" not in p.stderr


def test_html_without_the_report_extra_is_refused_before_reading_the_bundle(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    p = _verify(str(tmp_path / "no-such-bundle.vmu"), "--no-residual", "--html", str(out))
    assert p.returncode == 2 and not out.exists()
    assert p.stderr.startswith("vmu-verify: error: --html needs jinja2 and matplotlib, which this install lacks: "
                               "install it with pip install 'verifiable-mu[report]'")
    assert p.stderr.count("\n") == 1


def test_the_prover_says_it_needs_the_full_extra(tmp_path: Path) -> None:
    p = _run("prover.cli", "init", str(tmp_path / "ws"))
    assert p.returncode == 2
    assert p.stderr.startswith("vmu: error: 'vmu init' needs sklearn, which this install lacks (the proof-only "
                               "install): install the full one with pip install 'verifiable-mu[full]'")
    assert "Traceback" not in p.stderr


def test_version_works_without_the_full_extra() -> None:
    for module, name in (("verifier.cli", "vmu-verify"), ("prover.cli", "vmu")):
        p = _run(module, "--version")
        assert p.returncode == 0 and p.stdout.startswith(f"{name} (verifiable-mu) ")


def test_the_base_install_requires_none_of_the_full_extra() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("=")[0].split("<")[0].strip() for d in project["dependencies"]}
    assert names == {"numpy", "cryptography", "rfc8785", "safetensors"}
    full = {d.split(">")[0].split("=")[0].split("<")[0].strip() for d in project["optional-dependencies"]["full"]}
    assert full == {"torch", "scikit-learn", "scipy", "tqdm", "opacus"}
