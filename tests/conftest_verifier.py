"""Shared fixtures for the bundle/verifier tests (imported by test files; not a conftest).

``honest()`` trains one small workspace on digits (3 shards x 3 slices, 6 epochs), runs two
deletion requests (the second hits a shard the first retrained, so lineages chain), and writes
an honest Fiat-Shamir bundle. It is built once per test session and cached.

The forging helpers play a *cheating prover who holds the signing key*: they rewrite the log,
re-sign every head and transcript, and so produce bundles whose signatures and Merkle proofs are
all valid; only the verifier's semantic checks and the replay can catch them.
"""

from __future__ import annotations

import atexit
import base64
import copy
import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest

from verifiable_mu._dsse import sign_statement
from verifiable_mu._keys import SigningKey
from verifiable_mu._note import Checkpoint, sign_checkpoint

__all__ = ["ForgeContext", "Honest", "forge", "honest", "honest_50", "honest_fixture", "members_of", "rezip", "train_segment", "trained_copy"]

SHARDS, SLICES, EPOCHS = 3, 3, 6
FIRST_IDS = ["17", "42"]


@dataclass
class Honest:
    root: str  # temp dir
    ws_dir: str
    bundle_path: str
    bundle: bytes
    key: SigningKey
    pub_pem: str
    first_ids: list[str]
    second_ids: list[str]
    trained_dir: str = ""  # a copy of the workspace after training, before any deletion


_CACHE: dict[str, Honest] = {}


def _new_ws(root: str, **config: Any) -> str:
    from prover import Workspace, WorkspaceConfig

    ws_dir = os.path.join(root, "ws")
    cfg = WorkspaceConfig(shards=SHARDS, slices=SLICES, epochs=EPOCHS, workers=1, device="cpu", **config)
    with Workspace.create(ws_dir, data="digits", config=cfg) as ws:
        ws.progress = False
        ws.train(workers=1)
    return ws_dir


def build_honest(root: str, **config: Any) -> Honest:
    """Train a workspace in ``root`` (``config`` overrides the defaults), carry out two deletion
    requests and write the honest bundle (Fiat-Shamir, the default 8 draws)."""
    from prover import Workspace
    from prover._bundle import write_bundle

    ws_dir = _new_ws(root, **config)
    trained_dir = os.path.join(root, "trained")
    shutil.copytree(ws_dir, trained_dir, ignore=shutil.ignore_patterns(".lock"))
    with Workspace.open(ws_dir) as ws:
        ws.progress = False
        ws.forget(FIRST_IDS, workers=1)
        # A second request on a shard the first one retrained, from a later slice.
        shard_of = dict(ws._db().execute("SELECT id, shard FROM p_records WHERE role='train'").fetchall())
        sl = dict(ws._db().execute("SELECT id, slice FROM p_records WHERE role='train'").fetchall())
        s0 = shard_of[FIRST_IDS[0]]
        cand = [i for i in shard_of if shard_of[i] == s0 and sl[i] == SLICES - 1 and i not in FIRST_IDS]
        second = [sorted(cand, key=int)[0]]
        ws.forget(second, workers=1)
        path = os.path.join(root, "honest.vmu.zip")
        write_bundle(ws, path)
    with open(path, "rb") as f:
        data = f.read()
    key = SigningKey.load(os.path.join(ws_dir, "signing-key.pem"))
    return Honest(root=root, ws_dir=ws_dir, bundle_path=path, bundle=data, key=key,
                  pub_pem=os.path.join(ws_dir, "signing-key.pub.pem"), first_ids=FIRST_IDS, second_ids=second,
                  trained_dir=trained_dir)


#: Extra WorkspaceConfig fields of the cached honest workspaces (the golden generator sets it).
HONEST_CONFIG: dict[str, Any] = {}


def honest() -> Honest:
    if "h" in _CACHE:
        return _CACHE["h"]
    root = tempfile.mkdtemp(prefix="vmu-verifier-tests-")
    atexit.register(shutil.rmtree, root, True)
    h = build_honest(root, **HONEST_CONFIG)
    _CACHE["h"] = h
    return h


