"""What a published decision records so that it can be decided again: its input, its policy.

`baton replay` (``processors.replay``) re-decides a run's history with the pure engine; for
that to be exact the audit must hold everything the engine read:

* **the input**: every decision carries the event it was decided from (``Decision.input``),
  as the worker parsed it: the event model's fields without the unset ones, as compact JSON.
  Generic over the event models (a field added to an event is recorded with no change here);
  bounded, because every field of an event is (a parsed event holds no unknown keys);
* **the policy**: each worker publishes a ``policy_in_force`` control record whenever it
  starts deciding under a policy (at start, and after each applied update) holding the
  policy document; its id is derived from the policy's version, so every worker's copy of
  it is one row of the audit;
* **re-emissions** are flagged (``Decision.reemitted``) and not stored by the sink: the
  audit keeps the original copy, in its original place (``FINAL`` and ``baton trace``); a
  re-emitted copy holds the input it answers (a client's retry), for the client to match.

:class:`Recorded` is such a decision read back, the columns replay needs (REPLAY_COLUMNS).

The run's state keeps its decisions *without* the input (a retry's reply needs none, and a
run's state and memory must not grow by its inputs); the published copy holds it, and the
chain hash covers it. Those copies are made in ``processors.recorded_copies`` (compiled; its
``input_text``, ``publishable`` and ``keep_links`` are re-exported here).
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

import orjson

from baton.processors.recorded_copies import input_text, keep_links, publishable
from baton.schemas.decision import (
    Decision,
    Outcome,
    Phase,
    Reason,
    decision_id_for,
)
from baton.schemas.policy import Policy

__all__ = [
    "POLICY_RECORD_RUN",
    "REPLAY_COLUMNS",
    "Recorded",
    "input_text",
    "keep_links",
    "policy_document",
    "policy_in_force",
    "policy_record_id",
    "publishable",
]

#: the run id and tenant of records that belong to no run (as the engine's control records)
POLICY_RECORD_RUN = "*"


class Recorded(NamedTuple):
    """One recorded decision, as replay needs it (an audit row in REPLAY_COLUMNS order).

    A tuple: a reader's row becomes one without a copy (``tuple.__new__(Recorded, row)``;
    a frozen dataclass cost four times more per row, at ~60k rows/s a share of the replay).
    ``decided_at`` is an aware time (UTC).
    """

    run_id: str
    decision_id: str
    outcome: str
    reason: str
    detail: str | None
    policy_version: str
    decided_at: datetime
    worker: str | None
    partition: int | None
    offset: int | None
    input: str | None
    chain_prev: str | None
    chain_hash: str | None

    @classmethod
    def of(cls, d: Decision) -> Recorded:
        """A published decision as its audit row would read back (``decided_at`` set)."""
        assert d.decided_at is not None
        return cls(
            d.run_id, d.decision_id, d.outcome, d.reason, d.detail, d.policy_version,
            d.decided_at, d.worker, d.partition, d.offset, d.input, d.chain_prev, d.chain_hash,
        )  # fmt: skip


#: the audit columns replay reads, in :class:`Recorded`'s order
REPLAY_COLUMNS: tuple[str, ...] = Recorded._fields


def policy_document(policy: Policy) -> str:
    """The policy as the JSON document its version hashes (Policy.model_validate reads it)."""
    return orjson.dumps(policy.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS).decode()


def policy_record_id(version: str) -> str:
    return decision_id_for(POLICY_RECORD_RUN, f"policy_in_force:{version}", Phase.CONTROL)


def policy_in_force(
    policy: Policy, now: datetime, worker: str | None, seal_key: bytes = b""
) -> Decision:
    """The control record of the policy a worker decides under from ``now`` on, sealed with
    ``seal_key`` (processors/control_seal): a restart reads the policy in force from sealed
    records alone, where the workers sealed them (a forged record whose document did not hash
    to its version refused every restart, and one naming another policy was said to be the
    policy in force: session 42)."""
    from baton.processors.control_seal import seal

    return seal(
        Decision(
            decision_id=policy_record_id(policy.version),
            request_id=f"policy_in_force:{policy.version}",
            run_id=POLICY_RECORD_RUN,
            tenant=POLICY_RECORD_RUN,
            phase=Phase.CONTROL,
            outcome=Outcome.RECORDED,
            reason=Reason.POLICY_IN_FORCE,
            policy_version=policy.version,
            event_time=now,
            decided_at=now,
            worker=worker,
            detail=policy.label,
            input=policy_document(policy),
        ),
        seal_key,
    )
