"""Transcript subjects (issue 12, "standard identities"): one subject per checkpoint file of the
model after the request, with the file's SHA-256; the model digest is in the predicate.

Step 15 checks that the subjects name model_after's constituents in shard order and that every
file the bundle holds hashes to its subject; a malformed subject is unusable input at step 6;
the single 'model' subject of older transcripts is still understood."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from conftest_verifier import Honest, honest, members_of, rezip

from verifiable_mu._canonical import canonical_json
from verifiable_mu._dsse import IN_TOTO_PAYLOAD_TYPE, sign_envelope
from verifier import VerifyOptions, verify


def _last(members: dict[str, bytes]) -> str:
    return sorted(k for k in members if k.startswith("transcripts/"))[-1]


def _restated(h: Honest, mutate: Callable[[dict[str, Any]], None], which: str | None = None) -> bytes:
    """The honest bundle with one transcript's statement edited and re-signed by the owner."""
    members = members_of(h.bundle)
    which = which or _last(members)
    env = json.loads(members[which])
    stmt = json.loads(base64.b64decode(env["payload"]))
    mutate(stmt)
    # signed raw (sign_statement itself refuses malformed subjects): the owner signs what it likes
    members[which] = sign_envelope(canonical_json(stmt), IN_TOTO_PAYLOAD_TYPE, [h.key]).to_bytes()
    return rezip(members)


def _verify(data: bytes) -> Any:
    return verify(data, VerifyOptions(residual=False, unsafe_no_replay=True))


def test_every_subject_is_a_final_checkpoint_file_with_its_sha256() -> None:
    h = honest()
    members = members_of(h.bundle)
    stmt = json.loads(base64.b64decode(json.loads(members[_last(members)])["payload"]))
    model_after = stmt["predicate"]["model_after"]["entry"]["body"]
    assert [s["name"] for s in stmt["subject"]] == [f"checkpoints/{d}.safetensors" for d in model_after["shards"]]
    for s in stmt["subject"]:
        data = members.get(s["name"], None)
        assert data is not None, "the final model's files are in the bundle"
        assert s["digest"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert _verify(h.bundle).exit_code == 0


def test_step_15_subject_sha256_of_another_file_is_rejected() -> None:
    def wrong_hash(stmt: dict[str, Any]) -> None:
        stmt["subject"][0]["digest"]["sha256"] = "ab" * 32

    v = _verify(_restated(honest(), wrong_hash))
    assert type(v.failure).__name__ == "ModelMismatch" and v.failed_step == 15
    assert "subject 0 gives SHA-256 abababababababab... for checkpoints/" in str(v.failure)


def test_step_15_subjects_out_of_shard_order_are_rejected() -> None:
    def swapped(stmt: dict[str, Any]) -> None:
        stmt["subject"][0], stmt["subject"][1] = stmt["subject"][1], stmt["subject"][0]

    v = _verify(_restated(honest(), swapped))
    assert type(v.failure).__name__ == "ModelMismatch" and v.failed_step == 15
    assert "subjects are not the checkpoint files of model_after's constituents, in shard order" in str(v.failure)


def test_step_15_a_missing_subject_is_rejected() -> None:
    v = _verify(_restated(honest(), lambda stmt: stmt["subject"].pop()))
    assert type(v.failure).__name__ == "ModelMismatch" and v.failed_step == 15


@pytest.mark.parametrize(
    "subject, fragment",
    [
        ([{"name": "model.safetensors", "digest": {"sha256": "ab" * 32}}], "subject 0 is not named checkpoints/<64 hex>"),
        ([{"name": "checkpoints/ABC.safetensors", "digest": {"sha256": "ab" * 32}}], "subject 0 is not named"),
        ([], "the statement must have 1 to 1024 subjects"),
        ([{"name": "model", "digest": {"sha512": "ab" * 64}}], "each a name and a sha256 digest"),
    ],
)
def test_step_06_malformed_subjects_are_unusable(subject: list[Any], fragment: str) -> None:
    def set_subject(stmt: dict[str, Any]) -> None:
        stmt["subject"] = subject

    v = _verify(_restated(honest(), set_subject))
    assert v.exit_code == 2 and v.failed_step == 6 and type(v.failure).__name__ == "InvalidBundle"
    assert fragment in str(v.failure)


def test_older_single_model_subject_still_verifies_and_is_checked() -> None:
    h = honest()

    def legacy(stmt: dict[str, Any]) -> None:
        stmt["subject"] = [{"name": "model", "digest": {"sha256": stmt["predicate"]["model_after"]["entry"]["body"]["digest"]}}]

    members = members_of(h.bundle)
    data = h.bundle
    for which in sorted(k for k in members if k.startswith("transcripts/")):
        data = _restated(Honest(**{**h.__dict__, "bundle": data}), legacy, which)
    assert _verify(data).exit_code == 0

    def legacy_wrong(stmt: dict[str, Any]) -> None:
        stmt["subject"] = [{"name": "model", "digest": {"sha256": "cd" * 32}}]

    v = _verify(_restated(h, legacy_wrong))
    assert type(v.failure).__name__ == "ModelMismatch" and v.failed_step == 15
    assert "the statement's subject is not the model_after digest" in str(v.failure)
