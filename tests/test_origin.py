"""Log origins and C2SP verifier keys (issue 12, "standard identities").

* ``vmu init`` gives every workspace a unique origin that works with any directory name, and
  ``--origin NAME`` is validated (printable ASCII, no space, no ``+``: it is the key name of the
  signed notes and the first line of every checkpoint);
* ``vmu status`` and the verifier's report print the note verifier key string;
* ``vmu-verify --trust-key`` accepts that string, which pins the origin as well as the key.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import pytest
from conftest_verifier import honest

from prover import Workspace, WorkspaceConfig
from prover._errors import BadInput
from prover.cli import main as vmu_main
from verifiable_mu._keys import SigningKey
from verifiable_mu._note import NoteSigner
from verifier import VerifyOptions, to_json, verify
from verifier._errors import UntrustedKey
from verifier.cli import main as verify_main

SMALL = WorkspaceConfig(shards=2, slices=2, epochs=2, workers=1)
DEFAULT = re.compile(r"verifiable-mu\.local/[A-Za-z0-9._-]+-[0-9a-f]{8}")


@pytest.mark.parametrize("name", ["my models", "a+b", "données d'été", "...", "x" * 300])
def test_default_origin_works_with_any_directory_name(tmp_path: Any, name: str) -> None:
    path = tmp_path / name[:200]
    with Workspace.create(path, data="digits", config=SMALL) as ws:
        assert DEFAULT.fullmatch(ws.log_origin), ws.log_origin
        assert len(ws.log_origin) <= 100
        assert ws.note_vkey.startswith(ws.log_origin + "+")


def test_two_workspaces_of_the_same_name_are_two_logs(tmp_path: Any) -> None:
    origins = set()
    for parent in ("a", "b"):
        with Workspace.create(tmp_path / parent / "models", data="digits", config=SMALL) as ws:
            origins.add(ws.log_origin)
            assert ws.log_origin.startswith("verifiable-mu.local/models-")
    assert len(origins) == 2


def test_given_origin_is_kept_and_survives_reopening(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path / "ws")
    assert vmu_main(["init", d, "--origin", "example.com/models/churn", "--shards", "2", "--slices", "2"]) == 0
    assert "log origin: example.com/models/churn" in capsys.readouterr().out
    with Workspace.open(d) as ws:
        assert ws.log_origin == "example.com/models/churn"
        vkey = ws.note_vkey
    assert vmu_main(["status", d]) == 0
    out = capsys.readouterr().out
    assert "  log origin: example.com/models/churn\n" in out and vkey in out
    assert vmu_main(["status", d, "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["origin"] == "example.com/models/churn" and st["vkey"] == vkey


@pytest.mark.parametrize(
    "origin, fragment",
    [
        ("my models", "contains ' ': a log origin is printable ASCII without spaces or '+'"),
        ("a+b", "contains '+'"),
        ("caf\u00e9.example", "contains '\u00e9'"),
        ("tab\there", "contains '\\t'"),
        ("", "--origin must not be empty"),
        ("x" * 201, "--origin is 201 characters long; at most 200"),
    ],
)
def test_bad_origin_is_one_line_exit_2_and_creates_nothing(
    tmp_path: Any, capsys: pytest.CaptureFixture[str], origin: str, fragment: str
) -> None:
    d = tmp_path / "ws"
    with pytest.raises(BadInput, match=re.escape(fragment)):
        Workspace.create(d, data="digits", config=SMALL, origin=origin)
    assert vmu_main(["init", str(d), "--origin", origin]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err
    assert not d.exists() and os.listdir(tmp_path) == []


# --- the verifier: the report prints the verifier key, --trust-key accepts it ------------------


def _vkey() -> str:
    with Workspace.open(honest().ws_dir) as ws:
        return ws.note_vkey


def test_report_prints_the_verifier_key_pinned_or_not() -> None:
    h = honest()
    v = verify(h.bundle, VerifyOptions(residual=False, unsafe_no_replay=True))
    assert v.exit_code == 0
    doc = to_json(v)
    assert doc["trust"]["vkey"] == _vkey() and doc["trust"]["pinned"] is False and doc["trust"]["origin_pinned"] is False


def test_trust_key_accepts_the_verifier_key_string(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    h = honest()
    out = tmp_path / "r.json"
    rc = verify_main([h.bundle_path, "--trust-key", _vkey(), "--no-residual", "--unsafe-no-replay", "--json", str(out)])
    assert rc == 0
    assert f"  signed by: {_vkey()} (pinned)" in capsys.readouterr().out
    trust = json.loads(out.read_text())["trust"]
    assert trust["pinned"] is True and trust["origin_pinned"] is True and trust["vkey"] == _vkey()


def test_step_04_verifier_key_for_another_origin_is_untrusted() -> None:
    """Same key, another log's name: the pinned key is not for this log."""
    h = honest()
    other = NoteSigner.from_private_key(name="example.com/another-log", key=h.key.private_key).vkey
    rc = verify_main([h.bundle_path, "--trust-key", other, "--no-residual", "--unsafe-no-replay", "--quiet"])
    assert rc == 1
    from verifier._checks import VerifyOptions as _VO  # the same check through the library
    from verifier.cli import _trust_key

    key, origin = _trust_key(other)
    v = verify(h.bundle, _VO(trust_key=key, trust_origin=origin, residual=False, unsafe_no_replay=True))
    assert isinstance(v.failure, UntrustedKey) and v.failed_step == 4
    assert "the pinned verifier key is for log 'example.com/another-log', but the bundle is of log" in str(v.failure)


