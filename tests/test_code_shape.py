"""Issue 11: each phase in a file of its own, and every function readable in one sitting.

No module of the core, ``prover/`` or ``verifier/`` is longer than :data:`MAX_MODULE_LINES`, and no function
or method there is longer than :data:`MAX_FUNCTION_LINES` (decorators and docstring included).
A module or function that needs more is listed in :data:`EXCEPTIONS` with the reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("verifiable_mu", "prover", "verifier")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
#: "path" or "path:function" -> why it may be longer (none today).
EXCEPTIONS: dict[str, str] = {}


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).glob("*.py"))


def long_modules(paths: list[Path], limit: int = MAX_MODULE_LINES, root: Path = ROOT) -> list[str]:
    return [f"{p.relative_to(root)} ({n} lines)" for p in paths
            if (n := len(p.read_text().splitlines())) > limit and str(p.relative_to(root)) not in EXCEPTIONS]


def long_functions(paths: list[Path], limit: int = MAX_FUNCTION_LINES, root: Path = ROOT) -> list[str]:
    out = []
    for p in paths:
        rel = str(p.relative_to(root))
        for node in ast.walk(ast.parse(p.read_text(), filename=rel)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                n = (node.end_lineno or node.lineno) - first + 1
                if n > limit and f"{rel}:{node.name}" not in EXCEPTIONS:
                    out.append(f"{rel}:{node.lineno} {node.name} ({n} lines)")
    return out


def test_the_packages_have_sources() -> None:
    assert len(_sources()) > 100


def test_no_module_of_the_core_the_prover_or_the_verifier_is_over_500_lines() -> None:
    assert long_modules(_sources()) == []


def test_no_function_of_the_core_the_prover_or_the_verifier_is_over_80_lines() -> None:
    assert long_functions(_sources()) == []


def test_the_shape_checks_see_a_long_module_and_a_long_function(tmp_path: Path) -> None:
    """The checks above can fail: a 501-line module and an 81-line function are reported."""
    body = "\n".join(f"    x{i} = {i}" for i in range(80))
    src = f"@staticmethod\ndef f():\n{body}\n" + "\n" * (501 - 82)
    p = tmp_path / "probe.py"
    p.write_text(src)
    assert long_modules([p], root=tmp_path) == ["probe.py (501 lines)"]
    assert long_modules([p], limit=501, root=tmp_path) == []
    assert long_functions([p], root=tmp_path) == ["probe.py:2 f (82 lines)"]
    assert long_functions([p], limit=82, root=tmp_path) == []

