"""The new rules' invariants over arbitrary histories (hypothesis): ownership release, reservation
expiry by the sweep, bounces, per-agent tools and steps, under one policy that turns them all on.

Small alphabets (agents, tasks, request ids) make releases, re-handoffs, redeliveries, ping-pong
and late completions common; sweeps (``expire_due``) are interleaved at drawn times, as the
worker's timer would run them.
"""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from baton.processors.engine import decide, expire_due, request_digest
from baton.processors.state import RunState
from baton.schemas.decision import Decision, Outcome, Phase, Reason
from baton.schemas.events import HandoffCompleted, HandoffRequested, RunEvent
from tests.unit.test_engine_support import at, policy_with

pytestmark = pytest.mark.unit

PROPERTY_SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

AGENTS = ["planner", "billing_agent", "search_agent"]
TASKS = [f"t{i}" for i in range(5)]
REQUESTS = [f"r{i}" for i in range(8)]
TOOLS = ["billing.refund", "search.web", "shell.rm", "shell.ls", "crm.read"]
MAX_BOUNCES = 1
POLICY = policy_with(
    max_handoffs=None,
    max_agents_per_run=None,
    max_delegation_depth=None,
    shared_max_usd=20,
    shared_max_tool_calls=None,
    require_approval_for=[],
    max_bounces=MAX_BOUNCES,
    max_steps=30,
    reservation_ttl_seconds=150,
    release_ownership_on=["error", "cancelled"],
    tools={"block": ["shell.rm"]},
    roles={
        "billing_agent": {"tools": {"allow": ["billing.*", "search.web"]}},
        "search_agent": {"tools": {"block": ["shell.*"]}},
    },
)

#: mostly none: a refused tool on a completion stops the run, and the other rules need runs
#: that go on
tools = st.one_of(st.none(), st.none(), st.none(), st.lists(st.sampled_from(TOOLS), max_size=3))


@st.composite
def steps_of_a_run(draw: st.DrawFn) -> RunEvent | str:
    kind = draw(st.sampled_from(["handoff"] * 5 + ["done"] * 3 + ["sweep"]))
    if kind == "sweep":
        return "sweep"
    if kind == "handoff":
        return HandoffRequested(
            request_id=draw(st.sampled_from(REQUESTS)),
            run_id="run-p",
            task_id=draw(st.sampled_from(TASKS)),
            from_agent=draw(st.sampled_from(AGENTS)),
            to_agent=draw(st.sampled_from(AGENTS)),
            tools=draw(tools),
            estimated_usd=draw(st.one_of(st.none(), st.floats(0, 8, allow_nan=False))),
            event_time=at(0),
        )
    return HandoffCompleted(
        request_id=draw(st.sampled_from(REQUESTS)),
        run_id="run-p",
        task_id=draw(st.sampled_from(TASKS)),
        agent=draw(st.sampled_from(AGENTS)),
        cost_usd=draw(st.sampled_from([0.0, 0.5, 3.0])),
        steps=draw(st.integers(0, 25)),
        tools=draw(tools),
        status=draw(st.sampled_from(["ok", "ok", "error", "cancelled"])),
        event_time=at(0),
    )


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[RunEvent | str, datetime]]:
    events = draw(st.lists(steps_of_a_run(), min_size=1, max_size=40))
    clock, timed = 0, []
    asked: dict[str, HandoffRequested] = {}
    for event in events:
        clock += draw(st.integers(0, 100))
        if isinstance(event, HandoffRequested):
            asked[event.request_id] = event
        elif (
            isinstance(event, HandoffCompleted)
            and event.request_id in asked
            and draw(st.integers(0, 3))  # most reports are by the agent the request went to
        ):
            request = asked[event.request_id]
            event = event.model_copy(update={"task_id": request.task_id, "agent": request.to_agent})
        timed.append((event, at(clock)))
    return timed


def _run(
    timed: list[tuple[RunEvent | str, datetime]],
) -> tuple[RunState | None, list[tuple[RunState | None, list[Decision]]]]:
    state: RunState | None = None
    trace = []
    for event, now in timed:
        before = state
        if event == "sweep":
            decisions: list[Decision] = []
            if state is not None:
                state, decisions = expire_due(state, POLICY, now)
        else:
            state, decisions = decide(state, event, POLICY, now)  # type: ignore[arg-type]
        trace.append((before, decisions))
    return state, trace


