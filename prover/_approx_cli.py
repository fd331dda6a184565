"""``vmu forget --method NAME --package OUT`` (issue 13): an approximate, UNPROVEN method (or the
exact one with a package beside its transcript), written as an audit package (specs/12)."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from ._approx import APPROXIMATE, METHODS, UNPROVEN_LABEL, ApproxParams, approximate_forget
from ._audit_package import exact_forget_result, write_package
from ._errors import BadInput
from ._workspace import Workspace

__all__ = ["forget_with_package", "parse_params"]


def parse_params(items: list[str]) -> ApproxParams:
    """``--method-param KEY=VALUE`` items as :class:`ApproxParams` (unknown keys and bad values
    are bad input)."""
    types = {f.name: f.type for f in dataclasses.fields(ApproxParams)}
    kw: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in types:
            raise BadInput(f"--method-param {item!r}: use KEY=VALUE with KEY one of {', '.join(types)}")
        try:
            kw[key] = int(value) if types[key] in (int, "int") else float(value)
        except ValueError as e:
            raise BadInput(f"--method-param {item!r}: {value!r} is not a number") from e
    return ApproxParams(**kw)


def forget_with_package(args: Any, ids: list[str]) -> int:
    if args.method not in METHODS:
        raise BadInput(f"unknown --method {args.method!r} (use {', '.join(METHODS)})")
    params = parse_params(list(getattr(args, "method_param", []) or []))
    if args.method == "retrain" and args.method_param:
        raise BadInput("--method-param is for the approximate methods; retrain has no parameters")
    if args.method in APPROXIMATE and not args.package:
        raise BadInput(f"--method {args.method} is approximate and unproven: it writes no transcript, only an audit "
                       "package; give --package OUT")
    with Workspace.open(args.dir) as ws:
        if args.method == "retrain":
            res, frep = exact_forget_result(ws, ids, backend=args.backend, workers=args.workers,
                                            ray_address=args.ray_address)
            print(f"forgot {len(frep.deleted)} record(s) in request {frep.request} (exact SISA retraining, "
                  f"{frep.seconds:.2f} s); transcript: {frep.transcript_path}")
        else:
            res = approximate_forget(ws, ids, args.method, params)
            print(f"{UNPROVEN_LABEL.upper()}: {args.method} on shard(s) {list(res.shards_changed)} in "
                  f"{res.seconds:.2f} s; the workspace, its log and its models are unchanged (no transcript)",
                  file=sys.stderr)
        path = write_package(ws, res, args.package)
    print(f"audit package: {path} (check it with: vmu-audit {path} --trust-key {args.dir}/signing-key.pub.pem)")
    return 0
