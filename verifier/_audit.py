"""Residual-only audit of an audit package (specs/12-audit-package.md) -- a statistical audit,
not a proof.

Checks, in this order (the numbers are the package checklist's, ``AUDIT_STEPS``):

A1 archive    the zip's members: names, counts, sizes (unusable: exit 2)
A2 signature  the statement's DSSE signature by the owner's key (pinned with ``--trust-key``)
A3 digests    every member's SHA-256 equals the signed statement's subject, and every member is one
A4 contents   the predicate, the label, the records' commitments and the audit root, the models'
              content digests, all as signed
A5 residual   the residual tests and power rules of step 19 (specs/10-residual.md sections 2-4)
              on the package's models: post = the models after, pre = before (positive control)

A failed A2-A4 is a false claim (:class:`VerificationFailed`, exit 1); an unreadable member is
:class:`MalformedInput` (exit 2). Nothing in the package proves *how* the models after were
produced: an owner could ship any models. The audit asks only whether the deleted records look
like records those models never saw.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from verifiable_mu._dsse import Envelope, verify_statement
from verifiable_mu._errors import InvalidBundle, MalformedInput, SignatureFailed, VerificationFailed
from verifiable_mu._keys import VerifyingKey
from verifiable_mu._records import RecordOpening, record_key
from verifiable_mu._sorted_tree import SortedTree

from ._bundle import Limits, checkpoint_content_digest, open_archive, parse_json_bounded

__all__ = [
    "AUDIT_STEPS",
    "PREDICATE_AUDIT_PACKAGE",
    "LABELS",
    "NOT_A_PROOF",
    "AuditPackage",
    "PackageMismatch",
    "read_package",
    "audit_package",
]

PREDICATE_AUDIT_PACKAGE = "https://verifiable-mu.dev/audit-package/v1"
PACKAGE_TYPE = "vmu.audit-package"
STATEMENT_MEMBER = "statement.dsse.json"
APPROXIMATE = ("finetune", "neggrad", "fisher", "distill", "oblivi")
#: method -> the label its package must carry
LABELS = {
    **{m: "unproven: approximate unlearning" for m in APPROXIMATE},
    "retrain": "unproven in this package: exact retraining claimed, proven only by its bundle",
}
NOT_A_PROOF = ("statistical audit, not a proof: nothing in an audit package shows how the models after "
               "were produced; the audit only asks whether the deleted records look like records those "
               "models never saw, at the stated error rate and power")
AUDIT_STEPS = (
    ("A1", "archive", "the package's members are readable and within bounds"),
    ("A2", "signature", "the statement is signed by the owner's key"),
    ("A3", "digests", "every member has the SHA-256 the signed statement names"),
    ("A4", "contents", "records, audit root and model digests are those signed"),
    ("A5", "residual", "deleted records look like never-seen records (statistical; specs/10)"),
)
_NAME_RE = re.compile(
    r"statement\.dsse\.json|model\.json|owner\.pub\.pem|records/(deleted|audit)\.json|"
    r"models/(pre|post)/shard-[0-9]{4}\.safetensors"
)
_BUILTIN = ("mlp", "logreg", "cnn")
MAX_SHARDS = 1024


class PackageMismatch(VerificationFailed):
    """A package member or field is not what the owner's signed statement says (exit 1)."""


@dataclass(slots=True, kw_only=True)
class AuditPackage:
    predicate: dict[str, Any]
    key: VerifyingKey
    key_pinned: bool
    model: dict[str, Any]
    pre: list[tuple[bytes, bytes]]  # (content digest, safetensors bytes) per shard
    post: list[tuple[bytes, bytes]]
    deleted: list[RecordOpening]
    shard_of_deleted: list[int]
    audit: list[RecordOpening]
    member_digests: dict[str, str] = field(default_factory=dict)


