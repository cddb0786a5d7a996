"""Every allow the engine makes, checked by an independent oracle (hypothesis, session 10, H3).

The oracle restates docs/policy.md's pre-handoff rules on the run's state before the event:
no owner but ``to_agent`` (or a released task), roles, agents, handoffs, depth from the tree,
no delegation cycle on the task's chain (the request's parent's and the tree's, walked to
the end), spent below every limit and spent + live reservations + the estimate within it,
no refused tool, a gated handoff only through a grant. The histories mix handoffs, reports
(releases, gated tools, costs), grants and denials of the run's real approvals, sweeps,
redeliveries and case variants of the same names. Also: a history with its records
delivered twice ends in the same state, and counts each report once.
"""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from baton.processors.engine import decide, expire_due, request_digest
from baton.processors.state import RunState, TaskNode
from baton.schemas.decision import Decision, Outcome, Reason
from baton.schemas.events import (
    ApprovalDenied,
    ApprovalGranted,
    HandoffCompleted,
    HandoffRequested,
    RunEvent,
    RunFinished,
)
from baton.schemas.policy_roles import match_any
from tests.unit.test_engine_support import at, policy_with

pytestmark = pytest.mark.unit

PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

#: case variants fold to one agent: "Planner" is "planner"
AGENTS = ["planner", "billing", "search", "writer", "Planner", "BILLING"]
TASKS = ["t0", "t1", "t2", "t3", "T1"]
REQUESTS = [f"r{i}" for i in range(8)]
TOOLS = ["shell.rm", "shell.ls", "search.web", "billing.refund", "crm.read"]
APPROVERS = ["boss", "boss", "lead1", "planner", "billing", "intern"]
POLICY = policy_with(
    max_handoffs=7,
    max_agents_per_run=4,
    max_delegation_depth=3,
    shared_max_usd=10,
    shared_max_tool_calls=20,
    max_steps=30,
    max_bounces=1,
    detect_delegation_cycles=True,
    reservation_ttl_seconds=100,
    release_ownership_on=["error", "cancelled"],
    require_approval_for=["billing.*"],
    approval={"ttl_seconds": 120, "approvers": ["boss", "lead*"]},
    tools={"block": ["shell.rm"]},
    roles={
        "search": {"may_own": ["t*"], "tools": {"allow": ["search.*", "crm.*"]}},
        "writer": {"may_delegate_to": ["search", "billing"]},
    },
)
LIMITS = POLICY.multi_agent

Step = RunEvent | str  # "sweep", "again" (a redelivery of an earlier record)


@st.composite
def steps(draw: st.DrawFn) -> Step:
    kind = draw(st.sampled_from(["h"] * 6 + ["c"] * 3 + ["g"] * 3 + ["d", "sweep", "again", "end"]))
    if kind in ("sweep", "again"):
        return kind
    if kind == "end":
        # rare: a finished run decides nothing more
        return (
            RunFinished(run_id="R", event_time=at(0)) if draw(st.integers(0, 9)) == 0 else "sweep"
        )
    if kind == "h":
        return HandoffRequested(
            request_id=draw(st.sampled_from(REQUESTS)),
            run_id="R",
            task_id=draw(st.sampled_from(TASKS)),
            parent_task_id=draw(st.one_of(st.none(), st.sampled_from(TASKS))),
            from_agent=draw(st.sampled_from(AGENTS)),
            to_agent=draw(st.sampled_from(AGENTS)),
            action=draw(st.sampled_from([None, None, "billing.refund.create", "search.run"])),
            tool=draw(st.sampled_from([None, None, *TOOLS])),
            tools=draw(st.one_of(st.none(), st.lists(st.sampled_from(TOOLS), max_size=2))),
            estimated_usd=draw(st.sampled_from([None, None, 0.0, -0.0, 2.0, 5.0, 9.99])),
            estimated_tool_calls=draw(st.one_of(st.none(), st.integers(0, 12))),
            event_time=at(0),
        )
    if kind == "c":
        return HandoffCompleted(
            request_id=draw(st.sampled_from(REQUESTS)),
            run_id="R",
            task_id=draw(st.sampled_from(TASKS)),
            agent=draw(st.sampled_from(AGENTS)),
            cost_usd=draw(st.sampled_from([0.0, 0.0, 0.5, 3.0])),
            tool_calls=draw(st.integers(0, 6)),
            steps=draw(st.integers(0, 12)),
            status=draw(st.sampled_from(["ok", "error", "Cancelled"])),
            tools=draw(st.one_of(st.none(), st.lists(st.sampled_from(TOOLS), max_size=2))),
            event_time=at(0),
        )
    answer = ApprovalGranted if kind == "g" else ApprovalDenied
    # "@2": the run's third approval_required so far (filled in as the history is decided)
    return answer(
        approval_id=f"@{draw(st.integers(0, 3))}",
        run_id="R",
        approver=draw(st.sampled_from(APPROVERS)),
        event_time=at(draw(st.integers(0, 3))),
    )


histories = st.lists(st.tuples(steps(), st.integers(0, 25)), min_size=1, max_size=50)


def _chain(state: RunState, parent: str | None, task_id: str) -> set[str]:
    """The agents on the chain above ``parent``, walked to its root (or round its loop)."""
    agents: set[str] = set()
    seen = {task_id}
    node = state.task(parent) if parent and parent not in seen else None
    while node is not None and parent not in seen:
        seen.add(parent)  # type: ignore[arg-type]
        agents |= {node.owner, node.giver}
        parent = node.parent
        node = state.task(parent) if parent else None
    return agents


