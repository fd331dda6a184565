"""Layering: the verifier never imports the prover, and its proof checks never import torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _modules_after(code: str) -> set[str]:
    r = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print('\\n'.join(sorted(sys.modules)))"],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return set(r.stdout.split())


def test_verifier_never_imports_prover() -> None:
    mods = _modules_after("import verifier, verifier.cli, verifier._checks, verifier._replay, verifier._report")
    assert not {m for m in mods if m == "prover" or m.startswith("prover.")}


def test_proof_checks_do_not_import_torch() -> None:
    mods = _modules_after("import verifier._checks, verifier._bundle, verifier._report, verifier.cli")
    assert "torch" not in mods and "verifiable_mu.training" not in mods


def test_proof_only_verification_does_not_import_torch() -> None:
    mods = _modules_after("from verifier import verify, VerifyOptions\nv = verify(b'not a bundle')")
    assert "torch" not in mods


def test_no_prover_import_in_verifier_sources() -> None:
    """Static check (the import-linter contract in pyproject.toml says the same)."""
    import re

    for name in os.listdir(os.path.join(ROOT, "verifier")):
        if name.endswith(".py"):
            with open(os.path.join(ROOT, "verifier", name), encoding="utf-8") as f:
                src = f.read()
            assert not re.search(r"^\s*(from|import)\s+prover\b", src, re.MULTILINE), name


def _lint_imports(cwd: str, *args: str, pythonpath: str) -> subprocess.CompletedProcess[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    return subprocess.run([exe, "--no-cache", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": pythonpath}, timeout=120)


def test_no_import_cycles_lazy_imports_included() -> None:
    """Issue 11: import-linter's contracts (pyproject.toml) hold, among them that no two modules of
    the core, the prover or the verifier import each other, a function-level import included."""
    r = _lint_imports(ROOT, pythonpath=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    out = " ".join(r.stdout.split())
    assert "No import cycles between the modules of the core, the prover or the verifier (lazy imports included) KEPT" in out


def test_import_linter_sees_lazy_import_cycles(tmp_path: Path) -> None:
    """The contract is not blind to what it must catch: a cycle whose one half is an import inside
    a function (what prover/_transcript.py and _workspace.py had) breaks it."""
    pkg = tmp_path / "cyc"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from . import b  # lazy\n    return b\n")
    (pkg / "b.py").write_text("from . import a\n")
    (tmp_path / ".importlinter").write_text(
        "[importlinter]\nroot_packages =\n    cyc\n\n[importlinter:contract:no-cycles]\nname = no cycles\n"
        "type = acyclic_siblings\nancestors =\n    cyc\n"
    )
    r = _lint_imports(str(tmp_path), "--config", str(tmp_path / ".importlinter"), pythonpath=str(tmp_path))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "no cycles BROKEN" in " ".join(r.stdout.split()) and "No cycles are allowed in cyc" in r.stdout
    (pkg / "a.py").write_text("def f():\n    return 1\n")  # the lazy import gone: kept
    r = _lint_imports(str(tmp_path), "--config", str(tmp_path / ".importlinter"), pythonpath=str(tmp_path))
    assert r.returncode == 0 and "no cycles KEPT" in " ".join(r.stdout.split()), r.stdout + r.stderr
