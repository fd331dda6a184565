"""What the proof-only install lacks, and the one message that says so.

``pip install verifiable-mu`` installs the shared core and a verifier that checks every proof
(steps 1-17 of specs/09-verification.md) with numpy, cryptography, rfc8785 and safetensors only.
Training (the prover), replay (step 18) and the residual tests (step 19) need the modules of the
``full`` extra: ``pip install 'verifiable-mu[full]'``. Code that needs them calls :func:`require`
before it imports them, so a proof-only install answers with one line naming the extra instead
of a traceback; :func:`missing_module` recognises the same case in an ImportError raised
elsewhere.

This module imports nothing heavy (it only asks the import system whether a module exists).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

from ._errors import FullInstallRequired

__all__ = ["FULL_EXTRA", "FULL_INSTALL", "FULL_MODULES", "missing_module", "require"]

#: The extra that adds training, replay and the residual tests.
FULL_EXTRA = "full"
FULL_INSTALL = "pip install 'verifiable-mu[full]'"
#: Top-level modules of the full extra (import names, not distribution names).
FULL_MODULES = ("torch", "scipy", "sklearn", "tqdm")


def require(modules: Sequence[str], purpose: str, alternative: str = "", extra: str = FULL_EXTRA) -> None:
    """Raise :class:`FullInstallRequired` unless every module of ``modules`` can be imported.

    ``purpose`` names what needs them ("step 18 (replay)"); ``alternative`` (optional) says what
    the user can do without them; ``extra`` is the extra that installs them.
    """
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        tail = f", or {alternative}" if alternative else ""
        raise FullInstallRequired(
            f"{purpose} needs {' and '.join(missing)}, which this install lacks: install it with "
            f"pip install 'verifiable-mu[{extra}]'{tail}"
        )


def missing_module(e: BaseException) -> str | None:
    """The full-extra module whose absence raised ``e``, or None if ``e`` is something else."""
    if isinstance(e, ModuleNotFoundError) and e.name:
        top = e.name.split(".")[0]
        if top in FULL_MODULES:
            return top
    return None