@PROPERTY_SETTINGS
@given(histories())
def test_any_history_is_decided_and_every_stop_carries_a_fallback(timed: list) -> None:
    _, trace = _run(timed)
    for _, decisions in trace:
        for d in decisions:
            assert d.policy_version == POLICY.version
            if d.outcome == Outcome.STOP:
                assert d.fallback is not None, d


@PROPERTY_SETTINGS
@given(histories())
def test_steps_are_the_sum_of_distinct_reports(timed: list) -> None:
    state, _ = _run(timed)
    counted, steps = set(), 0
    for event, _ in timed:
        if isinstance(event, HandoffCompleted):
            report = (event.request_id, request_digest(event))
            if report not in counted:
                counted.add(report)
                steps += event.steps
    assert state is None or state.steps == steps


@PROPERTY_SETTINGS
@given(histories())
def test_a_task_changes_owner_only_after_its_owner_released_it(timed: list) -> None:
    _, trace = _run(timed)
    owner: dict[str, str] = {}  # task -> its owner by the decisions; "" released
    seen: set[str] = set()
    for _, decisions in trace:
        for d in decisions:
            if d.decision_id in seen:
                continue  # a redelivery's copy
            seen.add(d.decision_id)
            task = d.task_id or ""
            if d.outcome == Outcome.ALLOW and d.phase == Phase.PRE_HANDOFF:
                assert owner.get(task, "") in ("", d.to_agent), (owner, d)
                owner[task] = d.to_agent or ""
                assert d.owner == d.to_agent
            elif d.reason == Reason.OWNERSHIP_RELEASED:
                assert owner.get(task) == d.to_agent, (owner, d)  # only the owner releases
                owner[task] = ""


@PROPERTY_SETTINGS
@given(histories())
def test_no_reservation_outlives_its_ttl_after_a_sweep(timed: list) -> None:
    state, trace = _run(timed)
    if state is None:
        return
    later = at(10**6)
    swept, decisions = expire_due(state, POLICY, later)
    assert swept.reserved == {} and swept.reserved_usd == 0 and swept.reserved_due is None
    assert len(decisions) == len(state.reserved)
    assert all(d.reason == Reason.RESERVATION_EXPIRED for d in decisions)
    # and every expiry ever made was of a reservation that was due
    for before, out in trace:
        for d in out:
            if d.reason == Reason.RESERVATION_EXPIRED:
                assert before is not None and d.request_id in before.reserved
                expires = before.reserved[d.request_id].expires_at
                assert expires is not None and expires <= d.decided_at.timestamp()  # type: ignore[union-attr]


@PROPERTY_SETTINGS
@given(histories())
def test_no_pair_of_agents_bounces_more_than_max_bounces(timed: list) -> None:
    state, _ = _run(timed)
    if state is not None:
        assert all(n <= MAX_BOUNCES for _, n in state.bounces.values())


@PROPERTY_SETTINGS
@given(histories())
def test_no_agent_is_allowed_a_tool_its_role_refuses(timed: list) -> None:
    _, trace = _run(timed)
    limits = POLICY.multi_agent
    for (event, _), (_, decisions) in zip(timed, trace, strict=True):
        if not isinstance(event, HandoffRequested):
            continue
        for d in decisions:
            if d.outcome == Outcome.ALLOW and d.request_id == event.request_id and event.tools:
                assert limits.tool_refusal(event.to_agent, event.tools) is None, d


@PROPERTY_SETTINGS
@given(histories())
def test_the_history_decided_again_gives_the_same_decisions_and_state(timed: list) -> None:
    # replay's premise: the engine and the sweep are functions of (state, input, now)
    first, trace_a = _run(timed)
    again, trace_b = _run(timed)
    assert [d for _, out in trace_a for d in out] == [d for _, out in trace_b for d in out]
    assert (first is None and again is None) or first == again


@PROPERTY_SETTINGS
@given(histories())
def test_state_round_trips_after_every_step(timed: list) -> None:
    state: RunState | None = None
    for event, now in timed:
        if event == "sweep":
            if state is None:
                continue
            state, _ = expire_due(state, POLICY, now)
        else:
            state, _ = decide(state, event, POLICY, now)  # type: ignore[arg-type]
        raw = state.to_bytes()
        restored = RunState.from_bytes(raw)
        assert restored == state and restored.to_bytes() == raw
        assert restored.reserved_due == state.reserved_due
        assert restored.reserved_usd == pytest.approx(state.reserved_usd)
