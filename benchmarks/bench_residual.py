"""What the residual-information tests cost next to the retraining of the deletion they check.

Run as a script for the figures specs/10-residual.md quotes::

    python benchmarks/bench_residual.py              # digits, 5 shards x 4 slices, 50 records, 3 seeds

For each seed it trains SISA on digits with the prover, deletes 50 random records of shard 0
(timing ``Workspace.forget``: the retraining plus its transcript), then times, in the same
process and on the same models:

  * the membership-inference tests with the positive control (4 attacks x 2 model sets,
    1000 bootstrap resamples; model evaluation included);
  * the same with 200 resamples;
  * the canary test (20 marked records' trigger on the audit set);

and prints each as a ratio to the retraining time. pytest-benchmark entry points
(``pytest benchmarks/bench_residual.py``) time the same operations and record the ratio in
``extra_info``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


from verifiable_mu._canary import Trigger  # noqa: E402
from verifier._canary import canary_test  # noqa: E402
from verifier._residual import residual_tests  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from test_residual import N_DELETED, digits_run, softmax_of  # noqa: E402


def setup(seed: int, root: str) -> dict[str, Any]:
    """The residual tests' own digits run (tests/test_residual.py: train, delete 50 random
    records of shard 0, time the deletion), as keyword arguments for the tests."""
    run = digits_run(seed, root)
    kw = {**run["kw"], "post_models": run["post"]}
    return {
        "forget_s": run["forget_s"],
        "kw": kw,
        "canary": dict(trigger=Trigger.corner(n_features=64, target=0), post_models=run["post"], pre_models=run["pre"],
                       marked_shards=[0], query_X=kw["audit_X"], query_y=kw["audit_y"]),
    }


def sweep(n: int, root: str) -> int:
    """Honest deletions over seeds 0..n-1, and the same runs with the pre-deletion models passed
    off as post-deletion ones (a prover that skips retraining)."""
    from verifier._canary import clopper_pearson_upper

    honest: dict[str, int] = {"pass": 0, "fail": 0, "inconclusive": 0}
    caught = powered = 0
    for seed in range(n):
        s = setup(seed, root)
        h = residual_tests(n_boot=20, **s["kw"])
        honest[h.verdict] += 1
        if h.control_detected:
            powered += 1
            c = residual_tests(n_boot=20, **{**s["kw"], "post_models": s["kw"]["pre_models"]})
            caught += c.verdict == "fail"
        shutil.rmtree(os.path.join(root, f"ws{seed}"), ignore_errors=True)
        print(f"seed {seed}: {h.verdict}", flush=True)
    lo = 1 - clopper_pearson_upper(n - honest["fail"], n, 0.975) if honest["fail"] else 0.0
    hi = clopper_pearson_upper(honest["fail"], n, 0.975)
    print(f"honest deletions over {n} seeds: {honest}")
    print(f"  false-alarm rate {honest['fail'] / n:.3f} (95% CI {lo:.3f}-{hi:.3f}); alpha = 0.05")
    print(f"  positive control detects: {powered} / {n}")
    print(f"  prover that skips retraining: 'fail' in {caught} of the {powered} runs whose control detects")
    return 0


# --- the false-alarm and power grid (issue 15) -------------------------------------------------
#
# Shortcut, and why it does not bias the rates. SISA's honest post-deletion state of a shard is the
# shard trained, from the rollback checkpoint on, without the deleted records; the prover's training
# is a deterministic function of (records, seeds). ``World`` trains each shard exactly on the
# prover's schedule (verifiable_mu.training.sgd_step, the prover's step seeds and epoch orders, the
# same model, initialisation, hyper-parameters, data split fractions and prover._sisa.assign), but
# in memory, without commitments, log or checkpoints on disk, and keeps every stage's state so that
# a deletion rolls back and retrains exactly as Workspace.forget does (new generation per request,
# so a split deletion gets its own SGD noise, as with the prover). What is reused, and why that is
# sound:
#   * one trained SISA model per (shards, seed) serves every cell of that shard count: the
#     pre-deletion models of every cell, the untouched shards' post-deletion models, and the
#     cheating prover's "post" models. Runs of one cell use different seeds, hence independently
#     trained models and data splits: the per-cell rate is a binomial proportion of independent
#     runs. Cells of one seed are correlated with each other, which widens nothing per cell and
#     biases no cell's rate.
#   * the cheater that skips retraining is the pre-deletion model passed off as the post-deletion
#     one (tests/conftest_verifier.py's skip_retraining does exactly that to a bundle).
#   * the deleted records of a cell are drawn with the cell's own generator from the seed's
#     records, independently of the models.

GRID_SHARDS = (3, 4, 5, 10)
GRID_SIZES = (1, 4, 20, 100)
GRID_DRAWS = ("uniform", "class", "shard")
GRID_REQUESTS = ("one", "split")
DEFAULT_CELL = (5, 50, "shard", "one")  # the old acceptance setting: 50 random records of one shard
SLICES, EPOCHS = 4, 20
DECIDING = ("lira", "rmia")  # the test before issue 15 decided on these two
# The grid runs lira, rmia and the deciding own-shard test (loss and confidence never decide), 20 bootstrap
# resamples (they only size the reported intervals and the power rule between pass and
# inconclusive) and 999 re-labellings (the Monte Carlo p-value is valid for any number; the
# verifier's 9999 only sharpen it): a "fail" is decided exactly as by the verifier.
FAST: dict[str, Any] = {"attacks": ("lira", "rmia", "shard"), "n_boot": 20, "n_perm": 999}
# Outside the default cell only the deciding test runs (lira and rmia are reported, never decide).
FASTEST: dict[str, Any] = {**FAST, "attacks": ("shard",)}


class World:
    """SISA on digits for one (shards, seed), trained in memory on the prover's schedule."""

    def __init__(self, shards: int, seed: int) -> None:
        import torch

        from prover._commit import init_seed as _init_seed
        from prover._config import WorkspaceConfig
        from prover._data import load_digits_dataset
        from prover._sisa import assign, stage_epochs
        from verifiable_mu._records import record_key
        from verifiable_mu.training import Hyper, ModelSpec, build_model, zero_momentum

        ds = load_digits_dataset()
        cfg = WorkspaceConfig(seed=seed, shards=shards, slices=SLICES, epochs=EPOCHS)
        self.seed, self.S = seed, shards
        self.X, self.y = ds.X, ds.y
        n = len(ds.y)
        perm = np.random.default_rng([seed, 0x5EED]).permutation(n)  # Workspace._split
        n_test, n_audit = int(round(n * cfg.test_fraction)), int(round(n * cfg.audit_fraction))
        self.audit = np.sort(perm[n_test : n_test + n_audit])
        self.train = np.sort(perm[n_test + n_audit :])
        sh, sl = assign([record_key(ds.ids[i]) for i in self.train], seed=seed, shards=shards, slices=SLICES)
        self.shard = np.full(n, -1)
        self.slice = np.full(n, -1)
        self.shard[self.train], self.slice[self.train] = sh, sl
        self.spec = ModelSpec(name=cfg.model, n_features=64, n_classes=10, input_shape=ds.input_shape, hidden=cfg.hidden)
        self.hyper = Hyper.from_json(cfg.hyper_json())
        self.epochs = stage_epochs(EPOCHS, SLICES)
        self.Xt, self.yt = torch.from_numpy(self.X), torch.from_numpy(self.y.astype(np.int64))
        # stage states per shard: stage -> (step, params, momentum); stage 0 is the initial model
        self.pre: list[Any] = []
        self.stages: list[dict[int, Any]] = []
        for s in range(shards):
            m = build_model(self.spec, init_seed=_init_seed(seed, s))
            states = {0: (0, _copy(m.state_dict()), zero_momentum(m))}
            self._run(s, 0, states, set(), 1)
            self.stages.append(states)
            self.pre.append(self._model(states[SLICES]))

    def _model(self, state: Any) -> Any:
        from verifiable_mu.training import build_model

        m = build_model(self.spec, init_seed=0)
        m.load_state_dict(state[1])
        m.eval()
        return softmax_of(m)

    def _run(self, s: int, generation: int, states: dict[int, Any], gone: set[int], first: int) -> None:
        """Train shard ``s`` stages ``first..SLICES`` from ``states[first - 1]`` without ``gone``."""
        from verifiable_mu._seeds import epoch_order, step_seed
        from verifiable_mu.training import build_model, sgd_step

        step, params, mom = states[first - 1]
        m = build_model(self.spec, init_seed=0)
        m.load_state_dict(params)
        mom = {k: v.clone() for k, v in mom.items()}
        live = self.train[(self.shard[self.train] == s) & ~np.isin(self.train, list(gone))]
        for stage in range(first, SLICES + 1):
            rows = live[self.slice[live] < stage]
            for epoch in range(self.epochs):
                order = rows[epoch_order(self.seed, shard=s, generation=generation, stage=stage, epoch=epoch, n=len(rows))]
                for b in range(0, len(rows), self.hyper.batch_size):
                    idx = order[b : b + self.hyper.batch_size]
                    seed = step_seed(self.seed, shard=s, generation=generation, stage=stage, epoch=epoch, step=step)
                    sgd_step(m, mom, self.Xt[idx], self.yt[idx], self.hyper, seed)
                    step += 1
            states[stage] = (step, _copy(m.state_dict()), {k: v.clone() for k, v in mom.items()})

    def draw(self, n: int, how: str, rng: np.random.Generator) -> np.ndarray:
        """Rows of ``n`` training records: uniformly, of one class, or of one shard."""
        pool = self.train
        if how == "class":
            pool = pool[self.y[pool] == rng.integers(0, 10)]
        elif how == "shard":
            pool = pool[self.shard[pool] == rng.integers(0, self.S)]
        return np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False))

    def forget(self, requests: Sequence[np.ndarray]) -> list[Any]:
        """The honest post-deletion constituents after the requests, in order (each request rolls
        the affected shards back to the stage before its earliest slice, a new generation)."""
        states = [dict(st) for st in self.stages]
        gen = [0] * self.S
        gone: set[int] = set()
        for req in requests:
            gone |= {int(i) for i in req}
            for s in sorted({int(self.shard[i]) for i in req}):
                gen[s] += 1
                first = min(int(self.slice[i]) for i in req if self.shard[i] == s) + 1
                self._run(s, gen[s], states[s], gone, first)
        return [self._model(states[s][SLICES]) if gen[s] else self.pre[s] for s in range(self.S)]

    def inputs(self, deleted: np.ndarray) -> dict[str, Any]:
        kept = np.setdiff1d(self.train, deleted)
        kept = np.random.default_rng([self.seed, 7]).choice(kept, 200, replace=False)
        return dict(
            pre_models=self.pre, shard_of_deleted=self.shard[deleted], deleted_X=self.X[deleted], deleted_y=self.y[deleted],
            audit_X=self.X[self.audit], audit_y=self.y[self.audit], retained_X=self.X[kept], retained_y=self.y[kept],
            retained_shard=self.shard[kept], seed=self.seed,
        )


