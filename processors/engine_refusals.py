"""Answers to events the policy does not decide: a redelivery or retry answered from the
run's memory (``answer_known``), protocol refusals (``protocol_answer``: a request id reused
for another request, a retry whose decision is no longer kept, an event for another tenant
than the run's) and the worker's own stops (``refuse``: run_state_limit, worker_run_limit).

A handoff refused here is stopped (fail closed); anything else is recorded. Each refusal's
decision id is its own, so it never replaces another decision's record in the audit.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from baton.processors.approvals import refused_answer_id, refused_key
from baton.processors.decision_builder import (
    NO_ORIGIN,
    DecisionContext,
    Origin,
    build_decision,
    life_of,
)
from baton.processors.dedup_keys import (
    TOMBSTONE_REPORT,
    dedup_key,
    request_digest,
    with_digest,
)
from baton.processors.engine_budget import count_cost
from baton.processors.engine_control import NO_KILLS, KillSwitches
from baton.processors.engine_fields import report_of
from baton.processors.engine_lifecycle import new_state
from baton.processors.policy_rules import rules_for
from baton.processors.state import RECENT_REPLIES, SEEN_LIMIT, RunState
from baton.schemas.decision import Decision, Outcome, Phase, Reason
from baton.schemas.events import (
    ApprovalDenied,
    ApprovalGranted,
    HandoffCompleted,
    HandoffRequested,
    RunEvent,
)
from baton.schemas.policy import Policy

__all__ = ["answer_known", "protocol_answer", "refuse"]

# (Final: a compiled module reads these from C statics, not through its dict)
_HandoffRequested: Final = HandoffRequested
_HandoffCompleted: Final = HandoffCompleted
_ApprovalGranted: Final = ApprovalGranted
_ApprovalDenied: Final = ApprovalDenied


def refuse(
    state: RunState | None,
    event: RunEvent,
    policy: Policy,
    now: datetime,
    reason: Reason,
    detail: str,
    kills: KillSwitches = NO_KILLS,
    origin: Origin = NO_ORIGIN,
    life: str | None = None,
) -> tuple[RunState | None, list[Decision]]:
    """Stop ``event``'s run for a reason of the worker's, not of the policy: the run's state
    would outgrow ``run_state_limit``, or the worker holds too many runs (``worker_run_limit``).

    ``state`` is the run's state before the event (None for a run the worker will not take
    on: the decision is made, nothing is kept). A kept run is stopped for good with ``reason``
    (the event is remembered like any other, so a retry gets the same stop); a reported cost
    still counts. Pure, like ``engine.decide``.

    A run not kept is refused on a state whose life begins at ``origin`` (``life``: as
    ``decide``'s), so the refusal's id covers the input's position: two requests under one
    request id, refused at two positions, never share an audit row.
    """
    keep = state is not None
    if state is not None:
        st = state.copy()
    else:
        begun = life_of(event, origin) if life is None else life
        st = new_state(event.run_id, event.tenant, now, begun)
    if keep and st.stopped is None:
        st.stopped = reason
    key, digest, phase = dedup_key(event), None, Phase.CONTROL
    request_id = f"{st.run_id}:finished"
    req = done = None
    covered: str | None = None
    if type(event) is _HandoffRequested:
        digest, phase, req = request_digest(event), Phase.PRE_HANDOFF, event
        request_id = event.request_id
    elif type(event) is _HandoffCompleted:
        digest, phase, done = request_digest(event), Phase.POST_HANDOFF, event
        request_id = event.request_id
        count_cost(st, report_of(event))
        if keep and st.has_seen(key) and st.digest_of(key) not in (digest, None):
            # a cost report under a reused id (answer_known counted it under its own key):
            # remembered, and identified, under its own key, as the engine does; under the
            # id's key it took the first report's decision id (the audit kept one row of
            # two, its chain a link short) and replies, and each redelivery counted again
            key, covered = with_digest(key, digest), digest
    elif type(event) is _ApprovalGranted or type(event) is _ApprovalDenied:
        key, phase, request_id = refused_key(event), Phase.APPROVAL, refused_answer_id(event)
    ctx = DecisionContext(
        rules_for(policy, st.tenant), now, now.timestamp(), kills, origin,
        request_id if covered is not None else None, covered,
    )  # fmt: skip
    decision = build_decision(
        st,
        ctx,
        request_id,
        phase,
        Outcome.STOP,
        reason,
        event.event_time,
        req,
        to_agent=done.agent if done is not None else None,
        task_id=done.task_id if done is not None else None,
        handoff_status=done.status if done is not None else None,
        detail=detail,
    )
    if keep:
        st.remember(key, [decision], digest)
    return (st if keep else None), [decision]


def protocol_answer(
    state: RunState,
    event: RunEvent,
    policy: Policy,
    now: datetime,
    kills: KillSwitches,
    origin: Origin,
    why: str,
) -> Decision:
    """An answer for an event Baton will not decide, the state unchanged: a request id reused
    for another request (``why`` is its digest), a retry whose decision is no longer kept
    (``"not_kept"``), or an event for another tenant than the run's (``"tenant"``).

    A handoff gets a stop (fail closed), anything else a recorded refusal. The decision id
    covers ``why``, so it never replaces another decision's record in the audit; the same
    event again is answered the same way.
    """
    ctx = DecisionContext(rules_for(policy, state.tenant), now, now.timestamp(), kills, origin)
    request = type(event) is _HandoffRequested
    if type(event) is _HandoffRequested or type(event) is _HandoffCompleted:
        request_id, phase = event.request_id, (Phase.PRE_HANDOFF if request else Phase.POST_HANDOFF)
    elif type(event) is _ApprovalGranted or type(event) is _ApprovalDenied:
        request_id, phase = refused_answer_id(event), Phase.APPROVAL
    else:
        request_id, phase = f"{state.run_id}:finished", Phase.CONTROL
    if why == "not_kept" and type(event) is _HandoffCompleted:
        reason: str = Reason.REPLY_NOT_KEPT
        # never "use a new request_id" here: the same report under a new id counts twice
        detail = (
            "a report decided long ago, and counted then; its decision is no longer kept (the "
            f"run keeps the newest {RECENT_REPLIES}): read it from the audit; sent again under "
            "a new request_id it would count twice"
        )
    elif why == "not_kept":
        reason = Reason.REPLY_NOT_KEPT
        detail = (
            "decided long ago; its decision is no longer kept (the run keeps the newest "
            f"{RECENT_REPLIES}): read it from the audit, or use a new request_id"
        )
    elif why == "tenant":
        reason = Reason.TENANT_MISMATCH
        detail = f"the run belongs to tenant {state.tenant!r}, not {event.tenant!r}"
    else:
        reason = Reason.REQUEST_ID_REUSED
        detail = (
            f"request_id {request_id} was already used for another request; use a new "
            "request_id per request (a retry must repeat the request exactly)"
        )
    d = build_decision(
        state,
        ctx,
        f"{request_id}#{why}",
        phase,
        Outcome.STOP if request else Outcome.RECORDED,
        reason,
        event.event_time,
        event if request else None,  # type: ignore[arg-type]
        detail=detail,
    )
    d.request_id = request_id
    return d


def answer_known(
    state: RunState,
    event: RunEvent,
    key: str,
    digest: str | None,
    policy: Policy,
    now: datetime,
    kills: KillSwitches,
    origin: Origin,
    tenant: str,
) -> list[Decision] | str | None:
    """What the run already knows of ``event``: the answer to give without deciding (a
    redelivery or a client retry gets what was decided, the state unchanged; a reused request
    id, another tenant, a reply no longer kept get a protocol refusal), or the key to count
    a cost report under when its request id was used for another report, or None: decide.
    ``tenant``: the event's (read by the caller from its fields)."""
    if type(event) is _ApprovalGranted or type(event) is _ApprovalDenied:
        # a grant that was refused (self-approval, unknown approver) is remembered under its
        # own key: look there first, or its redelivery would be decided again, or answered
        # with whatever later resolved the approval
        refused = refused_key(event)
        if state.has_seen(refused):
            return _replies(state, refused, event, policy, now, kills, origin)
    # state.has_seen(key), inline: it runs for every event
    # (.get on the shared EMPTY, a dict subclass, is a method call when compiled)
    mark = state.seen.get(key) if state.seen else None
    if key in state.fresh or (mark is not None and mark > state.marks - SEEN_LIMIT):
        if digest is None or state.digest_of(key) in (digest, None):
            return _replies(state, key, event, policy, now, kills, origin)
        if type(event) is _HandoffRequested:
            # the same id for another request: refused, never the first one's answer
            return [protocol_answer(state, event, policy, now, kills, origin, digest)]
        # a cost report under a reused id: money spent is spent, so it counts, under its
        # own key (a redelivery of it is not counted twice) and its own decision id
        own = with_digest(key, digest)
        if state.has_seen(own):
            return _replies(state, own, event, policy, now, kills, origin)
        if state.evicted_at is not None and state.has_seen(TOMBSTONE_REPORT + digest):
            # counted before the eviction; a later report under its id took the id's key at
            # the tombstone: its mark is the tombstone's, never counted again. (The unseen
            # key's check below is the same; one check before the key lookup is not: a state
            # in which the report was counted again under its own key, as engines cb3bfad to
            # d286532^ wrote it, answers a redelivery with that key's kept decision above; it
            # would get reply_not_kept under another decision id.)
            return [protocol_answer(state, event, policy, now, kills, origin, "not_kept")]
        return own
    if (
        state.evicted_at is not None
        and type(event) is _HandoffCompleted
        and state.has_seen(TOMBSTONE_REPORT + digest)  # type: ignore[operator]
    ):  # counted before the run was evicted (RunState.tombstone): never again
        return [protocol_answer(state, event, policy, now, kills, origin, "not_kept")]
    if type(event) is _HandoffCompleted and state.has_seen(with_digest(key, digest)):  # type: ignore[arg-type]
        # a reused report's copy, after the first report's key left the window
        own = with_digest(key, digest)  # type: ignore[arg-type]
        return _replies(state, own, event, policy, now, kills, origin)
    if type(event) is _HandoffRequested and _holds_request(state, event, digest):
        return [protocol_answer(state, event, policy, now, kills, origin, digest)]  # type: ignore[arg-type]
    if tenant != state.tenant and type(event) is not _HandoffCompleted:
        return [protocol_answer(state, event, policy, now, kills, origin, "tenant")]
    return None


def _replies(
    state: RunState,
    key: str,
    event: RunEvent,
    policy: Policy,
    now: datetime,
    kills: KillSwitches,
    origin: Origin,
) -> list[Decision]:
    """The decisions kept for ``key``, or a reply_not_kept answer when they are gone (a retry
    of an event decided long ago is answered, never silently: a handoff is stopped)."""
    replies = state.replies(key)
    if replies is not None:
        return replies
    return [protocol_answer(state, event, policy, now, kills, origin, "not_kept")]


def _holds_request(state: RunState, event: HandoffRequested, digest: str | None) -> bool:
    """True when a request id no longer among the dedup marks still holds a reservation, a
    grant not reported yet, or a pending approval for another request: deciding it anew
    would overwrite them (or let another request's report use the grant)."""
    rid = event.request_id
    if rid in state.reserved or rid in state.grants:
        return True
    if not state.pending:  # (EMPTY, a dict subclass: iterating it is a method call compiled)
        return False
    for p in state.pending.values():
        if p.request.request_id == rid and request_digest(p.request) != digest:
            return True
    return False
