"""Confidential bundles (issue 16): ``vmu bundle --recipient`` encrypts to an agency's age key in
the age CLI's own format; ``vmu-verify --identity`` reads it; a wrong or missing key is one line,
exit 2, nothing judged; the plain zip never stays on disk."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pyrage = pytest.importorskip("pyrage", reason="the 'age' extra: pip install 'verifiable-mu[age]'")

from prover import Workspace, WorkspaceConfig  # noqa: E402
from prover.cli import main as vmu_main  # noqa: E402
from verifier.cli import main as verify_main  # noqa: E402

SMALL = WorkspaceConfig(shards=2, slices=2, epochs=2, workers=1)


@pytest.fixture(scope="module")
def deleted_ws(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = str(tmp_path_factory.mktemp("age") / "ws")
    with Workspace.create(d, data="digits", config=SMALL) as ws:
        ws.progress = False
        ws.train()
        ws.forget([ws.split_ids("train")[3]])
    return d


def _key(tmp_path: Path, name: str) -> tuple[str, str]:
    ident = pyrage.x25519.Identity.generate()
    path = tmp_path / name
    path.write_text(f"# created: test\n# public key: {ident.to_public()}\n{ident}\n")
    return str(path), str(ident.to_public())


def test_encrypted_bundle_round_trip_in_the_age_format(deleted_ws: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ident_file, recipient = _key(tmp_path, "agency.key")
    out = tmp_path / "b.vmu.age"
    assert vmu_main(["bundle", deleted_ws, "--out", str(out), "--all", "--recipient", recipient]) == 0
    assert "is an age file" in capsys.readouterr().out
    data = out.read_bytes()
    # the age CLI's binary format: its version line, then one X25519 stanza per recipient
    assert data.startswith(b"age-encryption.org/v1\n-> X25519 ")
    assert b"PK\x03\x04" not in data[:4096]  # no zip in the clear
    assert [p for p in os.listdir(tmp_path) if ".plain." in p] == []
    # what `age -d -i agency.key` gives back is the plain bundle (a zip)
    plain = pyrage.decrypt(data, [pyrage.x25519.Identity.from_str(Path(ident_file).read_text().splitlines()[-1])])
    assert plain[:4] == b"PK\x03\x04"
    report = tmp_path / "r.json"
    rc = verify_main([str(out), "--identity", ident_file, "--no-residual", "--json", str(report)])
    assert rc == 0
    assert json.loads(report.read_text())["verdict"] == "accepted"


def test_two_recipients_and_a_recipients_file(deleted_ws: str, tmp_path: Path) -> None:
    a_file, a = _key(tmp_path, "a.key")
    b_file, b = _key(tmp_path, "b.key")
    recipients = tmp_path / "recipients.txt"
    recipients.write_text(f"# the agency's two keys\n{a}\n\n{b}\n")
    out = tmp_path / "b2.age"
    assert vmu_main(["bundle", deleted_ws, "--out", str(out), "--all", "--recipient", str(recipients)]) == 0
    assert out.read_bytes().count(b"\n-> X25519 ") == 2
    for ident in (a_file, b_file):
        assert verify_main([str(out), "--identity", ident, "--no-residual", "--quiet"]) == 0


@pytest.mark.parametrize("case", ["wrong key", "no identity", "identity for a plain bundle", "not a key file"])
def test_key_errors_are_one_line_exit_2(deleted_ws: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    _, recipient = _key(tmp_path, "right.key")
    wrong_file, _ = _key(tmp_path, "wrong.key")
    out = tmp_path / "b.age"
    assert vmu_main(["bundle", deleted_ws, "--out", str(out), "--all", "--recipient", recipient]) == 0
    capsys.readouterr()
    if case == "wrong key":
        args, fragment = [str(out), "--identity", wrong_file], "cannot decrypt b.age with the given identity"
    elif case == "no identity":
        args, fragment = [str(out)], "is an encrypted bundle (age): pass --identity"
    elif case == "identity for a plain bundle":
        plain = tmp_path / "plain.vmu"
        assert vmu_main(["bundle", deleted_ws, "--out", str(plain), "--all"]) == 0
        capsys.readouterr()
        args, fragment = [str(plain), "--identity", wrong_file], "is not an age-encrypted bundle"
    else:
        junk = tmp_path / "junk.key"
        junk.write_text("AGE-SECRET-KEY-1NOTAKEY\n")
        args, fragment = [str(out), "--identity", str(junk)], "holds a line that is not an age X25519 identity"
    assert verify_main([*args, "--no-residual"]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err
    assert "AGE-SECRET-KEY" not in err  # never echo a secret


def test_bad_recipient_is_exit_2_before_any_work(deleted_ws: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "never.age"
    assert vmu_main(["bundle", deleted_ws, "--out", str(out), "--all", "--recipient", "age1notarecipient"]) == 2
    err = capsys.readouterr().err
    assert "'age1notarecipient' is not an age X25519 recipient (age1...)" in err and err.count("\n") == 1
    assert not out.exists()
