"""The SQLite transparency log: proofs against the in-memory tree, signed heads, transactions,
persistence, integrity checks, a real crash, and the worked examples of specs/04-log.md."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from verifiable_mu._canonical import canonical_json
from verifiable_mu._errors import (
    LogCorrupted,
    LogError,
    MalformedInput,
    MalformedNote,
    SignatureFailed,
    UnsupportedVersion,
)
from verifiable_mu._log import LogEntry, SignedTreeHead, TransparencyLog, entry_leaf_data, entry_leaf_hash
from verifiable_mu._merkle import EMPTY_ROOT, MerkleTree, leaf_hash, root_of
from verifiable_mu._note import (
    Checkpoint,
    NoteSigner,
    NoteVerifier,
    open_checkpoint,
    open_note,
    sign_checkpoint,
    sign_note,
)
from verifiable_mu._proofs import ConsistencyProof, InclusionProof
from verifiable_mu._tags import TAG_LOG_ENTRY

ROOT_DIR = Path(__file__).resolve().parent.parent
SPEC = ROOT_DIR / "specs" / "04-log.md"
ORIGIN = "vmu.example/test-log"
SIGNER = NoteSigner.from_private_key(name=ORIGIN, key=Ed25519PrivateKey.from_private_bytes(bytes([7]) * 32))
VERIFIER = SIGNER.verifier


def items(start: int, end: int, kind: str = "step") -> list[tuple[str, dict]]:
    return [(kind, {"i": str(i)}) for i in range(start, end)]


def leaves(start: int, end: int, kind: str = "step") -> list[bytes]:
    return [entry_leaf_hash(k, b) for k, b in items(start, end, kind)]


@pytest.fixture
def log(tmp_path: Path):
    with TransparencyLog.open(tmp_path / "log.db", origin=ORIGIN, create=True) as lg:
        yield lg


# --- entry encoding ---------------------------------------------------------------------------


def test_entry_leaf_hash_is_documented_formula() -> None:
    body = {"b": [1, "x"], "a": "\u00e9"}
    data = TAG_LOG_ENTRY + b"step.v2" + b"\x00" + canonical_json(body)
    assert entry_leaf_data("step.v2", body) == data
    assert entry_leaf_hash("step.v2", body) == leaf_hash(data)
    assert canonical_json(body) == '{"a":"\u00e9","b":[1,"x"]}'.encode()


@pytest.mark.parametrize("kind", ["", "Step", "1step", "_a", "a b", "a\x00", "a" * 65, "\u00e9", "step\n", None, 5])
def test_bad_kinds(kind: object) -> None:
    with pytest.raises(MalformedInput, match="must match"):
        entry_leaf_hash(kind, {})  # type: ignore[arg-type]


def test_good_kinds() -> None:
    for kind in ("a", "a" * 64, "step", "ckpt.v1", "a-b_c.d9"):
        assert len(entry_leaf_hash(kind, {})) == 32


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ([], "must be a JSON object"),
        ("x", "must be a JSON object"),
        (None, "must be a JSON object"),
        ({"x": float("nan")}, "cannot be canonicalised"),
        ({"x": 2**60}, "cannot be canonicalised"),
        ({1: "x"}, "cannot be canonicalised"),
        ({"x": object()}, "cannot be canonicalised"),
    ],
)
def test_bad_bodies(body: object, fragment: str, log: TransparencyLog) -> None:
    with pytest.raises(MalformedInput, match=fragment):
        entry_leaf_hash("step", body)  # type: ignore[arg-type]
    with pytest.raises(MalformedInput, match=fragment):
        log.append("step", body)  # type: ignore[arg-type]
    assert log.size == 0


def test_log_entry_json_round_trip(log: TransparencyLog) -> None:
    log.append_many(items(0, 3))
    e = log.entry(2)
    assert e == LogEntry(index=2, kind="step", body={"i": "2"}, leaf_hash=entry_leaf_hash("step", {"i": "2"}))
    assert e.leaf_data == entry_leaf_data("step", {"i": "2"})
    d = json.loads(canonical_json(e.to_json()))
    assert d == {"type": "vmu.log-entry", "version": 1, "index": "2", "kind": "step", "body": {"i": "2"}}
    assert LogEntry.from_json(d) == e


@pytest.mark.parametrize(
    ("mutate", "exc", "fragment"),
    [
        (lambda d: d.update(version=2), UnsupportedVersion, "version 2 is not supported"),
        (lambda d: d.update(version=True), UnsupportedVersion, "not supported"),
        (lambda d: d.pop("version"), UnsupportedVersion, "not supported"),
        (lambda d: d.update(type="vmu.other"), MalformedInput, "expected a 'vmu.log-entry'"),
        (lambda d: d.update(leaf_hash="00"), MalformedInput, "unknown field"),
        (lambda d: d.pop("body"), MalformedInput, "lacks field"),
        (lambda d: d.update(index="01"), MalformedInput, "without leading zeros"),
        (lambda d: d.update(index=1), MalformedInput, "decimal string"),
        (lambda d: d.update(index=str(2**63)), MalformedInput, "decimal string"),
        (lambda d: d.update(kind="Bad"), MalformedInput, "must match"),
        (lambda d: d.update(body=[1]), MalformedInput, "JSON object"),
    ],
)
def test_log_entry_from_json_rejections(mutate, exc, fragment) -> None:
    d = {"type": "vmu.log-entry", "version": 1, "index": "1", "kind": "step", "body": {"i": "1"}}
    mutate(d)
    with pytest.raises(exc, match=fragment):
        LogEntry.from_json(d)
    with pytest.raises(MalformedInput, match="must be a JSON object"):
        LogEntry.from_json([d])


# --- tree and proofs ----------------------------------------------------------------------------


def test_all_proofs_up_to_64_agree_with_merkle_tree(log: TransparencyLog) -> None:
    log.append_many(items(0, 64))
    lh = leaves(0, 64)
    tree = MerkleTree(lh)
    assert [e.leaf_hash for e in log.entries()] == lh
    for n in range(65):
        root = log.root(n)
        assert root == tree.root(n)
        for i in range(n):
            p = log.inclusion_proof(i, n)
            assert p == InclusionProof(index=i, tree_size=n, path=tuple(tree.inclusion_path(i, n)))
            p.verify(leaf=lh[i], root=root)
        for m in range(n + 1):
            c = log.consistency_proof(m, n)
            assert c == ConsistencyProof(old_size=m, new_size=n, path=tuple(tree.consistency_path(m, n)))
            c.verify(old_root=tree.root(m), new_root=root)


def test_larger_log_with_stored_levels(log: TransparencyLog) -> None:
    # 1100 leaves exercise stored node levels 4 and 8 and the folding of the levels between.
    n = 1100
    log.append_many(items(0, n))
    lh = leaves(0, n)
    tree = MerkleTree(lh)
    for size in range(n + 1):
        assert log.root(size) == tree.root(size)
    rng = random.Random(1)
    for _ in range(300):
        size = rng.randint(1, n)
        i, m = rng.randrange(size), rng.randint(0, size)
        assert log.inclusion_proof(i, size).path == tuple(tree.inclusion_path(i, size))
        assert log.consistency_proof(m, size).path == tuple(tree.consistency_path(m, size))
    for _ in range(300):  # arbitrary (even unaligned) ranges are MTH of the sub-list
        s = rng.randint(0, n)
        e = rng.randint(s, n)
        assert log.mth(s, e) == root_of(lh[s:e])
    assert log.check_integrity() == n
    stored = log.connection.execute("SELECT level, COUNT(*) FROM log_nodes GROUP BY level").fetchall()
    assert stored == [(4, n >> 4), (8, n >> 8)]


def test_one_by_one_equals_bulk(tmp_path: Path) -> None:
    a = TransparencyLog.open(tmp_path / "a.db", origin=ORIGIN, create=True)
    b = TransparencyLog.open(tmp_path / "b.db", origin=ORIGIN, create=True)
    for k, body in items(0, 300):
        assert a.append(k, body) == int(body["i"])
    assert b.append_many(items(0, 100)) == range(0, 100)
    with b.transaction():
        for k, body in items(100, 200):
            b.append(k, body)
        assert b.append_many(items(200, 300)) == range(200, 300)
    q = "SELECT * FROM {} ORDER BY 1, 2"
    for table in ("log_entries", "log_nodes"):
        assert a.connection.execute(q.format(table)).fetchall() == b.connection.execute(q.format(table)).fetchall()
    assert a.root() == b.root() == MerkleTree(leaves(0, 300)).root()


def test_reads_and_range_errors(log: TransparencyLog) -> None:
    assert log.size == 0
    assert log.root() == EMPTY_ROOT
    assert list(log.entries()) == []
    log.append_many(items(0, 5) + [("ckpt", {"digest": "ab" * 32})])
    assert log.size == 6
    assert [e.index for e in log.entries(2, 4)] == [2, 3]
    assert log.entry(5).kind == "ckpt"
    with pytest.raises(LogError, match="outside the log"):
        log.entry(6)
    with pytest.raises(LogError, match="non-negative integer"):
        log.entry(-1)
    with pytest.raises(LogError, match="exceeds the log size 6"):
        log.root(7)
    with pytest.raises(LogError, match="outside a tree of size 6"):
        log.inclusion_proof(6)
    with pytest.raises(LogError, match="outside a tree of size 3"):
        log.inclusion_proof(3, 3)
    with pytest.raises(LogError, match="exceeds the log size"):
        log.inclusion_proof(0, 7)
    with pytest.raises(LogError, match="between 0 and the new size 3"):
        log.consistency_proof(4, 3)
    with pytest.raises(LogError, match="exceeds the log size"):
        log.consistency_proof(1, 9)
    with pytest.raises(LogError, match="invalid entry range"):
        log.entries(5, 3)
    with pytest.raises(LogError, match="exceeds the log size"):
        log.entries(0, 9)
    with pytest.raises(LogError, match="invalid range"):
        log.mth(3, 2)
    with pytest.raises(MalformedInput, match=r"\(kind, body\) pair"):
        log.append_many([("step",)])  # type: ignore[list-item]


# --- signed tree heads --------------------------------------------------------------------------


def test_signed_heads_and_consistency_between_them(log: TransparencyLog) -> None:
    assert log.latest_tree_head() is None
    empty = open_checkpoint(log.sign_tree_head(SIGNER), [VERIFIER], origin=ORIGIN)
    assert (empty.size, empty.root_hash, empty.timestamp) == (0, EMPTY_ROOT, None)
    log.append_many(items(0, 10))
    note10 = log.sign_tree_head(SIGNER, timestamp=1700000000)
    log.append_many(items(10, 37))
    note37 = log.sign_tree_head(SIGNER, timestamp=1700000100)
    assert log.latest_tree_head() == SignedTreeHead(
        size=37, root_hash=log.root(), timestamp=1700000100, note=note37
    )
    assert [h.size for h in log.tree_heads()] == [0, 10, 37]
    # A verifier with only the notes, the vkey and a proof:
    vk = NoteVerifier.from_vkey(SIGNER.vkey)
    old = open_checkpoint(note10, [vk], origin=ORIGIN)
    new = open_checkpoint(note37, [vk], origin=ORIGIN)
    assert (old.size, old.timestamp, new.size) == (10, 1700000000, 37)
    proof = ConsistencyProof.from_json(json.loads(canonical_json(log.consistency_proof(old.size, new.size).to_json())))
    proof.verify(old_root=old.root_hash, new_root=new.root_hash)
    e = LogEntry.from_json(json.loads(canonical_json(log.entry(7).to_json())))
    log.inclusion_proof(7, new.size).verify(leaf=e.leaf_hash, root=new.root_hash)
    with pytest.raises(SignatureFailed, match="expected 'vmu.example/other'"):
        open_checkpoint(note37, [vk], origin="vmu.example/other")
    assert log.check_integrity([vk]) == 37


def test_sign_tree_head_guards(log: TransparencyLog) -> None:
    log.append_many(items(0, 3))
    log.sign_tree_head(SIGNER, timestamp=100)
    with pytest.raises(LogError, match="earlier than the latest tree head"):
        log.sign_tree_head(SIGNER, timestamp=99)
    assert len(log.tree_heads()) == 1
    with pytest.raises(LogError, match="expected a NoteSigner"):
        log.sign_tree_head(SIGNER.skey)  # type: ignore[arg-type]
    # A log whose stored head disagrees with its entries refuses to sign another head.
    log.connection.execute("UPDATE log_tree_heads SET root = ?", (bytes(32),))
    with pytest.raises(LogCorrupted, match="not consistent with its latest signed tree head"):
        log.sign_tree_head(SIGNER, timestamp=200)
    log.connection.execute("UPDATE log_tree_heads SET size = 99")
    with pytest.raises(LogCorrupted, match="larger than the log"):
        log.sign_tree_head(SIGNER, timestamp=200)


# --- persistence and opening ------------------------------------------------------------------------


def test_reopen_persists_everything(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    with TransparencyLog.open(path, origin=ORIGIN, create=True) as lg:
        lg.append_many(items(0, 20))
        note = lg.sign_tree_head(SIGNER, timestamp=5)
        root = lg.root()
    with TransparencyLog.open(path, origin=ORIGIN) as lg:
        assert (lg.size, lg.root(), lg.latest_tree_head().note) == (20, root, note)  # type: ignore[union-attr]
        lg.append_many(items(20, 33))  # the right edge is reloaded from the file
        assert lg.root() == MerkleTree(leaves(0, 33)).root()
        assert lg.check_integrity([VERIFIER]) == 33
    with TransparencyLog.open(path, origin=ORIGIN, create=True) as lg:  # create on an existing log: just opens
        assert lg.size == 33
        assert lg.path == str(path) and lg.origin == ORIGIN


def test_open_rejections(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    with pytest.raises(LogError, match="no transparency log at"):
        TransparencyLog.open(path, origin=ORIGIN)
    assert not path.exists()
    TransparencyLog.open(path, origin=ORIGIN, create=True).close()
    with pytest.raises(LogError, match="holds the log of origin 'vmu.example/test-log', not 'other'"):
        TransparencyLog.open(path, origin="other")
    with pytest.raises(MalformedNote, match="invalid log origin"):
        TransparencyLog.open(path, origin="bad\norigin")
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(LogError, match="not a verifiable-mu transparency log"):
        TransparencyLog.open(other, origin=ORIGIN)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(LogError, match="cannot open the log"):
        TransparencyLog.open(junk, origin=ORIGIN)


def test_unknown_schema_version_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    with TransparencyLog.open(path, origin=ORIGIN, create=True) as lg:
        lg.connection.execute("UPDATE log_meta SET value = '2' WHERE key = 'schema_version'")
    with pytest.raises(UnsupportedVersion, match="log schema version '2' is not supported"):
        TransparencyLog.open(path, origin=ORIGIN)
    con = sqlite3.connect(path)
    con.execute("DELETE FROM log_meta WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with pytest.raises(LogCorrupted, match="no schema_version"):
        TransparencyLog.open(path, origin=ORIGIN)


def test_closed_log(tmp_path: Path) -> None:
    lg = TransparencyLog.open(tmp_path / "log.db", origin=ORIGIN, create=True)
    lg.close()
    lg.close()
    for call in (lambda: lg.size, lambda: lg.append("a", {}), lambda: lg.connection, lambda: lg.root()):
        with pytest.raises(LogError, match="closed"):
            call()


def test_two_handles_on_one_file(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    a = TransparencyLog.open(path, origin=ORIGIN, create=True)
    b = TransparencyLog.open(path, origin=ORIGIN)
    for k in range(0, 40, 10):
        (a if k % 20 else b).append_many(items(k, k + 10))
    assert a.root() == b.root() == MerkleTree(leaves(0, 40)).root()
    assert b.check_integrity() == 40


def test_frontier_reuse_across_transactions_matches_the_tree(tmp_path: Path) -> None:
    """A handle reuses its right edge from one commit to the next; another writer's appends
    (size changed) or a replaced last entry (same size) make it reload from the database."""
    path = tmp_path / "log.db"
    a = TransparencyLog.open(path, origin=ORIGIN, create=True)
    b = TransparencyLog.open(path, origin=ORIGIN)
    for k in range(0, 37):  # one entry per transaction: every stored level crosses a commit
        (b if k % 7 == 3 else a).append_many(items(k, k + 1))
        assert a.root() == MerkleTree(leaves(0, k + 1)).root()
    assert a.check_integrity() == b.check_integrity() == 37
    # Same size, different last entry (written behind the log's back): the edge must not be reused.
    other = ("step", {"i": "x"})
    with b.transaction():
        b.connection.execute("DELETE FROM log_entries WHERE idx = 36")
        b.connection.execute(
            "INSERT INTO log_entries(idx, kind, body, leaf_hash) VALUES (36, 'step', ?, ?)",
            (canonical_json(other[1]), entry_leaf_hash(*other)),
        )
    a.append_many(items(37, 70))
    want = leaves(0, 36) + [entry_leaf_hash(*other)] + leaves(37, 70)
    assert a.root() == MerkleTree(want).root()
    assert a.check_integrity() == 70


# --- integrity ----------------------------------------------------------------------------------


def _corrupt(log: TransparencyLog, sql: str, *args: object) -> None:
    log.connection.execute(sql, args)


@pytest.mark.parametrize(
    ("sql", "args", "fragment"),
    [
        ("UPDATE log_entries SET body = ? WHERE idx = 5", (b'{"i":"6"}',), "entry 5: stored leaf hash does not match"),
        ("UPDATE log_entries SET body = ? WHERE idx = 5", (b'{"i": "5"}',), "entry 5: stored body is not canonical"),
        ("UPDATE log_entries SET body = ? WHERE idx = 5", (b"[1]",), "entry 5: stored kind or body is invalid"),
        ("UPDATE log_entries SET body = ? WHERE idx = 5", (b"{",), "entry 5: stored kind or body is invalid"),
        ("UPDATE log_entries SET kind = ? WHERE idx = 5", ("Step",), "entry 5: stored kind or body is invalid"),
        ("UPDATE log_entries SET kind = ? WHERE idx = 5", ("steq",), "entry 5: stored leaf hash does not match"),
        ("UPDATE log_entries SET leaf_hash = ? WHERE idx = 5", (bytes(32),), "entry 5: stored leaf hash"),
        ("DELETE FROM log_entries WHERE idx = 5", (), "entry 5 is missing"),
        ("UPDATE log_nodes SET hash = ? WHERE level = 4 AND idx = 1", (bytes(32),), r"4, index 1\) does not match"),
        ("DELETE FROM log_nodes WHERE level = 4 AND idx = 1", (), r"node \(level 4, index 1\) is missing"),
        ("INSERT INTO log_nodes VALUES (4, 99, ?)", (bytes(32),), r"unexpected tree node \(level 4, index 99\)"),
        ("INSERT INTO log_nodes VALUES (3, 0, ?)", (bytes(32),), "log_nodes has 5 rows, expected 4"),
        ("UPDATE log_tree_heads SET root = ? WHERE seq = 1", (bytes(32),), "stored root does not match"),
        ("UPDATE log_tree_heads SET size = 70 WHERE seq = 2", (), "covers more entries"),
        ("UPDATE log_tree_heads SET size = 1 WHERE seq = 2", (), "smaller than an earlier tree head"),
        ("UPDATE log_tree_heads SET timestamp = 1 WHERE seq = 2", (), "timestamp earlier"),
        ("UPDATE log_tree_heads SET timestamp = 11 WHERE seq = 1", (), "does not match the stored size, root or time"),
        ("UPDATE log_tree_heads SET note = ? WHERE seq = 1", (b"junk",), "not a valid checkpoint"),
        ("UPDATE log_tree_heads SET note = ? WHERE seq = 1", ("text",), "not stored as bytes"),
        ("UPDATE log_meta SET value = 'x' WHERE key = 'origin'", (), "log_meta origin is 'x'"),
    ],
)
def test_integrity_check_catches_edits(log: TransparencyLog, sql: str, args: tuple, fragment: str) -> None:
    log.append_many(items(0, 40))
    log.sign_tree_head(SIGNER, timestamp=10)
    log.append_many(items(40, 64))
    log.sign_tree_head(SIGNER, timestamp=20)
    assert log.check_integrity([VERIFIER]) == 64
    _corrupt(log, sql, *args)
    with pytest.raises(LogCorrupted, match=fragment):
        log.check_integrity()


def test_integrity_check_with_verifiers_checks_signatures(log: TransparencyLog) -> None:
    log.append_many(items(0, 3))
    log.sign_tree_head(SIGNER)
    assert log.check_integrity() == 3
    with pytest.raises(LogCorrupted, match="not a valid checkpoint of this log: note has no valid signature"):
        log.check_integrity([NoteSigner.generate(name=ORIGIN).verifier])
    # A note of another log (right key, other origin) stored here is caught as well.
    other = sign_checkpoint(Checkpoint(origin="vmu.example/other", size=3, root_hash=log.root()), SIGNER)
    log.connection.execute("UPDATE log_tree_heads SET note = ?", (other,))
    with pytest.raises(LogCorrupted, match="expected 'vmu.example/test-log'"):
        log.check_integrity([VERIFIER])
    with pytest.raises(LogCorrupted, match="does not match the stored size, root or timestamp"):
        log.check_integrity()


def test_edited_entry_breaks_the_signed_root(log: TransparencyLog) -> None:
    log.append_many(items(0, 8))
    head = open_checkpoint(log.sign_tree_head(SIGNER), [VERIFIER], origin=ORIGIN)
    log.connection.execute("UPDATE log_entries SET leaf_hash = ? WHERE idx = 3", (entry_leaf_hash("step", {"i": "x"}),))
    assert log.root() != head.root_hash
    with pytest.raises(LogCorrupted, match="entry 3"):
        log.check_integrity()


def test_missing_node_is_reported_by_proofs(log: TransparencyLog) -> None:
    log.append_many(items(0, 40))
    log.connection.execute("DELETE FROM log_nodes WHERE level = 4 AND idx = 0")
    with pytest.raises(LogCorrupted, match=r"stored tree nodes under \(level 5, index 0\) are missing"):
        log.root()


# --- transactions ----------------------------------------------------------------------------------


def test_transaction_rollback_leaves_nothing(log: TransparencyLog) -> None:
    log.connection.execute("CREATE TABLE prover_state (k TEXT PRIMARY KEY, v TEXT)")
    log.append_many(items(0, 5))
    before = log.connection.execute("SELECT COUNT(*) FROM log_nodes").fetchone()
    with pytest.raises(RuntimeError, match="boom"):
        with log.transaction():
            log.append_many(items(5, 50))
            log.connection.execute("INSERT INTO prover_state VALUES ('a', 'b')")
            assert log.size == 50
            raise RuntimeError("boom")
    assert log.size == 5
    assert log.connection.execute("SELECT COUNT(*) FROM log_nodes").fetchone() == before
    assert log.connection.execute("SELECT COUNT(*) FROM prover_state").fetchone() == (0,)
    # The in-memory right edge was dropped: later appends are still correct.
    log.append_many(items(5, 50))
    assert log.root() == MerkleTree(leaves(0, 50)).root()
    assert log.check_integrity() == 50


def test_transaction_commits_with_caller_tables(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    with TransparencyLog.open(path, origin=ORIGIN, create=True) as lg:
        lg.connection.execute("CREATE TABLE prover_state (k TEXT PRIMARY KEY, v TEXT)")
        with lg.transaction():
            idx = lg.append("ckpt", {"digest": "00" * 32})
            lg.connection.execute("INSERT INTO prover_state VALUES ('last_ckpt', ?)", (str(idx),))
    with TransparencyLog.open(path, origin=ORIGIN) as lg:
        assert lg.size == 1
        assert lg.connection.execute("SELECT v FROM prover_state").fetchone() == ("0",)


def test_nested_transactions_use_savepoints(log: TransparencyLog) -> None:
    with log.transaction():
        log.append_many(items(0, 10))
        with pytest.raises(ValueError, match="inner"):
            with log.transaction():
                log.append_many(items(10, 30))
                raise ValueError("inner")
        assert log.size == 10
        log.append_many(items(10, 20))
        with log.transaction():
            log.append_many(items(20, 25))
    assert log.size == 25
    assert log.root() == MerkleTree(leaves(0, 25)).root()
    assert log.check_integrity() == 25


def test_malformed_item_mid_batch_keeps_nothing_of_the_batch(log: TransparencyLog) -> None:
    log.append_many(items(0, 3))
    batch = items(3, 20000) + [("step", {"x": float("inf")})]
    with pytest.raises(MalformedInput, match="cannot be canonicalised"):
        log.append_many(batch)
    assert log.size == 3
    with log.transaction():
        log.append("step", {"i": "3"})
        with pytest.raises(MalformedInput, match="must match"):
            log.append_many(items(4, 10) + [("BAD", {})])
        assert log.size == 4
    assert log.size == 4
    assert log.check_integrity() == 4


def test_no_signing_inside_a_transaction(log: TransparencyLog) -> None:
    # A head handed out before its entries commit could be orphaned by a rollback.
    with log.transaction():
        log.append_many(items(0, 3))
        with pytest.raises(LogError, match="must not run inside a transaction"):
            log.sign_tree_head(SIGNER)
    log.connection.execute("BEGIN")
    with pytest.raises(LogError, match="must not run inside a transaction"):
        log.sign_tree_head(SIGNER)
    log.connection.execute("ROLLBACK")
    assert log.tree_heads() == []
    log.sign_tree_head(SIGNER)
    assert [h.size for h in log.tree_heads()] == [3]


def test_transaction_misuse(log: TransparencyLog) -> None:
    log.connection.execute("BEGIN")
    with pytest.raises(LogError, match="already has a transaction"):
        log.append("step", {})
    log.connection.execute("ROLLBACK")
    with pytest.raises(LogError, match="ended by someone else"):
        with log.transaction():
            log.append("step", {})
            log.connection.execute("COMMIT")
    assert log.size == 1
    log.append("step", {"i": "1"})
    assert log.check_integrity() == 2


# --- crash safety ------------------------------------------------------------------------------------

CHILD = r"""
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from verifiable_mu._log import TransparencyLog
from verifiable_mu._note import NoteSigner
path, mode, skey = sys.argv[2], sys.argv[3], sys.argv[4]
log = TransparencyLog.open(path, origin="vmu.example/test-log")
start = log.size
log.append_many(("step", {"i": str(i)}) for i in range(start, start + 500))   # committed
log.sign_tree_head(NoteSigner.from_skey(skey), timestamp=2)                   # committed
log.connection.execute("CREATE TABLE IF NOT EXISTS prover_state (k TEXT)")
log.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # from here on the WAL holds only what follows