def honest_v1() -> Honest:
    """The honest workspace in log format 1, whose step entries list their batches: what the
    cheaters that log batches of their own choosing need (format 2 cannot express them)."""
    if "h1" in _CACHE:
        return _CACHE["h1"]
    root = tempfile.mkdtemp(prefix="vmu-verifier-tests-v1-")
    atexit.register(shutil.rmtree, root, True)
    h = build_honest(root, log_format=1, **HONEST_CONFIG)
    _CACHE["h1"] = h
    return h


@pytest.fixture(scope="session")
def honest_fixture() -> Honest:
    return honest()


def honest_50() -> SimpleNamespace:
    """An honest deletion of 50 records of shard 0 on digits (default 5 shards x 4 slices, one
    request), with a Fiat-Shamir bundle: enough deleted records for step 19 to pass with a
    powered positive control. ``ws_dir``, ``bundle`` (its path), ``pub`` (the key's PEM path).
    Built once per test session."""
    if "h50" in _CACHE:
        return _CACHE["h50"]  # type: ignore[return-value]
    import random

    from prover import Workspace, WorkspaceConfig
    from prover._bundle import write_bundle

    root = tempfile.mkdtemp(prefix="vmu-verifier-tests-50-")
    atexit.register(shutil.rmtree, root, True)
    ws_dir = os.path.join(root, "ws")
    ws = Workspace.create(ws_dir, data="digits", config=WorkspaceConfig(workers=1, seed=0))
    ws.progress = False
    ws.train()
    ids = [i for (i,) in ws.log.connection.execute("SELECT id FROM p_records WHERE role='train' AND shard=0")]
    ws.forget(random.Random(0).sample(ids, 50))
    bundle = os.path.join(root, "b.vmu")
    write_bundle(ws, bundle)
    ws.close()
    h = SimpleNamespace(ws_dir=ws_dir, bundle=bundle, pub=os.path.join(ws_dir, "signing-key.pub.pem"))
    _CACHE["h50"] = h  # type: ignore[assignment]
    return h


# --- zip surgery ------------------------------------------------------------------------------