def test_step_04_verifier_key_of_another_key_is_untrusted(capsys: pytest.CaptureFixture[str]) -> None:
    h = honest()
    origin = _vkey().split("+")[0]
    stranger = NoteSigner.from_private_key(name=origin, key=SigningKey.generate().private_key).vkey
    assert verify_main([h.bundle_path, "--trust-key", stranger, "--no-residual", "--unsafe-no-replay"]) == 1
    assert "step 4: the bundle carries key" in capsys.readouterr().err


@pytest.mark.parametrize(
    "arg, fragment",
    [
        ("a+b+c", "--trust-key is neither a readable PEM file nor a note verifier key: verifier key ID must be 8"),
        ("name+0000000a+AQ==", "Ed25519 verifier key must be 32 bytes"),
        ("no-such-file.pem", "cannot read --trust-key no-such-file.pem"),
    ],
)
def test_bad_trust_key_is_one_line_exit_2(arg: str, fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert verify_main([honest().bundle_path, "--trust-key", arg, "--no-residual"]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err


# --- DSSE interop: the README's securesystemslib block, run on a real transcript ----------------


def _readme_sslib_block() -> str:
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")) as f:
        readme = f.read()
    start = readme.index("```python\n# st = the JSON of `vmu status --json`")
    return readme[start + len("```python\n") : readme.index("```", start + 10)]


def test_readme_securesystemslib_block_verifies_a_transcript(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from securesystemslib.exceptions import VerificationError

    d = str(tmp_path / "ws")
    with Workspace.create(d, data="digits", config=SMALL) as ws:
        ws.progress = False
        ws.train()
        ws.forget([ws.data.ids[ws.split_rows("train")[0]]])
        path = ws.transcript_paths()[0]
    assert vmu_main(["status", d, "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    block = _readme_sslib_block()
    exec(block, {"json": json, "st": st, "path": path})  # noqa: S102 - the README's own example
    # ... and the same block rejects a transcript signed by another key
    other = dict(st, public_key=SigningKey.generate().public_key.raw.hex())
    with pytest.raises(VerificationError):
        exec(block, {"json": json, "st": other, "path": path})  # noqa: S102
