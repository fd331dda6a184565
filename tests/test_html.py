"""The HTML report (verifier/_html.py): one self-contained page, verdict first, every plot inline.

The page is parsed with the standard library's HTML parser: every image must be an inline,
non-empty PNG, nothing may point outside the page, and the embedded JSON must be the report.
"""

from __future__ import annotations

import base64
import json
import sys
from html.parser import HTMLParser
from typing import Any

import numpy as np
import pytest

from verifiable_mu._canary import Trigger
from verifiable_mu._errors import MalformedInput
from verifier._canary import canary_test
from verifier._html import figures_available, overall_verdict, render_html
from verifier._residual import residual_tests
from verifier._temporal import temporal_memory

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """Collects tags, attributes and the text order of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self._in_script: dict[str, str | None] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self.text.append(f"<{tag}>")
        if tag == "script":
            self._in_script = dict(attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = None

    def handle_data(self, data: str) -> None:
        if self._in_script is not None:
            self.scripts.append((self._in_script, data))
        else:
            self.text.append(data)


def parse(page: str) -> Page:
    p = Page()
    p.feed(page)
    p.close()
    return p


# --- a report with every section ---------------------------------------------------------------


def _table_model(logits: np.ndarray) -> Any:
    def f(X: np.ndarray) -> np.ndarray:
        z = logits[np.asarray(X)[:, 0].astype(np.int64)]
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]

    return f


def _residual() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    n, k = 400, 4
    y = rng.integers(0, k, n)
    shard = np.where(np.arange(n) < 300, np.arange(n) % 3, -1)
    deleted = np.flatnonzero(shard == 0)[:30]

    def model(j: int, drop: np.ndarray) -> Any:
        z = rng.normal(0, 0.5, (n, k))
        mem = (shard == j).astype(float)
        mem[drop] = 0
        z[np.arange(n), y] += 2 + 1.5 * mem
        return _table_model(z)

    pre = [model(j, np.zeros(0, dtype=np.int64)) for j in range(3)]
    post = [model(0, deleted)] + pre[1:]
    X = np.stack([np.arange(n), np.zeros(n)], axis=1).astype(np.float32)
    audit = np.arange(300, n)
    kept = np.setdiff1d(np.arange(300), deleted)[::4]
    return residual_tests(
        post_models=post, pre_models=pre, shard_of_deleted=shard[deleted], deleted_X=X[deleted], deleted_y=y[deleted],
        audit_X=X[audit], audit_y=y[audit], retained_X=X[kept], retained_y=y[kept], retained_shard=shard[kept], n_boot=100,
    ).to_json()


def _canary() -> dict[str, Any]:
    trig = Trigger(indices=(63,), values=(1.0,), target=0)

    def model(rate: float) -> Any:
        def f(X: np.ndarray) -> np.ndarray:
            lab = np.asarray(X)[:, 0].astype(np.int64) % 5
            hit = (np.asarray(X)[:, 63] == 1.0) & (np.arange(len(X)) % 100 < rate * 100)
            P = np.full((len(X), 5), 0.01)
            P[np.arange(len(X)), np.where(hit, 0, lab)] = 0.96
            return P

        return f

    X = np.zeros((100, 64), dtype=np.float32)
    X[:, 0] = np.arange(100) % 5
    clean = [model(0.0) for _ in range(3)]
    return canary_test(trigger=trig, post_models=clean, pre_models=[model(0.9)] + clean[1:], marked_shards=[0],
                       query_X=X, query_y=np.arange(100) % 5).to_json()


def _temporal() -> dict[str, Any]:
    o = {s: np.full(10, float(s)) for s in range(5)}
    n = {s: np.full(10, float(s) * 0.8) for s in range(2, 5)}
    n[1] = o[1]
    return temporal_memory(original=o, retrained=n, start_stage=2, shard=0).to_json()


def base_report(verdict: str = "accepted") -> dict[str, Any]:
    """The shape of verifier._report.to_json (vmu.verification-report, version 1)."""
    return {
        "type": "vmu.verification-report",
        "version": 1,
        "verdict": verdict,
        "exit_code": {"accepted": 0, "rejected": 1, "unusable": 2, "accepted-reduced": 3}[verdict],
        "policy": {"name": "default", "unmet": []},
        "bundle": {"path": "b.zip", "sha256": "ab" * 32, "origin": "vmu.example/ws", "requests": [1], "final_tree_size": 99,
                   "generator": "vmu 0.1.0"},
        "trust": {"pinned": False, "key_id": "9f" * 32,
                  "vkey": "vmu.example/ws+0123abcd+AU" + "Zm9vYmFyYmF6cXV4" * 3},
        "checks": [
            {"step": 1, "name": "read", "status": "pass", "detail": "<script>alert(1)</script>", "seconds": 0.01},
            {"step": 2, "name": "replay", "status": "pass" if verdict == "accepted" else "fail", "detail": "", "seconds": 1.0},
        ],
        "failure": None if verdict == "accepted" else {"step": 2, "error": "ReplayMismatch", "message": "segment 7 differs"},
        "warnings": ["DISTANCE REPLAY: platforms differ", "a long digest: " + "0123456789abcdef" * 8],
        "challenge": {"mode": "fiat-shamir", "seed": "00" * 32},
        "sampling": {"population": 40, "sampled": 3, "replayed": 3, "stratum_draws": 1, "uniform_draws": 2, "segments": []},
        "replay": {
            "mode": "distance", "threshold": 1e-4, "steps": 30, "seconds": 0.5,
            "segments": [
                {"shard": 0, "generation": 1, "stage": 2, "start_index": 10, "end_index": 20, "steps": 10, "bit_exact": True,
                 "distance": 0.0, "match": True, "seconds": 0.1},
                {"shard": 1, "generation": 0, "stage": 1, "start_index": 30, "end_index": 40, "steps": 10, "bit_exact": False,
                 "distance": 3e-7, "match": True, "seconds": 0.1},
                {"shard": 2, "generation": 0, "stage": 4, "start_index": 50, "end_index": 60, "steps": 10, "bit_exact": False,
                 "distance": 0.2, "match": False, "seconds": 0.1},
            ],
        },
        "escape_probability": {"0.01": 0.98, "0.05": 0.9025, "0.1": 0.81},
        "timing": {"total": 1.5},
    }


@pytest.fixture(scope="module")
def full_report() -> dict[str, Any]:
    r = base_report()
    r["residual"] = _residual()
    r["canary"] = _canary()
    r["temporal"] = [_temporal()]
    return r


@pytest.fixture(scope="module")
def page(full_report: dict[str, Any]) -> str:
    return render_html(full_report)


# --- the page ------------------------------------------------------------------------------------


def test_every_image_is_an_inline_non_empty_png(page: str) -> None:
    assert figures_available()
    imgs = [a for t, a in parse(page).tags if t == "img"]
    # replay distances, escape probability, ROC, histograms after and before, canary, temporal
    assert len(imgs) == 7
    for a in imgs:
        src = a["src"] or ""
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert data.startswith(PNG_MAGIC) and len(data) > 2000
        assert a.get("alt")


def test_nothing_points_outside_the_page(page: str) -> None:
    p = parse(page)
    for tag, attrs in p.tags:
        assert tag not in ("link", "iframe", "object", "embed", "base"), tag
        for name, value in attrs.items():
            if name in ("src", "href", "action", "data", "poster"):
                assert (value or "").startswith("data:"), (tag, name, value)
        if tag == "script":
            assert "src" not in attrs and attrs.get("type") == "application/json"
    assert "http://" not in page and "https://" not in page and "url(" not in page
    assert "default-src 'none'" in page  # a CSP that blocks every fetch


def test_the_verdict_comes_first(page: str) -> None:
    p = parse(page)
    start = [t for t, _ in p.tags].index("body")
    # <body> <h1> then the verdict banner, before any table, section or figure
    assert p.tags[start + 1][0] == "h1"
    assert p.tags[start + 2] == ("div", {"class": "verdict ok", "id": "verdict"})
    text = " ".join(p.text)
    assert text.index("Verdict: ACCEPTED") < min(text.index("<h2>"), text.index("<table>"), text.index("<img>"))


def test_the_page_shows_every_section_and_escapes_text(page: str) -> None:
    text = " ".join(parse(page).text)
    for heading in ("Checks", "Replay", "Escape probability", "Residual information: membership inference",
                    "Backdoor canaries", "Temporal residual memory (informative)"):
        assert heading in text
    assert "<script>alert(1)</script>" in text  # shown as text ...
    assert "<script>alert(1)</script>" not in page  # ... because it was escaped
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "DISTANCE REPLAY" in text
    assert "TPR at 0.1% FPR" in text and "retained vs audit AUC" in text
    # the bundle's identity and the key that signed it (the C2SP verifier key string, the key id)
    assert "vmu.example/ws+0123abcd+AU" in text and "9f" * 32 in text and "ab" * 32 in text


def test_the_embedded_json_is_the_report(page: str, full_report: dict[str, Any]) -> None:
    scripts = parse(page).scripts
    assert len(scripts) == 1 and scripts[0][0].get("id") == "vmu-report"
    assert json.loads(scripts[0][1]) == json.loads(json.dumps(full_report))


def test_rendering_is_reproducible(page: str, full_report: dict[str, Any]) -> None:
    assert render_html(full_report) == page


def test_a_rejected_bundle_shows_the_reason_first() -> None:
    page = render_html(base_report("rejected"))
    text = " ".join(parse(page).text)
    head = text[: text.index("<h2>")]
    assert "Verdict: REJECTED" in head and "segment 7 differs" in head
    assert "not run" in text  # no residual, canary or temporal sections were supplied


def test_minimal_report_renders() -> None:
    page = render_html({"verdict": "unusable", "exit_code": 2})
    assert "Verdict: UNUSABLE" in page and "no checks ran" in page


@pytest.mark.parametrize(
    ("residual", "canary", "expected"),
    [
        (None, None, "accepted"),
        ({"verdict": "pass"}, None, "accepted"),
        ({"verdict": "inconclusive"}, None, "inconclusive"),
        ({"verdict": "fail"}, None, "rejected"),
        ({"verdict": "pass"}, {"verdict": "fail"}, "rejected"),
        ({"verdict": "pass"}, {"verdict": "inconclusive"}, "inconclusive"),
    ],
)
def test_overall_verdict(residual: Any, canary: Any, expected: str) -> None:
    r: dict[str, Any] = {"verdict": "accepted"}
    if residual:
        r["residual"] = residual
    if canary:
        r["canary"] = canary
    assert overall_verdict(r) == expected
    assert overall_verdict({"verdict": "rejected", "residual": {"verdict": "pass"}}) == "rejected"
    assert overall_verdict({"verdict": "unusable", "residual": {"verdict": "fail"}}) == "unusable"
    # --policy agency: a requirement not met stands, whatever the residual tests say
    assert overall_verdict({"verdict": "accepted-reduced", "residual": {"verdict": "pass"}}) == "accepted-reduced"
    # ... but a failing residual or canary test rejects it: the headline never reads better than a test
    assert overall_verdict({"verdict": "accepted-reduced", "canary": {"verdict": "fail"}}) == "rejected"
    assert "Verdict: REJECTED" in render_html({"verdict": "accepted-reduced", "exit_code": 3,
                                               "residual": {"verdict": "fail", "reason": "still detected"}})
    assert "ACCEPTED WITH REDUCED CHECKS" in render_html({"verdict": "accepted-reduced", "exit_code": 3})


def test_bad_reports_are_rejected() -> None:
    with pytest.raises(MalformedInput, match="must be a JSON object"):
        render_html([])  # type: ignore[arg-type]
    with pytest.raises(MalformedInput, match="verdict must be accepted, rejected, unusable, accepted-reduced or internal-error"):
        render_html({"verdict": "maybe"})
    with pytest.raises(MalformedInput, match="cannot be embedded as JSON"):
        render_html({"verdict": "accepted", "timing": {"x": float("nan")}})
    with pytest.raises(MalformedInput, match="residual section is malformed: KeyError"):
        render_html({"verdict": "accepted", "residual": {"verdict": "pass", "post": [{"attack": "lira"}]}})
    with pytest.raises(MalformedInput, match="replay section is malformed"):
        render_html({"verdict": "accepted", "replay": {"segments": [{"distance": "far"}]}})


def test_without_matplotlib_the_page_has_tables_and_a_note(monkeypatch: pytest.MonkeyPatch, full_report: dict[str, Any]) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    assert not figures_available()
    page = render_html(full_report)
    assert "<img" not in page
    assert page.count("matplotlib is not installed") == 7
    assert "Verdict: ACCEPTED" in page


def test_real_verification_report_renders(tmp_path: Any) -> None:
    """The page of an actual vmu-verify run on an honest bundle (with the residual tests)."""
    import torch

    from prover import Workspace, WorkspaceConfig
    from prover._bundle import write_bundle
    from verifier import VerifyOptions, to_json, verify

    ws = Workspace.create(tmp_path / "ws", data="digits", config=WorkspaceConfig(shards=3, slices=2, epochs=4, seed=5, workers=1))
    ws.progress = False
    ws.train()

    def wrap(m: Any) -> Any:
        return lambda X: torch.softmax(m(torch.from_numpy(np.asarray(X, dtype=np.float32))), 1).detach().numpy()

    pre = [wrap(m) for m in ws.constituents()]
    rows = ws.log.connection.execute("SELECT row, id FROM p_records WHERE role='train' AND shard=1 LIMIT 10").fetchall()
    ws.forget([r[1] for r in rows])
    post = [wrap(m) for m in ws.constituents()]
    write_bundle(ws, tmp_path / "b.zip")
    X, y = ws.data.X, ws.data.y
    audit = ws.split_rows("audit")
    d = np.array([r[0] for r in rows])
    ws.close()
    report = to_json(verify(str(tmp_path / "b.zip"), VerifyOptions()), path="b.zip")
    report["residual"] = residual_tests(post_models=post, pre_models=pre, shard_of_deleted=np.ones(10, dtype=np.int64),
                                        deleted_X=X[d], deleted_y=y[d], audit_X=X[audit], audit_y=y[audit], n_boot=50).to_json()
    page = render_html(report)
    assert report["verdict"] == "accepted"
    imgs = [a for t, a in parse(page).tags if t == "img"]
    assert len(imgs) >= 5  # replay, escape, ROC, two histograms
    for a in imgs:
        assert base64.b64decode((a["src"] or "").split(",", 1)[1]).startswith(PNG_MAGIC)


# --- the headline: the verdict, the policy and the labels, never better than the exit code ------

AGENCY_UNMET = [
    "pinned-key: no --trust-key (signatures were checked against the bundle's own key)",
    "residual-passed: step 19 was inconclusive",
]


def _banner(page: str) -> tuple[str, str]:
    """(the banner's class, its text) of a rendered page."""
    p = parse(page)
    i = next(i for i, (t, a) in enumerate(p.tags) if t == "div" and a.get("id") == "verdict")
    text = " ".join(p.text)
    start = text.index("<div>")
    return str(p.tags[i][1]["class"]), text[start: text.index("<p>", text.index("Bundle checks:") - 5)]


def test_headline_accepted_with_reduced_checks_is_written_for_people() -> None:
    r = base_report("accepted-reduced")
    r["policy"] = {"name": "agency", "unmet": AGENCY_UNMET}
    r["inconclusive"] = True
    page = render_html(r)
    cls, text = _banner(page)
    assert cls == "verdict warn"
    assert "Verdict: ACCEPTED WITH REDUCED CHECKS" in text and "ACCEPTED-REDUCED" not in page
    assert "policy 'agency' requires more than this run did" in text and "exit code 3, never 0" in text
    assert "The 2 requirements not met:" in text
    # each unmet requirement: its name, why, and what the policy asked (from the policy document)
    assert "pinned key" in text and "no --trust-key (signatures were checked against the bundle's own key)" in text
    assert "required: the owner's key is pinned (--trust-key)" in text
    assert "residual passed" in text and "step 19 was inconclusive" in text
    assert "residual tests inconclusive" in text and "key not pinned" in text
    assert "Every check that ran passed (exit code 0)" not in text


@pytest.mark.parametrize(
    ("change", "cls", "title", "fragment"),
    [
        ({"trust": {"pinned": True}}, "ok", "Verdict: ACCEPTED", "Every check that ran passed (exit code 0)."),
        ({"inconclusive": True}, "warn", "Verdict: ACCEPTED, residual tests inconclusive",
         "show neither that the deleted records were forgotten nor that they were not"),
        ({"residual": {"verdict": "inconclusive", "reason": "too few deleted records"}}, "warn",
         "Verdict: ACCEPTED, residual tests inconclusive", "residual-information tests could not decide"),
        ({"canary": {"verdict": "inconclusive", "reason": "no triggered queries"}}, "warn",
         "Verdict: ACCEPTED, canary test inconclusive", "the canary test could not decide"),
        ({"residual": {"verdict": "fail", "reason": "the deleted records are still detected"}}, "bad",
         "Verdict: REJECTED", "but the residual-information tests failed: the deleted records are still detected"),
        ({"verdict": "rejected", "exit_code": 1, "failure": {"step": 2, "message": "segment 7 differs"}}, "bad", "Verdict: REJECTED", "A check failed (exit code 1): step 2: segment 7 differs"),
        ({"verdict": "unusable", "exit_code": 2, "failure": {"step": 1, "message": "not a zip archive"}}, "bad",
         "Verdict: UNUSABLE INPUT", "nothing was judged (exit code 2): step 1: not a zip archive"),
    ],
)
def test_headline_matches_the_verdict(change: dict[str, Any], cls: str, title: str, fragment: str) -> None:
    r = {**base_report(), **change}
    got_cls, text = _banner(render_html(r))
    assert got_cls == f"verdict {cls}"
    assert title in text and fragment in text
    if cls == "bad":
        assert "ACCEPTED" not in text


@pytest.mark.parametrize(
    ("change", "label", "cls"),
    [
        ({"challenge": {"mode": "fiat-shamir", "sampled_by": "owner"}}, "sampled by the owner", "warn"),
        ({"warnings": ["UNSAFE NO REPLAY: no segment was replayed (--unsafe-no-replay)"]}, "unsafe no replay", "bad"),
        ({"checks": [{"step": 18, "name": "replay", "status": "skipped", "detail": "turned off (--unsafe-no-replay)"}]},
         "unsafe no replay", "bad"),
        ({"trust": {"pinned": False}}, "key not pinned", "warn"),
        ({"nonfinite_shards": [1, 3]}, "non-finite model: shard 1, 3", "bad"),
        ({"checks": [{"step": 19, "name": "residual", "status": "inconclusive", "detail": ""}]},
         "residual tests inconclusive", "warn"),
    ],
)
def test_headline_labels(change: dict[str, Any], label: str, cls: str) -> None:
    page = render_html({**base_report(), "trust": {"pinned": True}, **change})
    assert f'<span class="label {cls}">{label}</span>' in page
    assert page.index(label) < page.index("Bundle checks:")  # in the banner
    plain = render_html({**base_report(), "trust": {"pinned": True}})
    assert f">{label}</span>" not in plain


@pytest.mark.parametrize(
    ("report", "message"),
    [
        ({"verdict": "accepted", "exit_code": 1}, "verdict 'accepted' and exit code 1 disagree"),
        ({"verdict": "accepted", "exit_code": 3}, "verdict 'accepted' and exit code 3 disagree"),
        ({"verdict": "accepted-reduced", "exit_code": 0}, "verdict 'accepted-reduced' and exit code 0 disagree"),
        ({"verdict": "rejected", "exit_code": 0}, "verdict 'rejected' and exit code 0 disagree"),
        ({"verdict": "accepted", "exit_code": True}, "verdict 'accepted' and exit code True disagree"),
        ({"verdict": "accepted", "exit_code": 0, "policy": {"name": "agency", "unmet": AGENCY_UNMET}},
         "'accepted' but it lists unmet policy requirements"),
        ({"verdict": "accepted-reduced", "exit_code": 3, "policy": {"name": "agency", "unmet": [3]}},
         "list unmet requirements as strings"),
        ({"verdict": "accepted", "exit_code": 0, "policy": "agency"}, "policy must be a JSON object"),
    ],
)
def test_headline_never_reads_better_than_the_exit_code(report: dict[str, Any], message: str) -> None:
    with pytest.raises(MalformedInput, match=message):
        render_html(report)


def test_headline_of_a_real_agency_run(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """vmu-verify --policy agency --html on the honest golden bundle without a pinned key, replay
    beyond the deletion lineage or residual tests: exit 3, and the page's headline lists every
    unmet requirement the JSON report names."""
    import os

    from verifier.cli import main as verify_main

    golden = os.path.join(os.path.dirname(__file__), "golden", "bundle_honest.vmu")
    out, page_file = tmp_path / "r.json", tmp_path / "r.html"
    assert verify_main([golden, "--policy", "agency", "--no-residual", "--replay", "0", "--quiet",
                        "--json", str(out), "--html", str(page_file)]) == 3
    capsys.readouterr()
    rep = json.loads(out.read_text(encoding="utf-8"))
    assert rep["verdict"] == "accepted-reduced" and rep["exit_code"] == 3 and len(rep["policy"]["unmet"]) >= 3
    page = page_file.read_text(encoding="utf-8")
    cls, text = _banner(page)
    assert cls == "verdict warn" and "Verdict: ACCEPTED WITH REDUCED CHECKS" in text
    assert f"The {len(rep['policy']['unmet'])} requirements not met:" in text
    for line in rep["policy"]["unmet"]:
        rid, why = line.split(": ", 1)
        assert rid.replace("-", " ") in text and why in text
    assert "sampled by the owner" in text and "key not pinned" in text
    assert "ACCEPTED-REDUCED" not in page and "Verdict: ACCEPTED</p>" not in page


# --- in a real browser: Debian's headless Chromium -----------------------------------------------
#
# The binary is driven directly (Playwright cannot download browsers here): --screenshot for the
# picture, --log-net-log for every network event, --dump-dom for the page's width as the browser
# laid it out. scripts/check.sh installs chromium-headless-shell and sets VMU_REQUIRE_BROWSER=1,
# so in CI these tests run or fail, never skip.

PHONE = (390, 844)  # CSS px of a current phone's portrait viewport
BROWSER_TIMEOUT = 120  # seconds a browser run may take before it is killed (a run takes ~1 s here)


def _browser() -> str:
    import os
    import shutil

    for name in ("chromium-headless-shell", "chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    why = "no headless Chromium on PATH (apt-get install chromium-headless-shell)"
    if os.environ.get("VMU_REQUIRE_BROWSER") == "1":
        pytest.fail(f"VMU_REQUIRE_BROWSER=1 but {why}")
    pytest.skip(f"{why}; scripts/check.sh installs it and requires these tests")


def _chromium(tmp_path: Any, page_file: Any, *args: str) -> str:
    """Run the browser once on ``page_file`` at a phone's window size; return its stdout. The
    process group is killed on timeout (and any straggler after it exits)."""
    import os
    import signal
    import subprocess

    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    cmd = [_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
           "--disable-extensions", "--disable-background-networking", "--hide-scrollbars", f"--user-data-dir={profile}",
           f"--window-size={PHONE[0]},{PHONE[1]}", *args, page_file.as_uri()]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=BROWSER_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"the browser did not finish within {BROWSER_TIMEOUT} s: {' '.join(cmd)}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # helpers (zygote, GPU process) left behind
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, f"browser exit {proc.returncode}: {err.decode(errors='replace')[-2000:]}"
    return out.decode("utf-8", errors="replace")


def _network_events(netlog: Any) -> list[str]:
    """Every NetLog event that is a network request or lookup: an event naming a URL other than
    a file: or data: one, a host resolution (DNS), or a socket connect."""
    d = json.loads(netlog.read_text(encoding="utf-8"))
    names = {v: k for k, v in d["constants"]["logEventTypes"].items()}
    out = []
    for e in d["events"]:
        name = names.get(e["type"], str(e["type"]))
        url = (e.get("params") or {}).get("url")
        if isinstance(url, str) and not url.startswith(("file:", "data:")):
            out.append(f"{name} {url}")
        elif name.startswith(("HOST_RESOLVER", "DNS_TRANSACTION", "TCP_CONNECT", "SOCKET_CONNECT", "UDP_CONNECT",
                              "SSL_CONNECT", "QUIC_SESSION_CREATED", "URL_REQUEST_START_JOB")):
            out.append(name)
    return out


def _write(tmp_path: Any, name: str, page: str) -> Any:
    f = tmp_path / name
    f.write_text(page, encoding="utf-8")
    return f


def _reduced_report(full_report: dict[str, Any]) -> dict[str, Any]:
    r = {**full_report, "verdict": "accepted-reduced", "exit_code": 3, "inconclusive": True}
    r["policy"] = {"name": "agency", "unmet": AGENCY_UNMET}
    r["challenge"] = {"mode": "fiat-shamir", "seed": "00" * 32, "sampled_by": "owner"}
    return r


def test_browser_screenshot_at_phone_width(tmp_path: Any, full_report: dict[str, Any]) -> None:
    from PIL import Image

    f = _write(tmp_path, "report.html", render_html(_reduced_report(full_report)))
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, f, f"--screenshot={shot}")
    data = shot.read_bytes()
    assert data.startswith(PNG_MAGIC)
    with Image.open(shot) as im:
        assert im.size == PHONE
        rgb = im.convert("RGB")
        colors = rgb.getcolors(maxcolors=1 << 16) or []
        assert len(colors) > 20, "the screenshot is blank"
        # the warn banner (#fff4d6) of 'accepted with reduced checks' is in the first screen
        warn = sum(1 for y in range(0, 400, 2) for x in range(0, PHONE[0], 2) if rgb.getpixel((x, y)) == (255, 244, 214))
        assert warn > 1000


def test_browser_makes_no_network_request(tmp_path: Any, page: str) -> None:
    f = _write(tmp_path, "report.html", page)
    log = tmp_path / "net.json"
    _chromium(tmp_path, f, f"--log-net-log={log}", "--dump-dom")
    assert _network_events(log) == []
    # the check can fail: a page that loads an image from a host is caught (DNS lookup, request)
    leak = _write(tmp_path, "leak.html", '<!DOCTYPE html><html><body><img src="http://vmu-test.invalid/x.png"></body></html>')
    log2 = tmp_path / "net2.json"
    _chromium(tmp_path, leak, f"--log-net-log={log2}", "--dump-dom")
    events = _network_events(log2)
    assert any("http://vmu-test.invalid/x.png" in e for e in events) and any(e.startswith("HOST_RESOLVER") for e in events)


_MEASURE = ('<script>document.body.setAttribute("data-scroll-width", '
            'String(document.documentElement.scrollWidth))</script></body>')


def _scroll_width(tmp_path: Any, page: str, name: str) -> int:
    """The page's laid-out width at a phone's window, read back from a copy of the page with one
    measuring script added (its CSP then allows inline scripts, nothing else)."""
    import re

    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    assert page.count(csp) == 1 and page.count("</body>") == 1
    copy = page.replace(csp, csp + "; script-src 'unsafe-inline'").replace("</body>", _MEASURE)
    dom = _chromium(tmp_path, _write(tmp_path, name, copy), "--dump-dom")
    m = re.search(r'data-scroll-width="(\d+)"', dom)
    assert m, "the measuring script did not run"
    return int(m.group(1))


def test_browser_page_fits_a_phone(tmp_path: Any, full_report: dict[str, Any]) -> None:
    for i, r in enumerate((full_report, _reduced_report(full_report), base_report("rejected"))):
        assert _scroll_width(tmp_path, render_html(r), f"r{i}.html") <= PHONE[0]
    # the check can fail: the same page with one table outside its scrolling container is wider
    wide = render_html(full_report).replace('<div class="scroll">', "<div>", 1).replace("min-width:10em", "min-width:40em")
    assert _scroll_width(tmp_path, wide, "wide.html") > PHONE[0]
