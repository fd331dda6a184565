"""Verdicts: the terminal summary and the JSON report (schema in specs/09-verification.md)."""

from __future__ import annotations

from typing import Any

from verifiable_mu._disclosure import disclosure_line, disclosure_summary
from verifiable_mu._errors import EXIT_INTERNAL

from ._checks import ESCAPE_FRACTIONS, CheckResult, Verification
from ._policy import policy_descriptor
from ._privacy import dp_summary

__all__ = ["REPORT_TYPE", "REPORT_VERSION", "render_text", "to_json"]

REPORT_VERSION = 1
REPORT_TYPE = "vmu.verification-report"


#: The JSON Schema of :func:`to_json`'s output, shipped in the package (draft 2020-12).
REPORT_SCHEMA = "schemas/report-v1.schema.json"


def report_schema() -> dict[str, Any]:
    """The JSON Schema the reports of this version validate against (``vmu-verify --json``)."""
    import json
    from importlib.resources import files

    return dict(json.loads(files("verifier").joinpath(REPORT_SCHEMA).read_text(encoding="utf-8")))


def disclosure(v: Verification) -> dict[str, Any] | None:
    """What the bundle opened, counted by the verifier from the openings it read (never the
    manifest's own summary); None when the openings were not read (verification stopped first)."""
    b, cfg = v.bundle, v.config
    if b is None or cfg is None or getattr(b, "openings", None) is None or 16 not in {r.step for r in v.results
                                                                                        if r.status == "pass"}:
        return None
    op = b.openings
    return disclosure_summary(len(op.deleted), len(op.audit), len(op.training), cfg.n_train)


def to_json(v: Verification, *, path: str | None = None) -> dict[str, Any]:
    """The machine-readable report (type ``vmu.verification-report``, version 1)."""
    b = v.bundle
    m = b.manifest if b else None
    return {
        "type": REPORT_TYPE,
        "version": REPORT_VERSION,
        "verdict": v.verdict,
        "exit_code": v.exit_code,
        "policy": {**policy_descriptor(v.options.policy), "name": v.options.policy, "unmet": v.unmet},
        "bundle": {
            "path": path,
            "sha256": v.sha256 or None,
            "origin": m.origin if m else None,
            "requests": [t.request for t in v.transcripts],
            "final_tree_size": v.final.size if v.final else None,
            "generator": m.generator if m else None,
        },
        "trust": {
            "pinned": v.options.trust_key is not None,
            "key_id": v.key.key_id if v.key else None,
            "vkey": v.note_verifier.vkey if v.note_verifier else None,
            "origin_pinned": v.options.trust_origin is not None,
            "witnesses": len(v.options.witnesses),
            "witness_threshold": (len(v.options.witnesses) if v.options.witness_threshold is None
                                  else v.options.witness_threshold) if v.options.witnesses else None,
            "cosigned_by": [{"name": c.name, "timestamp": c.timestamp} for c in v.cosignatures],
            "known_heads": len(v.options.known_heads),
        },
        "checks": [
            {"step": r.step, "name": r.name, "status": r.status, "detail": r.detail, "seconds": round(r.seconds, 6)}
            for r in v.results
        ],
        "failure": None
        if v.failure is None
        else {"step": v.failed_step, "error": type(v.failure).__name__, "message": str(v.failure),
              "advice": v.failure.advice},
        "warnings": list(v.warnings),
        "challenge": {
            "mode": "interactive" if v.options.challenge is not None else ("fiat-shamir" if v.seed else None),
            "seed": v.seed.hex() if v.seed else None,
            "sampled_by": v.sampled_by,
        },
        "sampling": {
            "population": len(v.population),
            "complete": len(v.complete),
            "complete_shards": sorted({r.shard for r in v.complete}),
            "sampled_population": v.sampled_population,
            "sampled": len(v.sample),
            "replayed": v.replayed,
            "uniform_draws": v.uniform_replayed,
            "sampled_by": v.sampled_by,
            "single_segment_escape": v.single_escape(),
            "statement": v.sampling_statement(),
            "segments": [
                {"shard": r.shard, "generation": r.generation, "stage": r.stage, "start_index": r.start_index,
                 "end_index": r.end_index, "steps": r.steps, "complete": i < len(v.complete),
                 "retraining_of_request": None if r.stratum is None else v.transcripts[r.stratum].request}
                for i, r in enumerate([*v.complete, *v.sample])
            ],
        },
        "replay": v.replay_report,
        "residual": v.residual_report,
        "canary": v.canary_report,
        "temporal": v.temporal_reports,
        "inconclusive": v.inconclusive,
        "nonfinite_shards": list(v.nonfinite_shards),
        "disclosure": disclosure(v),
        "dp": dp_summary(v),
        "escape_probability": v.escape(),
        "timing": {k: round(x, 6) for k, x in v.timings.items()},
    }