def _copy(sd: Any) -> Any:
    return {k: v.clone() for k, v in sd.items()}


def _split(rows: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Two requests: 1 + 3 for four records (the issue's case), two halves from 20 on."""
    rows = rng.permutation(rows)
    if len(rows) < 2:
        return [rows]
    if len(rows) <= 4:
        return [rows[:1], rows[1:]]
    return [np.sort(p) for p in np.array_split(rows, 2)]


def old_residual_tests() -> Any:
    """``residual_tests`` as it was before issue 15 (commit e416539), for the side-by-side power
    table; None outside a git checkout."""
    import importlib.util
    import subprocess

    root = os.path.join(os.path.dirname(__file__), "..")
    try:
        src = subprocess.run(["git", "-C", root, "show", f"{OLD_COMMIT}:verifier/_residual.py"], capture_output=True,
                             check=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    spec = importlib.util.spec_from_loader("_residual_before_issue_15", loader=None)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    exec(compile(src, "_residual_before_issue_15", "exec"), mod.__dict__)  # noqa: S102 - our own source at a commit
    return mod.residual_tests


OLD_COMMIT = "e416539"


def _rate(k: int, n: int) -> str:
    from verifier._canary import clopper_pearson_upper

    lo = 1 - clopper_pearson_upper(n - k, n, 0.975) if k else 0.0
    hi = clopper_pearson_upper(k, n, 0.975)
    return f"{k:3d}/{n:<3d} {k / n:6.1%} [{lo:5.1%},{hi:5.1%}]"


def excess_over_alpha(cells: Sequence[tuple[int, int]], alpha: float = 0.05) -> tuple[float, int, float] | None:
    """Is any cell's false-alarm rate above ``alpha``? Per cell the exact one-sided binomial
    p-value ``P(X >= k | n, alpha)`` of its ``k`` false alarms in ``n`` runs; returns the smallest,
    the number of cells and the smallest Holm-adjusted one (None without cells).

    This is the question the per-cell data can answer. The bound "upper 95% interval at most
    2 alpha" is not: for a test whose rate is exactly alpha it fails by chance in a cell of 50
    runs with probability 0.92 (one false alarm already puts the bound at 10.6%), of 200 runs
    with probability 0.30 (12 false alarms: 10.25%); only from about 1,000 runs a cell does an
    exact test meet it reliably."""
    from scipy.stats import binom

    from verifier._residual import holm

    if not cells:
        return None
    ps = [float(binom.sf(k - 1, n, alpha)) for k, n in cells]
    return min(ps), len(ps), min(holm(ps))


def grid(runs: int, default_runs: int, shard_counts: Sequence[int], sizes: Sequence[int], budget_s: float,
         old_everywhere: bool = False, also_alpha: float | None = None) -> int:
    """False alarms (honest provers) and detection (provers that skip retraining) per cell, new test
    and the test before issue 15 side by side; with ``also_alpha``, the same runs decided at that
    level too (what a stricter level trades: false alarms against detection)."""
    import collections

    old = old_residual_tests()
    t0 = time.perf_counter()
    # cell -> counters: honest verdicts new, old fails, cheater fails new / old
    C: dict[tuple[Any, ...], collections.Counter[str]] = collections.defaultdict(collections.Counter)
    # one record cannot be split: its "split" cell is its "one" cell
    cells = [(S, n, d, r) for S in shard_counts for n in sizes for d in GRID_DRAWS for r in GRID_REQUESTS
             if n > 1 or r == "one"]
    want = {c: runs for c in cells if runs}
    if DEFAULT_CELL[0] in shard_counts:
        want[DEFAULT_CELL] = default_runs
    seed = 0
    while any(C[c]["runs"] < want[c] for c in want) and time.perf_counter() - t0 < budget_s:
        for S in shard_counts:
            todo = [c for c in want if c[0] == S and C[c]["runs"] < want[c]]
            if not todo:
                continue
            w = World(S, seed)
            for cell in todo:
                _, n, how, req = cell
                rng = np.random.default_rng([seed, n, GRID_DRAWS.index(how), GRID_REQUESTS.index(req)])
                rows = w.draw(n, how, rng)
                post = w.forget(_split(rows, rng) if req == "split" else [rows])
                kw = w.inputs(rows)
                fast = FAST if cell == DEFAULT_CELL else FASTEST
                h = residual_tests(post_models=post, **kw, **fast)
                c = residual_tests(post_models=w.pre, **kw, **fast)
                k = C[cell]
                k["runs"] += 1
                k["h_" + h.verdict] += 1
                k["c_fail"] += c.verdict == "fail"
                if also_alpha is not None:
                    h2 = residual_tests(post_models=post, **kw, **fast, alpha=also_alpha)
                    c2 = residual_tests(post_models=w.pre, **kw, **fast, alpha=also_alpha)
                    k["h2_" + h2.verdict] += 1
                    k["c2_fail"] += c2.verdict == "fail"
                if old is not None and (cell == DEFAULT_CELL or old_everywhere):
                    k["old_h_fail"] += old(post_models=post, n_boot=20, attacks=DECIDING, **kw).verdict == "fail"
                    k["old_c_fail"] += old(post_models=w.pre, n_boot=20, attacks=DECIDING, **kw).verdict == "fail"
        seed += 1
        print(f"seed {seed}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    print(f"{'cell (shards, records, drawn, requests)':40s} | false alarms, new test [95% CI] | pass / inconclusive | "
          f"false alarms before | skip-retraining caught, new | caught before")
    worst = 0.0
    for cell in sorted(want, key=lambda c: (c != DEFAULT_CELL, c)):
        k = C[cell]
        n = k["runs"]
        if not n:
            continue
        from verifier._canary import clopper_pearson_upper

        decides = k["h_pass"] + k["h_fail"]
        if decides:
            worst = max(worst, clopper_pearson_upper(k["h_fail"], n, 0.975))
        both = old is not None and (cell == DEFAULT_CELL or old_everywhere)
        print(f"{str(cell):40s} | {_rate(k['h_fail'], n)} | {k['h_pass']:3d} / {k['h_inconclusive']:3d} | "
              f"{_rate(k['old_h_fail'], n) if both else '-':29s} | {_rate(k['c_fail'], n)} | "
              f"{_rate(k['old_c_fail'], n) if both else '-'}")
    tot = sum(C[c]["h_fail"] for c in want)
    runs_all = sum(C[c]["runs"] for c in want)
    if runs_all:
        print(f"all cells together: false alarms {_rate(tot, runs_all)}")
    print(f"largest upper 95% bound of the false-alarm rate over cells that decide: {worst:.1%} (2 alpha = 10%)")
    excess = excess_over_alpha([(C[c]["h_fail"], C[c]["runs"]) for c in want
                                if C[c]["runs"] and C[c]["h_pass"] + C[c]["h_fail"]])
    if excess is not None:
        print(f"excess over alpha = 5%: smallest one-sided binomial p-value over cells that decide {excess[0]:.3g}, "
              f"Holm-adjusted over {excess[1]} cells {excess[2]:.3g} (small: some cell's rate is above alpha)")
    if also_alpha is not None:
        from verifier._canary import clopper_pearson_upper

        print(f"\nthe same runs decided at alpha = {also_alpha:g}:")
        print(f"{'cell (shards, records, drawn, requests)':40s} | false alarms [95% CI] | pass / inconclusive | "
              f"skip-retraining caught (at alpha = 0.05 beside it)")
        worst2 = 0.0
        for cell in sorted(want, key=lambda c: (c != DEFAULT_CELL, c)):
            k = C[cell]
            n = k["runs"]
            if not n:
                continue
            if k["h2_pass"] + k["h2_fail"]:
                worst2 = max(worst2, clopper_pearson_upper(k["h2_fail"], n, 0.975))
            print(f"{str(cell):40s} | {_rate(k['h2_fail'], n)} | {k['h2_pass']:3d} / {k['h2_inconclusive']:3d} | "
                  f"{_rate(k['c2_fail'], n)} ({_rate(k['c_fail'], n)})")
        print(f"largest upper 95% bound of the false-alarm rate over cells that decide at alpha = {also_alpha:g}: "
              f"{worst2:.1%} (the criterion's bound: 2 x 0.05 = 10%)")
    print(f"{time.perf_counter() - t0:.0f} s, {seed} seeds")
    return 0


def attacks_check(n: int, alpha: float = 0.05) -> int:
    """Issue 14: every attack of the suite over ``n`` honest deletions (5 shards, 50 records of
    one shard, seeds 0..n-1): how often its own p-value is at most alpha on the honest
    post-deletion models (its false alarms, had it decided alone), on the pre-deletion models
    (the positive control) and on a prover that skipped retraining; and its cost as a ratio to
    the retraining it audits (median over the runs, timed side by side in this process)."""
    import collections

    from verifiable_mu.training import build_model
    from verifier._residual import ATTACKS, grad_norm_scores, label_only_scores
    from verifier._shadow import train_shadow_attack

    fa: collections.Counter[str] = collections.Counter()
    ctl: collections.Counter[str] = collections.Counter()
    cost: dict[str, list[float]] = collections.defaultdict(list)
    for seed in range(n):
        w = World(5, seed)
        rng = np.random.default_rng([seed, 50])
        rows = w.draw(N_DELETED, "shard", rng)
        t0 = time.perf_counter()
        post = w.forget([rows])
        retrain = time.perf_counter() - t0
        kw = w.inputs(rows)
        pool_X = np.concatenate([kw["audit_X"], kw["retained_X"]])
        pool_y = np.concatenate([kw["audit_y"], kw["retained_y"]])
        t0 = time.perf_counter()
        shadow = train_shadow_attack(lambda s, w=w: build_model(w.spec, init_seed=s), w.hyper, pool_X, pool_y,
                                     epochs=EPOCHS, seed=seed)
        cost["shadow"].append((time.perf_counter() - t0) / retrain)
        rep = residual_tests(post_models=post, **kw, attacks=ATTACKS, n_boot=20, n_perm=999, shadow=shadow)
        for r in rep.post:
            fa[r.attack] += r.p_value <= alpha
        for r in rep.pre:
            ctl[r.attack] += r.p_value <= alpha
        X = np.concatenate([kw["deleted_X"], kw["audit_X"]])
        y = np.concatenate([kw["deleted_y"], kw["audit_y"]])
        target = np.concatenate([kw["shard_of_deleted"], rng.integers(0, 5, len(kw["audit_y"]))])
        t0 = time.perf_counter()
        label_only_scores(post, X, y, target, seed)
        cost["label"].append((time.perf_counter() - t0) / retrain)
        t0 = time.perf_counter()
        grad_norm_scores(post, X, y, target)
        cost["gradnorm"].append((time.perf_counter() - t0) / retrain)
        print(f"seed {seed}: verdict {rep.verdict}", file=sys.stderr, flush=True)
    print(f"{n} honest deletions (5 shards, {N_DELETED} records of one shard): per attack, runs with p <= {alpha}")
    print("| attack | honest post-deletion models (false alarms alone) | pre-deletion models (control) | cost / retraining |")
    print("|---|---|---|---|")
    for a in ATTACKS:
        c = f"{statistics.median(cost[a]):.3f}" if a in cost else "-"
        print(f"| {a} | {fa[a]}/{n} | {ctl[a]}/{n} | {c} |")
    return 0


def _time(fn: Any, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--sweep", type=int, default=0, metavar="N",
                    help="instead: honest and skipping provers over seeds 0..N-1 (false alarms, control power)")
    ap.add_argument("--grid", action="store_true", help="instead: the false-alarm and power grid (issue 15)")
    ap.add_argument("--attacks", type=int, default=0, metavar="N",
                    help="instead: every attack over N honest deletions (false alarms alone, control, cost; issue 14)")
    ap.add_argument("--runs", type=int, default=50, help="grid: honest runs per cell")
    ap.add_argument("--default-runs", type=int, default=200, help=f"grid: runs of the default cell {DEFAULT_CELL}")
    ap.add_argument("--shards", type=int, nargs="+", default=list(GRID_SHARDS), help="grid: shard counts")
    ap.add_argument("--sizes", type=int, nargs="+", default=list(GRID_SIZES), help="grid: deleted-set sizes")
    ap.add_argument("--old-everywhere", action="store_true",
                    help="grid: run the test before issue 15 in every cell, not only the default one")
    ap.add_argument("--also-alpha", type=float, default=None, metavar="A",
                    help="grid: decide the same runs at level A too (false alarms and detection side by side)")
    ap.add_argument("--budget", type=float, default=3600, help="grid: stop starting new seeds after this many seconds")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    if args.attacks:
        return attacks_check(args.attacks)
    if args.grid:
        return grid(args.runs, args.default_runs, args.shards, args.sizes, args.budget, args.old_everywhere,
                    args.also_alpha)
    root = tempfile.mkdtemp(prefix="vmu-bench-residual-")
    try:
        if args.sweep:
            return sweep(args.sweep, root)
        rows = []
        for seed in range(args.seeds):
            s = setup(seed, root)
            kw, ckw = s["kw"], s["canary"]
            t1000 = _time(lambda kw=kw: residual_tests(n_boot=1000, **kw))
            t200 = _time(lambda kw=kw: residual_tests(n_boot=200, **kw))
            tcan = _time(lambda ckw=ckw: canary_test(**ckw))
            rows.append((s["forget_s"], t1000, t200, tcan))
            print(f"seed {seed}: retraining {s['forget_s']:.3f} s; residual tests {t1000:.3f} s (1000 resamples), "
                  f"{t200:.3f} s (200); canary {tcan:.4f} s")
        med = [statistics.median(c) for c in zip(*rows, strict=True)]
        print(f"median over {args.seeds} seeds (digits, 5 shards x 4 slices, {N_DELETED} deleted records of one shard):")
        print(f"  residual tests / retraining: {med[1] / med[0]:.2f} (1000 resamples), {med[2] / med[0]:.2f} (200)")
        print(f"  canary test / retraining:    {med[3] / med[0]:.3f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


# --- pytest-benchmark ------------------------------------------------------------------------


def test_residual_tests_vs_retraining(benchmark: Any, tmp_path: Any) -> None:
    s = setup(0, str(tmp_path))
    rep = benchmark(lambda: residual_tests(n_boot=1000, **s["kw"]))
    assert rep.verdict in ("pass", "inconclusive")
    benchmark.extra_info["retraining_s"] = s["forget_s"]
    benchmark.extra_info["ratio_to_retraining"] = benchmark.stats.stats.median / s["forget_s"]


def test_canary_vs_retraining(benchmark: Any, tmp_path: Any) -> None:
    s = setup(0, str(tmp_path))
    benchmark(lambda: canary_test(**s["canary"]))
    benchmark.extra_info["retraining_s"] = s["forget_s"]
    benchmark.extra_info["ratio_to_retraining"] = benchmark.stats.stats.median / s["forget_s"]


if __name__ == "__main__":
    raise SystemExit(main())
