"""The platform fingerprint (issue 18, item 1): replay is bit-exact only where every bit-relevant
fact of the platform agrees, and an honest float32 bundle verifies on "other machines", simulated
on this one by the switches that change a step's bits: ATen's CPU kernels
(``ATEN_CPU_CAPABILITY``), MKL's code path (``MKL_CBWR``) and the thread count.

Each training and each verification runs in its own process, since the switches are read at
start-up.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

import pytest

from verifiable_mu._errors import InvalidBundle
from verifiable_mu._log import LogEntry, entry_leaf_hash
from verifiable_mu._platform import FINGERPRINT_FIELDS, PLATFORM_FIELDS, mkl_branch_name, platform_differences
from verifier._entries import ConfigBody

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SWITCHES = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def _env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SWITCHES}
    env.update(settings)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _python(code: str, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(**settings),
                          cwd=ROOT, timeout=600)  # fmt: skip


def _probe(**settings: str) -> dict[str, Any]:
    r = _python(
        "import json, torch\nfrom verifiable_mu.training import platform_info\n"
        "print(json.dumps(platform_info(torch.device('cpu'), 1)))",
        **settings,
    )
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


NATIVE = _probe()
X86_MKL = NATIVE["blas"].startswith("mkl") and NATIVE["blas_path"] != "unknown"


# --- the fingerprint and its comparison -------------------------------------------------------


def test_fingerprint_has_every_field() -> None:
    assert set(NATIVE) == set(PLATFORM_FIELDS) | set(FINGERPRINT_FIELDS)
    assert NATIVE["device"] == "cpu" and NATIVE["cuda_device"] == "none" and NATIVE["cuda_libs"] == "none"
    assert all(isinstance(NATIVE[k], str) and 0 < len(NATIVE[k]) <= 128 for k in FINGERPRINT_FIELDS)


@pytest.mark.skipif(not X86_MKL, reason="the switches are those of x86-64 torch builds with MKL")
def test_fingerprint_sees_each_switch() -> None:
    assert _probe(ATEN_CPU_CAPABILITY="default")["cpu_capability"] == "DEFAULT"
    assert _probe(MKL_CBWR="COMPATIBLE")["blas_path"] == "COMPATIBLE"
    avx2 = _probe(MKL_CBWR="AVX2")
    assert avx2["blas_path"] == "AVX2" and avx2["cpu_isa"] == NATIVE["cpu_isa"]  # the CPU is the same
    assert _probe(ONEDNN_MAX_CPU_ISA="AVX2")["onednn"].endswith("max_isa=avx2")


def test_mkl_branch_names() -> None:
    assert [mkl_branch_name(c) for c in (3, 10, 14)] == ["COMPATIBLE", "AVX2", "AVX512_E1"]
    assert mkl_branch_name(10 | 0x10000) == "AVX2+STRICT"
    assert mkl_branch_name(99) == "code-99"


def test_differences_name_each_field_and_fail_closed() -> None:
    assert platform_differences(NATIVE, dict(NATIVE)) == []
    other = dict(NATIVE, cpu_capability="DEFAULT", blas_path="COMPATIBLE")
    diffs = platform_differences(NATIVE, other)
    assert len(diffs) == 2 and diffs[0].startswith("cpu_capability: ") and diffs[0].endswith(" -> DEFAULT")
    assert diffs[1].startswith("blas_path: ")
    # a log written before the fingerprint never counts as the same platform
    old = {k: NATIVE[k] for k in PLATFORM_FIELDS}
    missing = platform_differences(old, NATIVE)
    assert len(missing) == len(FINGERPRINT_FIELDS) and all("(not logged)" in d for d in missing)
    # nor does a field this machine cannot read
    assert platform_differences(NATIVE, {k: v for k, v in NATIVE.items() if k != "blas"}) == [
        f"blas: {NATIVE['blas']} -> (unknown)"
    ]


# --- the config entry's platform, as the verifier parses it -----------------------------------


def _config(platform: dict[str, Any]) -> LogEntry:
    body = {
        "format": 1, "shards": 2, "slices": 2, "epochs": 2, "stage_epochs": 1, "checkpoint_every": 0, "seed": "7",
        "assignment": "sha256-rank-v1",
        "model": {"name": "logreg", "n_features": 4, "n_classes": 2, "input_shape": [4], "hidden": 0},
        "hyper": {"lr": "0.1", "momentum": "0.9", "weight_decay": "0", "batch_size": 8},
        "platform": platform, "n_train": 10, "data_digest": "00" * 32,
    }  # fmt: skip
    return LogEntry(index=0, kind="config", body=body, leaf_hash=entry_leaf_hash("config", body))


def test_config_parses_a_fingerprint_and_an_old_platform() -> None:
    assert ConfigBody.parse(_config(dict(NATIVE))).platform == NATIVE
    old = {k: NATIVE[k] for k in PLATFORM_FIELDS}
    assert ConfigBody.parse(_config(old)).platform == old


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("shards", 65_537, "shards must be an integer in [1, 65536]"),
        ("slices", 0, "slices must be an integer in [1, 65536]"),
        ("checkpoint_every", 2**40 + 1, "checkpoint_every must be an integer in [0, 1099511627776]"),
        ("n_train", -1, "n_train must be an integer in [0, 1099511627776]"),
    ],
)
def test_config_bounds_of_specs_09(field: str, value: int, fragment: str) -> None:
    """The bounds on signed config fields that specs/09 states (those a forged bundle cannot carry
    past the bundle writer are checked on the parser directly)."""
    entry = _config(dict(NATIVE))
    entry.body[field] = value
    with pytest.raises(InvalidBundle, match="config") as e:
        ConfigBody.parse(entry)
    assert fragment in str(e.value)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"blas_path": 14}, "blas_path must be a string"),
        ({"cpu_capability": "A" * 129}, "cpu_capability must be a string of at most 128"),
        ({"cpu_vendor": "intel"}, "unknown field(s): cpu_vendor"),
    ],
)
def test_config_rejects_a_bad_fingerprint(change: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidBundle, match="config") as e:
        ConfigBody.parse(_config(dict(NATIVE, **change)))
    assert fragment in str(e.value)


# --- other machines, simulated on this one ----------------------------------------------------

_TRAIN = """
import os, sys
from prover import Workspace, WorkspaceConfig
from prover._bundle import write_bundle
ws_dir, out, threads, arithmetic, model = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
cfg = WorkspaceConfig(shards=3, slices=2, epochs=4, model=model, hidden=32, threads=threads, workers=1, device="cpu",
                      arithmetic=arithmetic)
