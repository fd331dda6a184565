"""Issue 13: approximate (unproven) unlearning, audit packages (specs/12-audit-package.md) and the
residual-only audit (vmu-audit).

Digits, 5 shards x 4 slices, 20 epochs; the request deletes a whole slice (shard 0, slice 0).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from verifiable_mu._canonical import canonical_json

pytest.importorskip("torch")

CFG = dict(shards=5, slices=4, epochs=20, workers=1, seed=0)
#: the stated bound: an approximate method may cost at most this much accuracy on the shard's
#: retained records (measured drops on this setup: 0 to 0.05, README's compare table)
RETAINED_DROP = 0.10


@pytest.fixture(scope="module")
def ws_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    from prover import Workspace, WorkspaceConfig

    path = str(tmp_path_factory.mktemp("approx") / "ws")
    ws = Workspace.create(path, data="digits", config=WorkspaceConfig(**CFG))
    ws.progress = False
    ws.train()
    ws.close()
    return path


@pytest.fixture(scope="module")
def ws(ws_dir: str) -> Iterator[Any]:
    from prover import Workspace

    w = Workspace.open(ws_dir)
    w.progress = False
    yield w
    w.close()


def slice_ids(ws: Any, shard: int = 0, slc: int = 0) -> list[str]:
    return [i for (i,) in ws._db().execute(
        "SELECT id FROM p_records WHERE role='train' AND deleted_by IS NULL AND shard=? AND slice=? ORDER BY row",
        (shard, slc))]


def retained_rows(ws: Any, shard: int, gone: set[int]) -> np.ndarray:
    rows = [r for (r,) in ws._db().execute(
        "SELECT row FROM p_records WHERE role='train' AND deleted_by IS NULL AND shard=?", (shard,)) if r not in gone]
    return np.asarray(rows, dtype=np.int64)


# --- the methods -------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["finetune", "neggrad", "fisher", "distill", "oblivi"])
def test_each_method_raises_the_deleted_loss_and_keeps_retained_accuracy(ws: Any, method: str) -> None:
    from prover._approx import accuracy, approximate_forget, mean_loss

    res = approximate_forget(ws, slice_ids(ws), method)
    assert res.label == "unproven: approximate unlearning"
    assert res.shards_changed == (0,)
    X, y = ws.data.X, ws.data.y
    d = res.deleted_rows
    before, after = mean_loss(ws, res.pre[0], X[d], y[d]), mean_loss(ws, res.post[0], X[d], y[d])
    assert after > before, (method, before, after)
    kept = retained_rows(ws, 0, set(d.tolist()))
    acc0, acc1 = accuracy(ws, res.pre[0], X[kept], y[kept]), accuracy(ws, res.post[0], X[kept], y[kept])
    assert acc1 >= acc0 - RETAINED_DROP, (method, acc0, acc1)
    for s in range(1, CFG["shards"]):  # shards without a deleted record keep their models
        assert res.post[s] is res.pre[s]


def _state(path: str) -> tuple[Any, ...]:
    with open(os.path.join(path, "state.db"), "rb") as f:
        db = hashlib.sha256(f.read()).hexdigest()
    return db, sorted(os.listdir(os.path.join(path, "checkpoints"))), sorted(os.listdir(os.path.join(path, "transcripts")))


def test_an_approximate_request_changes_neither_the_log_nor_the_committed_state(ws: Any, ws_dir: str) -> None:
    from prover._approx import approximate_forget

    size, model = ws.log.size, ws.model_digest()
    before = _state(ws_dir)
    approximate_forget(ws, slice_ids(ws)[:5], "finetune")
    approximate_forget(ws, slice_ids(ws)[:5], "oblivi")
    assert (ws.log.size, ws.model_digest()) == (size, model)
    assert _state(ws_dir) == before
    assert ws.split_ids("deleted") == []


def test_unknown_method_is_refused(ws: Any) -> None:
    from prover._approx import approximate_forget
    from prover._errors import BadInput

    with pytest.raises(BadInput, match="unknown approximate method 'sisa'"):
        approximate_forget(ws, slice_ids(ws)[:1], "sisa")
    with pytest.raises(BadInput, match="'retrain' is the exact, proven path"):
        approximate_forget(ws, slice_ids(ws)[:1], "retrain")


def test_oblivi_without_stitching_is_exact_sisa_retraining(ws_dir: str, tmp_path: Any) -> None:
    """With epsilon below every residual, oblivi retrains every stage with the seeds and order of
    Workspace.forget: the shard's model is bit for bit the exactly retrained one."""
    import torch

    from prover import Workspace
    from prover._approx import ApproxParams, approximate_forget
    from prover._audit_package import exact_forget_result

    dst = str(tmp_path / "ws")
    shutil.copytree(ws_dir, dst)
    with Workspace.open(dst) as w:
        w.progress = False
        ids = slice_ids(w, 1, 2)[:3]
        ob = approximate_forget(w, ids, "oblivi", ApproxParams(oblivi_epsilon=1e-12))
        assert ob.details["shard_1"]["stitched_from_stage"] is None
        assert ob.details["shard_1"]["retrained_stages"] == [3, 4]
        ex, _ = exact_forget_result(w, ids)
    for k, t in ex.post[1].items():
        if k.startswith("param/"):
            assert torch.equal(t, ob.post[1][k]), k


