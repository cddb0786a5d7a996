"""The engine's invariants over arbitrary event sequences (hypothesis).

Events are drawn from small alphabets (a handful of agents, tasks and request ids) so that
collisions, duplicates, ownership conflicts, approvals of unknown ids and out-of-order
completions are common rather than rare.
"""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from baton.processors.engine import approval_id_for, decide, expire_approvals, request_digest
from baton.processors.state import RunState
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
from tests.unit.test_engine_support import at, policy_with, seed_policy

pytestmark = pytest.mark.unit

PROPERTY_SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

AGENTS = ["planner", "billing_agent", "support_agent", "search_agent", "writer"]
TASKS = ["t0", "t1", "t2", "t3", "t4", "t5"]
REQUESTS = [f"r{i}" for i in range(10)]
APPROVERS = [*AGENTS, "finance_lead", "intern"]

POLICIES: dict[str, Policy] = {
    "seed": seed_policy(),
    "tight": policy_with(
        max_handoffs=4,
        max_agents_per_run=3,
        max_delegation_depth=2,
        shared_max_usd=10,
        shared_max_tool_calls=20,
        max_run_seconds=1500,
        require_approval_for=["billing.*", "shell.*"],
        approval={"ttl_seconds": 300, "approvers": ["finance_*", "planner"]},
        detect_delegation_cycles=True,
        tools={"block": ["shell.rm"]},
        roles={"planner": {"may_delegate_to": ["billing_agent", "search_agent", "writer"]}},
    ),
    "shadow": policy_with(shadow_mode=True, max_handoffs=3, shared_max_usd=5),
}
ENFORCING = {name for name, p in POLICIES.items() if not p.multi_agent.shadow_mode}

money = st.one_of(st.just(0.0), st.floats(0, 12, allow_nan=False, allow_infinity=False))


@st.composite
def run_events(draw: st.DrawFn) -> RunEvent:
    kind = draw(st.sampled_from(["handoff"] * 5 + ["done"] * 3 + ["grant", "deny", "finish"]))
    t = at(0)  # event_time; the engine decides on `now`, which the sequence strategy draws
    if kind == "handoff":
        estimate = draw(st.one_of(st.none(), money))
        return HandoffRequested(
            request_id=draw(st.sampled_from(REQUESTS)),
            run_id="run-p",
            task_id=draw(st.sampled_from(TASKS)),
            parent_task_id=draw(st.one_of(st.none(), st.sampled_from(TASKS))),
            from_agent=draw(st.sampled_from(AGENTS)),
            to_agent=draw(st.sampled_from(AGENTS)),
            action=draw(st.sampled_from([None, "billing.refund.create", "search.web"])),
            tool=draw(st.sampled_from([None, "shell.rm", "shell.ls", "search.web"])),
            estimated_usd=estimate,
            estimated_tool_calls=draw(st.one_of(st.none(), st.integers(0, 15))),
            event_time=t,
        )
    if kind == "done":
        return HandoffCompleted(
            request_id=draw(st.sampled_from(REQUESTS)),
            run_id="run-p",
            task_id=draw(st.sampled_from(TASKS)),
            agent=draw(st.sampled_from(AGENTS)),
            cost_usd=draw(money),
            tool_calls=draw(st.integers(0, 12)),
            status=draw(st.sampled_from(["ok", "error"])),
            event_time=t,
        )
    if kind == "finish":
        return RunFinished(run_id="run-p", event_time=t)
    cls = ApprovalGranted if kind == "grant" else ApprovalDenied
    # "@r3": the approval of the latest handoff r3 before it (histories() fills it in)
    approval = draw(st.one_of(st.sampled_from([f"@{r}" for r in REQUESTS]), st.just("apr_bogus")))
    # event_time varies so that two attempts by one approver are distinct events
    return cls(
        approval_id=approval,
        run_id="run-p",
        approver=draw(st.sampled_from(APPROVERS)),
        event_time=at(draw(st.integers(0, 3))),
    )


