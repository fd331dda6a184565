"""The real command line at a real owner's scale: 10^4, 10^5 and 10^6 tabular records (issue 17).

Data: scikit-learn's ``make_classification`` (64 features, 16 informative, 10 classes, seeded),
written to ``syn.npz`` on the fly. For each size, exactly as a user would, each command a fresh
child process::

    vmu init WS --data syn.npz --shards 5 --slices 4 --epochs 2 [--standardize] [...]
    vmu train WS
    vmu forget WS --ids <the first training id>
    vmu bundle WS --out b.vmu [--lineage sampled]
    vmu-verify b.vmu --no-residual --trust-key KEY [--lineage sampled]

For each command: wall time and peak RSS of the child (``os.wait4``'s rusage: the child's own
peak or that of a process it waited for, whichever is larger, as ``/usr/bin/time -v`` reports
it). Then ``state.db`` bytes per record and per logged step, bundle bytes, the records the
bundle opens (its manifest's disclosure) and the ratio of verification time to ``forget`` time,
measured side by side in this run.

Run (README.md, "A million records")::

    python benchmarks/bench_million.py                          # 10^4, 10^5, 10^6
    python benchmarks/bench_million.py --sizes 1e6 --standardize --lineage sampled

Not a test: CI does not run it (tests/test_bench_million.py runs it at 2,000 records).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import zipfile
from typing import Any

import numpy as np

DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
BIN = os.path.dirname(sys.executable)
TIME = "/usr/bin/time"


def make_data(n: int, path: str, *, seed: int = 0) -> None:
    """``n`` records of ``make_classification`` (64 features, 10 classes), float32, to ``path``."""
    from sklearn.datasets import make_classification

    X, y = make_classification(
        n_samples=n, n_features=64, n_informative=16, n_redundant=8, n_classes=10, n_clusters_per_class=2,
        class_sep=1.0, random_state=seed,
    )
    np.savez(path, X=X.astype(np.float32), y=y.astype(np.int64))


def run_measured(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """``cmd`` as a child; its wall time, exit code, output and peak RSS in MiB.

    The peak is ``/usr/bin/time -f %M``'s when that exists, else ``os.wait4``'s rusage of the
    child. (Linux carries a process's peak RSS across ``exec``: a child forked from a large
    parent starts with the parent's peak, which is why this parent stays small -- the data set is
    generated in a child of its own -- and why ``/usr/bin/time``, a small process, is preferred.)"""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as fo, tempfile.TemporaryFile() as fe, tempfile.NamedTemporaryFile("r") as ft:
        timed = os.access(TIME, os.X_OK)
        p = subprocess.Popen([TIME, "-f", "%M", "-o", ft.name, *cmd] if timed else cmd, stdout=fo, stderr=fe, env=env)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read().decode(), fe.read().decode()
        kib = int(ft.read().split()[-1]) if timed else ru.ru_maxrss
    return {"wall": wall, "rc": p.returncode, "out": out, "err": err, "rss_mib": kib / 1024}


def _check(name: str, r: dict[str, Any], ok: tuple[int, ...] = (0,)) -> None:
    if r["rc"] not in ok:
        raise SystemExit(f"{name} exited {r['rc']}:\n{r['out'][-2000:]}\n{r['err'][-2000:]}")


def one_size(n: int, work: str, args: argparse.Namespace) -> dict[str, Any]:
    d = os.path.join(work, f"n{n}")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    data, ws, bundle = os.path.join(d, "syn.npz"), os.path.join(d, "ws"), os.path.join(d, "b.vmu")
    t0 = time.perf_counter()
    # In a child: the parent stays small, so the children it forks start small (run_measured).
    subprocess.run([sys.executable, __file__, "--make-data", str(n), data, "--seed", str(args.seed)], check=True)
    gen = time.perf_counter() - t0
    vmu, verify = [os.path.join(BIN, "vmu")], [os.path.join(BIN, "vmu-verify")]
    env = dict(os.environ, PYTHONHASHSEED="0")
    row: dict[str, Any] = {"records": n, "generate_s": gen}

    init = [*vmu, "init", ws, "--data", data, "--shards", str(args.shards), "--slices", str(args.slices),
            "--epochs", str(args.epochs), *args.init_args]
    if args.standardize:
        init.append("--standardize")
    cmds: list[tuple[str, list[str]]] = [("init", init), ("train", [*vmu, "train", ws])]
    for name, cmd in cmds:
        r = run_measured(cmd, env)
        _check(name, r)
        row[name] = r
        print(f"  {n:>9,} {name:<7} {r['wall']:7.1f} s {r['rss_mib']:7.0f} MiB", flush=True)
    m = re.search(r"test accuracy ([0-9.]+%|n/a)", row["train"]["out"])
    row["accuracy"] = m.group(1) if m else "?"
    key = re.search(r"note verifier key: (\S+)", row["init"]["out"])
    assert key, row["init"]["out"]
    ids = subprocess.run([*vmu, "status", ws, "--ids", "train"], capture_output=True, text=True, check=True).stdout.split()
    victim = ids[len(ids) // 3]
    lineage = ["--lineage", args.lineage] if args.lineage != "complete" else []
    for name, cmd in [
        ("forget", [*vmu, "forget", ws, "--ids", victim]),
        ("bundle", [*vmu, "bundle", ws, "--out", bundle, *lineage]),
        ("verify", [*verify, bundle, "--no-residual", "--trust-key", key.group(1), *lineage]),
    ]:
        r = run_measured(cmd, env)
        _check(name, r, (0, 1, 2, 3) if name == "verify" else (0,))  # a refused bundle is a result too
        row[name] = r
        print(f"  {n:>9,} {name:<7} {r['wall']:7.1f} s {r['rss_mib']:7.0f} MiB", flush=True)
    db = os.path.join(ws, "state.db")
    row["db_bytes"] = os.path.getsize(db) + sum(
        os.path.getsize(db + s) for s in ("-wal", "-shm") if os.path.exists(db + s))
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row["steps"] = _count_steps(con)
    finally:
        con.close()
    row["bundle_bytes"] = os.path.getsize(bundle)
    with zipfile.ZipFile(bundle) as z:
        manifest = json.loads(z.read("manifest.json"))
        row["bundle_without_ckpt"] = sum(i.compress_size for i in z.infolist() if not i.filename.startswith("checkpoints/"))
        parts: dict[str, int] = {}
        for i in z.infolist():  # compressed bytes by kind of member
            kind = i.filename.split("/")[0] if "/" in i.filename else i.filename
            parts[kind] = parts.get(kind, 0) + i.compress_size
        row["bundle_parts"] = parts
    row["disclosure"] = manifest.get("disclosure") or {}
    verdict = [x for x in row["verify"]["out"].splitlines() if x.startswith("verdict:")]
    row["verdict"] = f"exit {row['verify']['rc']}: " + (verdict[0] if verdict else row["verify"]["err"].strip()[-300:])
    if not args.keep:
        shutil.rmtree(d, ignore_errors=True)
    return row


def _count_steps(con: sqlite3.Connection) -> int:
    """Logged step entries (the log's ``entries`` table, kind ``step``), or 0 when not found."""
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    for t in ("log_entries",):
        if t in tables:
            cols = {r[1] for r in con.execute(f"PRAGMA table_info({t})")}
            if "kind" in cols:
                return int(con.execute(f"SELECT COUNT(*) FROM {t} WHERE kind='step'").fetchone()[0])  # noqa: S608 - t from a fixed list
    return 0


def table(rows: list[dict[str, Any]]) -> str:
    cmds = ("init", "train", "forget", "bundle", "verify")
    head = (["records"] + [f"{c} s / MiB" for c in cmds]
            + ["state.db B/record", "B/step", "bundle MB (no ckpt)", "opened (train/deleted/audit)", "verify / forget", "accuracy"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cells(r: dict[str, Any]) -> list[str]:
        d = r["disclosure"]
        return ([f"{r['records']:,}"] + [f"{r[c]['wall']:.1f} / {r[c]['rss_mib']:.0f}" for c in cmds]
                + [f"{r['db_bytes'] / r['records']:.0f}", f"{r['db_bytes'] / max(r['steps'], 1):.0f}",
                   f"{r['bundle_bytes'] / 1e6:.1f} ({r['bundle_without_ckpt'] / 1e6:.1f})",
                   f"{d.get('training', '?')}/{d.get('deleted', '?')}/{d.get('audit', '?')}"
                   + (f" ({100 * d['training_fraction']:.2f}%)" if "training_fraction" in d else ""),
                   f"{r['verify']['wall'] / r['forget']['wall']:.2f}x", r["accuracy"]])
    for r in rows:
        lines.append("| " + " | ".join(cells(r)) + " |")
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        g = [f"x{b['records'] / a['records']:.0f}"] + [
            f"x{b[c]['wall'] / a[c]['wall']:.1f} / x{b[c]['rss_mib'] / a[c]['rss_mib']:.1f}" for c in cmds]
        g += [f"x{(b['db_bytes'] / b['records']) / (a['db_bytes'] / a['records']):.2f}",
              f"x{(b['db_bytes'] / max(b['steps'], 1)) / (a['db_bytes'] / max(a['steps'], 1)):.1f}",
              f"x{b['bundle_bytes'] / a['bundle_bytes']:.1f}",
              f"x{(b['disclosure'].get('training') or 1) / (a['disclosure'].get('training') or 1):.1f}",
              "", ""]
        lines.append("| growth " + "| " + " | ".join(g) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", type=lambda s: int(float(s)), default=list(DEFAULT_SIZES))
    ap.add_argument("--shards", type=int, default=5)
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--standardize", action="store_true", help="vmu init --standardize")
    ap.add_argument("--lineage", default="complete", choices=("complete", "sampled"),
                    help="vmu bundle / vmu-verify --lineage (default complete)")
    ap.add_argument("--init-arg", dest="init_args", action="append", default=[],
                    help="one more argument for vmu init (repeatable), e.g. --init-arg=--lr=0.01")
    ap.add_argument("--work", help="working directory (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep each size's workspace and bundle")
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    ap.add_argument("--make-data", nargs=2, metavar=("N", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.make_data:
        make_data(int(args.make_data[0]), args.make_data[1], seed=args.seed)
        return 0
    work = args.work or tempfile.mkdtemp(prefix="bench_million.")
    os.makedirs(work, exist_ok=True)
    flags = " ".join(a for a in (["--standardize"] if args.standardize else []) + args.init_args)
    print(f"bench_million: shards {args.shards} x slices {args.slices}, epochs {args.epochs}, lineage {args.lineage}"
          f"{', init ' + flags if flags else ''}; work dir {work}", flush=True)
    rows = []
    try:
        for n in args.sizes:
            rows.append(one_size(n, work, args))
    finally:
        if not args.work and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(table(rows))
    for r in rows:
        print(f"{r['records']:,}: {r['verdict']}")
        parts = ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sorted(r["bundle_parts"].items(), key=lambda kv: -kv[1]))
        print(f"{r['records']:,}: bundle members (compressed): {parts}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{k: ({kk: vv for kk, vv in v.items() if kk not in ("out", "err")} if isinstance(v, dict) else v)
                        for k, v in r.items()} for r in rows], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