def step_line(r: CheckResult) -> str:
    """One check's line of the text report."""
    mark = {"pass": "PASS", "fail": "FAIL", "error": "ERROR", "skipped": "skip", "inconclusive": "?"}[r.status]
    return f"  [{mark:>5}] {r.step:2d}. {r.name}" + (f": {r.detail}" if r.detail else "")


def render_text(v: Verification, *, path: str | None = None, streamed: bool = False) -> str:
    """The human summary: one line per check, the verdict, and the escape probabilities.

    ``streamed``: the header and the check lines were already printed as the steps finished
    (``step_line``); render the rest only."""
    lines = []
    name = path or "bundle"
    if not streamed:
        lines.append(f"vmu-verify {name}")
    for w in v.warnings:
        lines.append(f"  WARNING: {w}")
    if v.note_verifier is not None:
        how = "pinned" if v.options.trust_key is not None else "NOT pinned: the key the bundle carries"
        lines.append(f"  signed by: {v.note_verifier.vkey} ({how})")
    if not streamed:
        lines.extend(step_line(r) for r in v.results)
    d = disclosure(v)
    if d is not None:
        lines.append("  " + disclosure_line(d))
    dp = dp_summary(v)
    if dp is not None:
        eps = f"epsilon {dp['epsilon']:.3g}" if dp["epsilon"] is not None else "epsilon not recomputed"
        lines.append(f"  DP-SGD: {eps} at delta {dp['delta']:g} (noise multiplier {dp['noise_multiplier']:.4g}, "
                     f"clipping norm {dp['clip']:g}; {dp['note']})")
    if v.population:
        lines.append(f"  replay: {v.sampling_statement()}")
    if v.replay_report and v.replay_report.get("segments"):
        rr = v.replay_report
        lines.append(
            f"  replay: {rr['steps']} steps in {rr['seconds']:.2f} s, mode {rr['mode']}"
            + (f" (threshold {rr['threshold']:g})" if rr.get("threshold") else "")
        )
        mc = rr.get("model_code")
        if mc:
            where = "the bundle's model source" if mc["from"] == "bundle" else "this machine's copy"
            lines.append(f"  model code: {mc['name']} ran from {where}, {mc['files']} file(s) matching the committed "
                         f"source digest {mc['source'][:16]}... and structure digest {mc['structure'][:16]}...")
    k = v.uniform_replayed
    probs = ", ".join(f"f={int(f * 100)}%: {p:.3g}" for f, p in zip(ESCAPE_FRACTIONS, v.escape().values(), strict=True))
    owner = " per owner try (SAMPLED BY THE OWNER)" if v.sampled_by == "owner" else ""
    lines.append(
        f"  escape probability outside the deletion lineage{owner}: one forged segment "
        f"{v.single_escape():.3g} (1 - k/N, k={k}, N={v.sampled_population}); a fraction f forged (1-f)^k: {probs}"
    )
    res = v.residual_report
    if res is not None:
        best = []
        for phase in ("pre", "post"):
            for a in res.get(phase) or []:
                if a.get("decides") and a.get("auc") is not None:
                    lo, hi = a.get("auc_ci95") or (None, None)
                    ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""
                    best.append(f"{a['attack']} {phase}-deletion AUC {a['auc']:.3f}{ci}")
        lines.append(f"  residual tests: {res.get('verdict')} -- {res.get('reason')}")
        if best:
            lines.append("    " + "; ".join(best))
    if v.canary_report is not None:
        lines.append(f"  canary: {v.canary_report.get('verdict')} -- {v.canary_report.get('reason')}")
    verdict = {0: "ACCEPTED", 1: "REJECTED", 2: "UNUSABLE INPUT", 3: "ACCEPTED WITH REDUCED CHECKS",
               EXIT_INTERNAL: "INTERNAL ERROR (a bug in verifiable-mu: nothing was judged)"}[v.exit_code]
    if v.exit_code == 3:
        verdict += f" (policy {v.options.policy}; not met: " + "; ".join(v.unmet) + ")"
    if v.exit_code == 0 and v.inconclusive:
        verdict = "ACCEPTED (residual tests inconclusive)"
    if v.exit_code == 0 and v.sampled_by == "owner":
        verdict += " [SAMPLED BY THE OWNER: offline bundle, the sample outside the deletion lineage bounds nothing]"
    if v.exit_code == 0 and v.options.unsafe_no_replay:
        verdict += " [UNSAFE NO REPLAY]"
    reason = ""
    if v.failure is not None and v.failed_step is not None:
        name = next((r.name for r in v.results if r.step == v.failed_step), "?")
        reason = f" -- step {v.failed_step} ({name}): {v.failure}"
    elif v.failure is not None:
        reason = f" -- {v.failure}"
    if v.failure is not None:
        lines.append(f"  what to do: {v.failure.advice}")
    lines.append(f"verdict: {verdict}{reason}")
    return "\n".join(lines) + "\n"
