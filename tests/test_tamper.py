"""Tamper suite: distinct mutations of an honest bundle, each refused with exit 1 or 2 and a reason
naming the failed step (specs/09-verification.md). Test ids carry the step number.

Mutations of signed content come in two flavours: a plain edit (the signature or proof breaks)
and a *forgery* by a prover who holds the signing key (``conftest_verifier.forge``: log rewritten,
every head and transcript re-signed, proofs valid), which only the semantic checks can catch.
"""

from __future__ import annotations

import base64
import io
import json
import re
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest_verifier import SLICES, Honest, forge, honest, honest_v1, members_of, resign_members, rezip

from verifiable_mu._canonical import canonical_json
from verifiable_mu._keys import SigningKey
from verifiable_mu._note import Checkpoint, NoteSigner, sign_checkpoint
from verifier import Limits, VerifyOptions, verify


@dataclass
class Case:
    step: int
    exit: int
    error: str
    match: str
    make: Callable[[Honest], tuple[bytes, VerifyOptions]]


def _opts(**kw: Any) -> VerifyOptions:
    return VerifyOptions(replay=kw.pop("replay", 0), **kw)


def _edit_json(member: str, fn: Callable[[Any], None], *, fix: bool = True) -> Callable[[Honest], tuple[bytes, VerifyOptions]]:
    def make(h: Honest) -> tuple[bytes, VerifyOptions]:
        m = members_of(h.bundle)
        doc = json.loads(m[member])
        fn(doc)
        m[member] = canonical_json(doc) if member != "manifest.json" else json.dumps(doc).encode()
        return rezip(m, fix_manifest=fix), _opts()

    return make


def _raw_zip(entries: list[tuple[Any, bytes]]) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
            for name, data in entries:
                z.writestr(name, data)
    return buf.getvalue()


def _plus(name: Any, data: bytes = b"x") -> Callable[[Honest], tuple[bytes, VerifyOptions]]:
    def make(h: Honest) -> tuple[bytes, VerifyOptions]:
        m = members_of(h.bundle)
        return _raw_zip([*m.items(), (name, data)]), _opts()

    return make


def _symlink(h: Honest) -> tuple[bytes, VerifyOptions]:
    info = zipfile.ZipInfo("keys/signing-key.pub.pem")
    info.create_system = 3
    info.external_attr = 0o120777 << 16
    m = members_of(h.bundle)
    return _raw_zip([(n, b) for n, b in m.items() if n != "keys/signing-key.pub.pem"] + [(info, b"/etc/passwd")]), _opts()


def _encrypted(h: Honest) -> tuple[bytes, VerifyOptions]:
    """Set the 'encrypted' flag of one member in the central directory (zipfile cannot write it)."""
    import struct

    data = bytearray(h.bundle)
    pos = data.find(b"PK\x01\x02")
    while pos >= 0:
        nlen = struct.unpack_from("<H", data, pos + 28)[0]
        if bytes(data[pos + 46 : pos + 46 + nlen]) == b"heads/final.note":
            data[pos + 8] |= 0x1
            return bytes(data), _opts()
        pos = data.find(b"PK\x01\x02", pos + 4)
    raise AssertionError("member not found")


def _bomb(h: Honest) -> tuple[bytes, VerifyOptions]:
    m = members_of(h.bundle)
    m["records/openings.json"] = b" " * (4 * 1024 * 1024)
    return rezip(m, fix_manifest=False), _opts()


def _members_op(fn: Callable[[dict[str, bytes]], None], fix: bool = True, **opts: Any) -> Callable[[Honest], tuple[bytes, VerifyOptions]]:
    def make(h: Honest) -> tuple[bytes, VerifyOptions]:
        m = members_of(h.bundle)
        fn(m)
        return rezip(m, fix_manifest=fix), _opts(**opts)

    return make


def _limits(**kw: Any) -> Callable[[Honest], tuple[bytes, VerifyOptions]]:
    return lambda h: (h.bundle, _opts(limits=Limits(**kw)))


def _ckpt_names(m: dict[str, bytes]) -> list[str]:
    return sorted(n for n in m if n.startswith("checkpoints/"))


def _rename_ckpt(m: dict[str, bytes]) -> None:
    n = _ckpt_names(m)[0]
    m["checkpoints/" + "0" * 64 + ".safetensors"] = m.pop(n)


def _slice_names(m: dict[str, bytes]) -> list[str]:
    return sorted(n for n in m if n.startswith("slices/") and n.endswith(".records") and len(m[n]) >= 128)


def _rename_slice_records(m: dict[str, bytes]) -> None:
    m["slices/" + "0" * 64 + ".records"] = m.pop(_slice_names(m)[0])


def _truncate_slice_records(m: dict[str, bytes]) -> None:
    n = _slice_names(m)[0]
    m[n] = m[n][:-10]


def _unsort_slice_records(m: dict[str, bytes]) -> None:
    n = _slice_names(m)[0]
    m[n] = m[n][64:128] + m[n][:64] + m[n][128:]


def _drop_slice_records(m: dict[str, bytes]) -> None:
    """No slice records, and no training openings to rebuild generation-0 slices from."""
    for n in [n for n in m if n.startswith("slices/") and n.endswith(".records")]:
        del m[n]
    op = json.loads(m["records/openings.json"])
    op["training"] = []
    m["records/openings.json"] = json.dumps(op).encode()


def _absence_doc(m: dict[str, bytes]) -> dict[str, Any]:
    d = json.loads(m["slices/absence.json"])
    assert d["slices"]
    return d


def _no_sample(h: Honest) -> dict[str, bytes]:
    """The honest bundle without uniform draws: no original step is disclosed, so the shards no
    request retrains are shown clean by absence proofs."""
    from conftest_verifier import bundle_for

    return members_of(bundle_for(h.ws_dir, replay=0)[0])


def _absence_edit(fn: Callable[[dict[str, bytes]], None]) -> Callable[[Honest], tuple[bytes, VerifyOptions]]:
    def make(h: Honest) -> tuple[bytes, VerifyOptions]:
        m = _no_sample(h)
        fn(m)
        return rezip(m), _opts()

    return make