def members_of(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def rezip(members: dict[str, bytes], *, fix_manifest: bool = True, order: list[str] | None = None) -> bytes:
    """Zip ``members`` again; with ``fix_manifest`` the manifest's digests are recomputed."""
    members = dict(members)
    if fix_manifest and "manifest.json" in members:
        m = json.loads(members["manifest.json"])
        m["members"] = {n: hashlib.sha256(b).hexdigest() for n, b in members.items() if n != "manifest.json"}
        members["manifest.json"] = json.dumps(m).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name in order or list(members):
            z.writestr(name, members[name])
    return buf.getvalue()


# --- forging: a cheating prover with the key ----------------------------------------------------


@dataclass
class ForgeContext:
    ws: Any  # prover Workspace (copy)
    entries: list[list[Any]]  # [kind, body] per log index, mutable


def _refresh(obj: Any, log: Any, size: int) -> None:
    """Replace every disclosed entry in a transcript by the (rewritten) log's, with fresh proofs."""
    if isinstance(obj, dict):
        if set(obj) == {"entry", "inclusion"} and isinstance(obj["entry"], dict) and obj["entry"].get("type") == "vmu.log-entry":
            i = int(obj["entry"]["index"])
            obj["entry"] = log.entry(i).to_json()
            obj["inclusion"] = log.inclusion_proof(i, size).to_json()
            return
        for v in obj.values():
            _refresh(v, log, size)
    elif isinstance(obj, list):
        for v in obj:
            _refresh(v, log, size)


def forge(
    h: Honest,
    mutate: Callable[[ForgeContext], None] | None = None,
    *,
    mutate_predicate: Callable[[int, dict[str, Any], Callable[[int], dict[str, Any]]], None] | None = None,
    challenge: bytes | None = None,
    replay: int = 8,
    name: str = "forged",
    keep: list[str] | None = None,
) -> bytes:
    """Copy the honest workspace, rewrite its log with ``mutate``, re-sign everything, bundle it.

    ``mutate_predicate(n, predicate, disclose)`` may then edit transcript ``n``'s predicate before
    it is re-signed (its disclosures are refreshed from the rewritten log first); ``disclose(i)``
    returns entry ``i`` with a valid inclusion proof against that transcript's head_after.
    """
    from prover import Workspace
    from prover._bundle import write_bundle

    d = tempfile.mkdtemp(prefix=f"vmu-{name}-", dir=h.root)
    ws_dir = os.path.join(d, "ws")
    shutil.copytree(h.ws_dir, ws_dir, ignore=shutil.ignore_patterns(".lock", "checkpoints"))
    # Checkpoint files are content addressed and never rewritten in place: hard links suffice.
    shutil.copytree(os.path.join(h.ws_dir, "checkpoints"), os.path.join(ws_dir, "checkpoints"), copy_function=os.link)
    with Workspace.open(ws_dir) as ws:
        log = ws.log
        db = ws._db()
        entries = [[e.kind, e.body] for e in log.entries()]
        if mutate is not None:
            mutate(ForgeContext(ws=ws, entries=entries))
        heads = log.tree_heads()
        reqs = db.execute("SELECT n, head_before, transcript FROM p_requests ORDER BY n").fetchall()
        with log.transaction():
            db.execute("DELETE FROM log_entries")
            db.execute("DELETE FROM log_nodes")
            db.execute("DELETE FROM log_tree_heads")
        log.append_many([(k, b) for k, b in entries])
        signer = ws._note_signer

        def note_at(size: int, ts: int | None) -> bytes:
            return sign_checkpoint(Checkpoint(origin=log.origin, size=size, root_hash=log.root(size), timestamp=ts), signer)

        for n, hb, _rel in reqs:
            old = Checkpoint.from_text(hb.decode().rsplit("\n\n", 1)[0] + "\n")
            db.execute("UPDATE p_requests SET head_before=? WHERE n=?", (note_at(old.size, old.timestamp), n))
        last = heads[-1]
        final_note = note_at(last.size, last.timestamp)
        with log.transaction():
            db.execute("INSERT INTO log_tree_heads(size, root, timestamp, note) VALUES (?,?,?,?)",
                       (last.size, log.root(last.size), last.timestamp, final_note))
        for n, _, rel in reqs:
            path = os.path.join(ws_dir, rel)
            env = json.loads(open(path, "rb").read())
            stmt = json.loads(base64.b64decode(env["payload"]))
            pred = stmt["predicate"]
            after = Checkpoint.from_text(pred["log"]["head_after"].rsplit("\n\n", 1)[0] + "\n")
            before_note = db.execute("SELECT head_before FROM p_requests WHERE n=?", (n,)).fetchone()[0]
            before = Checkpoint.from_text(before_note.decode().rsplit("\n\n", 1)[0] + "\n")
            pred["log"]["head_before"] = before_note.decode()
            pred["log"]["head_after"] = note_at(after.size, after.timestamp).decode()
            pred["log"]["consistency"] = log.consistency_proof(before.size, after.size).to_json()
            _refresh(pred, log, after.size)
            stmt["subject"] = [
                {"name": f"checkpoints/{d}.safetensors",
                 "digest": {"sha256": hashlib.sha256(open(os.path.join(ws.store, d + ".safetensors"), "rb").read()).hexdigest()}}
                for d in pred["model_after"]["entry"]["body"]["shards"]
            ]
            if mutate_predicate is not None:
                size = after.size
                mutate_predicate(n, pred, lambda i, size=size: {"entry": log.entry(i).to_json(),
                                                                "inclusion": log.inclusion_proof(i, size).to_json()})
            with open(path, "wb") as f:
                f.write(sign_statement(stmt, [h.key]).to_bytes())
        out = os.path.join(d, "bundle.zip")
        write_bundle(ws, out, challenge=challenge, replay=replay)
    if keep is not None:
        keep.append(ws_dir)
    with open(out, "rb") as f:
        return f.read()


def trained_copy(h: Honest, name: str) -> str:
    """A private copy of the honest workspace as it was after training, before any deletion (for
    cheaters who edit the workspace and then run the prover's own ``forget``)."""
    d = tempfile.mkdtemp(prefix=f"vmu-{name}-", dir=h.root)
    ws_dir = os.path.join(d, "ws")
    shutil.copytree(h.trained_dir, ws_dir, ignore=shutil.ignore_patterns(".lock", "checkpoints"))
    shutil.copytree(os.path.join(h.trained_dir, "checkpoints"), os.path.join(ws_dir, "checkpoints"), copy_function=os.link)
    return ws_dir


def resign_members(h: Honest, members: dict[str, bytes], mutate_predicate: Callable[[dict[str, Any]], None],
                   which: str = "transcripts/000001.dsse.json") -> dict[str, bytes]:
    """Edit one transcript's predicate inside a bundle and re-sign it (no log change)."""
    env = json.loads(members[which])
    stmt = json.loads(base64.b64decode(env["payload"]))
    mutate_predicate(stmt["predicate"])
    out = dict(members)
    out[which] = sign_statement(stmt, [h.key]).to_bytes()
    return out


# --- training for cheaters ---------------------------------------------------------------------


def train_segment(ws: Any, start_digest: bytes, steps: list[dict[str, Any]], *, substitute: dict[int, tuple[int, str]] | None = None,
                  noise: float = 0.0, indices: list[int] | None = None) -> bytes:
    """Run logged step bodies from a stored checkpoint; save and return the end digest.

    ``substitute[j] = (pos, commitment_hex)`` trains step ``j`` with the record of that commitment
    in place of batch position ``pos`` (what a cheater does while logging the clean batch).
    ``noise`` adds Gaussian noise of that scale to the end weights (a fabricated checkpoint).
    """
    import numpy as np
    import torch

    from verifiable_mu import training as T

    cfg = ws.log.entry(0).body
    spec = T.ModelSpec.from_json(cfg["model"])
    hyper = T.Hyper.from_json(cfg["hyper"])
    T.configure_determinism(int(cfg["platform"]["threads"]))
    model = T.prepare_model(T.build_model(spec, init_seed=0), hyper)
    ck = T.load_checkpoint(os.path.join(ws.store, start_digest.hex() + ".safetensors"))
    mom = T.load_into_model(model, ck, torch.device("cpu"))
    ds = ws.data
    row_of = {c: r for r, c in ws._db().execute("SELECT row, commitment FROM p_records")}
    for j, st in enumerate(steps):
        if "batch" in st:
            batch = [st["batch"][i : i + 64] for i in range(0, len(st["batch"]), 64)]
        else:  # a format-2 step: the prover's own record of the batch (log indices as logged)
            assert indices is not None, "a format-2 step needs its log index"
            batch = [c.hex() for c in ws.batch_of(SimpleNamespace(index=indices[j], body=st))]
        if substitute and j in substitute:
            pos, c = substitute[j]
            batch[pos] = c
        rows = np.asarray([row_of[bytes.fromhex(c)] for c in batch], dtype=np.int64)
        T.train_step(model, mom, torch.from_numpy(ds.X[rows]), torch.from_numpy(ds.y[rows]), hyper, int(st["seed"]))
    if noise:
        g = torch.Generator().manual_seed(1234)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * noise)
    return T.save_checkpoint(T.checkpoint_from_model(model, mom), ws.store)


