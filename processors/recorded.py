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
chain hash covers it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from operator import attrgetter
from typing import Any, NamedTuple

import orjson
from pydantic import BaseModel

from baton.processors.state import RunState
from baton.schemas.decision import (
    DECISION_FIELDS,
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


def _model(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    raise TypeError(f"cannot record {type(value).__name__} as JSON")


def input_text(event: BaseModel) -> str:
    """The event as the worker parsed it: its set fields as compact JSON (parse_event reads
    it back to an equal event). ~2 µs: the model's own JSON dump costs eight times more."""
    fields = {k: v for k, v in event.__dict__.items() if v is not None}
    return orjson.dumps(fields, default=_model).decode()


#: every field of a Decision in __init__'s order (one C call): a copy made through the
#: constructor costs a fifth of dataclasses.replace, which looks each field up by name (the
#: worker copies every decision it publishes)
_DECISION_VALUES = attrgetter(*DECISION_FIELDS)


def _copy(d: Decision) -> Decision:
    """A shallow copy of ``d`` (every field, as ``dataclasses.replace`` with no change)."""
    return Decision(*_DECISION_VALUES(d))


def publishable(
    new: RunState | None, decisions: list[Decision], event: BaseModel, text: str | None = None
) -> list[Decision]:
    """The copies of ``decisions`` to publish for ``event`` (call before linking the chain).

    Decided now (no chain link yet): a copy with the input; the original stays in ``new``
    without it (see the module docstring) and :func:`keep_links` copies the links back.
    Already published (linked, answered again from the state): a copy flagged
    ``reemitted``, with the input it answers now. ``new`` None (a run the worker would not
    take on): the decisions themselves, with the input. ``text``: the input as recorded
    (replay), else made here.
    """
    out: list[Decision] = []
    for d in decisions:
        if text is None:
            text = input_text(event)
        if d.chain_hash is not None:
            # with the input it answers (a retry: the request but for its timing), which the
            # client compares with its own request (sdk.base.answers_request); its chain link
            # covers the original's input (the audit's row), not this one
            copy = _copy(d)
            copy.reemitted = True
            copy.input = text
            out.append(copy)
            continue
        if new is None:
            d.input = text
            out.append(d)
        else:
            copy = _copy(d)
            copy.input = text
            out.append(copy)
    return out


def keep_links(stored: Iterable[Decision], published: Iterable[Decision]) -> None:
    """Give the state's decisions the chain links their published copies were given."""
    for d, p in zip(stored, published, strict=True):
        if p is not d and not p.reemitted:
            d.chain_prev, d.chain_hash = p.chain_prev, p.chain_hash


def policy_document(policy: Policy) -> str:
    """The policy as the JSON document its version hashes (Policy.model_validate reads it)."""
    return orjson.dumps(policy.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS).decode()


def policy_record_id(version: str) -> str:
    return decision_id_for(POLICY_RECORD_RUN, f"policy_in_force:{version}", Phase.CONTROL)


def policy_in_force(policy: Policy, now: datetime, worker: str | None) -> Decision:
    """The control record of the policy a worker decides under from ``now`` on."""
    return Decision(
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
    )