def _read_zip(data: bytes, limits: Limits) -> dict[str, bytes]:
    """A1: the members, under the bundle reader's bounds (verifier._bundle.open_archive) with the
    package's own member names."""
    try:
        archive = open_archive(data, limits, names=_NAME_RE, max_members=2 * MAX_SHARDS + 8,
                               kind="an audit package", holds="an audit package of version 1")
        out = {name: archive.read(name, limits) for name in archive.infos}
    except InvalidBundle as e:
        raise InvalidBundle(f"step A1: {e}") from e
    for need in (STATEMENT_MEMBER, "model.json", "records/deleted.json", "records/audit.json"):
        if need not in out:
            raise InvalidBundle(f"step A1: the package lacks {need}")
    return out


def _json(members: Mapping[str, bytes], name: str, limits: Limits) -> Any:
    return parse_json_bounded(members[name], what=name, max_bytes=limits.max_json_bytes, max_depth=limits.max_json_depth)


def _typed(d: Any, what: str, typ: str) -> list[Any]:
    if not isinstance(d, dict) or d.get("type") != typ or d.get("version") != 1 or set(d) != {"type", "version", "records"}:
        raise InvalidBundle(f"{what} must be an object of type {typ!r}, version 1, with exactly type, version, records")
    if not isinstance(d["records"], list):
        raise InvalidBundle(f"{what} records must be a list")
    return d["records"]


def read_package(data: bytes, *, trust_key: VerifyingKey | None = None, limits: Limits | None = None) -> AuditPackage:
    """Steps A1-A4. Raises :class:`MalformedInput` (exit 2) or :class:`VerificationFailed` (exit 1)."""
    limits = limits or Limits()
    members = _read_zip(data, limits)  # A1
    key, key_pinned, stmt = _signed_statement(members, trust_key, limits)  # A2
    digests = _check_subjects(stmt, members)  # A3
    # A4: the predicate and what it binds.
    p = stmt["predicate"]
    if not isinstance(p, dict) or p.get("type") != PACKAGE_TYPE:
        raise InvalidBundle(f"the statement's predicate is not of type {PACKAGE_TYPE!r}")
    if p.get("version") != 1:
        raise InvalidBundle(f"audit package version {p.get('version')!r} is not supported (only 1)")
    method = p.get("method")
    if method not in LABELS:
        raise InvalidBundle(f"unknown unlearning method {str(method)[:80]!r} (known: {', '.join(LABELS)})")
    if p.get("label") != LABELS[method]:
        raise PackageMismatch(f"step A4: a {method} package must be labelled {LABELS[method]!r}, not {str(p.get('label'))[:120]!r}")
    model = _json(members, "model.json", limits)
    if not isinstance(model, dict) or str(model.get("name")) not in _BUILTIN:
        raise InvalidBundle(f"the package's model must be a built-in model ({', '.join(_BUILTIN)}); factories are not "
                            "supported in audit packages")
    S = p.get("shards")
    if not isinstance(S, int) or isinstance(S, bool) or not 1 <= S <= MAX_SHARDS:
        raise InvalidBundle("the predicate's shards must be an integer between 1 and 1024")
    models = p.get("models")
    if not isinstance(models, dict) or set(models) != {"pre", "post"}:
        raise InvalidBundle("the predicate's models must name pre and post digests")
    files = _model_files(models, members, S)
    deleted, shards, audit = _package_records(p, members, limits, S)
    return AuditPackage(
        predicate=p, key=key, key_pinned=key_pinned, model=model, pre=files["pre"], post=files["post"],
        deleted=deleted, shard_of_deleted=shards, audit=audit, member_digests=digests,
    )




def _signed_statement(members: dict[str, bytes], trust_key: VerifyingKey | None,
                      limits: Limits) -> tuple[VerifyingKey, bool, dict[str, Any]]:
    """A2: the signature, before anything the statement says is used."""
    key_pinned = trust_key is not None
    if trust_key is None:
        if "owner.pub.pem" not in members:
            raise InvalidBundle("the package ships no owner.pub.pem and no --trust-key was given")
        key = VerifyingKey.from_pem(members["owner.pub.pem"])
    else:
        key = trust_key
    try:
        env = Envelope.from_json(_json(members, STATEMENT_MEMBER, limits))
        stmt = verify_statement(env, [key], predicate_type=PREDICATE_AUDIT_PACKAGE)
    except MalformedInput as e:
        raise type(e)(f"step A2: {e}") from e
    except SignatureFailed as e:
        which = "pinned" if key_pinned else "package's"
        raise SignatureFailed(f"step A2: bad signature: the package statement is not signed by the {which} key "
                              f"{key.key_id[:16]}: {e}") from e
    return key, key_pinned, stmt


