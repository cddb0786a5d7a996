"""RunState survives the trip through the table changelog (to_bytes / from_bytes) intact."""

from __future__ import annotations

from dataclasses import fields

import orjson
import pytest

from baton.processors.chain import link
from baton.processors.engine import decide
from baton.processors.state import EMPTY, FRESH_LIMIT, SEEN_LIMIT, TASK_FOLD, RunState
from baton.schemas.decision import Outcome, Reason
from baton.schemas.events import parse_event
from tests.unit.test_engine_support import (
    Run,
    at,
    completed,
    finished,
    handoff,
    policy_with,
)

pytestmark = pytest.mark.unit


def _busy_run() -> Run:
    """A run whose state has something in every field: tasks, reservations, a pending
    approval, a sticky stop, recent replies with shadow outcomes and fallbacks."""
    run = Run(policy_with(fallback_by_reason={"ownership_conflict": "constrained"}))
    root = run.handoff("plan", "orchestrator", "planner", estimated_usd=5, estimated_tool_calls=9)
    run.handoff(
        "refund_check", "planner", "billing_agent", parent_task_id="plan", t=1, estimated_usd=3
    )
    run.complete(root, cost_usd=1.5, tool_calls=2, status="error", t=2)
    run.handoff("refund_check", "planner", "support_agent", t=3)  # ownership conflict
    run.handoff(
        "refund_create",
        "planner",
        "billing_agent",
        action="billing.refund.create",
        t=4,
        estimated_usd=2.0,
    )  # pending approval
    # an event parsed from the wire (pydantic's own UTC tzinfo in its event_time)
    raw = (
        b'{"type":"handoff_requested","request_id":"wire-1","run_id":"run-1","task_id":"w",'
        b'"from_agent":"planner","to_agent":"billing_agent","tool":"search.web",'
        b'"event_time":"2026-03-01T09:00:05.250+00:00"}'
    )
    run.send(parse_event(raw, b"run-1"), 5)
    return run


def test_state_round_trips_through_bytes() -> None:
    state = _busy_run().state
    assert state is not None and state.pending and state.reserved and state.recent

    restored = RunState.from_bytes(state.to_bytes())

    assert restored == state
    assert restored.to_bytes() == state.to_bytes()


def test_restored_state_decides_exactly_like_the_original() -> None:
    run = _busy_run()
    assert run.state is not None
    restored = RunState.from_bytes(run.state.to_bytes())
    events = [
        handoff("req-after", "summary", "planner", "writer", t=6),
        finished(t=7),
        # a redelivery answered from the recent replies
        handoff("req-4", "refund_check", "planner", "support_agent", t=3),
    ]
    a, b = run.state, restored
    for event in events:
        a, out_a = decide(a, event, run.policy, at(10))
        b, out_b = decide(b, event, run.policy, at(10))
        assert out_a == out_b
        assert a.to_bytes() == b.to_bytes()


def test_state_of_a_stopped_run_round_trips_with_its_reason() -> None:
    run = Run(policy_with(max_handoffs=1))
    run.handoff("t1", "planner", "worker")
    run.handoff("t2", "planner", "worker")
    assert run.state is not None and run.state.stopped == "handoff_budget_exceeded"
    assert RunState.from_bytes(run.state.to_bytes()).stopped == "handoff_budget_exceeded"


def test_state_is_compact() -> None:
    run = Run()
    for i in range(8):
        d = run.handoff(f"task-{i}", "planner", f"agent-{i % 3}")
        run.complete(d, cost_usd=0.5, tool_calls=3)
    assert run.state is not None
    # eight tasks and their completions, six replies kept verbatim: a few KB, not tens
    assert len(run.state.to_bytes()) < 8_000


def test_state_of_an_unknown_format_is_refused() -> None:
    state, _ = decide(None, handoff("r", "t", "a", "b"), Run().policy, at(0))
    wire = orjson.loads(state.to_bytes())
    wire["v"] = 99
    with pytest.raises(ValueError, match="format 99"):
        RunState.from_wire(wire)
    with pytest.raises(ValueError, match="format 99"):
        RunState.from_wire([99, *range(21)])


def test_copy_shares_nothing_that_decide_changes() -> None:
    run = Run()
    run.handoff("t1", "planner", "worker")
    assert run.state is not None
    before = run.state.to_bytes()
    decide(run.state, handoff("r2", "t2", "planner", "other", t=1), run.policy, at(1))
    assert run.state.to_bytes() == before