def test_oblivi_stitches_the_original_updates_once_the_residual_is_below_epsilon(ws_dir: str, tmp_path: Any) -> None:
    """N_R = N_k + (O_R - O_k), N_k the exactly retrained stage k (Workspace.forget's own stage k
    checkpoint), O the original lineage."""
    import torch

    from prover import Workspace
    from prover._approx import ApproxParams, _load, approximate_forget

    dst = str(tmp_path / "ws")
    shutil.copytree(ws_dir, dst)
    with Workspace.open(dst) as w:
        w.progress = False
        ids = slice_ids(w)[:10]
        res = approximate_forget(w, ids, "oblivi", ApproxParams(oblivi_epsilon=5.0))
        det = res.details["shard_0"]
        assert det["stitched_from_stage"] == 1 and det["retrained_stages"] == [1]  # residual_rel <= 1 < 5
        assert 0 < det["trace"][0]["residual_rel"] <= 5.0
        orig = {int(r): bytes(d) for r, d in w._db().execute("SELECT stage, digest FROM p_stage WHERE shard=0")}
        o_1, o_r = _load(w, orig[1]), _load(w, orig[4])
        w.forget(ids)
        n_1 = _load(w, bytes(w._db().execute("SELECT digest FROM p_stage WHERE shard=0 AND stage=1").fetchone()[0]))
    for name in o_r:
        if name.startswith("param/"):
            want = (n_1[name].double() + (o_r[name].double() - o_1[name].double())).float()
            assert torch.equal(res.post[0][name], want), name


# --- the audit package and vmu-audit -----------------------------------------------------------------


