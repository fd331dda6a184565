"""``vmu-verify``: check a proof bundle and say whether to accept it.

Exit codes: 0 accepted; 1 rejected (a check failed: the bundle's claims are false); 2 unusable
input (not a bundle, unsupported version, unreadable, unsafe archive, bad arguments); 3 accepted
with reduced checks (only under ``--policy agency``: every check passed, but a requirement of the
policy was not met); 70 internal error (a bug in verifiable-mu, not a verdict on the bundle:
nothing was judged; the line asks for a report; the same code as ``vmu``'s); 130 interrupted
(Ctrl-C: no verdict). Errors are one line; ``--verbose`` adds the traceback and the error's
diagnostics (what failed, at which step, what to do).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from verifiable_mu import __version__
from verifiable_mu._age import AGE_MAGIC, is_age
from verifiable_mu._age import decrypt as age_decrypt
from verifiable_mu._age import identities as age_identities
from verifiable_mu._cli import (
    EXIT_INTERNAL,
    at_the_edge,
    bug_line,
    report_bug,
    report_error,
)
from verifiable_mu._cli import (
    Parser as _Parser,
)
from verifiable_mu._errors import MalformedInput, VmuError
from verifiable_mu._extras import require
from verifiable_mu._keys import SigningKey, VerifyingKey
from verifiable_mu._note import Checkpoint, NoteVerifier
from verifiable_mu._sampling import DEFAULT_REPLAY, LINEAGE_MODES, challenge_from_hex
from verifiable_mu._seeds import atomic_write
from verifiable_mu._witness import WitnessKey

from ._bundle import Limits
from ._checks import CheckResult, ExpectedHead, Verification, VerifyOptions, verify
from ._policy import EXIT_REDUCED, POLICIES
from ._report import render_text, step_line, to_json

__all__ = ["EXIT_ACCEPTED", "EXIT_INTERNAL", "EXIT_REDUCED", "EXIT_REJECTED", "EXIT_UNUSABLE", "build_parser", "main"]

EXIT_ACCEPTED = 0
EXIT_REJECTED = 1
EXIT_UNUSABLE = 2


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="vmu-verify",
        description="Verify a verifiable-mu proof bundle: signatures, proofs, ordering, and a sampled replay of training.",
        epilog="Exit codes: 0 accepted, 1 rejected, 2 unusable input, 3 accepted with reduced checks (--policy agency), "
               f"{EXIT_INTERNAL} internal error (a bug: please report it), 130 interrupted.",
    )
    p.add_argument("--version", action="version", version=f"vmu-verify (verifiable-mu) {__version__}")
    p.add_argument("bundle", metavar="BUNDLE", help="the proof bundle (zip) written by 'vmu bundle'")
    _challenge_and_replay_arguments(p)
    _input_and_trust_arguments(p)
    _residual_and_output_arguments(p)
    return p


def _challenge_and_replay_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--challenge", metavar="HEX", help="the challenge you gave the prover (interactive mode)")
    p.add_argument(
        "--replay", type=int, metavar="K", default=DEFAULT_REPLAY,
        help=f"segments outside the deletion lineage to sample and replay (default {DEFAULT_REPLAY}; the deletion "
             "lineage of every retrained shard is replayed in full unless --lineage sampled; the bundle's manifest is "
             "not consulted)",
    )
    p.add_argument(
        "--lineage", choices=LINEAGE_MODES, default="complete",
        help="complete (default): replay every segment of the deletion lineage of every retrained shard; sampled: "
             "replay K uniform draws from it (the same --replay K), with the escape probability of a forged lineage "
             "segment stated in the verdict; less disclosure, and --policy agency reports it as an unmet requirement",
    )
    p.add_argument(
        "--unsafe-no-replay", action="store_true",
        help="UNSAFE: replay nothing, not even the deletion lineage (only the proofs are checked; the report warns)",
    )
    p.add_argument(
        "--requests", metavar="N|A-B|A,B,...",
        help="the number of deletion requests the bundle must hold (fix it before giving a challenge)",
    )
    p.add_argument(
        "--expect-head", metavar="NOTE_OR_ROOT",
        help="the final tree head the bundle must be for: a file holding a signed note (origin, size and root are "
             "compared) or its root as 64 hex digits",
    )


def _input_and_trust_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", metavar="OUT", help="also write the JSON report to OUT ('-': stdout, which then carries "
                   "the JSON alone; the summary goes to stderr)")
    p.add_argument(
        "--identity", action="append", default=[], metavar="FILE",
        help="an age identity file (AGE-SECRET-KEY-1...) to decrypt a bundle encrypted to your age key by vmu bundle ("
             "repeatable; needs the 'age' extra)",
    )
    p.add_argument(
        "--trust-key", metavar="KEY",
        help="the owner's key to pin: a PEM file of its Ed25519 public key, or its C2SP note verifier key "
             "'<origin>+<key id>+<base64>' (as 'vmu status' prints it), which pins the log's origin too",
    )
    p.add_argument(
        "--witness", action="append", default=[], metavar="VKEY",
        help="a witness (C2SP tlog-cosignature vkey <name>+<id>+<base64>, or a file holding one) whose cosignature "
             "the final head must carry; repeatable",
    )
    p.add_argument(
        "--witness-threshold", type=int, default=None, metavar="N",
        help="how many of the --witness keys must have cosigned the final head (default: all)",
    )
    p.add_argument(
        "--known-head", action="append", default=[], metavar="NOTE",
        help="a signed head of this log seen before (a file): the bundle's history must extend it; repeatable",
    )
    p.add_argument(
        "--replay-mode", choices=("auto", "exact", "distance"), default="auto",
        help="auto: bit-exact when the platform matches, else distance (default auto)",
    )
    p.add_argument(
        "--allow-factory", action="append", default=[], metavar="MODULE:FACTORY",
        help="allow running this factory's code to replay the model (only after it matches the code the log commits: "
             "the bundle's model source if it ships one, else the module on this machine)",
    )


def _residual_and_output_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--html", metavar="OUT", help="also write a self-contained HTML report (inline plots, no network)")
    p.add_argument(
        "--no-residual", action="store_true", help="skip step 19, the residual-information tests (the report says so)"
    )
    p.add_argument(
        "--require-residual", action="store_true",
        help="reject (exit 1) when the residual tests are inconclusive (default: accept with a warning)",
    )
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of the residual tests (default 0.05)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples for AUC intervals")
    p.add_argument("--canary", metavar="TRIGGER", help="the data subject's trigger document (JSON) for the canary test")
    p.add_argument("--backend", choices=("local", "ray"), default="local", help="where to replay segments")
    p.add_argument("--ray-address", metavar="ADDR", help="Ray cluster to use with --backend ray (default: a local one)")
    p.add_argument(
        "--policy", choices=POLICIES, default="default",
        help="default: reduced checks are warnings; agency: a pinned key, an interactive challenge with --expect-head "
             "and --requests, the default replay and a passed step 19 are required, and an accepted bundle that "
             "misses any of them exits 3 (accepted with reduced checks), never 0",
    )
    p.add_argument("--attest", metavar="OUT", help="also write a DSSE-signed in-toto verification summary attestation "
                   "(SLSA VSA v1) of the verdict to OUT (needs --signing-key; none for unusable input)")
    p.add_argument("--signing-key", metavar="KEY", help="the verifier's Ed25519 private key (PKCS#8 PEM, mode 0600) "
                   "that signs the --attest output")
    p.add_argument("--residual-only", action="store_true", help="BUNDLE is an audit package (specs/12): check its "
                   "signature and digests, then run only the residual tests (vmu-audit; a statistical audit, not a proof)")
    p.add_argument("--quiet", action="store_true", help="print only the verdict line")
    p.add_argument("--verbose", action="store_true", help="show tracebacks")


def _parse_requests(text: str) -> tuple[int, ...]:
    """``N``, ``A-B`` or ``A,B,...`` (each at least 1) as the accepted request counts."""
    out: set[int] = set()
    try:
        for part in text.split(","):
            a, sep, b = part.strip().partition("-")
            lo, hi = int(a), int(b) if sep else int(a)
            if not 1 <= lo <= hi or hi - lo > 1_000_000:
                raise ValueError(part)
            out.update(range(lo, hi + 1))
    except ValueError as e:
        raise MalformedInput(f"--requests must be N, A-B or A,B,... with counts >= 1, not {text[:40]!r}") from e
    return tuple(sorted(out))


def _parse_head(text: str) -> ExpectedHead:
    """A 64-hex root, or a file holding a signed note or a checkpoint body."""
    if len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text):
        return ExpectedHead(root=bytes.fromhex(text))
    try:
        with open(text, "rb") as f:
            raw = f.read(1 << 16)
    except OSError as e:
        raise MalformedInput(f"--expect-head is neither a 64-hex root nor a readable note file: {e.strerror or e}") from e
    try:
        body = raw.decode("utf-8").split("\n\n", 1)[0] + "\n"
        ck = Checkpoint.from_text(body, allow_unknown_extensions=True)
    except (UnicodeDecodeError, MalformedInput) as e:
        raise MalformedInput(f"--expect-head {text}: not a tree head note: {e}") from e
    return ExpectedHead(root=ck.root_hash, size=ck.size, origin=ck.origin)


def _read_source(path: str, identity: Sequence[str]) -> str | bytes:
    """The bundle to verify: the path itself for a plain bundle (read with the verifier's own
    bounds), or the decrypted bytes of an age-encrypted one (--identity)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(AGE_MAGIC))
    except OSError:
        return path  # step 1 says what is wrong with it
    if not is_age(head):
        if identity:
            raise MalformedInput(f"--identity was given but {path} is not an age-encrypted bundle")
        return path
    if not identity:
        raise MalformedInput(f"{path} is an encrypted bundle (age): pass --identity with your age identity file")
    keys = age_identities(identity)
    size = os.path.getsize(path)
    bound = Limits().max_archive_bytes
    if size > bound:
        raise MalformedInput(f"{path} is {size} bytes, above the verifier's bound of {bound} bytes")
    with open(path, "rb") as f:
        return age_decrypt(f.read(), keys, os.path.basename(path))