def test_copy_carries_every_field_and_owns_its_dedup_marks() -> None:
    state = _busy_run().state
    assert state is not None and state.reserved_usd
    twin = state.copy()
    for f in fields(RunState):  # a field copy() missed raises AttributeError here
        if f.name != "seq":
            assert getattr(twin, f.name) == getattr(state, f.name), f.name
    assert twin.seq == state.seq + 1  # the changelog's order (processors/state_gate.py)
    marks = (state.fresh_keys(), state.fresh_digests())
    twin.remember("h:only-the-twin", [])  # the copy shares fresh until it changes it
    assert twin.has_seen("h:only-the-twin") and not state.has_seen("h:only-the-twin")
    assert (state.fresh_keys(), state.fresh_digests()) == marks


def test_new_sets_every_field_as_the_constructor_would() -> None:
    # RunState.new fills the slots one by one (the dataclass's __init__ is interpreted even
    # compiled): a field it missed raises AttributeError here, a wrong start differs
    e = EMPTY
    made = RunState.new("run-1", "acme", 5.0, "life")
    built = RunState(
        "run-1", "acme", 5.0, 5.0, 0, 0.0, 0, None, False, e, e, e, e, e, e, e, 0, (),
        0.0, 0, e, None, "", 0, e, None, e, "life", -1, -1, -1, (), 5000 << 16,
    )  # fmt: skip
    for f in fields(RunState):
        assert getattr(made, f.name) == getattr(built, f.name), f.name
    assert made.to_bytes() == built.to_bytes()


def test_dedup_marks_round_trip_at_every_fold_position_and_window_edge() -> None:
    # marks are folded into the shared dict every FRESH_LIMIT keys and the window drops the
    # oldest past SEEN_LIMIT: a state restored at any point must dedup exactly as the
    # original, and keep doing so as both go on
    run = Run(policy_with(shared_max_usd=None, shared_max_tool_calls=None))
    keys = []
    for i in range(SEEN_LIMIT + 2 * FRESH_LIMIT + 3):
        run.send(completed(f"req-c{i}", "t1", "worker", cost_usd=0.01))
        keys.append(f"c:req-c{i}")
        state = run.state
        assert state is not None
        restored = RunState.from_bytes(state.to_bytes())
        assert restored == state and restored.marks == state.marks == i + 1
        assert restored.fresh_keys() == state.fresh_keys()
        assert restored.fresh_digests() == state.fresh_digests()
        assert len(state.fresh_keys()) == (i + 1) % FRESH_LIMIT
        for back in (0, 1, FRESH_LIMIT, SEEN_LIMIT - 1, SEEN_LIMIT, SEEN_LIMIT + 1):
            if back <= i:
                key = keys[i - back]
                assert restored.has_seen(key) == state.has_seen(key) == (back < SEEN_LIMIT)
    assert state.seen_keys() == keys[-SEEN_LIMIT:]


def test_a_key_remembered_again_inside_the_window_keeps_its_one_mark() -> None:
    # an approval's key is remembered a second time when a request re-opens the approval
    # after the request's own key left the window and the approval expires: that must not
    # take a second place in the window (H1's grant record now refuses the re-sent request
    # of a granted approval, so the engine path is gone; the state's rule stays)
    run = Run()
    [first] = run.send(handoff("r0", "t", "planner", "coder"))
    [second] = run.send(handoff("r1", "u", "planner", "coder"), 1)
    state = RunState.new("run-1", "default", 0.0)
    state.remember("a:apr", [first])
    for i in range(SEEN_LIMIT - 2):
        state.remember(f"c:c{i}", [])
    marks = state.marks
    state.remember("a:apr", [second])
    keys = state.seen_keys()
    assert state.marks == marks and len(keys) == len(set(keys)) == SEEN_LIMIT - 1
    assert keys[0] == "a:apr" and state.replies("a:apr") == [second]
    restored = RunState.from_bytes(state.to_bytes())
    assert restored == state and restored.has_seen("a:apr")
    state.remember("c:last", [])
    state.remember("c:past", [])
    assert not state.has_seen("a:apr")  # still its first mark: the window moved past it


def test_a_task_tree_past_several_merges_reads_round_trips_and_stays_pure() -> None:
    # new tasks go to a small dict merged into the shared one every TASK_FOLD tasks
    run = Run(policy_with(max_handoffs=None, max_delegation_depth=None, max_agents_per_run=None))
    before: list[tuple[RunState, bytes]] = []
    for i in range(3 * TASK_FOLD + 1):
        if run.state is not None:
            before.append((run.state, run.state.to_bytes()))
        parent = f"t{i - 1}" if i else None
        d = run.one(handoff(f"r{i}", f"t{i}", "planner", f"agent{i % 3}", parent_task_id=parent))
        assert d.outcome == Outcome.ALLOW and d.depth == i + 1
    state = run.state
    assert state is not None and len(state.new_tasks) == 1  # merged at 32, 64 and 96 tasks
    for i in range(3 * TASK_FOLD + 1):
        node = state.task(f"t{i}")
        assert node is not None and node.owner == f"agent{i % 3}" and node.depth == i + 1
    restored = RunState.from_bytes(state.to_bytes())
    assert restored == state and restored.task(f"t{TASK_FOLD}") == state.task(f"t{TASK_FOLD}")
    # an owned task handed to someone else is still refused across the merges
    assert run.one(handoff("again", "t0", "planner", "other")).reason == Reason.OWNERSHIP_CONFLICT
    for earlier, raw in before:
        assert earlier.to_bytes() == raw