def _depth(state: RunState | None, req: HandoffRequested, node: TaskNode | None) -> int:
    if node is not None:
        return node.depth
    parent = state.task(req.parent_task_id) if state and req.parent_task_id else None
    if parent is not None:
        return parent.depth + 1
    return 2 if req.parent_task_id else 1


def _check_allow(
    before: RunState | None, req: HandoffRequested, reason: str, now: datetime
) -> None:
    """The oracle: ``req`` was allowed (``reason``) on ``before`` at ``now``."""
    what = f"{reason}: {req!r}"
    if before is None:
        before = RunState.new("R", "default", now.timestamp())
    assert before.stopped is None and not before.finished and before.evicted_at is None, what
    node = before.task(req.task_id)
    assert node is None or node.owner in ("", req.to_agent), what
    assert LIMITS.role_permits(req.from_agent, req.to_agent, req.task_kind or req.task_id) is None
    assert len({*before.agents, req.from_agent, req.to_agent}) <= LIMITS.max_agents_per_run, what
    assert before.handoff_count + 1 <= LIMITS.max_handoffs, what  # type: ignore[operator]
    assert _depth(before, req, node) <= LIMITS.max_delegation_depth, what  # type: ignore[operator]
    parents = {req.parent_task_id, node.parent if node is not None else None}
    assert req.to_agent != req.from_agent, what
    for parent in parents:
        assert req.to_agent not in _chain(before, parent, req.task_id), what
    # reservations the expiry at ``now`` releases first no longer count
    live = [
        r
        for r in before.reserved.values()
        if r.expires_at is None or r.expires_at > now.timestamp()
    ]
    usd, calls = LIMITS.shared_max_usd, LIMITS.shared_max_tool_calls
    assert usd is not None and calls is not None and LIMITS.max_steps is not None
    assert before.spent_usd < usd and before.tool_calls < calls, what
    assert before.steps < LIMITS.max_steps, what
    reserved_usd = before.spent_usd + sum(r.usd for r in live) + (req.estimated_usd or 0.0)
    assert reserved_usd <= usd + 1e-9, what
    reserved_calls = before.tool_calls + sum(r.tool_calls for r in live)
    assert reserved_calls + (req.estimated_tool_calls or 0) <= calls, what
    named = ([req.tool] if req.tool else []) + (req.tools or [])
    assert LIMITS.tool_refusal(req.to_agent, named) is None, what
    if any(match_any(LIMITS.require_approval_for, n) for n in [req.action, *named] if n):
        assert reason == Reason.APPROVAL_GRANTED, what


def _run(
    history: list[tuple[Step, int]], *, check: bool = True
) -> tuple[RunState | None, list[RunEvent], list[tuple[RunEvent, datetime]]]:
    """Decide ``history``; each allow meets the oracle. Returns the final state, the run's
    approval ids and the records as decided (approval ids filled in, redeliveries resolved)."""
    state: RunState | None = None
    approvals: list[str] = []
    records: list[tuple[RunEvent, datetime]] = []
    clock = 0
    for step, dt in history:
        clock += dt
        now = at(clock)
        if step == "sweep":
            if state is not None:
                state, _ = expire_due(state, POLICY, now)
            continue
        if step == "again":
            if not records:
                continue
            event = records[len(records) // 2][0]
        else:
            event = step  # type: ignore[assignment]
        if type(event) in (ApprovalGranted, ApprovalDenied) and event.approval_id[0] == "@":  # type: ignore[union-attr]
            which = int(event.approval_id[1:])  # type: ignore[union-attr]
            if which >= len(approvals):
                continue
            event = event.model_copy(update={"approval_id": approvals[which]})
        records.append((event, now))
        before = state
        state, decisions = decide(state, event, POLICY, now)
        if state is before:  # a redelivery or retry answered from the run's memory
            continue
        for d in decisions:
            if d.outcome is Outcome.APPROVAL_REQUIRED and d.approval_id not in approvals:
                approvals.append(d.approval_id)  # type: ignore[arg-type]
            if check and d.outcome is Outcome.ALLOW:
                _check_one(before, event, d, now)
    return state, approvals, records  # type: ignore[return-value]


def _check_one(before: RunState | None, event: RunEvent, d: Decision, now: datetime) -> None:
    if d.reason == Reason.APPROVAL_GRANTED:
        assert before is not None and d.approval_id in before.pending, d
        _check_allow(before, before.pending[d.approval_id].request, d.reason, now)  # type: ignore[index]
    else:
        assert d.reason == Reason.OK and type(event) is HandoffRequested, d
        _check_allow(before, event, d.reason, now)


@PROPERTY_SETTINGS
@given(histories)
def test_every_allow_is_one_the_policy_permits(history: list) -> None:
    _run(history)


@PROPERTY_SETTINGS
@given(histories, st.data())
def test_records_delivered_twice_leave_the_state_of_one_delivery(
    history: list, data: st.DataObject
) -> None:
    _, _, records = _run(history, check=False)
    if not records:
        return
    # the same records again, each redelivered right after itself with probability 1/2
    twice: RunState | None = None
    for event, now in records:
        twice, _ = decide(twice, event, POLICY, now)
        if data.draw(st.booleans()):
            again, _ = decide(twice, event, POLICY, now)
            assert again is twice
    once: RunState | None = None
    for event, now in records:
        once, _ = decide(once, event, POLICY, now)
    assert once == twice
    # and a report counts once per distinct report, however often it was delivered
    counted = {
        (e.request_id, request_digest(e)): e for e, _ in records if type(e) is HandoffCompleted
    }
    assert once is not None
    assert once.spent_usd == pytest.approx(sum(e.cost_usd for e in counted.values()))
    assert once.steps == sum(e.steps for e in counted.values())