def bundle_for(ws_dir: str, *, challenge: bytes | None = None, replay: int = 8) -> tuple[bytes, tuple[int, ...]]:
    """Write a bundle of an existing (possibly forged) workspace; return it and the end indices of the
    segments it discloses for replay (the deletion lineage, then the uniform draws)."""
    from prover import Workspace
    from prover._bundle import write_bundle

    out = os.path.join(ws_dir + f"-{os.getpid()}-{len(os.listdir(os.path.dirname(ws_dir)))}.zip")
    with Workspace.open(ws_dir) as ws:
        info = write_bundle(ws, out, challenge=challenge, replay=replay)
    with open(out, "rb") as f:
        data = f.read()
    os.unlink(out)
    return data, info.complete + info.sampled  # every segment the verifier replays: the deletion lineage, then the draws


def lineage_map(ctx: ForgeContext) -> dict[int, int]:
    """For every checkpoint entry after a lineage start: the index of the checkpoint it continues."""
    entries = ctx.entries
    db = ctx.ws._db()
    rollback: dict[tuple[int, int], int] = {}
    gens: dict[int, int] = {}
    for _n, plan in db.execute("SELECT n, plan FROM p_requests ORDER BY n"):
        ev = json.loads(plan)
        for s, idx in ev["rollback"].items():
            gens[int(s)] = gens.get(int(s), 0) + 1
            rollback[(int(s), gens[int(s)])] = idx
    last: dict[tuple[int, int], int] = {}
    start_of: dict[int, int] = {}
    for i, (k, b) in enumerate(entries):
        if k != "checkpoint":
            continue
        key = (b["shard"], b["generation"])
        if key in last:
            start_of[i] = last[key]
        elif b["generation"] > 0:
            start_of[i] = rollback[key]
        last[key] = i
    return start_of


