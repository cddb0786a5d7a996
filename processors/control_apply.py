"""One control record applied to a worker's kill switches and policy; never raises.

The control follower (``processors/control.py``) reads ``gov.control`` and hands every record
to :func:`apply_control_record` with what is in force (:class:`ControlInForce`); it gets back
what is in force after it, and the ``control`` decision or the dead letter to publish. Any
exception while applying one record (a bug, or input the parsers do not expect: a policy
nested thousands deep, an integer of 5,000 digits) makes that record one ``engine_error``
dead letter naming the record and the exception, with what is in force unchanged. The
follower never stops on one record: it would take the worker down with it, and the restart
would read the same record again (a crash loop in which no worker decides anything).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime

from baton.processors.batch import DeadLetter, ErrorKind, InputRecord, dead_letter_record
from baton.processors.engine import KillSwitches, Origin, apply_control, apply_policy_update
from baton.processors.recorded import input_text
from baton.schemas.decision import Decision, Reason
from baton.schemas.events import (
    EventError,
    KillSwitch,
    KillSwitchReleased,
    PolicyUpdated,
    parse_control_event,
)
from baton.schemas.policy import Policy

__all__ = ["ControlApplied", "ControlInForce", "apply_control_record", "history_unlogged"]

log = logging.getLogger("baton.processors.control")


@contextlib.contextmanager
def history_unlogged() -> Iterator[None]:
    """Control records applied again as history (``baton replay --from-kafka --redecide``
    applies each twice: the clock it is read at, then the replay) log nothing: the follower's
    warnings are for commands applied now (a replay printed every recorded kill switch twice,
    as if it were being pulled)."""
    was = log.disabled
    log.disabled = True
    try:
        yield
    finally:
        log.disabled = was


@dataclass(frozen=True, slots=True)
class ControlInForce:
    """What the control topic has put in force on this worker so far."""

    kills: KillSwitches
    policy: Policy
    #: event time of the last policy update applied (older ones are replays: applied_time)
    policy_signed_at: float | None
    #: where the policy in force came from (logged when the topic is caught up)
    policy_source: str


@dataclass(frozen=True, slots=True)
class ControlApplied:
    """One record's result: what is in force after it, and what to publish about it."""

    in_force: ControlInForce
    decision: Decision | None = None
    dead_letter: DeadLetter | None = None
    #: a new policy came into force (the worker's listeners switch to it)
    policy_changed: bool = False


def apply_control_record(
    in_force: ControlInForce, rec: InputRecord, worker: str | None, now: datetime
) -> ControlApplied:
    """``rec`` applied to ``in_force``: a control decision, or a dead letter; never raises."""
    try:
        return _apply(in_force, rec, worker, now)
    except Exception as exc:
        where = f"{rec.topic}[{rec.partition}]@{rec.offset}"
        log.exception("control record %s could not be applied; dead-lettered", where)
        error = (
            f"control record {where} could not be applied: {type(exc).__name__}: "
            f"{str(exc)[:500]}; the kill switches and policy in force are unchanged "
            "(a bug: report it with this record)"
        )
        letter = dead_letter_record(rec, ErrorKind.ENGINE_ERROR, error, worker, now)
        return ControlApplied(in_force, dead_letter=letter)


def _apply(
    in_force: ControlInForce, rec: InputRecord, worker: str | None, now: datetime
) -> ControlApplied:
    try:
        event = parse_control_event(rec.value or b"")
    except EventError as exc:
        return ControlApplied(
            in_force, dead_letter=dead_letter_record(rec, exc.kind, str(exc), worker, now)
        )
    origin = Origin(worker, rec.partition, rec.offset)
    if isinstance(event, (KillSwitch, KillSwitchReleased)):
        return _apply_kill_switch(in_force, event, now, origin)
    return _apply_policy(in_force, event, rec, worker, now, origin)


def _apply_kill_switch(
    in_force: ControlInForce,
    event: KillSwitch | KillSwitchReleased,
    now: datetime,
    origin: Origin,
) -> ControlApplied:
    kills, record = apply_control(in_force.kills, event, in_force.policy, now, origin)
    record.input = input_text(event)  # `baton up` re-issues it after a restart
    if record.reason in (Reason.KILL_SWITCH, Reason.KILL_SWITCH_RELEASED):
        log.warning("%s %s %s by %s", event.type, event.scope, event.target, event.operator)
    else:
        log.error(
            "refused %s %s %s claiming operator %s: %s (%s)",
            event.type,
            event.scope,
            event.target,
            event.operator,
            record.reason,
            record.detail,
        )
    return ControlApplied(replace(in_force, kills=kills), decision=record)


def _apply_policy(
    in_force: ControlInForce,
    event: PolicyUpdated,
    rec: InputRecord,
    worker: str | None,
    now: datetime,
    origin: Origin,
) -> ControlApplied:
    before = in_force.policy
    step = apply_policy_update(
        before,
        in_force.policy_signed_at,
        event,
        now,
        origin,
        f"policy_updated at offset {rec.offset}",
    )
    if step.record is None:
        letter = dead_letter_record(rec, "policy", step.error or "", worker, now)
        return ControlApplied(in_force, dead_letter=letter)
    step.record.input = input_text(event)
    if not step.applied:
        log.error(
            "refused policy_updated at offset %d claiming operator %s: %s (%s); keeping policy %s",
            rec.offset,
            event.operator,
            step.record.reason,
            step.record.detail,
            before.version,
        )
        return ControlApplied(in_force, decision=step.record)
    log.warning("policy %s -> %s (by %s)", before.version, step.policy.version, event.operator)
    source = (
        f"policy_updated at {rec.topic}[{rec.partition}]@{rec.offset} by "
        f"{event.operator}{' (signed)' if before.operators else ''}"
    )
    after = replace(
        in_force, policy=step.policy, policy_signed_at=step.signed_at, policy_source=source
    )
    return ControlApplied(after, decision=step.record, policy_changed=True)
