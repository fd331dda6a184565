"""The verification algorithm: the numbered checklist of specs/09-verification.md.

Steps (the same numbers appear in the spec, in the code below and in the test names):

 1. archive            the file is a safe, readable zip archive
 2. manifest           manifest type and version, member list, member SHA-256 digests
 3. members            every member parses (key, head, envelopes, log runs, openings, checkpoints)
 4. trust              the signing key is the pinned key (or the bundle's own key, with a warning)
 5. final-head         the final signed tree head verifies under the key and the origin
 6. transcripts        every deletion transcript's DSSE signature verifies; its statement parses
 7. tree-heads         heads before/after each request verify; consistency before -> after -> final;
                       requests are 1..N in order
 8. transcript-proofs  every entry a transcript discloses is included under its head_after
 9. log-runs           every disclosed run of entries is included under the final head
10. commitments        commit block: config, slice trees, data-set root, audit set, initial checkpoints
11. deletion-claims    every slice claim is the current entry of the shard's slice lineage (commit
                       block, then each request's re-commit block); deleted records were in their
                       old slices, as the committed assignment places them; re-committed slices are
                       the old ones minus exactly the deleted records; every deleted key is absent
                       from every shard's current slices; held-out records are committed test or
                       audit records, absent from every current slice of every shard
12. ordering           rollback checkpoint of the current lineage, before the first use of each record
13. schedule           every lineage's checkpoints and steps follow the committed SISA schedule
14. clean-manifests    no retraining step uses a record deleted by this or an earlier request, and
                       every disclosed step (retraining and original training) trains on its
                       committed batch: the stage's slice records (disclosed, rebuilt to the logged
                       roots) in the order the committed seed gives
15. models             model entries chain; final constituent weights match the final model
16. openings           openings match their commitments, the request digests and the audit root
17. sampling           the deletion lineage of every retrained shard (complete) and the verifier's own
                       sample of the other segments (k from the verifier's policy, never the
                       manifest) are fully disclosed
18. replay             replaying every segment of step 17 reproduces its logged end checkpoint
19. residual           deleted records look like never-seen records (membership inference with a
                       positive control; canaries with --canary); inconclusive never counts as a pass

This module is the runner: it calls the steps in the order above, each a function of the
module for its group (``_steps_input`` 1-4, ``_steps_log`` 5-9, ``_steps_claims`` 10-11,
``_steps_schedule`` 12-14, ``_steps_models`` 15-16, ``_steps_replay`` 17-18,
``_steps_residual`` 19), on the shared state of ``_state`` (:class:`Verification`). The proof
checks never import torch; steps 18 and 19 import :mod:`verifier._replay` /
:mod:`verifier._models` (and so torch) lazily, only when they run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from verifiable_mu._errors import InternalError, InvalidBundle, MalformedInput, VmuError
from verifiable_mu._seeds import step_seed

from ._state import ESCAPE_FRACTIONS, NAMES, STEPS, CheckResult, ExpectedHead, Step, Verification, VerifyOptions
from ._steps_claims import step_10, step_11
from ._steps_input import step_01, step_02, step_03, step_03_large, step_04
from ._steps_log import step_05, step_06, step_07, step_08, step_09
from ._steps_models import step_15, step_16
from ._steps_replay import step_17, step_18
from ._steps_residual import step_19
from ._steps_schedule import step_12, step_13, step_14

__all__ = ["ESCAPE_FRACTIONS", "STEPS", "CheckResult", "ExpectedHead", "Verification", "VerifyOptions", "step_seed", "verify"]

#: The steps in the spec's order. A step listed twice runs in parts, and its result is final with
#: its last part: step 3 parses the signed members first, and the large members only once steps
#: 4-6 verified the signatures on them.
_ORDER: tuple[tuple[int, Step], ...] = (
    (1, step_01),
    (2, step_02),
    (3, step_03),
    (4, step_04),
    (5, step_05),
    (6, step_06),
    (3, step_03_large),
    (7, step_07),
    (8, step_08),
    (9, step_09),
    (10, step_10),
    (11, step_11),
    (12, step_12),
    (13, step_13),
    (14, step_14),
    (15, step_15),
    (16, step_16),
    (17, step_17),
    (18, step_18),
    (19, step_19),
)
_DEFAULT_OPTIONS = VerifyOptions()


def _out_of_memory(step: int, e: BaseException) -> InvalidBundle:
    """An allocation the bundle asked for failed: unusable input (exit 2), never an internal error.
    The bounds of specs/09 ("Resource bounds") keep honest and hostile bundles below them; this
    is the last line for a machine with less memory than they assume."""
    what = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
    return InvalidBundle(f"{NAMES[step]} ran out of memory on this bundle ({what}); "
                         "the bundle asks for more memory than this machine can give")


def _is_oom(e: BaseException) -> bool:
    """MemoryError; torch's CPU allocator failing (a RuntimeError naming the allocation); or a
    library (torch, numpy) that cannot be mapped into the address space left (an ImportError)."""
    if isinstance(e, MemoryError):
        return True
    msg = str(e)
    if isinstance(e, RuntimeError):
        return "DefaultCPUAllocator" in msg or "can't allocate memory" in msg or "not enough memory" in msg
    return isinstance(e, ImportError) and ("failed to map segment" in msg or "Cannot allocate memory" in msg)


class _CallerError(Exception):
    """An exception raised by a callback of the caller of :func:`verify` (``on_result``,
    ``on_progress``): it is the caller's, so :func:`verify` raises it again as it was (a closed
    pipe, Ctrl-C), never turns it into a verdict."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _guarded(fn: Callable[[Any], None] | None) -> Callable[[Any], None] | None:
    if fn is None:
        return None

    def call(arg: Any) -> None:
        try:
            fn(arg)
        except Exception as e:
            raise _CallerError(e) from e

    return call


