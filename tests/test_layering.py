"""Layering: the verifier never imports the prover, and its proof checks never import torch."""

from __future__ import annotations

import os
import subprocess
import sys

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
