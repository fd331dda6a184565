"""Audit packages (specs/12-audit-package.md): what an *unproven* unlearning claim can offer an
agency -- the models before and after, the deleted records, the committed audit set and the model
spec, every member's SHA-256 in an in-toto statement signed by the owner's key (DSSE). The only
check an agency can run on it is a statistical residual audit (``vmu-audit``), never a proof.
"""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from verifiable_mu._canonical import canonical_json
from verifiable_mu._dsse import make_statement, sign_statement
from verifiable_mu._records import RecordOpening, record_key
from verifiable_mu._seeds import atomic_write
from verifiable_mu._sorted_tree import SortedTree

from ._approx import UNPROVEN_LABEL, ApproxResult
from ._errors import BadInput

__all__ = [
    "PREDICATE_AUDIT_PACKAGE",
    "PACKAGE_TYPE",
    "PACKAGE_VERSION",
    "EXACT_LABEL",
    "STATEMENT_MEMBER",
    "build_package",
    "write_package",
    "exact_forget_result",
]

PREDICATE_AUDIT_PACKAGE = "https://verifiable-mu.dev/audit-package/v1"
PACKAGE_TYPE = "vmu.audit-package"
PACKAGE_VERSION = 1
#: The label of a package from the exact method: its proof is the deletion transcript and bundle,
#: never this package.
EXACT_LABEL = "unproven in this package: exact retraining claimed, proven only by its bundle"
STATEMENT_MEMBER = "statement.dsse.json"
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def _safetensors(ckpt: dict[str, Any]) -> tuple[bytes, bytes]:
    """``(content digest, file bytes)`` of a checkpoint (the workspace's own file format)."""
    from verifiable_mu.training import save_checkpoint

    with tempfile.TemporaryDirectory(prefix="vmu-pkg-") as d:
        digest = save_checkpoint(ckpt, d)
        with open(os.path.join(d, digest.hex() + ".safetensors"), "rb") as f:
            return digest, f.read()


def exact_forget_result(ws: Any, ids: Sequence[str], **forget_kw: Any) -> tuple[ApproxResult, Any]:
    """Run the exact method (:meth:`Workspace.forget`: SISA retraining, logged, with a transcript)
    and return its models before and after in the shape of an :class:`ApproxResult` (for a
    package from the same code path), with the forget report."""
    import time

    from ._approx import _load

    recs = ws._validate_ids([str(i) for i in ids])
    pre = [_load(ws, d) for d in ws._shard_digests()]
    t0 = time.perf_counter()
    rep = ws.forget(list(ids), **forget_kw)
    seconds = time.perf_counter() - t0
    post = [_load(ws, d) for d in ws._shard_digests()]
    trained = [(row, shard) for row, _rid, shard, *_ in recs if shard is not None]
    res = ApproxResult(
        method="retrain",
        label=EXACT_LABEL,
        ids=tuple(str(i) for i in ids),
        deleted_rows=np.asarray([r for r, _ in trained], dtype=np.int64),
        shard_of_deleted=np.asarray([s for _, s in trained], dtype=np.int64),
        held_out_ids=tuple(rid for _row, rid, shard, *_ in recs if shard is None),
        shards_changed=tuple(rep.shards_retrained),
        pre=pre,
        post=post,
        seconds=seconds,
        params={},
        details={"request": rep.request, "transcript": os.path.basename(rep.transcript_path)},
    )
    return res, rep


def build_package(ws: Any, res: ApproxResult) -> bytes:
    """The package's zip bytes (deterministic for the same inputs and signing key)."""
    if res.method != "retrain" and res.label != UNPROVEN_LABEL:
        raise BadInput("an approximate method's package must carry the label " + repr(UNPROVEN_LABEL))
    if len(res.deleted_rows) == 0:
        raise BadInput("the request deletes no trained record: there is nothing a residual audit could test")
    ds = ws.data
    salts = ws._state.salts()

    def opening(row: int) -> RecordOpening:
        return RecordOpening(id=ds.ids[row], features=ds.X[row], label=int(ds.y[row]), salt=salts[row])

    deleted = [opening(int(r)) for r in res.deleted_rows]
    audit_rows = [int(r) for r in ws.split_rows("audit")]
    audit = [opening(r) for r in audit_rows]
    if not audit:
        raise BadInput("the workspace has no audit records (audit_fraction 0): a residual audit needs them")
    tree = SortedTree.build((record_key(o.id), o.commitment()) for o in audit)
    committed = ws.log.entry(2 + ws.config.shards * ws.config.slices).body
    members: dict[str, bytes] = {}
    digests: dict[str, list[str]] = {"pre": [], "post": []}
    for phase, ckpts in (("pre", res.pre), ("post", res.post)):
        for s, ck in enumerate(ckpts):
            d, blob = _safetensors(ck)
            members[f"models/{phase}/shard-{s:04d}.safetensors"] = blob
            digests[phase].append(d.hex())
    members["model.json"] = canonical_json(ws._model_spec().to_json())
    members["records/deleted.json"] = canonical_json({
        "type": "vmu.audit-deleted-records", "version": 1,
        "records": [{"shard": int(s), "opening": o.to_json()} for o, s in zip(deleted, res.shard_of_deleted, strict=True)],
    })
    members["records/audit.json"] = canonical_json({
        "type": "vmu.audit-set", "version": 1, "records": [o.to_json() for o in audit],
    })
    with open(os.path.join(ws.path, "signing-key.pub.pem"), "rb") as f:
        members["owner.pub.pem"] = f.read()
    import hashlib

    predicate = {
        "type": PACKAGE_TYPE,
        "version": PACKAGE_VERSION,
        "label": res.label,
        "method": res.method,
        "params": res.params,
        "origin": ws.log_origin,
        "shards": len(res.pre),
        "models": digests,
        "deleted": {
            "count": str(len(deleted)),
            "commitments": [o.commitment().hex() for o in deleted],
            "held_out_ids": list(res.held_out_ids),
        },
        "audit": {
            "root": tree.root.hex(),
            "size": str(len(tree)),
            "committed_root": str(committed.get("root", "")),
            "committed_size": str(committed.get("size", "")),
        },
        "seconds": repr(float(res.seconds)),
    }
    statement = make_statement(
        subjects=[(name, {"sha256": hashlib.sha256(blob).hexdigest()}) for name, blob in sorted(members.items())],
        predicate_type=PREDICATE_AUDIT_PACKAGE,
        predicate=predicate,
    )
    env = sign_statement(statement, [ws._key])
    members[STATEMENT_MEMBER] = env.to_bytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name in [STATEMENT_MEMBER, *sorted(n for n in members if n != STATEMENT_MEMBER)]:
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            z.writestr(info, members[name])
    return buf.getvalue()


def write_package(ws: Any, res: ApproxResult, out: str | os.PathLike[str]) -> str:
    """Write the package to ``out`` atomically; return the path."""
    data = build_package(ws, res)
    path = os.fspath(out)
    atomic_write(path, data)
    return path
