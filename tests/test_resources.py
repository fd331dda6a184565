"""Resource use of the verifier on hostile bundles (issue 10 item 8; specs/09-verification.md,
"Resource bounds"), and the exit code of a false claim about a log entry's kind.

Every hostile input here is built with the library (the honest bundle of conftest_verifier, zip
surgery, or ``forge``: a cheating prover holding the key). ``test_peak_memory`` runs the real
``vmu-verify`` on an honest 5x4 bundle, on every hostile input of the tamper suite and on the ones
below, one forked child each (tests/_rss_probe.py), under a 3 GiB address-space limit, and checks
each child's exit code, its one-line stderr and its peak RSS (at most 1 GiB).
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zipfile
from typing import Any

import numpy as np
import pytest
from conftest_verifier import Honest, forge, honest, members_of, rezip
from test_tamper import CASES, Case, _flip_head_sig, _opts

from verifiable_mu._errors import InvalidBundle
from verifier import Limits, VerifyOptions, verify
from verifier._bundle import json_memory_estimate, load_file, open_archive, parse_json_bounded
from verifier.cli import main as cli_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GiB = 1024**3
MiB = 1024**2


# --- hostile inputs --------------------------------------------------------------------------


def _zip(members: dict[str, bytes], level: int = 6) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=level) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _json_128mib() -> bytes:
    """128 MiB of JSON that deflates about 50-fold (one random character every 71 bytes), made of
    empty objects: small on disk, gigabytes as Python objects."""
    item = b'{"X":0},' + b"{}," * 21
    n = (128 * MiB) // len(item)
    arr = np.tile(np.frombuffer(item, dtype=np.uint8), n).reshape(n, len(item))
    arr[:, 2] = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)[np.random.default_rng(0).integers(0, 16, n)]
    return b"[" + arr.tobytes()[:-1] + b"]"


def _huge_json_member(h: Honest) -> tuple[bytes, VerifyOptions]:
    """The log member replaced by 128 MiB of JSON; every digest in the manifest is right, every
    signature verifies, so only the parse-memory bound stops it (step 3, after steps 4-6)."""
    m = members_of(h.bundle)
    m["log/entries.json"] = _json_128mib()
    return rezip(m), _opts()


def _deflate_bomb(h: Honest) -> tuple[bytes, VerifyOptions]:
    """One member of 255 MiB that deflates to a quarter of a megabyte."""
    m = members_of(h.bundle)
    m["records/openings.json"] = b" " * (255 * MiB)
    return rezip(m, fix_manifest=False), _opts()


def _many_members_bomb(h: Honest) -> tuple[bytes, VerifyOptions]:
    """100 extra members of 2 MiB, each within the per-member ratio (about 130-fold), together far
    beyond what the archive's size allows."""
    m = members_of(h.bundle)
    rng = np.random.default_rng(1)
    for i in range(100):
        block = bytearray(2 * MiB)
        block[::512] = rng.integers(0, 256, len(block[::512]), dtype=np.uint8).tobytes()
        m[f"checkpoints/{i:064x}.safetensors"] = bytes(block)
    return _zip(m), _opts()


def _overlapping_members(h: Honest) -> tuple[bytes, VerifyOptions]:
    """Central-directory entries that all point at the same compressed data (a 'non-recursive
    zip bomb': every entry inflates the same bytes again)."""
    big = os.urandom(MiB)
    name = "checkpoints/" + "a" * 64 + ".safetensors"
    data = bytearray(_zip({name: big}, level=0))
    cd = data.find(b"PK\x01\x02")
    eocd = data.find(b"PK\x05\x06")
    entry = bytes(data[cd:eocd])
    entries = [entry.replace(b"a" * 64, f"{i:064x}".encode()) for i in range(8)]
    new_cd = b"".join(entries)
    end = bytearray(data[eocd:])
    struct.pack_into("<HHII", end, 8, len(entries), len(entries), len(new_cd), cd)
    return bytes(data[:cd]) + new_cd + bytes(end), _opts()


def _config(**change: Any) -> Any:
    def mutate(ctx: Any) -> None:
        cfg = ctx.entries[0][1]
        for k, v in change.items():
            if k == "model":
                cfg["model"].update(v)
            else:
                cfg[k] = v

    return lambda h: (forge(h, mutate), _opts())


def _first_use_is_checkpoint(n: int, pred: dict[str, Any], disclose: Any) -> None:
    if n == 1:
        r = pred["records"][0]
        r["first_use"] = disclose(int(pred["shards"][0]["rollback"]["entry"]["index"]))


