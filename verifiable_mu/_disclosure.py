"""What a bundle discloses, summarised the same way by the prover (its manifest, ``vmu bundle``'s
output) and by the verifier (its report, computed from the openings it actually read).

A bundle opens three kinds of records (specs/08 section 4), each because a check needs it:

* the **deleted** records, features and labels included: the residual tests (step 19) score the
  deleted records themselves, and step 16 ties each to its commitment;
* the **audit** records (never trained on): the residual tests' reference population;
* the **training** records the replayed segments' batches use (the deletion lineage and the
  sampled segments): replay (step 18) needs them. Step 16 rejects an opening no check needs.

The fraction of the training set opened grows with the replay coverage: more segments replayed
is more assurance and more disclosure (README, "Confidential bundles").
"""

from __future__ import annotations

from typing import Any

__all__ = ["WHY", "disclosure_line", "disclosure_summary", "replay_records"]

WHY = {
    "deleted": "the residual tests (step 19) score the deleted records themselves, so their features and labels "
               "are disclosed",
    "audit": "never trained on: the residual tests' reference population",
    "training": "the records the replayed segments' batches use (step 18 replays them)",
}


def replay_records(mode: str, lineage: set[bytes], sampled: set[bytes], deleted: set[bytes]) -> dict[str, Any]:
    """The training records the replayed segments open, by the kind of replay that needs them:
    ``lineage`` (segments of the deletion lineage, ``lineage_mode`` complete or sampled) and
    ``sampled`` (the uniform draws, not counting records a lineage segment opens already); the
    deleted records are counted apart (they are opened for the residual tests anyway)."""
    lin = lineage - deleted
    return {"lineage_mode": mode, "lineage": len(lin), "sampled": len(sampled - deleted - lin)}


def disclosure_summary(
    deleted: int, audit: int, training: int, n_train: int, replay: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The disclosure summary (one JSON object; counts of opened records by kind; ``replay``: the
    training records by kind of replay, from :func:`replay_records`, when known)."""
    return {
        **({"replay": dict(replay)} if replay is not None else {}),
        "deleted": deleted,
        "audit": audit,
        "training": training,
        "train_records": n_train,
        "training_fraction": round(training / n_train, 6) if n_train else 0.0,
        "deleted_features": deleted > 0,
        "why": dict(WHY),
    }


def disclosure_line(d: dict[str, Any]) -> str:
    """The summary as one line for people."""
    return (
        f"disclosed: {d['deleted']} deleted record(s)"
        + (" with their features (the residual tests score them)" if d["deleted_features"] else "")
        + f", {d['audit']} audit records (never trained on), {d['training']} training records "
        f"({100 * d['training_fraction']:.1f}% of the {d['train_records']} committed: the replayed segments' batches)"
        + (f"; replay opened {d['replay']['lineage']} for the deletion lineage ({d['replay']['lineage_mode']}) and "
           f"{d['replay']['sampled']} more for the sampled segments" if "replay" in d else "")
    )