def _trust_key(arg: str) -> tuple[VerifyingKey, str | None]:
    """``--trust-key``: a PEM file, or a C2SP verifier key string (which also names the origin)."""
    if os.path.exists(arg) or "+" not in arg:
        try:
            return VerifyingKey.load(arg), None
        except OSError as e:
            raise MalformedInput(f"cannot read --trust-key {arg}: {e.strerror or e}") from e
    try:
        nv = NoteVerifier.from_vkey(arg)
    except VmuError as e:
        raise MalformedInput(f"--trust-key is neither a readable PEM file nor a note verifier key: {e}") from e
    return VerifyingKey.from_bytes(nv.public_bytes), nv.name


def _witness(arg: str) -> WitnessKey:
    """A --witness argument: a vkey, or the path of a file holding one."""
    text = arg
    if os.path.isfile(arg):
        try:
            with open(arg, encoding="utf-8") as f:
                text = f.read(4096).strip()
        except (OSError, UnicodeDecodeError) as e:
            raise MalformedInput(f"cannot read --witness {arg}: {e}") from e
    try:
        return WitnessKey.from_vkey(text)
    except MalformedInput as e:
        raise MalformedInput(f"--witness {arg[:80]!r}: {e}") from e


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--residual-only" in args:  # issue 13: an audit package, not a bundle (verifier/audit_cli.py, specs/12)
        from .audit_cli import main as audit_main

        return audit_main([a for a in args if a != "--residual-only"])
    # Interrupted: nothing was judged, and no report is written half.
    return at_the_edge("vmu-verify", lambda: _main(argv), verbose="--verbose" in args, interrupted="interrupted: no verdict")


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        opts, signing_key = _options(args)
    except VmuError as e:
        report_error("vmu-verify", e, verbose=args.verbose)
        return EXIT_UNUSABLE
    # The summary goes to stdout (to stderr with --json -, where stdout carries the JSON alone);
    # each check's line is printed as soon as the check is done, the rest at the end.
    out = sys.stderr if args.json == "-" else sys.stdout
    on_result, on_progress = _callbacks(args, out)
    try:
        source = _read_source(args.bundle, args.identity)
    except VmuError as e:
        report_error("vmu-verify", e, verbose=args.verbose)
        return EXIT_UNUSABLE
    try:
        v = verify(source, opts, on_result=on_result, on_progress=on_progress)
    except MemoryError as e:  # verify maps this per step; this catches what happens around the steps
        if args.verbose:
            traceback.print_exc()
        print(f"vmu-verify: error: out of memory reading {args.bundle} ({e or 'MemoryError'}): unusable input",
              file=sys.stderr)
        return EXIT_UNUSABLE
    except Exception as e:  # verify() returns a verdict for any input: this is a bug around it
        return report_bug("vmu-verify", e, verbose=args.verbose)
    if args.verbose and v.failure is not None:
        traceback.print_exception(v.failure)
        print(v.failure.diagnostics(), file=sys.stderr)
    text = render_text(v, path=os.path.basename(args.bundle), streamed=not args.quiet)
    if args.quiet:
        text = text.splitlines()[-1] + "\n"
    out.write(text)
    if v.exit_code == EXIT_INTERNAL and v.failure is not None:
        print(bug_line("vmu-verify", v.failure), file=sys.stderr)
    elif v.failure is not None:
        print(f"vmu-verify: {v.verdict}: step {v.failed_step}: {v.failure}", file=sys.stderr)
    failed = _write_outputs(args, v, signing_key)
    return v.exit_code if failed is None else failed