def _linked_run() -> Run:
    """A run whose decisions are linked into its chain after each step, as the worker does."""
    run = Run(policy_with(shared_max_usd=20))
    for i, (task, giver, taker) in enumerate([("t1", "planner", "coder"), ("t2", "coder", "qa")]):
        decisions = run.send(handoff(f"r{i}", task, giver, taker, estimated_usd=1.0), i)
        link(run.state, decisions, b"key")  # type: ignore[arg-type]
        done = run.send(completed(f"r{i}", task, taker, cost_usd=0.5), i)
        link(run.state, done, b"key")  # type: ignore[arg-type]
    return run


def test_empty_containers_are_one_shared_object_that_refuses_changes() -> None:
    containers = ("tasks", "new_tasks", "agents", "reserved", "pending", "seen", "fresh")
    containers += ("digests", "bounces")
    run = Run()
    run.handoff("t1", "planner", "worker")
    assert run.state is not None
    tomb = run.state.tombstone(10.0)
    for state in (RunState.new("run-9", "acme", 0.0), tomb, RunState.from_bytes(tomb.to_bytes())):
        for name in containers:
            assert getattr(state, name) is EMPTY, name
    restored = RunState.from_bytes(run.state.to_bytes())
    assert restored.reserved is restored.pending is restored.bounces is EMPTY
    with pytest.raises(TypeError, match="shared by every state"):
        EMPTY["t1"] = None
    with pytest.raises(TypeError, match="shared by every state"):
        EMPTY.update(t1=None)
    assert not EMPTY


def test_linked_replies_are_held_as_their_rows_and_answer_a_redelivery_alike() -> None:
    run = _linked_run()
    state = run.state
    assert state is not None
    kept = {k: state.replies(k) for k in state.recent_keys()}
    raw = state.to_bytes()
    assert all(type(state.recent[i]) is bytes for i in range(1, len(state.recent), 2))
    restored = RunState.from_bytes(raw)
    assert all(type(restored.recent[i]) is bytes for i in range(1, len(restored.recent), 2))
    for held in (state, restored):
        assert {k: held.replies(k) for k in held.recent_keys()} == kept
        assert held.to_bytes() == raw
    # a redelivered completion is answered from the held rows: the same decision, linked
    again = decide(restored, completed("r1", "t2", "qa", cost_usd=0.5), run.policy, at(5))
    assert again[0] is restored and again[1] == kept["c:r1"]
    assert again[1][0].chain_hash is not None and restored.spent_usd == 1.0


def test_a_reply_not_linked_yet_stays_a_decision_until_it_is() -> None:
    # the worker links a step's decisions after the engine remembered them: bytes made
    # before the link would lose it
    run = Run()
    [d] = run.send(handoff("r1", "t1", "planner", "coder"))
    state = run.state
    assert state is not None
    state.to_bytes()
    assert state.recent[1] is d
    link(state, [d], b"")
    state.to_bytes()
    assert type(state.recent[1]) is bytes and state.replies("h:r1") == [d]


def test_decoded_states_share_their_names() -> None:
    one, two = (_linked_run().state for _ in range(2))
    assert one is not None and two is not None
    a, b = RunState.from_bytes(one.to_bytes()), RunState.from_bytes(two.to_bytes())
    assert a.tenant is b.tenant
    assert [x is y for x, y in zip(a.agents, b.agents, strict=True)] == [True] * 3
    node_a, node_b = a.task("t2"), b.task("t2")
    assert node_a is not None and node_b is not None
    assert node_a.owner is node_b.owner and node_a.giver is node_b.giver
    assert node_a.parent is None or node_a.parent is node_b.parent


def test_a_held_reply_row_that_is_no_decision_is_refused_when_the_state_is_read() -> None:
    wire = orjson.loads(_linked_run().state.to_bytes())  # type: ignore[union-attr]
    wire["rec"][0][1][0][4] = "no_such_phase"
    with pytest.raises(ValueError, match="reply column phase"):
        RunState.from_bytes(orjson.dumps(wire))
    wire["rec"][0][1][0] = wire["rec"][0][1][0][:-1]
    with pytest.raises(ValueError, match="values for"):
        RunState.from_bytes(orjson.dumps(wire))