def forever():
    i = start + 500
    while True:
        yield ("step", {"i": str(i)})
        i += 1
        if i == start + 60000:
            if mode == "exit":
                os._exit(0)
            print("inside", flush=True)
        if i > start + 10**7:
            os._exit(3)

with log.transaction():
    log.connection.execute("INSERT INTO prover_state VALUES ('uncommitted')")
    log.append_many(forever())
"""


@pytest.mark.parametrize("mode", ["exit", "sigkill"])
def test_crash_mid_append_keeps_last_commit(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "log.db"
    with TransparencyLog.open(path, origin=ORIGIN, create=True) as lg:
        lg.append_many(items(0, 1000))
        first = lg.sign_tree_head(SIGNER, timestamp=1)
    assert not Path(f"{path}-wal").exists()  # closed cleanly: WAL checkpointed and removed
    argv = [sys.executable, "-c", CHILD, str(ROOT_DIR), str(path), mode, SIGNER.skey]
    if mode == "exit":
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    else:
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = child.stdout.readline()  # type: ignore[union-attr]
            assert line == "inside\n", child.stderr.read()  # type: ignore[union-attr]
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.wait(timeout=60)
        assert child.returncode == -signal.SIGKILL
    # The killed writer left megabytes of uncommitted frames in the WAL: recovery must discard them.
    assert Path(f"{path}-wal").stat().st_size > 1_000_000
    with TransparencyLog.open(path, origin=ORIGIN) as lg:
        assert lg.size == 1500
        assert lg.check_integrity([VERIFIER]) == 1500
        assert lg.connection.execute("SELECT COUNT(*) FROM prover_state").fetchone() == (0,)
        heads = lg.tree_heads()
        assert [h.size for h in heads] == [1000, 1500]
        old = open_checkpoint(first, [VERIFIER], origin=ORIGIN)
        new = open_checkpoint(heads[-1].note, [VERIFIER], origin=ORIGIN)
        assert new.root_hash == lg.root()
        lg.consistency_proof(old.size, new.size).verify(old_root=old.root_hash, new_root=new.root_hash)
        lg.consistency_proof(new.size).verify(old_root=new.root_hash, new_root=lg.root())
        # The log goes on from there.
        lg.append_many(items(1500, 1600))
        later = open_checkpoint(lg.sign_tree_head(SIGNER, timestamp=3), [VERIFIER], origin=ORIGIN)
        lg.consistency_proof(old.size, later.size).verify(old_root=old.root_hash, new_root=later.root_hash)
        assert lg.root() == MerkleTree(leaves(0, 1600)).root()


# --- specs/04-log.md worked examples ----------------------------------------------------------------


def spec_vectors() -> dict[str, str]:
    text = SPEC.read_text(encoding="utf-8")
    assert re.search(r"^Version: 1$", text, flags=re.M)
    found = re.findall(r"^```vector name=([A-Za-z0-9_.-]+)\n(.*?)\n```$", text, flags=re.S | re.M)
    out: dict[str, str] = {}
    for name, body in found:
        assert name not in out, f"duplicate vector {name}"
        out[name] = body + "\n" if name.endswith(("-text", "-note")) else body
    return out


def test_spec_has_all_vectors() -> None:
    assert set(spec_vectors()) == {
        "entry-body", "entry-leaf-data", "entry-leaf-hash", "log3-entries", "log3-leaf-hashes", "log3-root",
        "log3-inclusion-2", "log3-consistency-1-3", "test-skey", "test-vkey", "checkpoint-text",
        "checkpoint-note", "go-skey", "go-vkey", "go-note",
    }  # fmt: skip


def test_spec_entry_vectors() -> None:
    v = spec_vectors()
    body = {"step": "0", "batch": ["3", "1", "4"], "lr": "0.1"}
    assert canonical_json(body).decode() == v["entry-body"]
    assert entry_leaf_data("step", body).hex() == v["entry-leaf-data"]
    assert entry_leaf_hash("step", body).hex() == v["entry-leaf-hash"]


def test_spec_log_and_checkpoint_vectors() -> None:
    v = spec_vectors()
    signer = NoteSigner.from_skey(v["test-skey"])
    assert signer.private_key.private_bytes_raw() == bytes([1]) * 32
    assert signer.vkey == v["test-vkey"]
    with TransparencyLog.open(":memory:", origin="vmu.example/log", create=True) as lg:
        for line in v["log3-entries"].split("\n"):
            kind, body = line.split(" ", 1)
            lg.append(kind, json.loads(body))
        assert "\n".join(e.leaf_hash.hex() for e in lg.entries()) == v["log3-leaf-hashes"]
        assert lg.root().hex() == v["log3-root"]
        assert canonical_json(lg.inclusion_proof(2).to_json()).decode() == v["log3-inclusion-2"]
        assert canonical_json(lg.consistency_proof(1, 3).to_json()).decode() == v["log3-consistency-1-3"]
        note = lg.sign_tree_head(signer, timestamp=1700000000)
    assert note.decode("utf-8") == v["checkpoint-note"]
    assert note.decode("utf-8").startswith(v["checkpoint-text"] + "\n\u2014 ")
    cp = open_checkpoint(note, [NoteVerifier.from_vkey(v["test-vkey"])], origin="vmu.example/log")
    assert cp.to_text() == v["checkpoint-text"]
    assert (cp.size, cp.root_hash.hex(), cp.timestamp) == (3, v["log3-root"], 1700000000)
    # The proofs in the spec verify from the spec's bytes alone.
    leaf2 = bytes.fromhex(v["log3-leaf-hashes"].split("\n")[2])
    InclusionProof.from_json(json.loads(v["log3-inclusion-2"])).verify(leaf=leaf2, root=cp.root_hash)
    old_root = bytes.fromhex(v["log3-leaf-hashes"].split("\n")[0])  # the tree of size 1 is its leaf
    ConsistencyProof.from_json(json.loads(v["log3-consistency-1-3"])).verify(old_root=old_root, new_root=cp.root_hash)


def test_spec_go_vector() -> None:
    v = spec_vectors()
    signer = NoteSigner.from_skey(v["go-skey"])
    assert signer.vkey == v["go-vkey"]
    text = v["go-note"].split("\n\n")[0] + "\n"
    assert sign_note(text, [signer]).decode() == v["go-note"]
    assert open_note(v["go-note"].encode(), [NoteVerifier.from_vkey(v["go-vkey"])]).text == text


# --- durability levels: bulk work relaxed, every signed head full --------------------------------


def _traced(lg: TransparencyLog) -> list[str]:
    seen: list[str] = []
    lg.connection.set_trace_callback(seen.append)
    return seen


def _commit_levels(statements: list[str], level: int) -> list[tuple[int, bool]]:
    """``(synchronous level, stored a signed head)`` of each COMMIT, following the PRAGMAs."""
    names = {"NORMAL": 1, "FULL": 2, "EXTRA": 3, "OFF": 0}
    out, head = [], False
    for s in statements:
        m = re.fullmatch(r"PRAGMA synchronous=(\w+)", s.strip())
        if m:
            level = int(m.group(1)) if m.group(1).isdigit() else names[m.group(1)]
        elif s.startswith("BEGIN"):
            head = False
        elif "INSERT INTO log_tree_heads" in s:
            head = True
        elif s == "COMMIT":
            out.append((level, head))
    return out


def test_a_signed_head_commits_full_inside_relaxed_work(log: TransparencyLog) -> None:
    """Entries appended inside relaxed_sync commit with NORMAL; the head that covers them commits
    with FULL (its WAL sync makes them durable first); the level is restored afterwards."""
    seen = _traced(log)
    with log.relaxed_sync():
        with log.transaction():
            log.append_many(items(0, 5))
        with log.transaction():
            log.append_many(items(5, 9))
        log.sign_tree_head(SIGNER, timestamp=1)
        assert log.connection.execute("PRAGMA synchronous").fetchone()[0] == 1
    assert log.connection.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert _commit_levels(seen, 2) == [(1, False), (1, False), (2, True)]


def test_the_sync_level_cannot_change_inside_a_transaction(log: TransparencyLog) -> None:
    with log.transaction(), pytest.raises(LogError, match="only change between transactions"):
        with log.relaxed_sync():
            pass