def _options(args: argparse.Namespace) -> tuple[VerifyOptions, SigningKey | None]:
    """The verifier's options and the --attest signing key from the command line, checked before
    the bundle is read."""
    challenge = None if args.challenge is None else challenge_from_hex(args.challenge)
    if args.replay < 0:
        raise MalformedInput("--replay must be >= 0")
    if args.unsafe_no_replay:
        print("vmu-verify: WARNING: --unsafe-no-replay: no training segment will be replayed", file=sys.stderr)
    requests = None if args.requests is None else _parse_requests(args.requests)
    expect_head = None if args.expect_head is None else _parse_head(args.expect_head)
    key, trust_origin = None, None
    if args.trust_key is not None:
        key, trust_origin = _trust_key(args.trust_key)
    witnesses = tuple(_witness(w) for w in args.witness)
    if args.witness_threshold is not None and not 1 <= args.witness_threshold <= len(witnesses):
        raise MalformedInput(f"--witness-threshold must be between 1 and the number of --witness keys ({len(witnesses)})")
    if len({(w.name, w.key_id) for w in witnesses}) != len(witnesses):
        raise MalformedInput("a --witness key is given twice")
    known = _known_heads(args.known_head)
    if not 0 < args.alpha < 1:
        raise MalformedInput("--alpha must be between 0 and 1")
    if args.bootstrap < 100:
        raise MalformedInput("--bootstrap must be at least 100")
    if args.ray_address is not None and args.backend != "ray":
        raise MalformedInput("--ray-address needs --backend ray")
    if args.html:  # checked before the bundle is read, not after
        require(("jinja2", "matplotlib"), "--html", "leave --html out (the text and --json reports need neither)",
                extra="report")
    signing_key = _attest_args(args.attest, args.signing_key)
    trigger = None if args.canary is None else _canary_trigger(args.canary)
    opts = VerifyOptions(
        trust_key=key, trust_origin=trust_origin, challenge=challenge, replay=args.replay, replay_mode=args.replay_mode,
        lineage=args.lineage,
        unsafe_no_replay=args.unsafe_no_replay, requests=requests, expect_head=expect_head,
        allow_factories=tuple(args.allow_factory), residual=not args.no_residual,
        require_residual=args.require_residual, alpha=args.alpha, n_boot=args.bootstrap, canary=trigger,
        backend=args.backend, ray_address=args.ray_address, witnesses=witnesses,
        witness_threshold=args.witness_threshold, known_heads=tuple(known), policy=args.policy,
    )
    return opts, signing_key