@st.composite
def histories(draw: st.DrawFn) -> tuple[str, list[tuple[RunEvent, datetime]]]:
    """A policy name and events with the (non-decreasing) times they are decided at."""
    policy = draw(st.sampled_from(sorted(POLICIES)))
    events = draw(st.lists(run_events(), min_size=1, max_size=40))
    steps = draw(st.lists(st.integers(0, 200), min_size=len(events), max_size=len(events)))
    clock, timed = 0, []
    asked: dict[str, HandoffRequested] = {}
    for event, step in zip(events, steps, strict=True):
        clock += step
        if isinstance(event, HandoffRequested):
            asked[event.request_id] = event
        elif isinstance(event, (ApprovalGranted, ApprovalDenied)) and event.approval_id[0] == "@":
            request = asked.get(event.approval_id[1:])
            real = approval_id_for(request) if request is not None else "apr_none_yet"
            event = event.model_copy(update={"approval_id": real})
        timed.append((event, at(clock)))
    return policy, timed


def _run(
    policy: Policy, timed: list[tuple[RunEvent, datetime]]
) -> tuple[RunState, list[tuple[RunState | None, list[Decision]]]]:
    """Decide every event; returns the final state and (state before, decisions) per event."""
    state: RunState | None = None
    trace = []
    for event, now in timed:
        before = state
        state, decisions = decide(state, event, policy, now)
        trace.append((before, decisions))
    assert state is not None
    return state, trace


@PROPERTY_SETTINGS
@given(histories())
def test_any_event_sequence_is_decided_without_raising(case: tuple) -> None:
    name, timed = case
    policy = POLICIES[name]
    _, trace = _run(policy, timed)
    for _, decisions in trace:
        for d in decisions:
            assert d.policy_version == policy.version
            assert d.run_id == "run-p"
            if d.outcome == Outcome.STOP:
                assert d.fallback is not None, d


@PROPERTY_SETTINGS
@given(histories())
def test_spend_equals_the_sum_of_distinct_completions(case: tuple) -> None:
    name, timed = case
    state, _ = _run(POLICIES[name], timed)
    # a report counts once per distinct report: a copy (same id, same content) is not
    # counted again; another report under a used id is (money spent is spent)
    spent, calls, counted = 0.0, 0, set()
    for event, _now in timed:
        if not isinstance(event, HandoffCompleted):
            continue
        report = (event.request_id, request_digest(event))
        if report not in counted:
            counted.add(report)
            spent += event.cost_usd
            calls += event.tool_calls
    assert state.spent_usd == spent
    assert state.tool_calls == calls


@PROPERTY_SETTINGS
@given(histories(), st.data())
def test_replaying_a_processed_event_changes_nothing(case: tuple, data: st.DataObject) -> None:
    name, timed = case
    policy = POLICIES[name]
    state, trace = _run(policy, timed)
    i = data.draw(st.integers(0, len(timed) - 1), label="replayed event")
    event, _ = timed[i]
    last_now = timed[-1][1]
    before = state.to_bytes()

    after, replay = decide(state, event, policy, last_now)

    assert after.to_bytes() == before
    # what is re-emitted was decided for this event (older replies may be forgotten)
    original = trace[i][1]
    # (a request id reused for another request is refused again, under the same id)
    original_ids = {d.decision_id for d in original}
    # (and an event whose decision is no longer kept is answered reply_not_kept)
    assert all(
        d in original
        or (d.reason == Reason.REQUEST_ID_REUSED and d.decision_id in original_ids)
        or d.reason == Reason.REPLY_NOT_KEPT
        for d in replay
    ), (replay, original)
    if i == len(timed) - 1 and isinstance(event, (HandoffRequested, HandoffCompleted)):
        assert replay == [
            d for d in original if d.reason != Reason.APPROVAL_EXPIRED or d.phase != Phase.APPROVAL
        ]