def _check_subjects(stmt: dict[str, Any], members: dict[str, bytes]) -> dict[str, str]:
    """A3: every member named, with its digest; every subject present. Returns the members' digests."""
    subjects = {s["name"]: s["digest"]["sha256"] for s in stmt["subject"]}
    digests = {n: hashlib.sha256(b).hexdigest() for n, b in members.items() if n != STATEMENT_MEMBER}
    for name, want in sorted(subjects.items()):
        if name not in digests:
            raise PackageMismatch(f"step A3: the signed statement names {name!r}, which the package lacks")
        if digests[name] != want:
            raise PackageMismatch(f"step A3: digest mismatch: {name} has SHA-256 {digests[name][:16]}..., the signed "
                                  f"statement says {want[:16]}...")
    extra = sorted(set(digests) - set(subjects))
    if extra:
        raise PackageMismatch(f"step A3: package member {extra[0]!r} is not covered by the signed statement")
    return digests


def _model_files(models: dict[str, Any], members: dict[str, bytes], S: int) -> dict[str, list[tuple[bytes, bytes]]]:
    """A4: the pre- and post-deletion constituents, each the content the statement names."""
    files: dict[str, list[tuple[bytes, bytes]]] = {}
    for phase in ("pre", "post"):
        lst = models[phase]
        if not isinstance(lst, list) or len(lst) != S:
            raise InvalidBundle(f"the predicate must name {S} {phase} model digests")
        files[phase] = []
        for s, dh in enumerate(lst):
            name = f"models/{phase}/shard-{s:04d}.safetensors"
            if name not in members:
                raise InvalidBundle(f"the package lacks {name}")
            try:
                want = bytes.fromhex(dh)
            except (TypeError, ValueError) as e:
                raise InvalidBundle(f"{phase} model digest {s} is not hex") from e
            got = checkpoint_content_digest(members[name], what=name)
            if got != want:
                raise PackageMismatch(f"step A4: {name} has content digest {got.hex()[:16]}..., the statement says "
                                      f"{str(dh)[:16]}...")
            files[phase].append((want, members[name]))
    return files


def _package_records(p: dict[str, Any], members: dict[str, bytes], limits: Limits,
                     S: int) -> tuple[list[RecordOpening], list[int], list[RecordOpening]]:
    """A4: the deleted records (with their shards) and the audit set, the records the statement commits to."""
    deleted, shards = [], []
    for i, r in enumerate(_typed(_json(members, "records/deleted.json", limits), "records/deleted.json",
                                 "vmu.audit-deleted-records")):
        if not isinstance(r, dict) or set(r) != {"shard", "opening"}:
            raise InvalidBundle(f"deleted record {i} must have exactly shard and opening")
        s = r["shard"]
        if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s < S:
            raise InvalidBundle(f"deleted record {i}: shard must be an integer in [0, {S})")
        deleted.append(RecordOpening.from_json(r["opening"]))
        shards.append(s)
    audit = [RecordOpening.from_json(o) for o in _typed(_json(members, "records/audit.json", limits),
                                                         "records/audit.json", "vmu.audit-set")]
    dp = p.get("deleted")
    if not isinstance(dp, dict) or not isinstance(dp.get("commitments"), list):
        raise InvalidBundle("the predicate's deleted must list the records' commitments")
    if [o.commitment().hex() for o in deleted] != dp["commitments"] or dp.get("count") != str(len(deleted)):
        raise PackageMismatch("step A4: the deleted records' openings are not the records the statement commits to")
    if not deleted:
        raise InvalidBundle("the package deletes no trained record: there is nothing to audit")
    ap = p.get("audit")
    if not isinstance(ap, dict):
        raise InvalidBundle("the predicate's audit must be an object")
    if not audit:
        raise InvalidBundle("the package has no audit records")
    keys = [record_key(o.id) for o in audit]
    if len(set(keys)) != len(keys):
        raise InvalidBundle("the audit set names a record twice")
    root = SortedTree.build((record_key(o.id), o.commitment()) for o in audit).root
    if root.hex() != ap.get("root") or ap.get("size") != str(len(audit)):
        raise PackageMismatch("step A4: the audit records do not hash to the audit root the statement commits to")
    if {o.commitment() for o in audit} & {o.commitment() for o in deleted}:
        raise PackageMismatch("step A4: a deleted record is also in the audit set")
    return deleted, shards, audit


