"""The JSON report's schema (issue 12): shipped in the package, and every report validates.

verifier/schemas/report-v1.schema.json (JSON Schema draft 2020-12) describes what
``vmu-verify --json`` writes. Reports of every kind of verdict are checked against it: accepted
with full replay and residual tests, rejected at each golden step, unusable input, the proof-only
run, and the agency policy's "accepted with reduced checks". The schema is not vacuous: reports
altered in the ways a consumer must notice fail it.
"""

from __future__ import annotations

import copy
import json
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from verifier import REPORT_SCHEMA, report_schema
from verifier.cli import main as verify_main

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
EXPECTED = json.loads((GOLDEN / "expected.json").read_text())


def _validator() -> jsonschema.Draft202012Validator:
    schema = report_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def _report(tmp_path: Path, bundle: Path, *args: str) -> tuple[int, dict[str, Any]]:
    out = tmp_path / "report.json"
    rc = verify_main([str(bundle), "--json", str(out), "--quiet", *args])
    return rc, json.loads(out.read_text())


def test_the_schema_ships_with_the_package_and_is_a_valid_schema() -> None:
    shipped = files("verifier").joinpath(REPORT_SCHEMA)
    assert shipped.is_file()
    assert json.loads(shipped.read_text(encoding="utf-8")) == report_schema()
    jsonschema.Draft202012Validator.check_schema(report_schema())
    assert report_schema()["properties"]["type"] == {"const": "vmu.verification-report"}


def test_full_verification_report_validates(tmp_path: Path) -> None:
    rc, doc = _report(tmp_path, GOLDEN / "bundle_honest.vmu")
    assert rc == 0 and doc["replay"]["segments"] and doc["residual"]["type"] == "vmu.residual-report"
    _validator().validate(doc)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_golden_verdict_validates(tmp_path: Path, name: str) -> None:
    exp = EXPECTED[name]
    rc, doc = _report(tmp_path, GOLDEN / name, "--replay", str(exp["replay"]), "--no-residual")
    assert rc == exp["exit"] == doc["exit_code"]
    _validator().validate(doc)


def test_proof_only_and_reduced_policy_reports_validate(tmp_path: Path) -> None:
    rc, doc = _report(tmp_path, GOLDEN / "bundle_honest.vmu", "--unsafe-no-replay", "--no-residual")
    assert rc == 0 and doc["replay"]["segments"] == []
    _validator().validate(doc)
    rc, doc = _report(tmp_path, GOLDEN / "bundle_honest.vmu", "--policy", "agency", "--no-residual")
    assert rc == 3 and doc["verdict"] == "accepted-reduced" and doc["policy"]["unmet"]
    _validator().validate(doc)


def _broken(doc: dict[str, Any], how: str) -> dict[str, Any]:
    d = copy.deepcopy(doc)
    if how == "unknown top-level field":
        d["verdict_override"] = "accepted"
    elif how == "exit code and verdict disagree":
        d["exit_code"] = 1
    elif how == "accepted with a failure":
        d["failure"] = {"step": 18, "error": "ReplayMismatch", "message": "x"}
    elif how == "no checks":
        del d["checks"]
    elif how == "step 20":
        d["checks"][0]["step"] = 20
    elif how == "unknown check status":
        d["checks"][0]["status"] = "ok"
    elif how == "short key id":
        d["trust"]["key_id"] = "abcd"
    elif how == "escape probability above 1":
        d["escape_probability"]["0.01"] = 1.5
    return d


@pytest.mark.parametrize(
    "how",
    ["unknown top-level field", "exit code and verdict disagree", "accepted with a failure", "no checks", "step 20",
     "unknown check status", "short key id", "escape probability above 1"],
)
def test_the_schema_rejects_altered_reports(tmp_path: Path, how: str) -> None:
    rc, doc = _report(tmp_path, GOLDEN / "bundle_honest.vmu", "--no-residual")
    assert rc == 0
    _validator().validate(doc)
    with pytest.raises(jsonschema.ValidationError):
        _validator().validate(_broken(doc, how))