def _original_lists_a_step(h: Honest) -> tuple[bytes, VerifyOptions]:
    """The (unsigned) manifest names a proven step entry as a checkpoint of an original lineage."""
    m = members_of(h.bundle)
    log = json.loads(m["log/entries.json"])
    step = next(int(e["index"]) for r in log["runs"] for e in r["entries"] if e["kind"] == "step")
    man = json.loads(m["manifest.json"])
    man["original"][0]["checkpoints"][1] = str(step)
    m["manifest.json"] = json.dumps(man).encode()
    return rezip(m), _opts()


RESOURCE_CASES: dict[str, Case] = {
    "step_01_deflate_bomb_255mib": Case(1, 2, "InvalidBundle", "expands (to more than|[0-9]+-fold)", _deflate_bomb),
    "step_01_many_members_bomb": Case(1, 2, "InvalidBundle", "expands to more than .* times its own size",
                                      _many_members_bomb),
    "step_01_overlapping_members": Case(1, 2, "InvalidBundle", "overlapping members", _overlapping_members),
    "step_03_json_member_128mib": Case(3, 2, "InvalidBundle", "log/entries.json would take about [0-9]+ MiB",
                                       _huge_json_member),
    "step_13_schedule_sized_by_config": Case(13, 1, "ScheduleViolation", "committed schedule has [0-9]+ checkpoints",
                                             _config(checkpoint_every=1, stage_epochs=2**20)),
    "step_15_huge_logreg": Case(15, 1, "ModelMismatch", "logreg model has 17179870208 parameters",
                                _config(model={"name": "logreg", "n_features": 2**24, "n_classes": 2**10})),
    "step_15_huge_mlp": Case(15, 1, "ModelMismatch", "mlp model has [0-9]+ parameters",
                             _config(model={"hidden": 2**20})),
    "step_15_huge_cnn": Case(15, 1, "ModelMismatch", "cnn model has [0-9]+ parameters",
                             _config(model={"name": "cnn", "n_features": 2**24, "input_shape": [2**12, 2**12]})),
    "step_12_first_use_claims_a_checkpoint": Case(12, 1, "OrderingViolation", "is of kind 'checkpoint', the claim says 'step'",
                                                  lambda h: (forge(h, None, mutate_predicate=_first_use_is_checkpoint),
                                                             _opts())),
    "step_13_original_claims_a_step": Case(13, 1, "EntryKindMismatch", "is of kind 'step', the claim says 'checkpoint'",
                                           _original_lists_a_step),
}

_MADE: dict[str, tuple[bytes, VerifyOptions]] = {}


def _make(name: str) -> tuple[bytes, VerifyOptions]:
    if name not in _MADE:
        case = RESOURCE_CASES.get(name) or CASES[name]
        _MADE[name] = case.make(honest())
    return _MADE[name]


@pytest.mark.parametrize("name", sorted(RESOURCE_CASES))
def test_resource_case(name: str) -> None:
    """Each hostile input fails at its step, with its exit code, error type and message."""
    case = RESOURCE_CASES[name]
    data, opts = _make(name)
    v = verify(data, opts)
    assert (v.exit_code, v.failed_step, type(v.failure).__name__) == (case.exit, case.step, case.error), repr(v.failure)
    import re

    assert re.search(case.match, str(v.failure)), str(v.failure)
    failed = [r for r in v.results if r.status in ("fail", "error")]
    assert len(failed) == 1 and failed[0].step == case.step


def test_huge_json_member_is_small_on_disk() -> None:
    """The 128 MiB JSON member travels in a bundle of a few megabytes (what made 3.5 GB of RSS)."""
    data, _ = _make("step_03_json_member_128mib")
    assert len(data) < 4 * MiB
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.getinfo("log/entries.json").file_size >= 128 * MiB - 100


# --- bounds, one by one ----------------------------------------------------------------------


def test_step_03_large_members_wait_for_signatures() -> None:
    """A bundle with a broken large member and a bad final-head signature fails at step 5 (the
    signature), not at step 3: the large members are parsed only after steps 4-6 pass."""
    h = honest()
    m = members_of(_flip_head_sig(h)[0])
    m["log/entries.json"] = b"[" * 10 + b"not json"
    v = verify(rezip(m), _opts())
    assert (v.exit_code, v.failed_step, type(v.failure).__name__) == (1, 5, "SignatureFailed"), repr(v.failure)
    step3 = next(r for r in v.results if r.step == 3)
    assert step3.status == "pass" and "signed members only" in step3.detail
    # Signatures fine: the same broken member is then found, by step 3.
    m = members_of(h.bundle)
    m["log/entries.json"] = b"[" * 10 + b"not json"
    v = verify(rezip(m), _opts())
    assert (v.exit_code, v.failed_step) == (2, 3) and "log/entries.json is not valid JSON" in str(v.failure)
    assert [r.status for r in v.results if r.step in (4, 5, 6)] == ["pass", "pass", "pass"]