def _drop_absence(m: dict[str, bytes]) -> None:
    _absence_doc(m)
    del m["slices/absence.json"]


def _corrupt_absence(m: dict[str, bytes]) -> None:
    d = _absence_doc(m)
    path = d["slices"][0]["proof"]["proof"]["path"]
    path[0] = _flip_hex(path[0])
    m["slices/absence.json"] = json.dumps(d).encode()


def _original_slice_records_missing(h: Honest, *, compact: bool = False) -> tuple[bytes, VerifyOptions]:
    """Every segment disclosed, but one opening of the last slice of a shard no request retrains
    is withheld: that slice can neither be rebuilt from the openings nor is it listed, so the
    batches of its shard's last stage cannot be recomputed (its absence proof is supplied)."""
    from conftest_verifier import bundle_for

    from prover import Workspace
    from verifiable_mu._sorted_tree import SortedTree

    h = h if compact else honest_v1()
    m = members_of(bundle_for(h.ws_dir, replay=10_000)[0])
    runs = json.loads(m["log/entries.json"])["runs"]
    affected = {s for r in runs for e in r["entries"] if e["kind"] == "deletion" for s in e["body"]["shards"]}
    shard = min(set(range(3)) - affected)
    with Workspace.open(h.ws_dir) as ws:
        db = ws._db()
        pairs = sorted(db.execute("SELECT key, commitment FROM p_records WHERE role='train' AND shard=? AND slice=?",
                                  (shard, SLICES - 1)).fetchall())
        keys = [k for (k,) in db.execute("SELECT key FROM p_records WHERE deleted_by IS NOT NULL")]
    tree = SortedTree.build(pairs)
    name = f"slices/{tree.root.hex()}.records"
    if compact:  # format 2 lists every slice a disclosed step needs: leave this one out
        del m[name]
    else:  # format 1 rebuilds it from the openings: withhold one
        assert name not in m
        op = json.loads(m["records/openings.json"])
        from verifiable_mu._records import RecordOpening

        withheld = pairs[0][1]
        op["training"] = [o for o in op["training"] if RecordOpening.from_json(o).commitment() != withheld]
        m["records/openings.json"] = json.dumps(op).encode()
    doc = json.loads(m["slices/absence.json"])
    doc["slices"].append({"root": tree.root.hex(), "proof": tree.absence_proof(keys).to_json()})
    m["slices/absence.json"] = json.dumps(doc).encode()
    return rezip(m), _opts()


def _truncate_ckpt(m: dict[str, bytes]) -> None:
    n = _ckpt_names(m)[0]
    m[n] = m[n][:-100]


def _payload_edit(which: str = "transcripts/000001.dsse.json") -> Callable[[Honest], tuple[bytes, VerifyOptions]]:
    def make(h: Honest) -> tuple[bytes, VerifyOptions]:
        m = members_of(h.bundle)
        env = json.loads(m[which])
        p = bytearray(base64.b64decode(env["payload"]))
        i = p.index(b'"count":') + len(b'"count":')
        p[i] = ord("9")
        env["payload"] = base64.b64encode(bytes(p)).decode()
        m[which] = json.dumps(env).encode()
        return rezip(m), _opts()

    return make


def _resign(fn: Callable[[dict[str, Any]], None], which: str = "transcripts/000001.dsse.json") -> Callable[[Honest], tuple[bytes, VerifyOptions]]:
    def make(h: Honest) -> tuple[bytes, VerifyOptions]:
        return rezip(resign_members(h, members_of(h.bundle), fn, which)), _opts()

    return make


def _swap_transcripts(h: Honest) -> tuple[bytes, VerifyOptions]:
    m = members_of(h.bundle)
    a, b = m["transcripts/000001.dsse.json"], m["transcripts/000002.dsse.json"]
    m["transcripts/000001.dsse.json"], m["transcripts/000002.dsse.json"] = b, a
    return rezip(m), _opts()


def _other_key_head(h: Honest) -> tuple[bytes, VerifyOptions]:
    m = members_of(h.bundle)
    text = m["heads/final.note"].decode().rsplit("\n\n", 1)[0] + "\n"
    cp = Checkpoint.from_text(text)
    signer = NoteSigner.from_private_key(name=cp.origin, key=SigningKey.generate().private_key)
    m["heads/final.note"] = sign_checkpoint(cp, signer)
    return rezip(m), _opts()


def _flip_head_sig(h: Honest) -> tuple[bytes, VerifyOptions]:
    m = members_of(h.bundle)
    note = m["heads/final.note"].decode()
    body, sig = note.rsplit(" ", 1)
    raw = bytearray(base64.b64decode(sig))
    raw[10] ^= 1
    m["heads/final.note"] = (body + " " + base64.b64encode(bytes(raw)).decode() + "\n").encode()
    return rezip(m), _opts()


def _pinned_other(h: Honest) -> tuple[bytes, VerifyOptions]:
    return h.bundle, _opts(trust_key=SigningKey.generate().public_key)


def _flip_hex(s: str) -> str:
    return ("1" if s[0] != "1" else "2") + s[1:]


# --- forgeries -------------------------------------------------------------------------------


def _forged_v1(mutate: Any, **opts: Any) -> Callable[[Honest], tuple[bytes, VerifyOptions]]:
    """A forgery of batch lists: made from the format-1 honest workspace (format 2 lists none)."""

    def make(h: Honest) -> tuple[bytes, VerifyOptions]:
        return forge(honest_v1(), mutate), _opts(**opts)

    return make


def _f_batch_listed(ctx: Any) -> None:
    """A format-2 step entry that lists a batch anyway (its own, committed one)."""
    from types import SimpleNamespace

    i = _retrain_steps(ctx)[0]
    batch = ctx.ws.batch_of(SimpleNamespace(index=i, body=ctx.entries[i][1]))
    ctx.entries[i][1]["batch"] = "".join(c.hex() for c in batch)