@pytest.fixture(scope="module")
def packages(ws: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from prover._approx import approximate_forget
    from prover._audit_package import write_package

    d = tmp_path_factory.mktemp("pkgs")
    out = {}
    for m in ("fisher", "neggrad"):
        out[m] = write_package(ws, approximate_forget(ws, slice_ids(ws), m), str(d / f"{m}.zip"))
    return out


@pytest.fixture(scope="module")
def exact_package(ws_dir: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    from prover import Workspace
    from prover._audit_package import exact_forget_result, write_package

    d = tmp_path_factory.mktemp("exact")
    dst = str(d / "ws")
    shutil.copytree(ws_dir, dst)
    with Workspace.open(dst) as w:
        w.progress = False
        res, _ = exact_forget_result(w, slice_ids(w))
        return write_package(w, res, str(d / "retrain.zip"))


def audit(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from verifier.audit_cli import main

    code = main([*argv, "--bootstrap", "200"])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_whole_slice_the_audit_flags_an_approximate_method_and_passes_the_exact_one(
    packages: dict[str, str], exact_package: str, ws_dir: str, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    """Issue 13, what must hold: on digits 5x4 with a whole slice deleted the residual-only audit
    fails at least one approximate method (fisher; neggrad too at this seed, README), and the
    exact method passes. A statistical result at alpha = 0.05 with a deterministic seed."""
    key = os.path.join(ws_dir, "signing-key.pub.pem")
    rep_path = str(tmp_path / "fisher.json")
    code, out, err = audit(capsys, packages["fisher"], "--trust-key", key, "--json", rep_path)
    assert code == 1, (out, err)
    assert out.startswith("TRACE FOUND (fisher: unproven: approximate unlearning)")
    assert "statistical audit, not a proof" in out
    rep = json.loads(open(rep_path).read())
    assert rep["verdict"] == "fail" and rep["statistical_audit_not_a_proof"] is True
    assert rep["residual"]["control"]["detected"] is True
    rob = rep["residual"]["robustness"]  # issue 14: robust accuracy of the method's models, before and after
    assert rob["records"] == rep["package"]["audit"] and rob["informative_only"] is True
    assert 0 <= rob["after"]["robust_accuracy"] < rob["after"]["clean_accuracy"]
    code, out, err = audit(capsys, exact_package, "--trust-key", key)
    assert code == 0, (out, err)
    assert out.startswith("NO TRACE FOUND (retrain:")


def test_an_unpinned_package_key_is_reported(packages: dict[str, str], capsys: pytest.CaptureFixture[str],
                                             tmp_path: Any) -> None:
    html = str(tmp_path / "r.html")
    code, out, err = audit(capsys, packages["neggrad"], "--html", html, "--quiet")
    assert code in (0, 1)
    assert "KEY NOT PINNED" in err
    assert "statistical audit, not a proof" in open(html).read()


# --- tampering -----------------------------------------------------------------------------------


def members_of(path: str) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def rezip(members: dict[str, bytes], path: str) -> str:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for n, b in members.items():
            z.writestr(n, b)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    return path


def resign(members: dict[str, bytes], key_path: str, edit: Callable[[dict[str, Any]], None] | None = None) -> dict[str, bytes]:
    """Re-sign the statement over the members as they are now (a cheating owner holds the key)."""
    from verifiable_mu._dsse import Envelope, make_statement, sign_statement
    from verifiable_mu._keys import SigningKey

    env = Envelope.from_json(json.loads(members["statement.dsse.json"]))
    pred = json.loads(env.payload)["predicate"]
    if edit is not None:
        edit(pred)
    st = make_statement(
        subjects=[(n, {"sha256": hashlib.sha256(b).hexdigest()}) for n, b in sorted(members.items())
                  if n != "statement.dsse.json"],
        predicate_type="https://verifiable-mu.dev/audit-package/v1", predicate=pred)
    out = dict(members)
    out["statement.dsse.json"] = sign_statement(st, [SigningKey.load(key_path)]).to_bytes()
    return out


def test_a_changed_model_fails_its_digest(packages: dict[str, str], ws_dir: str, tmp_path: Any,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    m = members_of(packages["fisher"])
    blob = bytearray(m["models/post/shard-0000.safetensors"])
    blob[-1] ^= 1
    m["models/post/shard-0000.safetensors"] = bytes(blob)
    p = rezip(m, str(tmp_path / "t.zip"))
    code, _, err = audit(capsys, p, "--trust-key", os.path.join(ws_dir, "signing-key.pub.pem"))
    assert code == 1
    assert "step A3: digest mismatch: models/post/shard-0000.safetensors" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_package_signed_by_another_key_fails_when_the_key_is_pinned(
    packages: dict[str, str], ws_dir: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from verifiable_mu._keys import SigningKey

    other = SigningKey.generate()
    kp = str(tmp_path / "other.pem")
    other.save(kp)
    m = members_of(packages["fisher"])
    m["owner.pub.pem"] = other.public_key.to_pem()
    p = rezip(resign(m, kp), str(tmp_path / "t.zip"))
    code, _, err = audit(capsys, p, "--trust-key", os.path.join(ws_dir, "signing-key.pub.pem"))
    assert code == 1
    assert "step A2: bad signature" in err


@pytest.mark.parametrize(
    "what, change, fragment",
    [
        ("label", lambda m, p: p.update(label="approximate unlearning"),
         "step A4: a fisher package must be labelled 'unproven: approximate unlearning'"),
        ("method", lambda m, p: p.update(method="retrain"), "step A4: a retrain package must be labelled"),
        ("model digest", lambda m, p: p["models"]["post"].__setitem__(0, p["models"]["pre"][0]),
         "step A4: models/post/shard-0000.safetensors has content digest"),
        ("audit root", lambda m, p: p["audit"].update(size=str(int(p["audit"]["size"]) + 1)),
         "step A4: the audit records do not hash to the audit root"),
        ("deleted", lambda m, p: p["deleted"]["commitments"].pop(), "step A4: the deleted records' openings are not"),
    ],
)
def test_a_signed_but_false_statement_is_rejected(
    packages: dict[str, str], ws_dir: str, tmp_path: Any, capsys: pytest.CaptureFixture[str],
    what: str, change: Callable[[dict[str, bytes], dict[str, Any]], None], fragment: str,
) -> None:
    m = members_of(packages["fisher"])
    p = rezip(resign(m, os.path.join(ws_dir, "signing-key.pem"), lambda pred: change(m, pred)), str(tmp_path / "t.zip"))
    code, _, err = audit(capsys, p, "--trust-key", os.path.join(ws_dir, "signing-key.pub.pem"))
    assert code == 1, (what, err)
    assert fragment in err, (what, err)


def test_a_dropped_audit_record_changes_the_root(packages: dict[str, str], ws_dir: str, tmp_path: Any,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    m = members_of(packages["fisher"])
    doc = json.loads(m["records/audit.json"])
    doc["records"] = doc["records"][1:]
    m["records/audit.json"] = canonical_json(doc)
    p = rezip(resign(m, os.path.join(ws_dir, "signing-key.pem")), str(tmp_path / "t.zip"))
    code, _, err = audit(capsys, p, "--trust-key", os.path.join(ws_dir, "signing-key.pub.pem"))
    assert code == 1
    assert "step A4: the audit records do not hash to the audit root" in err


@pytest.mark.parametrize(
    "what, make, fragment",
    [
        ("not a zip", lambda m: b"not a zip at all", "not an audit package: the file is not a zip archive"),
        ("truncated", lambda m: None, "not a readable zip archive"),
        ("unknown member", lambda m: {**m, "extra.txt": b"x"},
         "step A1: archive member 'extra.txt' is not a member an audit package of version 1 can hold"),
        ("path traversal", lambda m: {**m, "../statement.dsse.json": b"x"}, "step A1: archive member "
         "'../statement.dsse.json' contains '..' (path traversal)"),
        ("no statement", lambda m: {k: v for k, v in m.items() if k != "statement.dsse.json"},
         "the package lacks statement.dsse.json"),
        ("statement not json", lambda m: {**m, "statement.dsse.json": b"{"}, "statement.dsse.json is not valid JSON"),
    ],
)
def test_malformed_packages_exit_2(packages: dict[str, str], tmp_path: Any, capsys: pytest.CaptureFixture[str],
                                   what: str, make: Callable[[dict[str, bytes]], Any], fragment: str) -> None:
    path = str(tmp_path / "t.zip")
    m = members_of(packages["fisher"])
    got = make(m)
    if got is None:
        with open(packages["fisher"], "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
    elif isinstance(got, bytes):
        with open(path, "wb") as f:
            f.write(got)
    else:
        rezip(got, path)
    code, _, err = audit(capsys, path)
    assert code == 2, (what, err)
    assert fragment in err, (what, err)
    assert "Traceback" not in err


def test_an_unsupported_package_version_exits_2(packages: dict[str, str], ws_dir: str, tmp_path: Any,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    m = members_of(packages["fisher"])
    p = rezip(resign(m, os.path.join(ws_dir, "signing-key.pem"), lambda pred: pred.update(version=2)),
              str(tmp_path / "t.zip"))
    code, _, err = audit(capsys, p, "--trust-key", os.path.join(ws_dir, "signing-key.pub.pem"))
    assert code == 2
    assert "audit package version 2 is not supported" in err


def test_vmu_forget_method_needs_a_package_and_writes_no_transcript(ws_dir: str, tmp_path: Any,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from prover.cli import main

    dst = str(tmp_path / "ws")
    shutil.copytree(ws_dir, dst)
    from prover import Workspace

    with Workspace.open(dst) as w:
        ids = ",".join(slice_ids(w)[:3])
    assert main(["forget", dst, "--ids", ids, "--method", "finetune"]) == 2
    assert "give --package OUT" in capsys.readouterr().err
    assert main(["forget", dst, "--ids", ids, "--method", "magic", "--package", str(tmp_path / "p.zip")]) == 2
    assert "unknown --method 'magic'" in capsys.readouterr().err
    assert main(["forget", dst, "--ids", ids, "--method", "oblivi", "--method-param", "epsilon=1",
                 "--package", str(tmp_path / "p.zip")]) == 2
    assert "--method-param 'epsilon=1': use KEY=VALUE with KEY one of" in capsys.readouterr().err
    assert main(["forget", dst, "--ids", ids, "--method", "oblivi", "--method-param", "oblivi_epsilon=0",
                 "--package", str(tmp_path / "p.zip")]) == 2
    assert "oblivi_epsilon must be > 0" in capsys.readouterr().err
    assert main(["forget", dst, "--ids", ids, "--method", "finetune", "--method-param", "finetune_epochs=1",
                 "--package", str(tmp_path / "p.zip")]) == 0
    cap = capsys.readouterr()
    assert "UNPROVEN: APPROXIMATE UNLEARNING" in cap.err
    assert os.listdir(os.path.join(dst, "transcripts")) == []
    assert os.path.exists(tmp_path / "p.zip")


def test_vmu_verify_residual_only_is_the_package_audit(packages: dict[str, str], ws_dir: str, tmp_path: Any,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from verifier.cli import main

    m = members_of(packages["fisher"])
    m["records/deleted.json"] = m["records/deleted.json"].replace(b'"shard":0', b'"shard":1', 1)
    p = rezip(m, str(tmp_path / "t.zip"))
    code = main(["--residual-only", p, "--trust-key", os.path.join(ws_dir, "signing-key.pub.pem")])
    assert code == 1
    assert "step A3: digest mismatch: records/deleted.json" in capsys.readouterr().err
    assert main(["--residual-only", packages["fisher"], "--bootstrap", "200", "--quiet"]) == 1
    assert capsys.readouterr().out.startswith("TRACE FOUND (fisher")


def test_an_owner_who_ships_the_old_models_as_unlearned_fails_the_audit(
    ws: Any, ws_dir: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Cheating owner: claims finetune on a whole slice but ships the models before as the models
    after (nothing unlearned). The package is validly signed (A1-A4 pass); A5, the statistical
    test, fails it."""
    from prover._approx import approximate_forget
    from prover._audit_package import write_package

    res = approximate_forget(ws, slice_ids(ws), "finetune")
    res.post = list(res.pre)
    p = write_package(ws, res, str(tmp_path / "lazy.zip"))
    code, out, _ = audit(capsys, p, "--trust-key", os.path.join(ws_dir, "signing-key.pub.pem"))
    assert code == 1
    assert out.startswith("TRACE FOUND (finetune")
