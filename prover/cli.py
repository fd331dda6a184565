"""``vmu``: the model owner's command line.

Exit codes: 0 success; 2 bad usage or bad input (unknown id, already deleted, unreadable data,
unsupported workspace version); 1 any other documented failure; 70 internal error (a bug in
verifiable-mu: the line asks for a report; the same code as ``vmu-verify``'s); 130 interrupted.
Errors print one line; ``--verbose`` adds the traceback and the error's diagnostics.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from verifiable_mu import __version__
from verifiable_mu._age import encrypt as age_encrypt
from verifiable_mu._age import recipients as age_recipients
from verifiable_mu._cli import (
    EXIT_INTERNAL,
    at_the_edge,
    report_bug,
    report_error,
    say,
)
from verifiable_mu._cli import (
    Parser as _Parser,
)
from verifiable_mu._disclosure import disclosure_line
from verifiable_mu._errors import InternalError, MalformedInput, VmuError
from verifiable_mu._extras import FULL_INSTALL, missing_module
from verifiable_mu._sampling import DEFAULT_REPLAY, challenge_from_hex
from verifiable_mu._seeds import atomic_write

from ._config import SPLITS
from ._errors import BadInput

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_FAILURE", "EXIT_BAD_INPUT", "EXIT_INTERNAL"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vmu", description="Verifiable machine unlearning: train with SISA under commitments, forget on request.")
    p.add_argument("--verbose", action="store_true", help="show tracebacks on errors")
    p.add_argument("--version", action="version", version=f"vmu (verifiable-mu) {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    _add_init(sub)
    _add_train_and_forget(sub)
    _add_bundle(sub)
    _add_status(sub)
    return p


def _add_init(sub: argparse._SubParsersAction[_Parser]) -> None:
    i = sub.add_parser("init", help="create a workspace: config, data copy, signing key")
    i.add_argument("dir", metavar="DIR")
    i.add_argument("--data", default="digits", help="'digits' (scikit-learn's bundled set) or PATH.npz with X, y[, ids]")
    i.add_argument(
        "--n-classes", type=int, metavar="K",
        help="the number of classes, when some class indices 0..K-1 do not occur in the data (default: every "
             "label from 0 to the largest must occur)",
    )
    i.add_argument(
        "--origin", metavar="NAME",
        help="the log's name in its signed checkpoints, e.g. example.com/models/churn (printable ASCII, no spaces, "
             "no '+'; default: verifiable-mu.local/<directory name>-<8 random hex digits>)",
    )
    i.add_argument("--shards", type=int, default=5, help="S, number of shards (default 5)")
    i.add_argument("--slices", type=int, default=4, help="R, slices per shard (default 4)")
    i.add_argument("--epochs", type=int, default=20, help="E, total epochs per shard; stage r trains 2E/(R+1) (default 20)")
    i.add_argument("--model", default="mlp", help="mlp, logreg, cnn or MODULE:FACTORY (default mlp)")
    i.add_argument("--seed", type=int, default=0, help="committed seed for split, assignment and shuffles (default 0)")
    i.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default auto: CUDA when present")
    i.add_argument(
        "--checkpoint-every",
        type=_checkpoint_every,
        default="auto",
        metavar="K|auto",
        help="also checkpoint every K steps inside a slice (0: only at slice ends; more checkpoints = shorter replay "
        "segments, more overhead); auto (default): every --max-segment-records / --batch-size steps",
    )
    i.add_argument(
        "--max-segment-records", type=int, default=None, metavar="N",
        help=f"with --checkpoint-every auto: segments short enough that replaying one opens at most N records "
             f"(N // batch size steps; default {DEFAULT_MAX_SEGMENT_RECORDS}); 0: checkpoints at slice ends only",
    )
    i.add_argument("--threads", type=int, default=1, help="torch intra-op threads (logged; replay must match) (default 1)")
    i.add_argument("--dp-epsilon", type=float, default=0.0, metavar="E",
                   help="train with DP-SGD to this epsilon (at --dp-delta; the noise multiplier is chosen from the "
                        "committed slice sizes by opacus's RDP accountant; specs/06 section 3b)")
    i.add_argument("--dp-delta", type=float, default=0.0, metavar="D", help="the delta of --dp-epsilon, e.g. 1e-5")
    i.add_argument("--dp-clip", type=float, default=1.0, metavar="C", help="DP-SGD's per-example clipping norm (default 1)")
    i.add_argument("--dp-noise", type=float, default=0.0, metavar="SIGMA",
                   help="DP-SGD's noise multiplier, instead of --dp-epsilon")
    i.add_argument("--lr", type=float, default=0.05)
    i.add_argument("--batch-size", type=int, default=32)
    i.add_argument("--workers", type=int, default=0, help="shard processes (0: min(cores, shards))")
    i.add_argument(
        "--arithmetic",
        default="float32",
        choices=("float32", "portable"),
        help="float32: replay is bit-exact on the same platform only; portable: float64 gradients rounded "
        "with logged hints, bit-exact on any CPU or GPU (slower steps; specs/06 section 3a) (default float32)",
    )
    i.add_argument(
        "--standardize", action="store_true",
        help="scale every feature to mean 0 and std 1, fitted on the training split and signed in the config "
             "(the verifier applies the same scaling; specs/06 section 5c). Use it for raw tabular features",
    )


def _add_train_and_forget(sub: argparse._SubParsersAction[_Parser]) -> None:
    t = sub.add_parser("train", help="train every shard and print the signed tree head")
    t.add_argument("dir", metavar="DIR")
    t.add_argument("--backend", default="local", choices=("local", "ray"))
    t.add_argument(
        "--ray-address", metavar="ADDR", help="Ray cluster to join, host:port (default: RAY_ADDRESS, else a local instance)"
    )
    t.add_argument("--workers", type=int, default=None, help="override the workspace's shard processes")

    f = sub.add_parser("forget", help="unlearn records and write one signed deletion transcript")
    f.add_argument("dir", metavar="DIR")
    g = f.add_mutually_exclusive_group(required=True)
    g.add_argument("--ids", help="comma-separated record ids, e.g. 17,42")
    g.add_argument("--ids-file", help="file with one record id per line")
    f.add_argument("--backend", default="local", choices=("local", "ray"))
    f.add_argument(
        "--ray-address", metavar="ADDR", help="Ray cluster to join, host:port (default: RAY_ADDRESS, else a local instance)"
    )
    f.add_argument("--workers", type=int, default=None)
    # Issue 13: approximate (unproven) methods write an audit package, never a transcript (prover/_approx_cli.py).
    f.add_argument("--method", default="retrain", help="retrain (exact, proven; default) or an UNPROVEN approximate "
                   "method: finetune, neggrad, fisher, distill, oblivi (writes --package, no transcript)")
    f.add_argument("--package", metavar="OUT", help="write an audit package (specs/12) to OUT")
    f.add_argument("--method-param", action="append", default=[], metavar="KEY=VALUE", help="an approximate method's "
                   "parameter, e.g. oblivi_epsilon=1.0 (prover/_approx.py ApproxParams; repeatable)")


def _add_bundle(sub: argparse._SubParsersAction[_Parser]) -> None:
    b = sub.add_parser("bundle", help="write a proof bundle for vmu-verify (specs/08-bundle.md)")
    b.add_argument("dir", metavar="DIR")
    b.add_argument("--out", required=True, metavar="FILE", help="the bundle file to write (a zip)")
    b.add_argument(
        "--recipient", action="append", default=[], metavar="AGE_KEY|FILE",
        help="encrypt the bundle to this age X25519 recipient (age1...) or recipients file (repeatable; needs the "
             "'age' extra); the agency reads it with vmu-verify --identity, or age -d",
    )
    bg = b.add_mutually_exclusive_group()
    bg.add_argument("--transcript", type=int, metavar="N", help="cover deletion requests 1..N (default: all)")
    bg.add_argument("--all", action="store_true", help="cover every finished deletion request (the default)")
    b.add_argument(
        "--challenge",
        metavar="HEX",
        help="the verifier's challenge (32 to 128 hex digits); without it the sample is drawn by Fiat-Shamir",
    )
    b.add_argument(
        "--replay", type=int, default=DEFAULT_REPLAY, metavar="K",
        help=f"uniform draws to disclose for replay besides the deletion lineage, which is always disclosed in full "
             f"(default {DEFAULT_REPLAY}; a verifier asking for more rejects the bundle)",
    )
    b.add_argument(
        "--lineage", choices=("complete", "sampled"), default="complete",
        help="complete (default): disclose every segment of the deletion lineage (a retrained shard's records); "
             "sampled: only the --replay K draws from it that 'vmu-verify --lineage sampled' replays (far fewer "
             "records opened; a verifier that asks for the complete lineage rejects the bundle)",
    )
    b.add_argument(
        "--known-head", action="append", default=[], metavar="NOTE",
        help="a signed head of this log the verifier already holds: the bundle proves its history extends it",
    )

    b.add_argument(
        "--include-model-source", action="store_true",
        help="ship a MODULE:FACTORY model's source files (as committed in the log) in the bundle, so an agency without "
             "the module can verify it with --allow-factory",
    )


def _add_status(sub: argparse._SubParsersAction[_Parser]) -> None:
    s = sub.add_parser("status", help="show shards, slices, log size and deletions")
    s.add_argument("dir", metavar="DIR")
    s.add_argument("--json", action="store_true", help="print machine-readable JSON")
    s.add_argument(
        "--ids", metavar="SPLIT", choices=SPLITS,
        help=f"instead: print the ids of one split, one per line ({', '.join(SPLITS)}; 'train' excludes deleted records)",
    )


def _read_ids(args: argparse.Namespace) -> list[str]:
    if args.ids is not None:
        ids = [x.strip() for x in args.ids.split(",")]
    else:
        try:
            with open(args.ids_file, encoding="utf-8") as fh:
                ids = [line.strip() for line in fh]
        except (OSError, UnicodeDecodeError) as e:
            raise BadInput(f"cannot read --ids-file {args.ids_file}: {e}") from e
        ids = [x for x in ids if x]
    if not ids or any(not x for x in ids):
        raise BadInput("--ids must list at least one non-empty record id")
    return ids


def _run(args: argparse.Namespace) -> int:
    if getattr(args, "ray_address", None) and args.backend != "ray":
        raise BadInput("--ray-address needs --backend ray")
    if args.command == "forget" and (args.method != "retrain" or args.package or args.method_param):  # issue 13
        from ._approx_cli import forget_with_package

        return forget_with_package(args, _read_ids(args))
    commands = {"init": _init, "train": _train, "forget": _forget, "bundle": _bundle, "status": _status}
    if args.command not in commands:  # pragma: no cover
        raise BadInput(f"unknown command {args.command}")
    return commands[args.command](args)


def _init(args: argparse.Namespace) -> int:
    from ._workspace import Workspace, WorkspaceConfig

    every = _resolve_checkpoint_every(args.checkpoint_every, args.max_segment_records, args.batch_size)
    cfg = WorkspaceConfig(
        shards=args.shards,
        slices=args.slices,
        epochs=args.epochs,
        model=args.model,
        seed=args.seed,
        device=args.device,
        checkpoint_every=every,
        threads=args.threads,
        lr=args.lr,
        batch_size=args.batch_size,
        workers=args.workers,
        arithmetic=args.arithmetic,
        standardize=args.standardize,
        dp_epsilon=args.dp_epsilon,
        dp_delta=args.dp_delta,
        dp_clip=args.dp_clip,
        dp_noise=args.dp_noise,
    )
    with Workspace.create(args.dir, data=args.data, config=cfg, origin=args.origin, n_classes=args.n_classes) as ws:
        print(f"created workspace {ws.path}")
        print(f"  log origin: {ws.log_origin}")
        print(f"  data: {args.data} ({len(ws.data.ids)} records), {args.shards} shards x {args.slices} slices"
              + (", features standardized on the training split" if cfg.standardize else ""))
        print(f"  checkpoint every {cfg.checkpoint_every} steps inside a slice (a replayed segment opens at most "
              f"{cfg.checkpoint_every * cfg.batch_size} records)" if cfg.checkpoint_every else
              "  checkpoints at slice ends only (a replayed segment is a whole SISA stage)")
        print(f"  signing key id: {ws.public_key.key_id}")
        print(f"  note verifier key: {ws.note_vkey}")
        if cfg.arithmetic == "float32" and ws._device() == "cuda":
            print(
                "  warning: float32 steps on CUDA replay bit for bit only on the same GPU and libraries; an "
                "agency replaying on its CPUs compares within a distance that longer segments can exceed. "
                "--arithmetic portable makes replay bit-exact anywhere (slower steps; specs/06 section 3a)",
                file=sys.stderr,
            )
    return EXIT_OK


def _train(args: argparse.Namespace) -> int:
    from ._workspace import Workspace

    with Workspace.open(args.dir) as ws:
        rep = ws.train(backend=args.backend, workers=args.workers, ray_address=args.ray_address)
        accuracy = ws.evaluate()
        acc = "n/a" if accuracy is None else f"{100 * accuracy:.1f}%"
        print(f"trained {rep.shards} shards: {rep.steps} steps this run, {rep.seconds:.2f} s in all, test accuracy {acc}")
        print(f"log size {rep.log_size}; signed tree head:")
        print(rep.tree_head, end="")
    return EXIT_OK


def _forget(args: argparse.Namespace) -> int:
    from ._workspace import Workspace

    ids = _read_ids(args)
    with Workspace.open(args.dir) as ws:
        frep = ws.forget(ids, backend=args.backend, workers=args.workers, ray_address=args.ray_address)
        print(
            f"forgot {len(frep.deleted)} record(s) in request {frep.request}: retrained "
            f"{len(frep.shards_retrained)} shard(s), {frep.slices_retrained} slice(s), {frep.steps} steps "
            f"in {frep.seconds:.2f} s"
        )
        steps = (f"{frep.step_ratio:.1f}x in steps ({frep.steps_total} retrained of {frep.full_training_steps})"
                 if frep.full_training_steps and frep.steps_total else "steps n/a")
        print(f"speed-up against full training ({frep.full_training_seconds:.2f} s of compute): {frep.speedup:.1f}x "
              f"in time ({frep.seconds:.2f} s of compute, over every run of this request), {steps}")
        print(f"transcript: {frep.transcript_path}")
    return EXIT_OK


def _bundle(args: argparse.Namespace) -> int:
    from ._bundle import known_head_size, write_bundle
    from ._workspace import Workspace

    _check_out_path(args.out)  # before any work: a bad path is bad input (exit 2)

    challenge = None if args.challenge is None else challenge_from_hex(args.challenge)
    to = age_recipients(args.recipient) if args.recipient else None  # before any work
    with Workspace.open(args.dir) as ws:
        known = [known_head_size(ws, path) for path in args.known_head]
        target = args.out if to is None else f"{args.out}.plain.{os.getpid()}"
        try:
            info = write_bundle(
                ws, target, transcript=None if args.all else args.transcript, challenge=challenge,
                replay=args.replay, known_sizes=known, include_model_source=args.include_model_source,
                lineage=args.lineage,
            )
            if to is not None:  # the plain zip never reaches --out; it is removed either way
                with open(target, "rb") as f:
                    atomic_write(args.out, age_encrypt(f.read(), to))
        finally:
            if to is not None and os.path.exists(target):
                os.remove(target)
    if to is not None:
        print(f"encrypted to {len(to)} age recipient(s): {args.out} is an age file (vmu-verify --identity, age -d)")
    print(
        f"wrote {args.out}: {len(info.transcripts)} transcript(s), {info.segments} of {info.population} "
        f"segments disclosed for replay ({len(info.complete)} of the deletion lineage, {args.lineage}; "
        f"{len(info.sampled)} sampled), {info.openings} record openings, {info.bytes_total} bytes "
        f"({info.bytes_without_checkpoints} without checkpoints)"
    )
    if info.disclosure is not None:
        print("  " + disclosure_line(info.disclosure))
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    from ._workspace import Workspace

    if args.ids is not None:
        with Workspace.open(args.dir) as ws:
            ids = ws.split_ids(args.ids)
        sys.stdout.write("".join(f"{i}\n" for i in ids))
        return EXIT_OK
    with Workspace.open(args.dir) as ws:
        st = ws.status()
    if args.json:
        print(json.dumps(st, indent=2, sort_keys=True))
        return EXIT_OK
    print(f"workspace {st['path']}: {st['shards']} shards x {st['slices']} slices, model {st['model']}")
    print(f"  log origin: {st['origin']}")
    print(f"  note verifier key (pin it: vmu-verify --trust-key '<key>'): {st['vkey']}")
    print(f"  trained: {'yes' if st['trained'] else 'no'}; log size {st['log_size']} (signed {st['signed_size']})")
    print(f"  deleted records: {st['deleted_records']} in {len(st['requests'])} request(s)")
    for sh in st["shard_state"]:
        print(
            f"  shard {sh['shard']}: {sh['records']} records, generation {sh['generation']}, "
            f"{'complete' if sh['complete'] else 'incomplete'}"
        )
    for r in st["requests"]:
        print(f"  request {r['n']}: {len(r['ids'])} id(s), {r['status']}, transcript {r['transcript']}")
    return EXIT_OK


DEFAULT_MAX_SEGMENT_RECORDS = 4096


def _checkpoint_every(v: str) -> int | str:
    if v == "auto":
        return v
    try:
        return int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of steps or auto, not {v!r}") from None


def _resolve_checkpoint_every(every: int | str, max_records: int | None, batch_size: int) -> int:
    """The logged ``checkpoint_every``: K as given, or for ``auto`` the most steps whose batches
    open at most ``max_records`` records (``max_records // batch_size``, at least 1; 0 records:
    stage ends only). A segment of K steps uses at most K batches of ``batch_size`` records."""
    if every != "auto":
        if max_records is not None:
            raise BadInput("give --checkpoint-every K or --max-segment-records N, not both")
        return int(every)
    n = DEFAULT_MAX_SEGMENT_RECORDS if max_records is None else max_records
    if n < 0:
        raise BadInput("--max-segment-records must be >= 0 (0: checkpoints at slice ends only)")
    if batch_size < 1:
        raise BadInput("--batch-size must be >= 1")
    return 0 if n == 0 else max(1, n // batch_size)


def _check_out_path(out: str) -> None:
    """An output file path must name a file in an existing, writable directory."""
    if os.path.isdir(out):
        raise BadInput(f"--out {out} is a directory; give a file name, e.g. {os.path.join(out, 'bundle.vmu')}")
    where = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(where):
        raise BadInput(f"--out {out}: the directory {where} does not exist")
    if not os.access(where, os.W_OK | os.X_OK):
        raise BadInput(f"--out {out}: the directory {where} is not writable")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return at_the_edge(
        "vmu", lambda: _guarded(args), verbose=args.verbose,
        interrupted="interrupted; run the same command again to finish the job",
    )  # fmt: skip


def _guarded(args: argparse.Namespace) -> int:
    """Run the command; a documented error is one line and its exit code."""
    try:
        return _run(args)
    except InternalError as e:
        return report_bug("vmu", e, verbose=args.verbose)
    except MalformedInput as e:
        report_error("vmu", e, verbose=args.verbose)
        return EXIT_BAD_INPUT
    except VmuError as e:
        report_error("vmu", e, verbose=args.verbose)
        return EXIT_FAILURE
    except BrokenPipeError:
        raise  # an OSError, but handled at the edge
    except OSError as e:
        say("vmu", f"error: {e.strerror or e} ({getattr(e, 'filename', '') or ''})", verbose=args.verbose)
        return EXIT_FAILURE
    except ImportError as e:
        missing = missing_module(e)
        if missing is None:
            return report_bug("vmu", e, verbose=args.verbose)
        say("vmu", f"error: 'vmu {args.command}' needs {missing}, which this install lacks (the proof-only install): "
            f"install the full one with {FULL_INSTALL}", verbose=args.verbose)
        return EXIT_BAD_INPUT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
