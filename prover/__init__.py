"""verifiable-mu prover: committed SISA training, unlearning on request, signed transcripts.

Typical use::

    from prover import Workspace, WorkspaceConfig, from_arrays

    ws = Workspace.create("ws", data=from_arrays(X, y), config=WorkspaceConfig(shards=5, slices=4))
    ws.train()
    report = ws.forget(["17", "42"])   # writes a DSSE-signed deletion transcript
    ws.close()
"""

from ._data import Dataset, from_arrays, from_torch_dataset, load_digits_dataset, load_npz
from ._errors import BadInput, ProverError, TrainingDiverged, UnsupportedWorkspace, WorkspaceError, WorkspaceLocked
from ._sisa import expected_speedup, stage_epochs
from ._workspace import FORMAT_VERSION, PREDICATE_DELETION, ForgetReport, TrainReport, Workspace, WorkspaceConfig

__all__ = [
    "Workspace",
    "WorkspaceConfig",
    "TrainReport",
    "ForgetReport",
    "Dataset",
    "from_arrays",
    "from_torch_dataset",
    "load_digits_dataset",
    "load_npz",
    "expected_speedup",
    "stage_epochs",
    "FORMAT_VERSION",
    "PREDICATE_DELETION",
    "ProverError",
    "BadInput",
    "WorkspaceError",
    "TrainingDiverged",
    "WorkspaceLocked",
    "UnsupportedWorkspace",
]