def audit_package(pkg: AuditPackage, *, alpha: float = 0.05, n_boot: int = 1000) -> dict[str, Any]:
    """Step A5: step 19's residual tests and decision on the package's models. Returns the JSON
    report (``verdict``: pass / fail / inconclusive, with ``statistical_audit_not_a_proof``)."""
    import numpy as np

    from verifiable_mu._extras import require

    require(("torch", "scipy", "sklearn"), "the residual audit", "install verifiable-mu[full]")
    from . import _models, _residual, _robust
    from ._steps_residual import residual_seed

    post = _models.load_models(pkg.model, pkg.post)
    pre = _models.load_models(pkg.model, pkg.pre)

    def stack(lst: Sequence[RecordOpening]) -> tuple[Any, Any]:
        return (np.stack([np.asarray(o.features, dtype=np.float32).reshape(-1) for o in lst]),
                np.asarray([o.label for o in lst], dtype=np.int64))

    dX, dy = stack(pkg.deleted)
    aX, ay = stack(pkg.audit)
    rep = _residual.residual_tests(
        post_models=post, pre_models=pre, shard_of_deleted=pkg.shard_of_deleted, deleted_X=dX, deleted_y=dy,
        audit_X=aX, audit_y=ay, alpha=alpha, n_boot=n_boot, seed=residual_seed(pkg.deleted),
    )
    residual = rep.to_json()
    # Informative, as in step 19: robust accuracy under PGD before and after (specs/10 section 7b).
    rob = _robust.robustness([getattr(f, "module", None) for f in pre], [getattr(f, "module", None) for f in post], aX, ay)
    residual["robustness"] = rob.to_json() if rob else None
    p = pkg.predicate
    warnings = [] if pkg.key_pinned else [
        "KEY NOT PINNED: the package was checked against the public key it ships (pass --trust-key with the "
        "owner's key to pin it)"]
    return {
        "type": "vmu.audit-report",
        "version": 1,
        "statistical_audit_not_a_proof": True,
        "statement": NOT_A_PROOF,
        "verdict": rep.verdict,
        "reason": rep.reason,
        "package": {
            "method": p.get("method"),
            "label": p.get("label"),
            "origin": p.get("origin"),
            "owner_key_id": pkg.key.key_id,
            "key_pinned": pkg.key_pinned,
            "shards": p.get("shards"),
            "deleted": len(pkg.deleted),
            "audit": len(pkg.audit),
            "members": pkg.member_digests,
        },
        "steps": [{"step": n, "name": name, "what": what, "status": "pass" if n != "A5" else rep.verdict}
                  for n, name, what in AUDIT_STEPS],
        "warnings": warnings,
        "residual": residual,
    }


def render_audit_html(report: Mapping[str, Any]) -> str:
    """A self-contained page: the banner that this is no proof, then step 19's residual section."""
    from html import escape

    from ._html_sections import section_residual

    pk = report["package"]
    head = (f"<h1>Residual audit of an audit package</h1><p><strong>{escape(report['statement'])}</strong></p>"
            f"<p>Method: <code>{escape(str(pk['method']))}</code> &mdash; {escape(str(pk['label']))}. "
            f"Verdict: <strong>{escape(report['verdict'])}</strong>: {escape(report['reason'])}</p>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>vmu-audit report</title></head><body>"
            + head + section_residual(report["residual"]) + "</body></html>")
