"""``vmu-audit PACKAGE``: the residual-only audit of an audit package (specs/12-audit-package.md).

Exit codes as vmu-verify: 0 the audit found no trace (pass) or could not decide (inconclusive,
a warning; ``--require-residual`` turns it into 1), 1 rejected (a bad signature or digest, or
the residual tests found a trace), 2 unusable input, 70 internal error (a bug: one line asking
for a report). Every verdict is a statistical audit, never a proof.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from verifiable_mu._cli import Parser as _Parser
from verifiable_mu._cli import at_the_edge, report_error, say
from verifiable_mu._errors import MalformedInput, VerificationFailed, VmuError

from ._bundle import Limits

__all__ = ["main", "build_parser"]

EXIT_OK, EXIT_REJECTED, EXIT_UNUSABLE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vmu-audit", description="Residual-only audit of an audit package (approximate or unproven "
                "unlearning): a statistical audit, not a proof.")
    from verifiable_mu import __version__

    p.add_argument("--version", action="version", version=f"vmu-audit (verifiable-mu) {__version__}")
    p.add_argument("package", metavar="PACKAGE", help="the audit package (zip) written by 'vmu forget --package'")
    p.add_argument("--trust-key", metavar="KEY", help="the owner's public key (PEM); without it the package's own key "
                   "is used and the report says the key is not pinned")
    p.add_argument("--json", metavar="OUT", help="also write the JSON report to OUT ('-': stdout)")
    p.add_argument("--html", metavar="OUT", help="also write an HTML report")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of the residual tests (default 0.05)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples for AUC intervals")
    p.add_argument("--require-residual", action="store_true", help="an inconclusive audit exits 1 instead of 0")
    p.add_argument("--quiet", action="store_true", help="print only the verdict line")
    p.add_argument("--verbose", action="store_true", help="show tracebacks")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    verbose = "--verbose" in (sys.argv[1:] if argv is None else argv)
    return at_the_edge("vmu-audit", lambda: _main(argv), verbose=verbose, interrupted="interrupted: no verdict")


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from verifiable_mu._keys import VerifyingKey

    from . import _audit

    out = sys.stderr if args.json == "-" else sys.stdout
    try:
        if not 0 < args.alpha < 0.5:
            raise MalformedInput("--alpha must be between 0 and 0.5")
        if args.bootstrap < 100:
            raise MalformedInput("--bootstrap must be at least 100")
        key = None
        if args.trust_key is not None:
            try:
                key = VerifyingKey.load(args.trust_key)
            except OSError as e:
                raise MalformedInput(f"cannot read --trust-key {args.trust_key}: {e.strerror or e}") from e
        try:
            size = os.path.getsize(args.package)
            if size > Limits().max_archive_bytes:
                raise MalformedInput(f"{args.package} is {size} bytes, above the bound of {Limits().max_archive_bytes}")
            with open(args.package, "rb") as f:
                data = f.read()
        except OSError as e:
            raise MalformedInput(f"cannot read {args.package}: {e.strerror or e}") from e
        pkg = _audit.read_package(data, trust_key=key)
        report = _audit.audit_package(pkg, alpha=args.alpha, n_boot=args.bootstrap)
    except VerificationFailed as e:
        say("vmu-audit", f"REJECTED: {e}", verbose=args.verbose)
        return EXIT_REJECTED
    except VmuError as e:
        report_error("vmu-audit", e, verbose=args.verbose)
        return EXIT_UNUSABLE
    verdict = report["verdict"]
    code = EXIT_REJECTED if verdict == "fail" or (verdict != "pass" and args.require_residual) else EXIT_OK
    for w in report["warnings"]:
        print(f"vmu-audit: WARNING: {w}", file=sys.stderr)
    word = {"pass": "NO TRACE FOUND", "fail": "TRACE FOUND", "inconclusive": "INCONCLUSIVE"}.get(verdict, verdict)
    print(f"{word} ({report['package']['method']}: {report['package']['label']}): {report['reason']}", file=out)
    if not args.quiet:
        print(f"this is a {_audit.NOT_A_PROOF}", file=out)
    try:
        if args.html:
            with open(args.html, "w", encoding="utf-8") as fh:
                fh.write(_audit.render_audit_html(report))
        if args.json:
            doc = json.dumps(report, indent=2, sort_keys=True) + "\n"
            if args.json == "-":
                sys.stdout.write(doc)
            else:
                with open(args.json, "w", encoding="utf-8") as fh:
                    fh.write(doc)
    except OSError as e:
        print(f"vmu-audit: error: cannot write a report: {e.strerror or e}", file=sys.stderr)
        return EXIT_UNUSABLE
    return code


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