@PROPERTY_SETTINGS
@given(histories())
def test_state_round_trips_after_every_event(case: tuple) -> None:
    name, timed = case
    policy = POLICIES[name]
    state: RunState | None = None
    for event, now in timed:
        state, _ = decide(state, event, policy, now)
        raw = state.to_bytes()
        restored = RunState.from_bytes(raw)
        assert restored == state
        assert restored.to_bytes() == raw
    # and the restored state goes on deciding exactly like the original
    assert state is not None
    restored = RunState.from_bytes(state.to_bytes())
    for event, now in timed[:5]:
        later = at(10**5) if now < at(10**5) else now
        a, out_a = decide(state, event, policy, later)
        b, out_b = decide(restored, event, policy, later)
        assert out_a == out_b and a.to_bytes() == b.to_bytes()


@PROPERTY_SETTINGS
@given(histories().filter(lambda case: case[0] in ENFORCING))
def test_handoff_count_never_exceeds_max_handoffs(case: tuple) -> None:
    name, timed = case
    policy = POLICIES[name]
    state, trace = _run(policy, timed)
    limit = policy.multi_agent.max_handoffs
    assert limit is not None
    assert state.handoff_count <= limit
    # every allow counted once (a redelivery re-emits the same decision_id)
    allows = {
        d.decision_id
        for _, decisions in trace
        for d in decisions
        if d.outcome == Outcome.ALLOW and d.phase in (Phase.PRE_HANDOFF, Phase.APPROVAL)
    }
    assert len(allows) == state.handoff_count


@PROPERTY_SETTINGS
@given(histories().filter(lambda case: case[0] in ENFORCING))
def test_a_stopped_run_only_ever_stops(case: tuple) -> None:
    name, timed = case
    _, trace = _run(POLICIES[name], timed)
    earlier: set[str] = set()  # a redelivery re-emits the decision made before the stop
    for before, decisions in trace:
        fresh = [d for d in decisions if d.decision_id not in earlier]
        earlier.update(d.decision_id for d in decisions)
        if before is None or before.stopped is None:
            continue
        for d in fresh:
            if d.phase == Phase.PRE_HANDOFF:
                assert d.outcome == Outcome.STOP and d.reason in (
                    before.stopped,
                    Reason.KILLED,
                    Reason.RUN_FINISHED,
                    Reason.REQUEST_ID_REUSED,  # refused before the rules: still a stop
                    Reason.REPLY_NOT_KEPT,
                ), d
            assert d.outcome != Outcome.ALLOW, d


@PROPERTY_SETTINGS
@given(histories())
def test_the_expiry_sweep_never_leaves_an_expired_approval_pending(case: tuple) -> None:
    name, timed = case
    policy = POLICIES[name]
    state, _ = _run(policy, timed)
    later = at(10**6)
    swept, decisions = expire_approvals(state, policy, later)
    assert not swept.pending
    assert len(decisions) == len(state.pending)
    assert all(d.reason == Reason.APPROVAL_EXPIRED and d.outcome == Outcome.STOP for d in decisions)


@PROPERTY_SETTINGS
@given(histories(), st.data())
def test_decide_never_changes_the_state_it_was_given(case: tuple, data: st.DataObject) -> None:
    # a copy shares tasks, agents, reserved, pending and recent with the state it was made
    # from (they are replaced, never changed in place): a write in place shows up here
    name, timed = case
    policy = POLICIES[name]
    states: list[tuple[RunState, tuple]] = []
    state: RunState | None = None
    for event, now in timed:
        if state is not None:
            states.append((state, _snapshot(state)))
        state, _ = decide(state, event, policy, now)
        if data.draw(st.booleans(), label="decide twice from the same state"):
            decide(states[-1][0] if states else None, event, policy, now)
    assert state is not None
    expire_approvals(state, policy, at(10**7))
    states.append((state, _snapshot(state)))
    for earlier, snapshot in states:
        assert _snapshot(earlier) == snapshot


def _snapshot(state: RunState) -> tuple:
    # the wire form plus what it leaves out: marks past the window not folded away yet,
    # the marks themselves, and the stored reservation sums
    return (
        state.to_bytes(),
        tuple(state.seen.items()),
        tuple(state.fresh),
        state.marks,
        state.reserved_usd,
        state.reserved_tool_calls,
    )