def _forged(mutate: Any = None, pred: Any = None, **opts: Any) -> Callable[[Honest], tuple[bytes, VerifyOptions]]:
    def make(h: Honest) -> tuple[bytes, VerifyOptions]:
        return forge(h, mutate, mutate_predicate=pred), _opts(**opts)

    return make


def _find(entries: list[list[Any]], kind: str, **match: Any) -> list[int]:
    return [i for i, (k, b) in enumerate(entries) if k == kind and all(b.get(x) == y for x, y in match.items())]


def _f_config(ctx: Any) -> None:
    ctx.entries[0][1]["n_train"] += 1


def _config_beyond(path: str, value: Any) -> Callable[[Any], None]:
    """Set one field of the signed config (``a.b`` for nested) beyond the bound specs/09 states."""

    def mutate(ctx: Any) -> None:
        obj = ctx.entries[0][1]
        *parents, last = path.split(".")
        for k in parents:
            obj = obj[k]
        obj[last] = value

    return mutate


def _step_field_beyond(field: str, value: Any) -> Callable[[Any], None]:
    """One field of the first step entry beyond the bound specs/09 states."""

    def mutate(ctx: Any) -> None:
        i = next(j for j, (k, _) in enumerate(ctx.entries) if k == "step")
        ctx.entries[i][1][field] = value

    return mutate


def _step_hints_beyond(ctx: Any) -> None:
    """A step entry with more rounding hints than any step may carry (65,536)."""
    i = next(j for j, (k, _) in enumerate(ctx.entries) if k == "step")
    ctx.entries[i][1]["hints"] = [[0, j, 0] for j in range(65_537)]


def _f_dataset(ctx: Any) -> None:
    i = _find(ctx.entries, "dataset")[0]
    ctx.entries[i][1]["root"] = _flip_hex(ctx.entries[i][1]["root"])


def _deleted(ctx: Any, n: int = 1) -> list[str]:
    return ctx.entries[_find(ctx.entries, "deletion", request=str(n))[0]][1]["commitments"]


def _retrain_steps(ctx: Any, n: int = 1) -> list[int]:
    d = _find(ctx.entries, "deletion", request=str(n))[0]
    end = _find(ctx.entries, "model", request=str(n))[0]
    return [i for i in range(d, end) if ctx.entries[i][0] == "step"]


def _f_seed(ctx: Any) -> None:
    i = _retrain_steps(ctx)[3]
    ctx.entries[i][1]["seed"] = str(int(ctx.entries[i][1]["seed"]) ^ 1)


def _f_short_batch(ctx: Any) -> None:
    i = _retrain_steps(ctx)[0]
    ctx.entries[i][1]["batch"] = ctx.entries[i][1]["batch"][64:]


def _f_dirty_manifest(ctx: Any) -> None:
    c = _deleted(ctx)[0]
    i = _retrain_steps(ctx)[5]
    ctx.entries[i][1]["batch"] = c + ctx.entries[i][1]["batch"][64:]


def _f_swap_batches(ctx: Any) -> None:
    """Two retraining steps of one epoch trade a record: sizes, seeds and manifests stay clean."""
    steps = _retrain_steps(ctx)
    i, j = steps[0], steps[1]
    bi, bj = ctx.entries[i][1], ctx.entries[j][1]
    assert bi["epoch"] == bj["epoch"] and bi["stage"] == bj["stage"]
    bi["batch"], bj["batch"] = bj["batch"][:64] + bi["batch"][64:], bi["batch"][:64] + bj["batch"][64:]


def _f_ckpt_step(ctx: Any) -> None:
    d = _find(ctx.entries, "deletion", request="1")[0]
    i = next(j for j in _find(ctx.entries, "checkpoint") if j > d)
    ctx.entries[i][1]["step"] = str(int(ctx.entries[i][1]["step"]) + 1)


def _f_stale_slice(ctx: Any) -> None:
    """Request 1 re-commits a retrained slice with the old root: the deleted record is still in it."""
    d = _find(ctx.entries, "deletion", request="1")[0]
    i = next(j for j in range(d, len(ctx.entries)) if ctx.entries[j][0] == "slice")
    b = ctx.entries[i][1]
    old = ctx.entries[_find(ctx.entries, "slice", shard=b["shard"], slice=b["slice"], generation=0)[0]][1]
    b["root"], b["size"] = old["root"], old["size"]


def _f_model_shards(ctx: Any) -> None:
    from verifiable_mu._tags import TAG_MODEL, tagged_hash

    i = _find(ctx.entries, "model", request="2")[0]
    b = ctx.entries[i][1]
    b["shards"][1] = b["shards"][2]
    b["digest"] = tagged_hash(TAG_MODEL, b"".join(bytes.fromhex(x) for x in b["shards"])).hex()


def _f_model_digest(ctx: Any) -> None:
    i = _find(ctx.entries, "model", request="1")[0]
    ctx.entries[i][1]["digest"] = _flip_hex(ctx.entries[i][1]["digest"])


def _p_rollback_later(n: int, pred: dict[str, Any], disclose: Any) -> None:
    if n == 1:
        sc = pred["shards"][0]
        sc["rollback"] = disclose(int(pred["model_before"]["entry"]["index"]) - 1)  # a stage-R checkpoint


def _p_first_use_wrong(n: int, pred: dict[str, Any], disclose: Any) -> None:
    if n == 1:
        r = pred["records"][0]
        r["first_use"] = disclose(int(r["first_use"]["entry"]["index"]) - 1)


def _p_stale_rollback(h: Honest) -> tuple[bytes, VerifyOptions]:
    """Request 2 rolls back to the generation-0 checkpoint, which still holds request 1's record."""
    state: dict[str, int] = {}

    def mutate(ctx: Any) -> None:
        sc_shard = ctx.entries[_find(ctx.entries, "deletion", request="2")[0]][1]["shards"][0]
        d2 = _find(ctx.entries, "deletion", request="2")[0]
        # the checkpoint request 2 honestly rolled back to:
        honest_rb = max(j for j in _find(ctx.entries, "checkpoint", shard=sc_shard) if j < d2
                        and ctx.entries[j][1]["stage"] == 2)
        stage = ctx.entries[honest_rb][1]["stage"]
        state["stale"] = _find(ctx.entries, "checkpoint", shard=sc_shard, generation=0, stage=stage)[0]

    def pred(n: int, p: dict[str, Any], disclose: Any) -> None:
        if n == 2:
            p["shards"][0]["rollback"] = disclose(state["stale"])

    return forge(h, mutate, mutate_predicate=pred), _opts()