def test_step_01_inflates_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Step 1 checks the central directory only; step 2 inflates the manifest before any other
    member, and a member list that does not match the manifest stops it before the others."""
    h = honest()
    read: list[str] = []
    from verifier import _bundle

    orig = _bundle.Archive.read

    def spy(self: Any, name: str, limits: Limits, **kw: Any) -> bytes:
        read.append(name)
        return orig(self, name, limits, **kw)

    monkeypatch.setattr(_bundle.Archive, "read", spy)
    m = members_of(h.bundle)
    extra = "checkpoints/" + "e" * 64 + ".safetensors"
    m[extra] = b"unlisted"
    v = verify(rezip(m, fix_manifest=False), _opts())
    assert (v.failed_step, v.exit_code) == (2, 2) and "not listed in the manifest" in str(v.failure)
    assert read == ["manifest.json"]
    read.clear()
    assert verify(h.bundle, _opts()).exit_code == 0
    assert read[0] == "manifest.json" and sorted(read) == sorted(members_of(h.bundle))


def test_step_01_total_expansion_derived_from_archive_size() -> None:
    """The archive's members may expand to 64x its size plus 16 MiB, nothing more."""
    h = honest()
    lim = Limits()
    a = open_archive(h.bundle, lim)
    total = sum(i.file_size for i in a.infos.values())
    assert total < lim.max_total_ratio * len(h.bundle) + lim.total_floor
    tight = Limits(max_total_ratio=1, total_floor=0)
    with pytest.raises(InvalidBundle, match=r"expands to more than [0-9]+ bytes \(at most 1 times"):
        open_archive(h.bundle, tight)


def test_step_02_manifest_inflated_within_its_own_bound() -> None:
    h = honest()
    v = verify(h.bundle, _opts(limits=Limits(max_manifest_bytes=100)))
    assert (v.failed_step, v.exit_code) == (2, 2) and "manifest.json' is" in str(v.failure)


def test_json_memory_estimate_bounds_real_use() -> None:
    """The estimate is at least what the bounded parse takes (tracemalloc) on the worst shapes, and
    at most 4x on an honest member."""
    import tracemalloc

    n = 50_000
    shapes = {
        "objects": b"[" + b",".join([b"{}"] * n) + b"]",
        "arrays": b"[" + b",".join([b"[]"] * n) + b"]",
        "nested": b"[" + b",".join([b"[[[]]]"] * n) + b"]",
        "keys": b"{" + b",".join(b'"k%d":0' % i for i in range(n)) + b"}",
        "numbers": b"[" + b",".join([b"123456"] * n) + b"]",
        "strings": b"[" + b",".join([b'"ab"'] * n) + b"]",
        "escaped strings": b"[" + b",".join([b'"\\u00e9\\u4e00"'] * n) + b"]",
        "true": b"[" + b",".join([b"true"] * n) + b"]",
        "long string": b'["' + b"ab" * n + b'"]',
    }
    h = honest()
    shapes["honest log"] = members_of(h.bundle)["log/entries.json"]
    for what, data in shapes.items():
        tracemalloc.start()
        parse_json_bounded(data, what=what, max_bytes=1 << 30, max_depth=64)
        used = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        est = json_memory_estimate(data)
        assert used <= est, (what, used, est)
        if what == "honest log":
            assert est <= 4 * used, (used, est)


def test_json_budget_is_per_bundle() -> None:
    """Every JSON document of one bundle draws on one budget (manifest aside)."""
    h = honest()
    log = members_of(h.bundle)["log/entries.json"]
    need = json_memory_estimate(log)
    v = verify(h.bundle, _opts(limits=Limits(max_json_memory_total=need - 1)))
    assert (v.failed_step, v.exit_code) == (3, 2) and "left for this bundle" in str(v.failure), str(v.failure)