def _known_heads(paths: Sequence[str]) -> list[bytes]:
    known = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                known.append(f.read(1 << 20))
        except OSError as e:
            raise MalformedInput(f"cannot read --known-head {path}: {e.strerror or e}") from e
    return known


def _canary_trigger(path: str) -> Any:
    """``--canary``: the data subject's trigger document."""
    from verifiable_mu._canary import Trigger
    from verifiable_mu._canonical import parse_json_strict

    try:
        with open(path, "rb") as f:
            raw = f.read(1 << 20)
    except OSError as e:
        raise MalformedInput(f"cannot read --canary {path}: {e.strerror or e}") from e
    return Trigger.from_json(parse_json_strict(raw, what="--canary trigger"))


def _callbacks(args: argparse.Namespace, out: TextIO) -> tuple[Callable[[CheckResult], None] | None,
                                                              Callable[[str], None] | None]:
    """``on_result`` (each check's line as soon as it is done) and ``on_progress`` (a progress line
    on a terminal), or None."""
    on_result = None
    if not args.quiet:
        out.write(f"vmu-verify {os.path.basename(args.bundle)}\n")
        out.flush()

        def on_result(r: CheckResult) -> None:
            out.write(step_line(r) + "\n")
            out.flush()

    # On a terminal, long steps show a progress line on stderr, overwritten in place and erased
    # when the step's result line comes (never with --quiet or --json -, never into a pipe).
    on_progress = None
    if not args.quiet and args.json != "-" and sys.stderr.isatty():
        shown = [False]

        def on_progress(msg: str) -> None:
            sys.stderr.write("\r\033[K" + msg[:200])
            sys.stderr.flush()
            shown[0] = True

        if on_result is not None:
            print_line = on_result

            def on_result(r: CheckResult) -> None:
                if shown[0]:
                    sys.stderr.write("\r\033[K")
                    sys.stderr.flush()
                    shown[0] = False
                print_line(r)

    return on_result, on_progress


