"""The workspace's model: a built-in one or a ``MODULE:FACTORY``, whose code the log commits
(specs/06 section 5b) and which must still be that code whenever it trains."""

from __future__ import annotations

from typing import Any

from ._config import WorkspaceConfig
from ._data import Dataset
from ._errors import BadInput

__all__ = ["BUILT_IN", "model_spec", "model_code", "check_code"]

BUILT_IN = ("mlp", "logreg", "cnn")


def model_spec(config: WorkspaceConfig, ds: Dataset) -> Any:
    """The :class:`verifiable_mu.training.ModelSpec` of ``config``'s model for the data set ``ds``."""
    from verifiable_mu.training import ModelSpec

    return ModelSpec(
        name=config.model, n_features=ds.n_features, n_classes=ds.n_classes, input_shape=ds.input_shape, hidden=config.hidden
    )


def source_of(model: str) -> dict[str, bytes]:
    from verifiable_mu._modelcode import ModelCodeError, locate_source

    try:
        return locate_source(model.partition(":")[0])
    except ModelCodeError as e:
        raise BadInput(f"--model {model}: {e}") from e


def model_code(config: WorkspaceConfig, ds: Dataset | None, spec: Any = None) -> dict[str, Any] | None:
    """Import and build a factory model; its ``model.code`` (specs/06 section 5b), or ``None``
    for a built-in model. One-line :class:`BadInput` on any failure. ``spec``: the model spec when
    known (the logged one), else built from ``ds``."""
    if config.model in BUILT_IN:
        return None
    from verifiable_mu._errors import MalformedInput
    from verifiable_mu.training import commit_model_code

    if spec is None:
        assert ds is not None
        spec = model_spec(config, ds)
    try:
        return commit_model_code(spec)
    except MalformedInput as e:
        msg = str(e)
        raise BadInput(msg if msg.startswith("--model") else f"--model {config.model}: {msg}") from e


def check_code(config: WorkspaceConfig, want: dict[str, Any] | None, now: dict[str, Any]) -> dict[str, Any]:
    """The committed ``model.code`` ``want`` once the code importable ``now`` has the same source
    files and builds the same structure; :class:`BadInput` otherwise (training with other code
    would log steps that no verifier can replay). ``want`` None (a workspace made before model
    code was committed): ``now``, bound from here on."""
    from verifiable_mu._modelcode import compare_files

    if want is None:
        return now
    why = compare_files(want["files"], source_of(config.model))
    if why is None and now["structure"] != want["structure"]:
        why = "the built model's structure (parameter names, shapes, dtypes) differs"
    if why is not None:
        raise BadInput(f"the model code differs from the code committed at init: {why}; restore that code (a "
                       "workspace's model cannot change)")
    return want