def test_load_file_reads_the_real_size(tmp_path: Any) -> None:
    """No read reserves the largest allowed bundle: under a 3 GiB address-space limit (where a
    4 GiB read would fail), the proof checks of the honest bundle pass."""
    h = honest()
    code = (
        "import resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_AS, ({3 * GiB}, {3 * GiB}))\n"
        "from verifier.cli import main\n"
        f"sys.exit(main([{h.bundle_path!r}, '--replay', '0', '--no-residual', '--quiet']))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert load_file(h.bundle_path) == h.bundle
    big = tmp_path / "big.vmu"
    big.write_bytes(b"PK" + b"\0" * 100)
    with pytest.raises(InvalidBundle, match="at most 50"):
        load_file(str(big), Limits(max_archive_bytes=50))


def test_memory_error_is_unusable_input(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """An allocation that fails is unusable input (exit 2, one line), never an internal error."""
    from verifier import _steps_models

    def boom(*a: Any, **k: Any) -> None:
        raise MemoryError

    monkeypatch.setattr(_steps_models, "check_model_fits", boom)
    h = honest()
    v = verify(h.bundle, _opts())
    assert (v.exit_code, v.failed_step, type(v.failure).__name__) == (2, 15, "InvalidBundle")
    assert "ran out of memory" in str(v.failure)
    capsys.readouterr()
    assert cli_main([h.bundle_path, "--replay", "0", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unusable: step 15: models ran out of memory" in err and "Traceback" not in err

    def torch_oom(*a: Any, **k: Any) -> None:
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(_steps_models, "check_model_fits", torch_oom)
    assert verify(h.bundle, _opts()).exit_code == 2

    def bug(*a: Any, **k: Any) -> None:
        raise RuntimeError("a bug, not memory")

    monkeypatch.setattr(_steps_models, "check_model_fits", bug)
    v = verify(h.bundle, _opts())  # a real bug still surfaces as one: exit 70, never "out of memory"
    assert (v.exit_code, v.failed_step, type(v.failure).__name__) == (70, 15, "InternalError")
    assert str(v.failure) == "RuntimeError: a bug, not memory" and isinstance(v.failure.__cause__, RuntimeError)


# --- peak memory of vmu-verify ----------------------------------------------------------------


def _honest_5x4(root: str) -> str:
    from prover import Workspace, WorkspaceConfig
    from prover._bundle import write_bundle

    ws_dir = os.path.join(root, "ws54")
    cfg = WorkspaceConfig(shards=5, slices=4, epochs=8, workers=1, device="cpu")
    with Workspace.create(ws_dir, data="digits", config=cfg) as ws:
        ws.progress = False
        ws.train(workers=1)
    with Workspace.open(ws_dir) as ws:
        ws.progress = False
        ws.forget(["17"], workers=1)
        path = os.path.join(root, "honest54.vmu")
        write_bundle(ws, path)
    return path


def _argv(path: str, opts: VerifyOptions, tmp: str, name: str) -> list[str] | None:
    """The vmu-verify command line giving ``opts``; None when a case needs non-default limits
    (its input is then the honest bundle, measured as such)."""
    if opts.limits != Limits():
        return None
    argv = [path, "--quiet"]
    if opts.replay is not None:
        argv += ["--replay", str(opts.replay)]
    if opts.challenge is not None:
        argv += ["--challenge", opts.challenge.hex()]
    if opts.trust_key is not None:
        pem = os.path.join(tmp, f"{name}.pub.pem")
        with open(pem, "wb") as f:
            f.write(opts.trust_key.to_pem())
        argv += ["--trust-key", pem]
    return argv


@pytest.mark.slow
def test_peak_memory(tmp_path: Any) -> None:
    """Peak RSS of vmu-verify, per input, under ``ulimit -v`` 3 GiB: the honest 5x4 bundle (full
    verification: replay and residual tests), every tamper-suite input and every hostile input
    above. Each at most 1 GiB; each exits as its case says with one stderr line, no traceback."""
    tmp = str(tmp_path)
    jobs: list[dict[str, Any]] = [{"name": "honest_5x4", "argv": [_honest_5x4(tmp), "--quiet"]}]
    expect: dict[str, Case | None] = {"honest_5x4": None}
    for name in sorted(CASES) + sorted(RESOURCE_CASES):
        data, opts = _make(name)
        path = os.path.join(tmp, f"{name}.vmu")
        with open(path, "wb") as f:
            f.write(data)
        argv = _argv(path, opts, tmp, name)
        if argv is not None:
            jobs.append({"name": name, "argv": argv})
            expect[name] = RESOURCE_CASES.get(name) or CASES[name]
        _MADE.pop(name, None)
    spec = os.path.join(tmp, "jobs.json")
    out = os.path.join(tmp, "out.json")
    with open(spec, "w") as f:
        json.dump({"address_space": 3 * GiB, "jobs": jobs}, f)
    p = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "_rss_probe.py"), spec, out],
                       capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    with open(out) as f:
        results = json.load(f)
    assert len(results) == len(jobs) >= 75
    report = []
    for r in results:
        case = expect[r["name"]]
        lines = r["stderr"].splitlines()
        report.append(f"{r['name']}: exit {r['rc']}, {r['maxrss'] / MiB:.0f} MiB")
        assert r["maxrss"] <= GiB, (r["name"], r["maxrss"])
        assert "Traceback" not in r["stderr"], (r["name"], r["stderr"])
        if case is None:
            assert r["rc"] == 0 and not lines, (r["name"], r["stderr"])
        else:
            assert r["rc"] == case.exit, (r["name"], r["rc"], r["stderr"])
            assert len(lines) == 1 and f": step {case.step}: " in lines[0], (r["name"], r["stderr"])
    print("\n".join(report))