def _write_outputs(args: argparse.Namespace, v: Verification, signing_key: SigningKey | None) -> int | None:
    """The --html, --json and --attest outputs; an exit code if one cannot be written, else None."""
    if args.html:
        from ._html import render_html

        try:
            page = render_html(to_json(v, path=args.bundle), title=f"vmu-verify {os.path.basename(args.bundle)}")
            with open(args.html, "w", encoding="utf-8") as fh:
                fh.write(page)
        except (OSError, VmuError) as e:
            print(f"vmu-verify: error: cannot write {args.html}: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
            return EXIT_UNUSABLE
    if args.json:
        doc = json.dumps(to_json(v, path=args.bundle), indent=2, sort_keys=True) + "\n"
        if args.json == "-":
            sys.stdout.write(doc)
        else:
            try:
                with open(args.json, "w", encoding="utf-8") as fh:
                    fh.write(doc)
            except OSError as e:
                print(f"vmu-verify: error: cannot write {args.json}: {e.strerror or e}", file=sys.stderr)
                return EXIT_UNUSABLE
    if signing_key is not None and v.exit_code not in (EXIT_UNUSABLE, EXIT_INTERNAL):
        from ._attest import build_vsa, sign_vsa

        try:
            env = sign_vsa(build_vsa(v, name=os.path.basename(args.bundle)), signing_key)
            atomic_write(args.attest, env.to_bytes())  # all or nothing: a temporary file, then a rename
        except (OSError, VmuError) as e:
            print(f"vmu-verify: error: cannot write {args.attest}: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
            return EXIT_UNUSABLE
    return None


def _attest_args(out: str | None, key_path: str | None) -> SigningKey | None:
    """Check --attest/--signing-key before the bundle is read: both or neither, a usable key, and a
    folder for OUT that exists and is writable."""
    if out is None and key_path is None:
        return None
    if out is None or key_path is None:
        raise MalformedInput("--attest and --signing-key go together")
    try:
        key = SigningKey.load(key_path)
    except OSError as e:
        raise MalformedInput(f"cannot read --signing-key {key_path}: {e.strerror or e}") from e
    except VmuError as e:
        raise MalformedInput(f"--signing-key: {e}") from e
    if out == "-":
        raise MalformedInput("--attest needs a file name (stdout carries the summary or the --json report)")
    folder = os.path.dirname(os.path.abspath(out))
    if os.path.isdir(out) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise MalformedInput(f"cannot write --attest {out}: not a file in an existing, writable folder")
    return key


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
