"""The governance decision as a pure function: (state, event, policy, now) -> (state, decisions).

No I/O, no clock, no randomness: Faust, Kafka and ClickHouse only carry events in and
decisions out. The input state is never modified (a changed copy is returned), so replay,
what-if and property tests can call it freely. This module orders the work of one event
(``decide``), applies each outcome to the run's state, and is the engine's public API:
import every engine name from here.

Where things are (processors/, one job each):
 - rule_checks        every rule, one function naming its policy key and reason, and
                      ``check_handoff``: the pre-handoff rules in order
 - rule_chain         the delegation chain's rules: depth, lineage, cycles, bounces
 - policy_rules       the policy's compiled form (TenantRules, rules_for)
 - approvals          approvals asked, answered (signatures, who may, the grant), expired
 - engine_budget      costs counted, estimates reserved, settled, expired
 - engine_control     kill switches and policy updates (operators' commands)
 - engine_refusals    answers from the run's memory, protocol refusals, the worker's stops
 - engine_lifecycle   what falls due, eviction to a tombstone
 - engine_outcome     what an allow or a budget stop does to the run's state
 - engine_fields      a handoff's and a report's fields as the rules read them
 - decision_builder   the decision record, field by field
 - dedup_keys         the key and digest a decided event is remembered by

One event: a handoff meets the rules in check_handoff's order (kill switch, stopped run,
ownership and roles, agents, handoffs, lineage, depth and cycles, budgets, tools, the approval gate;
first failure wins) and an allow locks its task to to_agent and reserves its estimate; a
completion's cost, tool calls and steps count, and a budget passed or a tool its agent may
not use stops the run; an approval's answer is refused, denies, or grants (the rules again,
without the gate); due work (approval and reservation expiry) runs first.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from baton.processors.approvals import (
    answer_approval,
    approval_id_for,
    ask_approval,
    refused_answer_id,
    refused_key,
    spend_grant,
)
from baton.processors.decision_builder import (
    NEVER_SHADOWED,
    NO_ORIGIN,
    DecisionContext,
    Origin,
    build_decision,
    life_of,
)
from baton.processors.dedup_keys import dedup_key, digest_of, request_digest, request_key
from baton.processors.engine_budget import count_cost, settle_reservation
from baton.processors.engine_control import (
    NO_KILLS,
    KillSwitches,
    PolicyStep,
    apply_control,
    apply_policy_update,
    command_refused,
    policy_update_record,
    refused_command_id,
)
from baton.processors.engine_fields import Handoff, Report, handoff_fields, report_fields
from baton.processors.engine_lifecycle import (
    evict,
    expire,
    expire_due,
    is_evictable,
    new_state,
    next_due,
)
from baton.processors.engine_outcome import STICKY_REASONS, apply_allow, apply_stop
from baton.processors.engine_refusals import answer_known, refuse
from baton.processors.policy_rules import (
    BUDGET_TOLERANCE,
    HARD_MAX_HANDOFFS,
    TenantRules,
    rules_for,
)
from baton.processors.rule_checks import (
    check_handoff,
    depth_of,
    release_ownership,
    spent_over,
    ungranted_tool_rule,
    used_tools_rule,
)
from baton.processors.state import MAX_PENDING_APPROVALS, RunState
from baton.schemas.decision import Decision, Outcome, Phase, Reason
from baton.schemas.events import (
    ApprovalDenied,
    ApprovalGranted,
    HandoffCompleted,
    HandoffRequested,
    RunEvent,
    RunFinished,
)
from baton.schemas.policy import Policy

__all__ = [
    "BUDGET_TOLERANCE",
    "HARD_MAX_HANDOFFS",
    "NO_KILLS",
    "STICKY_REASONS",
    "KillSwitches",
    "Origin",
    "PolicyStep",
    "TenantRules",
    "apply_control",
    "apply_policy_update",
    "approval_id_for",
    "command_refused",
    "decide",
    "evict",
    "expire_approvals",
    "expire_due",
    "is_evictable",
    "new_state",
    "next_due",
    "policy_update_record",
    "refuse",
    "refused_answer_id",
    "refused_command_id",
    "request_digest",
    "rules_for",
]

#: the former name of expire_due (it expires reservations too now)
expire_approvals = expire_due

# Enum members the hot path uses, as module globals: on CPython 3.11 ``Outcome.STOP`` costs
# about ten times a global lookup, and a decision touches several (bench/RESULTS.md)
# (Final, these and the event classes' names below: a compiled module reads them from C
# statics, not through the module's dict, ~130 instructions a read)
_ALLOW: Final = Outcome.ALLOW
_STOP: Final = Outcome.STOP
_RECORDED: Final = Outcome.RECORDED
_APPROVAL_REQUIRED: Final = Outcome.APPROVAL_REQUIRED
_PRE_HANDOFF: Final = Phase.PRE_HANDOFF
_POST_HANDOFF: Final = Phase.POST_HANDOFF
_WITHIN_BUDGET: Final = Reason.WITHIN_BUDGET
_HandoffRequested: Final = HandoffRequested
_HandoffCompleted: Final = HandoffCompleted
_ApprovalGranted: Final = ApprovalGranted
_ApprovalDenied: Final = ApprovalDenied
_RunFinished: Final = RunFinished
_answer_approval: Final = answer_approval
_refused_key: Final = refused_key
_ask_approval: Final = ask_approval


#: the newest ``now`` decided at and its POSIX time (datetime.timestamp() costs about a
#: sixth of a plain decision's bookkeeping; a datetime is immutable). The caches of the hot
#: path are Final lists, changed in place: a compiled module reads and writes a plain global
#: through its dict (~130 and ~540 instructions), a Final one's items directly
_LAST_NOW: Final[list[Any]] = [None, 0.0]


def decide(
    state: RunState | None,
    event: RunEvent,
    policy: Policy,
    now: datetime,
    kills: KillSwitches = NO_KILLS,
    origin: Origin = NO_ORIGIN,
    life: str | None = None,
) -> tuple[RunState | None, list[Decision]]:
    """Decide one run event. ``state`` is None for a run Baton has not seen yet: its life
    begins at ``origin`` (``life_of``), or is ``life`` when given ("": a run recorded before
    lives were marked, replayed as it was decided)."""
    # One dedup key per logical event; approvals share one key per approval_id, so the first
    # resolution wins and every later grant/deny of it gets the same answer. Dispatch is on
    # the exact type: isinstance() on pydantic models goes through their metaclass's
    # __instancecheck__, slow when it misses; and type(event) is X, not a saved type, so
    # that mypy narrows without cast() calls.
    # (the event's fields read from its __dict__, read once: each attribute read of a pydantic
    # model goes through BaseModel.__getattr__'s hook, ~350 instructions compiled)
    fields: dict[str, Any] = event.__dict__
    digest = reused = request_id = None
    if type(event) is _HandoffRequested or type(event) is _HandoffCompleted:
        rid: str = fields["request_id"]
        # dedup_key(event) and request_digest(event), from the fields
        key = request_key(type(event) is _HandoffRequested, rid)
        request_id = rid
        digest = digest_of(event, fields)
    else:
        key = dedup_key(event)
    if state is not None:
        known = answer_known(
            state, event, key, digest, policy, now, kills, origin, fields["tenant"]
        )
        if type(known) is list:
            return state, known
        if known is not None:  # a cost report under a reused id: counted under its own key
            key, reused = known, digest  # type: ignore[assignment]  # a str: not the list
    last_now = _LAST_NOW
    if now is last_now[0]:  # a batch's events (and replay's two policies) share one now
        now_ts: float = last_now[1]
    else:
        now_ts = now.timestamp()
        last_now[0], last_now[1] = now, now_ts
    if state is None:
        if policy.strict_tenants and event.tenant not in policy.tenants:
            return refuse(  # the state stays None: the run is not kept
                None,
                event,
                policy,
                now,
                Reason.UNKNOWN_TENANT,
                f"tenant {event.tenant!r} is not under tenants (strict_tenants is on; names are "
                f"compared in their folded form, NFKC + case fold)",
                kills,
                origin,
            )
        # (RunState.new with now_ts: new_state would take the timestamp of now again)
        st = RunState.new(
            fields["run_id"],
            fields["tenant"],
            now_ts,
            life_of(event, origin) if life is None else life,
        )
    else:
        st = state.copy()
        if now_ts > st.last_event_at:
            st.last_event_at = now_ts
    ctx = DecisionContext(
        rules_for(policy, st.tenant),  # (compiled with this module: a native call)
        now,
        now_ts,
        kills,
        origin,
        request_id,
        digest,
    )
    reserved_due = st.reserved_due
    out = (
        expire(st, ctx)
        if st.pending or (reserved_due is not None and reserved_due <= now_ts)
        else None
    )
    if out and st.has_seen(key):  # the sweep just resolved the approval this event is about
        replies = st.replies(key) or []
        return st, out + [d for d in replies if d not in out]
    if type(event) is _HandoffRequested:
        decisions = _pre_handoff(st, event, _handoff_view(event, fields), ctx)
    elif type(event) is _HandoffCompleted:
        decisions = _post_handoff(st, _report_view(event, fields), ctx)
    elif type(event) is _ApprovalGranted or type(event) is _ApprovalDenied:
        decisions = _answer_approval(st, event, ctx)
        if decisions[0].outcome is _RECORDED:
            # a grant that could not be used leaves the approval pending: it must not burn
            # the approval's key, or the real approver's grant would be taken for a duplicate
            key = _refused_key(event)
    elif type(event) is _RunFinished:
        decisions = _finish(st, event, ctx)
    else:  # pragma: no cover - the union is closed
        raise TypeError(f"not a run event: {type(event).__name__}")
    # (the request's digest is in its decisions' ids, see build_decision: another request
    # under the same id, after the dedup window, never replaces this one's record in the audit)
    if reused is not None:
        decisions[0].detail = (
            f"request_id {event.request_id} reused for another report: counted, "  # type: ignore[union-attr]
            "under its own decision id; use a new request_id per request"
        )
    # keeps the decisions, not the list: the caller may change it
    st.remember(key, decisions, digest)
    return st, out + decisions if out else decisions


# =========================================================================== one event each


def _pre_handoff(
    st: RunState, event: HandoffRequested, req: Handoff, ctx: DecisionContext
) -> list[Decision]:
    """``req``: the event's fields (engine_fields)."""
    task_id = req.task_id
    node = st.task(task_id)
    depth = depth_of(st, req, node)  # (a native call when compiled: no Final alias)
    outcome, reason, detail = check_handoff(st, req, ctx, depth, node, gate=True)
    approval_id = expires = None
    # shadow mode records and allows, except what it never shadows (a kill, the worker's own
    # stops: a tombstone must not take on a task, a run over its state budget not grow)
    shadow_mode = ctx.rules.shadow_mode and reason not in NEVER_SHADOWED
    if outcome is _APPROVAL_REQUIRED and not shadow_mode:
        asked = _ask_approval(st, event, ctx)
        if asked is None:
            outcome, reason = _STOP, Reason.APPROVAL_EXPIRED
            detail = f"more than {MAX_PENDING_APPROVALS} approvals pending in this run"
        else:
            approval_id, expires = asked
    owner: str | None
    if outcome is _ALLOW or shadow_mode:
        apply_allow(st, req, depth, node, ctx)
        # kept, or the new (or released) task's
        owner = node.owner if node is not None and node.owner else req.to_agent
    else:
        if outcome is _STOP:
            apply_stop(st, reason, ctx)
        owner = (node.owner or None) if node is not None else None
    d = build_decision(
        st,
        ctx,
        req.request_id,
        _PRE_HANDOFF,
        outcome,
        reason,
        req.event_time,
        req,
        owner=owner,
        depth=depth,
        detail=detail,
        approval_id=approval_id,
        approval_expires_at=expires,
    )
    if approval_id is not None:
        d.request_digest = request_digest(event)  # what the approver signs
    return [d]