def _p_membership(n: int, pred: dict[str, Any], disclose: Any) -> None:
    if n == 1:
        inc = pred["records"][0]["membership"]["inclusion"]
        inc["path"][0] = _flip_hex(inc["path"][0])


def _p_drop_nonmembership(n: int, pred: dict[str, Any], disclose: Any) -> None:
    if n == 1:
        pred["shards"][0]["slices"][0]["non_membership"] = []


def _p_old_slice_stale(n: int, pred: dict[str, Any], disclose: Any) -> None:
    """Request 2's record points at its slice's generation-0 entry, which request 1 re-committed."""
    if n == 2:
        r = pred["records"][0]
        r["old_slice"] = disclose(1 + r["shard"] * SLICES + r["slice"])


def _p_slices_not_current(n: int, pred: dict[str, Any], disclose: Any) -> None:
    if n == 1:
        sc = pred["shards"][0]
        sc["slices"][SLICES - 1]["slice"] = disclose(1 + sc["shard"] * SLICES + SLICES - 1)


def _f_recommit_order(ctx: Any) -> None:
    """Two slice entries of request 1's re-commit block trade places."""
    d = _find(ctx.entries, "deletion", request="1")[0]
    assert ctx.entries[d + 1][0] == ctx.entries[d + 2][0] == "slice"
    ctx.entries[d + 1], ctx.entries[d + 2] = ctx.entries[d + 2], ctx.entries[d + 1]


def _f_dataset_after_request(ctx: Any) -> None:
    i = _find(ctx.entries, "dataset", version=1)[0]
    ctx.entries[i][1]["root"] = _flip_hex(ctx.entries[i][1]["root"])


def _original_batches_swapped(h: Honest) -> tuple[bytes, VerifyOptions]:
    """Two original-training steps of one epoch trade a record (every segment disclosed)."""

    def mutate(ctx: Any) -> None:
        i, j = _find(ctx.entries, "step", shard=1, generation=0, stage=1, epoch=0)[:2]
        bi, bj = ctx.entries[i][1], ctx.entries[j][1]
        bi["batch"], bj["batch"] = bj["batch"][:64] + bi["batch"][64:], bi["batch"][:64] + bj["batch"][64:]

    return forge(honest_v1(), mutate, replay=10_000), _opts()


def _p_generation_skips(n: int, pred: dict[str, Any], disclose: Any) -> None:
    if n == 1:
        pred["shards"][0]["generation"] += 1


def _misplaced_original_step(h: Honest) -> tuple[bytes, VerifyOptions]:
    """An original step of shard 1 relabelled as shard 2's (every segment disclosed)."""

    def mutate(ctx: Any) -> None:
        i = _find(ctx.entries, "step", shard=1, generation=0, stage=2)[0]
        ctx.entries[i][1]["shard"] = 2

    return forge(h, mutate, replay=10_000), _opts()


def _misassigned_slices(h: Honest) -> tuple[bytes, VerifyOptions]:
    """Two generation-0 slices of a retrained shard trade a record (sizes and data-set roots kept
    consistent, the slices' records disclosed): not the committed assignment."""
    from verifiable_mu._sorted_tree import SliceDescriptor, SortedTree, dataset_root

    extra: dict[str, bytes] = {}

    def mutate(ctx: Any) -> None:
        db = ctx.ws._db()
        c = bytes.fromhex(_deleted(ctx)[0])
        shard, slc = db.execute("SELECT shard, slice FROM p_records WHERE commitment=?", (c,)).fetchone()
        j1, j2 = [j for j in range(SLICES) if j != slc][:2]
        p1, p2 = (sorted(db.execute("SELECT key, commitment FROM p_records WHERE role='train' AND shard=? AND slice=?",
                                    (shard, j)).fetchall()) for j in (j1, j2))
        p1, p2 = sorted([p2[0], *p1[1:]]), sorted([p1[0], *p2[1:]])
        for j, prs in ((j1, p1), (j2, p2)):
            tree = SortedTree.build(prs)
            ctx.entries[1 + shard * SLICES + j][1]["root"] = tree.root.hex()
            extra[f"slices/{tree.root.hex()}.records"] = b"".join(k + x for k, x in prs)
        cur: dict[tuple[int, int], dict[str, Any]] = {}
        for k, e in ctx.entries:
            if k == "slice":
                cur[(e["shard"], e["slice"])] = e
            elif k == "dataset":
                e["root"] = dataset_root([SliceDescriptor(shard=s, slice=r, size=int(z["size"]), root=bytes.fromhex(z["root"]))
                                          for (s, r), z in sorted(cur.items())]).hex()

    data = forge(h, mutate)
    return rezip({**members_of(data), **extra}), _opts()


def _fabricated_last_segment(h: Honest) -> tuple[bytes, VerifyOptions]:
    """Request 2's only retraining segment (always sampled) ends in a fabricated checkpoint."""
    from conftest_verifier import train_segment

    from verifiable_mu._tags import TAG_MODEL, tagged_hash

    def mutate(ctx: Any) -> None:
        d2 = _find(ctx.entries, "deletion", request="2")[0]
        m2 = _find(ctx.entries, "model", request="2")[0]
        ck = max(j for j in _find(ctx.entries, "checkpoint") if d2 < j < m2)
        body = ctx.entries[ck][1]
        start = max(j for j in _find(ctx.entries, "checkpoint", shard=body["shard"]) if j < d2 and
                    ctx.entries[j][1]["stage"] == body["stage"] - 1)
        idx = [j for j in range(d2, ck) if ctx.entries[j][0] == "step"]
        steps = [ctx.entries[j][1] for j in idx]
        new = train_segment(ctx.ws, bytes.fromhex(ctx.entries[start][1]["digest"]), steps, noise=1e-3, indices=idx)
        old = body["digest"]
        body["digest"] = new.hex()
        mb = ctx.entries[m2][1]
        mb["shards"] = [new.hex() if x == old else x for x in mb["shards"]]
        mb["digest"] = tagged_hash(TAG_MODEL, b"".join(bytes.fromhex(x) for x in mb["shards"])).hex()

    return forge(h, mutate), _opts(replay=2)