def cheat(ctx: ForgeContext, plan: dict[int, dict[str, Any]]) -> dict[int, str]:
    """Re-derive checkpoints so that exactly the segments ending at ``plan``'s entries are forged.

    ``plan[end_index]`` holds ``train_segment`` options (``substitute``, ``noise``) or
    ``{"digest": hex}`` to log a given digest. Every later checkpoint whose start changed is
    recomputed by honest training from the new start (the cheater keeps the rest consistent),
    and the model entries are updated. Returns the new digest per changed entry.
    """
    from verifiable_mu._tags import TAG_MODEL, tagged_hash

    entries = ctx.entries
    start_of = lineage_map(ctx)
    changed: dict[int, str] = {}
    old_to_new: dict[str, str] = {}
    for i in sorted(start_of):
        s = start_of[i]
        if i not in plan and s not in changed:
            continue
        b = entries[i][1]
        if i in plan and "digest" in plan[i]:
            new = plan[i]["digest"]
        else:
            n = int(b["step"]) - int(entries[s][1]["step"])
            steps = [entries[j][1] for j in range(i - n, i)]
            assert all(entries[j][0] == "step" for j in range(i - n, i))
            new = train_segment(ctx.ws, bytes.fromhex(entries[s][1]["digest"]), steps, indices=list(range(i - n, i)),
                                **plan.get(i, {})).hex()
        if new != b["digest"]:
            changed[i] = new
            old_to_new[b["digest"]] = new
            b["digest"] = new
    for k, b in entries:
        if k == "model":
            b["shards"] = [old_to_new.get(x, x) for x in b["shards"]]
            b["digest"] = tagged_hash(TAG_MODEL, b"".join(bytes.fromhex(x) for x in b["shards"])).hex()
    return changed


def skip_retraining(ctx: ForgeContext) -> dict[str, Any]:
    """Cheater (b): every retraining checkpoint is logged as the old, pre-deletion checkpoint of the
    same shard and stage (no retraining happened). Returns ``{"forged": end indices}``."""
    plan = {}
    for i in lineage_map(ctx):
        b = ctx.entries[i][1]
        if b["generation"] > 0:
            old = [
                j for j, (k, o) in enumerate(ctx.entries)
                if k == "checkpoint" and o["shard"] == b["shard"] and o["generation"] == 0 and o["stage"] == b["stage"]
            ][-1]  # fmt: skip
            plan[i] = {"digest": ctx.entries[old][1]["digest"]}
    cheat(ctx, plan)
    return {"forged": set(plan)}


def copy_entries(entries: list[list[Any]]) -> list[list[Any]]:
    return copy.deepcopy(entries)