def _run(v: Verification, step: int, fn: Step) -> bool:
    """Run one step (or part of one) and append its result; False if it failed."""
    t0 = time.perf_counter()
    try:
        try:
            outcome = fn(v)
        except (_CallerError, VmuError):
            raise
        except Exception as exc:
            if _is_oom(exc):
                raise _out_of_memory(step, exc) from exc
            raise InternalError.wrap(exc) from exc  # no documented error covers it: a bug, not a verdict
    except VmuError as e:
        e.at_step(step, NAMES[step])
        status = "error" if isinstance(e, (MalformedInput, InternalError)) else "fail"
        v.results.append(CheckResult(step, NAMES[step], status, str(e), time.perf_counter() - t0))
        v.failure, v.failed_step = e, step
        return False
    status, detail = outcome or ("pass", "")
    v.results.append(CheckResult(step, NAMES[step], status, detail, time.perf_counter() - t0))
    return True


def _emit(v: Verification) -> None:
    """Hand the listener every final result that follows the last one handed over, in step order
    (step 3 becomes final only after steps 4-6, so 4-6 wait for it)."""
    if v.listener is None:
        return
    have = {r.step: r for r in v.results}
    while v.emitted + 1 in have:
        v.emitted += 1
        v.listener(have[v.emitted])


def verify(
    source: str | bytes,
    options: VerifyOptions = _DEFAULT_OPTIONS,
    *,
    on_result: Callable[[CheckResult], None] | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> Verification:
    """Run every step on the bundle at ``source`` (a path or the bundle's bytes).

    Never raises, whatever the input: the outcome is in the returned object (``exit_code``,
    ``verdict``, ``results``, ``failure``). A documented error is a rejection (exit 1,
    :class:`VerificationFailed`) or unusable input (exit 2, :class:`MalformedInput`); any other
    exception in a step is a bug, reported as :class:`InternalError` at that step (exit 70,
    verdict ``internal-error``). Only what the callbacks themselves raise (and
    ``KeyboardInterrupt``) propagates. ``on_result`` (optional) is called with each step's
    result in step order as soon as it is final (``vmu-verify`` prints them as they come);
    ``on_progress`` (optional) with a short line while step 18 replays a segment or step 19
    starts a phase.
    """
    v = Verification(options=options, listener=_guarded(on_result), progress=_guarded(on_progress))
    try:
        return _verify(v, source)
    except _CallerError as e:
        raise e.error from e.error.__cause__
    except Exception as bug:  # outside every step (the runner itself): still a verdict, exit 70
        err = InternalError.wrap(bug, "the verifier's runner")
        err.__cause__ = bug
        v.failure, v.failed_step = err, max((r.step for r in v.results), default=1)
        return v


def _verify(v: Verification, source: str | bytes) -> Verification:
    t0 = time.perf_counter()
    v.source = source
    last_part = {n: i for i, (n, _) in enumerate(_ORDER)}
    held: dict[int, CheckResult] = {}  # the result of a step's earlier parts, until its last part runs
    started: dict[int, float] = {}
    for i, (step, fn) in enumerate(_ORDER):
        started.setdefault(step, time.perf_counter() - t0)
        ok = _run(v, step, fn)
        if step in held:
            v.results[-1].seconds += held.pop(step).seconds
        if ok and i < last_part[step]:
            held[step] = v.results.pop()
        _emit(v)
        if not ok:
            break
    total = time.perf_counter() - t0
    # The report's phases: the proof checks (steps 1-17), the replay (step 18), and the whole.
    v.timings["proof_checks_s"] = started.get(18, total)
    if 19 in started:
        v.timings["replay_s"] = started[19] - started[18]
    v.timings["total_s"] = total
    v.results += held.values()  # stopped before a step's last part: what its parts so far found
    done = {r.step for r in v.results}
    for n, name, _ in STEPS:
        if n not in done:
            v.results.append(CheckResult(n, name, "skipped", "not run: an earlier step failed"))
    v.results.sort(key=lambda r: r.step)
    _emit(v)
    return v