def _bundle_with(h: Honest, **kw: Any) -> bytes:
    """An honest bundle of the same workspace written with other ``write_bundle`` options."""
    from conftest_verifier import bundle_for

    return bundle_for(h.ws_dir, **kw)[0]


def _extra_training_opening(h: Honest) -> tuple[bytes, VerifyOptions]:
    """A valid opening of a real record (a held-out one: the small honest bundle opens every
    training record) listed as a training opening, though no disclosed step uses it (issue 19:
    the rule that no other record is disclosed is now checked)."""
    from prover import Workspace
    from verifiable_mu._records import RecordOpening

    m = members_of(h.bundle)
    op = json.loads(m["records/openings.json"])
    opened = {RecordOpening.from_json(o).commitment() for part in ("training", "deleted", "audit") for o in op[part]}
    with Workspace.open(h.ws_dir) as ws:
        ds = ws.data
        row, salt = next((r, salt) for r, salt, c in ws._db().execute(
            "SELECT row, salt, commitment FROM p_records WHERE role='test' ORDER BY row")
            if c not in opened)  # fmt: skip
        o = RecordOpening(id=ds.ids[row], features=ds.X[row], label=int(ds.y[row]), salt=salt)
    op["training"].append(o.to_json())
    m["records/openings.json"] = json.dumps(op).encode()
    return rezip(m), _opts()


def _opening_edit(fn: Callable[[dict[str, Any]], None]) -> Callable[[Honest], tuple[bytes, VerifyOptions]]:
    return _edit_json("records/openings.json", fn)


def _deleted_features(d: dict[str, Any]) -> None:
    o = d["deleted"][0]
    raw = bytearray(base64.b64decode(o["features"]))
    raw[0] ^= 0x40
    o["features"] = base64.b64encode(bytes(raw)).decode()


def _clear_training(m: dict[str, bytes]) -> None:
    """Withhold every training opening; the generation-0 slices the verifier rebuilt from them
    (specs/08 section 4b) are listed as slice records instead, so only step 17 misses them."""
    v = verify(rezip(m), _opts(residual=False))
    assert v.exit_code == 0, repr(v.failure)
    for root, (keys, commits) in v.derived_slices.items():
        m[f"slices/{root.hex()}.records"] = b"".join(k + c for k, c in zip(keys, commits, strict=True))
    d = json.loads(m["records/openings.json"])
    d["training"].clear()
    m["records/openings.json"] = canonical_json(d)


def _remove_sampled_start_ckpt(m: dict[str, bytes]) -> None:
    man = json.loads(m["manifest.json"])
    log = json.loads(m["log/entries.json"])
    by_index = {int(e["index"]): e for r in log["runs"] for e in r["entries"]}
    t2 = json.loads(base64.b64decode(json.loads(m["transcripts/000002.dsse.json"])["payload"]))
    final = set(t2["predicate"]["model_after"]["entry"]["body"]["shards"])
    for s in man["sample"]:
        end = by_index[int(s)]["body"]
        # the entry before the segment's steps is not what we want; find the start via the lineage
        if end["digest"] not in final:
            del m[f"checkpoints/{end['digest']}.safetensors"]
            return
    raise AssertionError("every sampled end checkpoint is in the final model")


def _remove_final_ckpt(m: dict[str, bytes]) -> None:
    t2 = json.loads(base64.b64decode(json.loads(m["transcripts/000002.dsse.json"])["payload"]))
    d = t2["predicate"]["model_after"]["entry"]["body"]["shards"][0]
    del m[f"checkpoints/{d}.safetensors"]


def _nest(d: dict[str, Any]) -> None:
    x: Any = []
    for _ in range(200):
        x = [x]
    d["original"] = x