def _post_handoff(st: RunState, done: Report, ctx: DecisionContext) -> list[Decision]:
    """``done``: the report's fields (engine_fields)."""
    rules = ctx.rules
    # every reported cost counts, even of a handoff Baton stopped or never saw: money spent
    # is spent, and the shared budget must see it
    count_cost(st, done)
    settle_reservation(st, done)
    node = st.task(done.task_id)
    refusal = spent_over(st, rules)
    if refusal is None and done.tools:
        refusal = used_tools_rule(done, node, rules)
        if refusal is None and rules.approval_re is not None:
            refusal = ungranted_tool_rule(st, done, rules)
    if st.grants:
        spend_grant(st, done)
    released = release_ownership(st, done, node, rules) if done.status in rules.release_on else None
    if refusal is not None and st.stopped is None and not st.finished:
        outcome, (reason, over) = _STOP, refusal
        # a completion's stop ends the run: its cost is spent, its tool used
        if not rules.shadow_mode:
            st.stopped = reason
    elif refusal is not None:
        outcome, (reason, over) = _RECORDED, refusal
    elif released is not None:
        outcome, reason, over = _RECORDED, Reason.OWNERSHIP_RELEASED, released
    else:
        outcome, reason, over = _RECORDED, _WITHIN_BUDGET, None
    if released is not None and over is not released:
        over = f"{over}; {released}"
    return [
        build_decision(
            st,
            ctx,
            done.request_id,
            _POST_HANDOFF,
            outcome,
            reason,
            done.event_time,
            owner=(node.owner or None) if node else done.agent,
            to_agent=done.agent,
            from_agent=node.giver if node else None,
            task_id=done.task_id,
            parent_task_id=node.parent if node else None,
            depth=node.depth if node else 0,
            handoff_status=done.status,
            detail=over,
        )
    ]