with Workspace.create(ws_dir, data="digits", config=cfg) as ws:
    ws.progress = False
    ws.train(workers=1)
    ids = [r[0] for r in ws._db().execute("SELECT id FROM p_records WHERE role='train' ORDER BY row LIMIT 2")]
    ws.forget(ids, workers=1)
    write_bundle(ws, out, replay=2)
"""

#: verification settings: this machine as it is, then each switch (and two together)
VERIFY_SETTINGS: list[dict[str, str]] = [
    {},
    {"ATEN_CPU_CAPABILITY": "default"},
    {"ATEN_CPU_CAPABILITY": "avx2"},
    {"ATEN_CPU_CAPABILITY": "avx512"},
    {"MKL_CBWR": "COMPATIBLE"},
    {"MKL_CBWR": "AVX2"},
    {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"},
]

#: training settings: (switches, thread count)
TRAIN_SETTINGS: list[tuple[dict[str, str], int]] = [
    ({}, 2),
    ({"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}, 1),
]

_BUNDLES: dict[tuple[int, str, str], tuple[str, dict[str, Any]]] = {}


def _train_bundle(i: int, arithmetic: str = "float32", model: str = "logreg") -> tuple[str, dict[str, Any]]:
    """The honest bundle trained under TRAIN_SETTINGS[i] (the workspace beside it, in ws/), and
    that process's fingerprint."""
    key = (i, arithmetic, model)
    if key not in _BUNDLES:
        settings, threads = TRAIN_SETTINGS[i]
        root = tempfile.mkdtemp(prefix="vmu-platform-")
        atexit.register(shutil.rmtree, root, True)
        out = os.path.join(root, "b.vmu")
        argv = [sys.executable, "-c", _TRAIN, os.path.join(root, "ws"), out, str(threads), arithmetic, model]
        r = subprocess.run(argv, capture_output=True, text=True, env=_env(**settings), cwd=ROOT, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        _BUNDLES[key] = (out, dict(_probe(**settings), threads=threads))
    return _BUNDLES[key]


def _verify(bundle: str, *args: str, **settings: str) -> tuple[int, dict[str, Any], str]:
    fd, report = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        r = subprocess.run([sys.executable, "-m", "verifier.cli", bundle, "--no-residual", "--replay", "2", "--json", report,
                            *args],
                           capture_output=True, text=True, env=_env(**settings), cwd=ROOT, timeout=600)  # fmt: skip
        with open(report, encoding="utf-8") as f:
            data = f.read()
        return r.returncode, (json.loads(data) if data else {}), r.stdout + r.stderr
    finally:
        os.unlink(report)


@pytest.mark.parametrize("train", range(len(TRAIN_SETTINGS)), ids=["native-2threads", "default-compatible"])
@pytest.mark.parametrize("where", VERIFY_SETTINGS, ids=lambda s: "+".join(f"{k}={v}" for k, v in s.items()) or "native")
def test_honest_float32_bundle_verifies_on_every_simulated_platform(train: int, where: dict[str, str]) -> None:
    bundle, trained_on = _train_bundle(train)
    code, report, out = _verify(bundle, **where)
    assert code == 0, out
    replay = report["replay"]
    here = dict(_probe(**where), threads=trained_on["threads"])
    expect_exact = platform_differences(trained_on, here) == []
    assert replay["mode"] == ("exact" if expect_exact else "distance"), replay
    assert replay["platform_match"] is expect_exact
    assert replay["platform_differences"] == platform_differences(trained_on, here)
    if not expect_exact:
        assert all(s["distance"] <= replay["threshold"] for s in replay["segments"])
        assert any("DISTANCE REPLAY" in w and "->" in w for w in report["warnings"]), report["warnings"]


@pytest.mark.skipif(not X86_MKL or NATIVE["cpu_capability"] == "DEFAULT", reason="needs a CPU with vector kernels")
def test_the_fingerprint_is_needed_bits_differ_across_simulated_platforms() -> None:
    """What made honest bundles fail on other CPUs: forced bit-exact replay under other kernels is
    rejected at step 18, so 'auto' must not pick it there."""
    bundle, _ = _train_bundle(1)  # trained with DEFAULT kernels and MKL's COMPATIBLE path
    code, report, out = _verify(bundle, "--replay-mode", "exact")  # verified natively
    assert code == 1 and "step 18" in out and "bit-exact digest differs" in out, out


@pytest.mark.skipif(not X86_MKL, reason="the switches are those of x86-64 torch builds with MKL")
def test_prover_refuses_to_extend_a_log_on_another_platform(tmp_path: Any) -> None:
    """An honest owner who moves a workspace to another machine is stopped before it logs steps
    that no replay on the logged platform would reproduce."""
    bundle, _ = _train_bundle(0)
    ws_dir = os.path.join(os.path.dirname(bundle), "ws")
    code = (
        "import sys\nfrom prover import Workspace\n"
        "with Workspace.open(sys.argv[1]) as ws:\n"
        "    ws.progress = False\n"
        "    ids = [r[0] for r in ws._db().execute(\"SELECT id FROM p_records WHERE role='train' AND deleted_by IS NULL ORDER BY row DESC LIMIT 1\")]\n"
        "    ws.forget(ids, workers=1)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, ws_dir], capture_output=True, text=True,
                       env=_env(ATEN_CPU_CAPABILITY="default"), cwd=ROOT, timeout=600)  # fmt: skip
    assert r.returncode != 0
    assert "WorkspaceError" in r.stderr and "would not reproduce the workspace's logged training" in r.stderr
    assert "cpu_capability: " in r.stderr and "-> DEFAULT" in r.stderr