CASES: dict[str, Case] = {
    # 1. archive (exit 2)
    "step_01_not_a_zip": Case(1, 2, "InvalidBundle", "not a zip archive", lambda h: (b"hello, world" * 10, _opts())),
    "step_01_truncated": Case(1, 2, "InvalidBundle", "truncated or damaged", lambda h: (h.bundle[: len(h.bundle) // 2], _opts())),
    "step_01_path_traversal": Case(1, 2, "InvalidBundle", "path traversal", _plus("../../etc/evil")),
    "step_01_absolute_path": Case(1, 2, "InvalidBundle", "absolute path", _plus("/etc/passwd")),
    "step_01_backslash": Case(1, 2, "InvalidBundle", "backslash", _plus("checkpoints\\..\\x")),
    "step_01_duplicate_entry": Case(1, 2, "InvalidBundle", "appears twice", lambda h: (
        _raw_zip([*members_of(h.bundle).items(), ("heads/final.note", b"x")]), _opts())),
    "step_01_symlink": Case(1, 2, "InvalidBundle", "symbolic link", _symlink),
    "step_01_encrypted": Case(1, 2, "InvalidBundle", "encrypted", _encrypted),
    "step_01_zip_bomb": Case(1, 2, "InvalidBundle", "zip bomb", _bomb),
    "step_01_member_too_large": Case(1, 2, "InvalidBundle", "at most 100000", _limits(max_member_bytes=100_000)),
    "step_01_too_many_members": Case(1, 2, "InvalidBundle", "members \\(at most 5\\)", _limits(max_members=5)),
    "step_01_expands_too_much": Case(1, 2, "InvalidBundle", "expands to more than", _limits(max_total_bytes=300_000)),
    "step_01_unexpected_member": Case(1, 2, "InvalidBundle", "not a member a bundle", _plus("notes.txt")),
    "step_01_directory_entry": Case(1, 2, "InvalidBundle", "directory entry", _plus("checkpoints/", b"")),
    # 2. manifest (exit 2)
    "step_02_no_manifest": Case(2, 2, "InvalidBundle", "no manifest.json", _members_op(lambda m: m.pop("manifest.json"))),
    "step_02_unsupported_version": Case(2, 2, "UnsupportedVersion", "version 2 is not supported",
                                        _edit_json("manifest.json", lambda d: d.update(version=2))),
    "step_02_too_deep_json": Case(2, 2, "InvalidBundle", "nested deeper", _edit_json("manifest.json", _nest)),
    "step_02_not_json": Case(2, 2, "InvalidBundle", "not valid JSON",
                             _members_op(lambda m: m.update({"manifest.json": b"{not json"}), fix=False)),
    "step_02_wrong_type": Case(2, 2, "InvalidBundle", "replay must be an integer",
                               _edit_json("manifest.json", lambda d: d.update(replay="6"))),
    "step_02_bound_replay": Case(2, 2, "InvalidBundle", r"replay must be an integer in \[0, 1000000\]",
                                 _edit_json("manifest.json", lambda d: d.update(replay=1_000_001))),
    "step_02_unknown_challenge_mode": Case(2, 2, "UnsupportedVersion", "challenge mode",
                                           _edit_json("manifest.json", lambda d: d.update(challenge={"mode": "trust-me"}))),
    "step_02_member_digest_mismatch": Case(2, 2, "InvalidBundle", "does not match its SHA-256",
                                           _edit_json("records/openings.json", lambda d: d["audit"].pop(), fix=False)),
    "step_02_listed_member_missing": Case(2, 2, "InvalidBundle", "missing from the archive",
                                          _members_op(lambda m: m.pop(_ckpt_names(m)[0]), fix=False)),
    # 3. members (exit 2)
    "step_03_log_runs_wrong_type": Case(3, 2, "InvalidBundle", "runs must be a non-empty list",
                                        _edit_json("log/entries.json", lambda d: d.update(runs={}))),
    "step_03_checkpoint_name_digest": Case(3, 2, "InvalidBundle", "content digest is", _members_op(_rename_ckpt)),
    "step_03_slice_records_name_root": Case(3, 2, "InvalidBundle", "not its name", _members_op(_rename_slice_records)),
    "step_03_slice_records_partial": Case(3, 2, "InvalidBundle", "whole number of 64-byte records",
                                          _members_op(_truncate_slice_records)),
    "step_03_slice_records_unsorted": Case(3, 2, "InvalidBundle", "strictly ascending key order",
                                           _members_op(_unsort_slice_records)),
    "step_03_absence_malformed": Case(3, 2, "InvalidBundle", "absence.json slices must be a list",
                                      _edit_json("slices/absence.json", lambda d: d.update(slices={}))),
    "step_03_checkpoint_truncated": Case(3, 2, "InvalidBundle", "does not fit|trailing|too short", _members_op(_truncate_ckpt)),
    "step_03_opening_bad_label": Case(3, 2, "InvalidBundle", "label must be a canonical decimal",
                                      _opening_edit(lambda d: d["audit"][0].update(label="07"))),
    "step_03_envelope_not_json": Case(3, 2, "InvalidBundle", "transcripts/000001.dsse.json",
                                      _members_op(lambda m: m.update({"transcripts/000001.dsse.json": b"[1,2"}))),
    "step_03_public_key_garbage": Case(3, 2, "InvalidBundle", "signing-key.pub.pem",
                                       _members_op(lambda m: m.update({"keys/signing-key.pub.pem": b"-----BEGIN nothing"}))),
    "step_03_overlapping_runs": Case(3, 2, "InvalidBundle", "must not overlap",
                                     _edit_json("log/entries.json", lambda d: d["runs"].insert(1, d["runs"][0]))),
    # 4. trust (exit 1)
    "step_04_pinned_key_mismatch": Case(4, 1, "UntrustedKey", "not the pinned key", _pinned_other),
    # 5. final head
    "step_05_head_signature_flipped": Case(5, 1, "SignatureFailed", "final signed tree head", _flip_head_sig),
    "step_05_head_signed_by_other_key": Case(5, 1, "SignatureFailed", "final signed tree head", _other_key_head),
    # 6. transcripts
    "step_06_payload_edited_unsigned": Case(6, 1, "SignatureFailed", "does not verify", _payload_edit()),
    "step_06_predicate_version": Case(6, 2, "UnsupportedVersion", "transcript version",
                                      _resign(lambda p: p.update(version=2))),
    # 7. tree heads
    "step_07_bundle_consistency_flipped": Case(7, 1, "ConsistencyProofFailed", "consistency proof does not reproduce the old root",
                                               _edit_json("log/entries.json", lambda d: d["consistency"][0]["path"].__setitem__(
                                                   0, _flip_hex(d["consistency"][0]["path"][0])))),
    "step_07_transcripts_swapped": Case(7, 1, "HeadMismatch", "requests 1..N in order", _swap_transcripts),
    "step_07_head_before_replaced": Case(7, 1, "HeadMismatch", "consistency proof is for sizes",
                                         _resign(lambda p: p["log"].update(head_before=p["log"]["head_after"]))),
    # 8. transcript proofs
    "step_08_transcript_inclusion_flipped": Case(8, 1, "InclusionProofFailed", r"inclusion proof for leaf \d+ of \d+ does not lead to the expected root", _resign(
        lambda p: p["model_after"]["inclusion"]["path"].__setitem__(0, _flip_hex(p["model_after"]["inclusion"]["path"][0])))),
    # 9. log runs
    "step_09_entry_body_edited": Case(9, 1, "InclusionProofFailed", "do not lead to the root", _edit_json(
        "log/entries.json", lambda d: d["runs"][0]["entries"][0]["body"].update(epochs=99))),
    "step_09_range_proof_truncated": Case(9, 1, "InclusionProofFailed", "too short", _edit_json(
        "log/entries.json", lambda d: d["runs"][-1]["proof"]["path"].pop(0))),
    # 10. commitments (forged)
    "step_10_config_n_train": Case(10, 1, "CommitBlockInvalid", "the config says", _forged(_f_config)),
    "step_10_dataset_root": Case(10, 1, "CommitBlockInvalid", "data-set root", _forged(_f_dataset)),
    # The bounds on signed fields that specs/09 ("Resource bounds") states: exit 2 where parsed.
    "step_10_bound_batch_size": Case(10, 2, "InvalidBundle", r"batch_size must be an integer in \[1, 16777216\]",
                                     _forged(_config_beyond("hyper.batch_size", 2**24 + 1))),
    "step_10_bound_threads": Case(10, 2, "InvalidBundle", r"threads must be an integer in \[1, 256\]",
                                  _forged(_config_beyond("platform.threads", 257))),
    "step_10_bound_hidden": Case(10, 2, "InvalidBundle", r"hidden must be an integer in \[0, 1048576\]",
                                 _forged(_config_beyond("model.hidden", 2**20 + 1))),
    "step_10_bound_input_shape": Case(10, 2, "InvalidBundle", "input_shape must be a list of positive integers",
                                      _forged(_config_beyond("model.input_shape", [1] * 9))),
    "step_10_bound_fingerprint": Case(10, 2, "InvalidBundle", "cpu_capability must be a string of at most 128",
                                      _forged(_config_beyond("platform.cpu_capability", "A" * 129))),
    "step_11_bound_hints": Case(11, 2, "InvalidBundle", "hints must be a list of at most 65536",
                                _forged(_step_hints_beyond)),
    "step_10_bound_seed": Case(10, 2, "InvalidBundle", "seed must be a decimal string",
                               _forged(_config_beyond("seed", str(2**63)))),
    "step_10_bound_torch_string": Case(10, 2, "InvalidBundle", "torch must be a string of at most 64",
                                       _forged(_config_beyond("platform.torch", "x" * 65))),
    "step_10_bound_n_classes": Case(10, 2, "InvalidBundle", r"n_classes must be an integer in \[1, 1048576\]",
                                    _forged(_config_beyond("model.n_classes", 2**20 + 1))),
    "step_10_bound_n_features": Case(10, 2, "InvalidBundle", r"n_features must be an integer in \[1, 16777216\]",
                                     _forged(_config_beyond("model.n_features", 2**24 + 1))),
    "step_10_bound_device_string": Case(10, 2, "InvalidBundle", "device must be a string of at most 16",
                                        _forged(_config_beyond("platform.device", "c" * 17))),
    "step_11_bound_grid_integer": Case(11, 2, "InvalidBundle", r"epoch must be an integer in \[0, 4294967295\]",
                                       _forged(_step_field_beyond("epoch", 2**32))),
    "step_10_bound_epochs": Case(10, 2, "InvalidBundle", r"epochs must be an integer in \[1, 1048576\]",
                                 _forged(_config_beyond("epochs", 2**20 + 1))),
    # 11. deletion claims
    "step_11_membership_proof": Case(11, 1, "DeletionClaimFailed", "was not in its slice", _forged(pred=_p_membership)),
    "step_11_non_membership_dropped": Case(11, 1, "DeletionClaimFailed", "lacks a non-membership proof",
                                           _forged(pred=_p_drop_nonmembership)),
    "step_11_deleted_record_still_in_slice": Case(11, 1, "DeletionClaimFailed", "minus exactly the 2 deleted",
                                                  _forged(_f_stale_slice)),
    "step_11_old_slice_not_current": Case(11, 1, "DeletionClaimFailed", "not the current entry of slice",
                                          _forged(pred=_p_old_slice_stale)),
    "step_11_slices_not_current": Case(11, 1, "DeletionClaimFailed", r"slices\[2\] is slice entry .* not the current",
                                       _forged(pred=_p_slices_not_current)),
    "step_11_recommit_block_out_of_order": Case(11, 1, "DeletionClaimFailed", "of the re-commit block is slice",
                                                _forged(_f_recommit_order)),
    "step_11_dataset_after_request": Case(11, 1, "DeletionClaimFailed", "not the root over the current slices",
                                          _forged(_f_dataset_after_request)),
    "step_11_generation_skipped": Case(11, 1, "DeletionClaimFailed", "retraining is generation 2, the shard's lineage",
                                       _forged(pred=_p_generation_skips)),
    "step_11_not_the_committed_assignment": Case(11, 1, "DeletionClaimFailed", "committed assignment \\(sha256-rank-v1\\) puts it",
                                                 _misassigned_slices),
    "step_11_slice_records_missing": Case(11, 1, "SegmentMissing", "does not disclose the records of slice",
                                          _members_op(_drop_slice_records)),
    "step_11_absence_proofs_missing": Case(11, 1, "DeletionClaimFailed", "does not prove the deleted record keys absent",
                                           _absence_edit(_drop_absence)),
    "step_11_absence_proof_corrupted": Case(11, 1, "DeletionClaimFailed", "not proven absent",
                                              _absence_edit(_corrupt_absence)),
    # 12. ordering
    "step_12_rollback_after_first_use": Case(12, 1, "OrderingViolation", "rollback", _forged(pred=_p_rollback_later)),
    "step_12_first_use_without_record": Case(12, 1, "OrderingViolation", "does not use record|first used",
                                             _forged(pred=_p_first_use_wrong)),
    "step_12_rollback_to_stale_generation": Case(12, 1, "OrderingViolation", "current lineage", _p_stale_rollback),
    # 13. schedule
    "step_13_step_seed": Case(13, 1, "ScheduleViolation", r"has seed \d+, the committed derivation gives \d+", _forged(_f_seed)),
    "step_13_short_batch": Case(13, 1, "ScheduleViolation", "batch of", _forged_v1(_f_short_batch)),
    "step_13_batch_listed_in_format_2": Case(13, 1, "ScheduleViolation", "lists a batch, which a format-2 log",
                                             _forged(_f_batch_listed)),
    "step_13_checkpoint_counter": Case(13, 1, "ScheduleViolation", "expected stage", _forged(_f_ckpt_step)),
    "step_13_original_lineage_gap": Case(13, 1, "ScheduleViolation", "committed schedule",
                                         _edit_json("manifest.json", lambda d: d["original"][0]["checkpoints"].pop(1))),
    # 14. clean manifests
    "step_14_deleted_record_in_retraining": Case(14, 1, "ManifestContainsDeleted", "uses deleted record",
                                                 _forged_v1(_f_dirty_manifest)),
    "step_14_batch_not_committed": Case(14, 1, "BatchNotCommitted", "does not train on its committed batch",
                                        _forged_v1(_f_swap_batches)),
    "step_14_original_slice_records_missing": Case(14, 1, "SegmentMissing", "does not disclose the records of slice",
                                                   _original_slice_records_missing),
    "step_14_original_slice_list_missing": Case(14, 1, "SegmentMissing", "does not disclose the records of slice",
                                                 lambda h: _original_slice_records_missing(h, compact=True)),
    "step_14_original_step_misplaced": Case(14, 1, "ScheduleViolation", "is not where the shard's lineage has its step",
                                            _misplaced_original_step),
    "step_14_original_batch_not_committed": Case(14, 1, "BatchNotCommitted", "original training of shard 1.*committed batch",
                                                 _original_batches_swapped),
    # 15. models
    "step_15_model_constituents": Case(15, 1, "ModelMismatch", "constituents", _forged(_f_model_shards)),
    "step_15_model_digest": Case(15, 1, "ModelMismatch", "not the hash of its constituents|model_before", _forged(_f_model_digest)),
    "step_15_final_weights_missing": Case(15, 1, "ModelMismatch", "lacks the weights", _members_op(_remove_final_ckpt)),
    # 16. openings
    "step_16_deleted_opening_features": Case(16, 1, "OpeningMismatch", "deleted-record openings",
                                             _opening_edit(_deleted_features)),
    "step_16_audit_opening_removed": Case(16, 1, "OpeningMismatch", r"audit openings and 0 deleted audit record\(s\) do not rebuild the committed audit set", _opening_edit(lambda d: d["audit"].pop())),
    "step_16_extra_training_opening": Case(16, 1, "OpeningMismatch", "which no disclosed step uses",
                                           _extra_training_opening),
    "step_16_opening_duplicated": Case(16, 1, "OpeningMismatch", "disclosed twice",
                                       _opening_edit(lambda d: d["training"].append(d["audit"][0]))),
    "step_16_deleted_opening_swapped": Case(16, 1, "OpeningMismatch", "deleted-record openings",
                                            _opening_edit(lambda d: d["deleted"].__setitem__(0, d["audit"].pop()))),
    # 17. sampling
    "step_17_fewer_draws_than_the_verifier_asks": Case(17, 1, "SegmentMissing", "sampled segment ending at entry",
                                                       lambda h: (_bundle_with(h, replay=2), _opts(replay=8))),
    "step_17_claims_interactive": Case(17, 1, "ChallengeMismatch", "pass the challenge", _edit_json(
        "manifest.json", lambda d: d.update(challenge={"mode": "interactive", "challenge": "ab" * 16}))),
    "step_17_training_opening_removed": Case(17, 1, "SegmentMissing", "does not open record",
                                             _members_op(_clear_training, replay=2)),
    "step_17_segment_checkpoint_removed": Case(17, 1, "SegmentMissing", "lacks checkpoint",
                                               _members_op(_remove_sampled_start_ckpt, replay=6)),
    # 18. replay
    "step_18_fabricated_checkpoint": Case(18, 1, "ReplayMismatch", "does not reproduce", _fabricated_last_segment),
}


def test_suite_is_large_and_covers_steps() -> None:
    assert len(CASES) >= 30
    assert {c.step for c in CASES.values()} == set(range(1, 19))


@pytest.mark.parametrize("name", sorted(CASES))
def test_tamper(name: str) -> None:
    case = CASES[name]
    h = honest()
    data, opts = case.make(h)
    assert data != h.bundle or opts.trust_key is not None or opts.limits != Limits()
    v = verify(data, opts)
    assert v.exit_code == case.exit, (v.failed_step, repr(v.failure))
    assert v.failed_step == case.step, (v.failed_step, repr(v.failure))
    assert type(v.failure).__name__ == case.error, repr(v.failure)
    import re

    assert re.search(case.match, str(v.failure)), str(v.failure)
    # the reason names the failed check
    failed = [r for r in v.results if r.status in ("fail", "error")]
    assert len(failed) == 1 and failed[0].step == case.step


def _failure_table() -> dict[str, tuple[int, set[int]]]:
    text = (Path(__file__).resolve().parents[1] / "specs" / "09-verification.md").read_text(encoding="utf-8")
    section = text.split("## Failure kinds", 1)[1].split("\n## ", 1)[0]
    out = {}
    for m in re.finditer(r"^\| `(\w+)` \| (\d) \| ([^|]+) \|$", section, re.M):
        steps: set[int] = set()
        for part in re.findall(r"\d+(?:-\d+)?", m[3].split("(")[0]):
            a, _, b = part.partition("-")
            steps |= set(range(int(a), int(b or a) + 1))
        out[m[1]] = (int(m[2]), steps)
    return out


def test_every_case_is_in_the_failure_table_of_specs_09() -> None:
    """Issue 19: the failure kind -> exit code -> step table of specs/09 covers the tamper suite,
    and every rejection class the verifier exports."""
    import verifier._errors as verrors

    table = _failure_table()
    for name, case in CASES.items():
        assert case.error in table, (name, case.error)
        exit_code, steps = table[case.error]
        assert case.exit == exit_code and case.step in steps, (name, case.error, case.step, case.exit)
    exported = {n for n in dir(verrors) if isinstance(getattr(verrors, n), type) and n[0].isupper()}
    rejections = {n for n in exported if issubclass(getattr(verrors, n), verrors.VerificationFailed)}
    assert rejections - {"VerificationFailed"} <= set(table), sorted(rejections - set(table))