def _finish(st: RunState, ev: RunFinished, ctx: DecisionContext) -> list[Decision]:
    st.finished = True
    return [
        build_decision(
            st,
            ctx,
            f"{st.run_id}:finished",
            Phase.CONTROL,
            _RECORDED,
            Reason.RUN_FINISHED,
            ev.event_time,
        )
    ]


#: the newest handoff and report viewed and their fields (engine_fields): replay decides each
#: recorded event under two policies (an event held here cannot be collected, so no other can
#: come to have its id)
_LAST_HANDOFF: Final[list[Any]] = [None, None]
_LAST_REPORT: Final[list[Any]] = [None, None]


def _handoff_view(event: object, fields: dict[str, Any]) -> Handoff:
    """``handoff_fields(fields)``, ``fields`` the ``__dict__`` of ``event``; the newest again."""
    last = _LAST_HANDOFF
    if event is last[0]:
        return last[1]  # type: ignore[no-any-return]
    view = handoff_fields(fields)
    last[0], last[1] = event, view
    return view


def _report_view(event: object, fields: dict[str, Any]) -> Report:
    """``report_fields(fields)``, ``fields`` the ``__dict__`` of ``event``; the newest again."""
    last = _LAST_REPORT
    if event is last[0]:
        return last[1]  # type: ignore[no-any-return]
    view = report_fields(fields)
    last[0], last[1] = event, view
    return view
