"""The run state's format: keyed (format 4), versioned, old formats read, no field left behind.

The fixtures are literal bytes written by the format-3 engine (commit 48abde9), so a change
that stops reading what running workers have on their changelogs fails here.
"""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime
from enum import Enum
from types import UnionType
from typing import Any, Union, get_args, get_origin

import orjson
import pytest

from baton.processors.engine import decide, expire_due
from baton.processors.state import STATE_FORMAT, Reservation, RunState
from baton.processors.state_wire import DERIVED, REPLY_COLUMNS, STATE_KEYS
from baton.schemas.decision import DECISION_FIELDS, Decision, Outcome, Reason
from baton.schemas.decision_doc import decision_hints
from tests.unit.test_engine_support import (
    Run,
    at,
    granted,
    handoff,
    policy_with,
)

pytestmark = pytest.mark.unit

#: a run with a pending approval, a reservation with its expiry, bounces and a cost
#: (policy: max_bounces 3, max_steps 50, shared_max_usd 20, reservation_ttl_seconds 60,
#: require_approval_for billing.*)
FORMAT_3_STATE = (
    b'[3,"run-1","default",1772355600.0,1772355604.0,3,1.25,2,null,false,[["plan","planner","o'
    b'rchestrator",null,1],["search","search_agent","planner","plan",2],["search2","planner","'
    b'search_agent",null,1]],["orchestrator","planner","search_agent"],[["req-3",1.5,0,1772355'
    b'663.0,"search2"]],[["apr_3cd3b62bd7c20002cd647220",{"type":"handoff_requested","request_'
    b'id":"req-4","run_id":"run-1","tenant":"default","task_id":"refund","parent_task_id":null'
    b',"task_kind":null,"from_agent":"planner","to_agent":"billing","action":"billing.refund.c'
    b'reate","tool":null,"tools":null,"estimated_usd":null,"estimated_tool_calls":null,"decide'
    b'_by":null,"event_time":"2026-03-01T09:00:04Z"},1772356504.0,1772355604.0]],["h:req-1","h'
    b':req-2","c:req-2","h:req-3","h:req-4"],[["h:req-1",[["f997543f3a7483012a8bc627ac794fc3",'
    b'"req-1","run-1","default","pre_handoff","allow","ok","planner","orchestrator","planner",'
    b'"plan",null,null,1,1,0.0,0,null,null,null,null,null,"91039fb74638baa1","2026-03-01T09:00'
    b':00+00:00","2026-03-01T09:00:00+00:00",null,null,null,null,null,0.0,null,null,null,null,'
    b'null,false]]],["h:req-2",[["d6c42443c3b23d3f15998ca5c7074969","req-2","run-1","default",'
    b'"pre_handoff","allow","ok","search_agent","planner","search_agent","search","plan",null,'
    b'2,2,0.0,0,null,null,null,null,null,"91039fb74638baa1","2026-03-01T09:00:01+00:00","2026-'
    b'03-01T09:00:01+00:00",null,null,null,null,null,2.0,null,null,null,null,null,false]]],["c'
    b':req-2",[["4a665489760450d7c1a7a4552c2f3a50","req-2","run-1","default","post_handoff","r'
    b'ecorded","within_budget","search_agent","planner","search_agent","search","plan",null,2,'
    b'2,1.25,2,"ok",null,null,null,null,"91039fb74638baa1","2026-03-01T09:00:02+00:00","2026-0'
    b'3-01T09:00:02+00:00",null,null,null,null,null,0.0,null,null,null,null,null,false]]],["h:'
    b'req-3",[["934671f9d4cf86f1aa96eb9f8ad6393f","req-3","run-1","default","pre_handoff","all'
    b'ow","ok","planner","search_agent","planner","search2",null,null,1,3,1.25,2,null,null,nul'
    b'l,null,null,"91039fb74638baa1","2026-03-01T09:00:03+00:00","2026-03-01T09:00:03+00:00",n'
    b'ull,null,null,null,null,1.5,null,null,null,null,null,false]]],["h:req-4",[["5b1c930c0bce'
    b'1facf1a512a054de67ac","req-4","run-1","default","pre_handoff","approval_required","appro'
    b'val_pending",null,"planner","billing","refund",null,"billing.refund.create",1,3,1.25,2,n'
    b'ull,null,"apr_3cd3b62bd7c20002cd647220","2026-03-01T09:15:04+00:00",null,"91039fb74638ba'
    b'a1","2026-03-01T09:00:04+00:00","2026-03-01T09:00:04+00:00",null,null,null,null,null,1.5'
    b',null,"13d5352cbc99690e",null,null,null,false]]]],5,["c5b4f21ce4369cd0","df60723ab40950c'
    b'2","94e38c7652d33baa","c4045280c97d4fd9","13d5352cbc99690e"],null,"",0,[["orchestrator",'
    b'"planner","orchestrator",0],["planner","search_agent","search_agent",1]]]'
)

#: Run(): one handoff t1 planner -> worker
FORMAT_3_ONE_HANDOFF = (
    b'[3,"run-1","default",1772355600.0,1772355600.0,1,0.0,0,null,false,[["t1","worker","plann'
    b'er",null,1]],["planner","worker"],[],[],["h:req-1"],[["h:req-1",[["99c125d7f86da6c54663b'
    b'1bb25c0cdc8","req-1","run-1","default","pre_handoff","allow","ok","worker","planner","wo'
    b'rker","t1",null,null,1,1,0.0,0,null,null,null,null,null,"180feadbf1d40980","2026-03-01T0'
    b'9:00:00+00:00","2026-03-01T09:00:00+00:00",null,null,null,null,null,0.0,null,null,null,n'
    b'ull,null,false]]]],1,["27933a633ae2139b"],null,"",0,[]]'
)

#: one handoff reserving 8 USD until t=600 (test_engine_rules_reservations._reserving_run)
FORMAT_3_RESERVING = (
    b'[3,"run-1","default",1772355600.0,1772355600.0,1,0.0,0,null,false,[["search","search_age'
    b'nt","planner",null,1]],["planner","search_agent"],[["req-1",8.0,0,1772356200.0,"search"]'
    b'],[],["h:req-1"],[["h:req-1",[["738ae7be5777505098fc333cc72a445b","req-1","run-1","defau'
    b'lt","pre_handoff","allow","ok","search_agent","planner","search_agent","search",null,nul'
    b'l,1,1,0.0,0,null,null,null,null,null,"d47b44b79ae1fce2","2026-03-01T09:00:00+00:00","202'
    b'6-03-01T09:00:00+00:00",null,null,null,null,null,8.0,null,null,null,null,null,false]]]],'
    b'1,["132d2a3f997f89da"],null,"",0,[]]'
)


def _rich_policy() -> Any:
    return policy_with(
        max_bounces=3,
        max_steps=50,
        shared_max_usd=20,
        reservation_ttl_seconds=60,
        require_approval_for=["billing.*"],
    )


def test_a_stored_format_3_state_reads_every_part() -> None:
    state = RunState.from_bytes(FORMAT_3_STATE)
    assert (state.run_id, state.handoff_count, state.spent_usd, state.tool_calls) == (
        "run-1",
        3,
        1.25,
        2,
    )
    assert state.task("search") == ("search_agent", "planner", "plan", 2)
    assert state.reserved_usd == 1.5 and state.reserved_due == 1772355663.0
    assert state.reserved["req-3"].task_id == "search2"
    assert state.bounces == {
        ("orchestrator", "planner"): ("orchestrator", 0),
        ("planner", "search_agent"): ("search_agent", 1),
    }
    [pending] = state.pending.values()
    assert pending.request.action == "billing.refund.create"
    assert state.seen_keys() == ["h:req-1", "h:req-2", "c:req-2", "h:req-3", "h:req-4"]
    assert state.digest_of("h:req-4") == "13d5352cbc99690e"
    [asked] = state.replies("h:req-4") or []
    assert asked.outcome == Outcome.APPROVAL_REQUIRED and asked.approval_id == pending.approval_id


def test_a_stored_format_3_state_decides_on_and_is_written_back_as_format_4() -> None:
    state = RunState.from_bytes(FORMAT_3_STATE)
    policy = _rich_policy()
    # a retry of a stored request is answered from the stored replies
    same, [again] = decide(
        state,
        handoff(
            "req-2",
            "search",
            "planner",
            "search_agent",
            parent_task_id="plan",
            estimated_usd=2,
            t=1,
        ),
        policy,
        at(5),
    )
    assert same is state and again.request_id == "req-2" and again.outcome == Outcome.ALLOW
    # the approver grants the pending approval
    [pending] = state.pending.values()
    st, [allowed] = decide(state, granted(pending.approval_id, "finance", t=6), policy, at(6))
    assert allowed.reason == Reason.APPROVAL_GRANTED
    # the reservation expires at its stored time
    st, [expired] = expire_due(st, policy, at(63))
    assert expired.reason == Reason.RESERVATION_EXPIRED
    wire = orjson.loads(st.to_bytes())
    assert wire["v"] == STATE_FORMAT == 4
    assert RunState.from_bytes(st.to_bytes()) == st


def test_format_1_and_2_states_read_without_what_they_lack() -> None:
    three = orjson.loads(FORMAT_3_RESERVING)
    two = three[:20]  # format 2: no steps, no bounces, reservations without expiry or task
    two[0] = 2
    two[12] = [row[:3] for row in three[12]]
    state = RunState.from_wire(two)
    assert state.reserved_usd == 8 and state.reserved_due is None and state.steps == 0
    one = orjson.loads(FORMAT_3_ONE_HANDOFF)[:17]  # format 1 (Baton 0.1): no digests
    one[0] = 1
    old = RunState.from_wire(one)
    assert old.seen_keys() == ["h:req-1"] and old.digest_of("h:req-1") is None
    assert old.evicted_at is None and old.task("t1") == ("worker", "planner", None, 1)


# ------------------------------------------------------------------ nothing left behind


def _rich_state() -> RunState:
    """A state with every field away from its empty value."""
    state = RunState.from_bytes(FORMAT_3_STATE)
    run = Run(_rich_policy())
    run.state = state
    run.clock = 10
    run.complete(state.replies("h:req-2")[0], cost_usd=0.5, t=10)  # type: ignore[index]
    assert run.state is not None
    st = run.state.copy()
    for i in range(40):  # past a fold of the dedup marks: ``seen`` and ``digests`` too
        st.remember(f"c:x{i}", st.replies("h:req-1") or [], f"{i:016x}")
    st.stopped = Reason.SHARED_BUDGET_EXCEEDED
    st.set_reserved({**st.reserved, "req-9": Reservation(0.0, 4, None, "search")})
    st.finished = True
    st.steps = 7
    st.evicted_at = 1772355700.0
    st.chain_head = "c0ffee"
    st.grants = {"req-4": ("refund", "billing", ("billing.refund.create",))}
    st.add_task("late", st.task("plan")._replace(owner="writer"))  # type: ignore[union-attr]
    st.life = "r0:17"
    st.read_partition, st.read_requests, st.read_approvals = 3, 2**40, 9
    st.forwarded = (0, 5, 77, -1, 1, 6, 2**40, 2**62 + 5)
    return st


#: RunState fields whose restored layout may differ (same meaning): compared through these
_VIEWS = {
    "tasks": lambda s: {k: s.task(k) for k in {**s.tasks, **s.new_tasks}},
    "new_tasks": lambda s: None,
    "seen": lambda s: s.seen_keys(),
    "fresh": lambda s: [s.digest_of(k) for k in s.seen_keys()],
    "digests": lambda s: [s.digest_of(k) for k in s.seen_keys()],
    # a reply is held packed once its state was written, as JSON when read back
    "recent": lambda s: [(k, s.replies(k)) for k in s.recent_keys()],
}


def test_every_run_state_field_has_a_key_or_is_derived() -> None:
    names = {f.name for f in fields(RunState)}
    missing = names - set(STATE_KEYS) - DERIVED
    assert not missing, (
        f"RunState fields {sorted(missing)} are not written: give each a key in "
        "state_wire.STATE_KEYS and carry it through to_wire / _from_map (readers of older "
        "states must take its empty value)"
    )
    assert not (set(STATE_KEYS) | DERIVED) - names
    assert len(set(STATE_KEYS.values())) == len(STATE_KEYS)


def test_every_run_state_field_survives_the_round_trip() -> None:
    state = _rich_state()
    empty = RunState.new("x", "y", 0.0)
    for f in fields(RunState):
        if f.name not in ("run_id", "tenant", "started_at", "new_tasks"):
            assert getattr(state, f.name) != getattr(empty, f.name), (
                f"_rich_state leaves RunState.{f.name} empty: set it, so this test checks "
                "that it is carried through the state's bytes"
            )
    back = RunState.from_bytes(state.to_bytes())
    for f in fields(RunState):
        view = _VIEWS.get(f.name, lambda s, n=f.name: getattr(s, n))
        assert view(back) == view(state), f"RunState.{f.name} changed in the round trip"


def _value_for(name: str, annotation: Any, i: int) -> Any:
    """A value of ``annotation`` unlike the field's default (distinct per field)."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    kind = args[0] if get_origin(annotation) in (Union, UnionType) else annotation
    if isinstance(kind, type) and issubclass(kind, Enum):
        return list(kind)[-1]
    if kind is bool:
        return True
    if kind is int:
        return 1000 + i
    if kind is float:
        return 0.5 + i
    if kind is datetime:
        return datetime(2026, 3, 1, 9, 0, i, 250_000, tzinfo=UTC)
    assert kind is str, f"Decision.{name}: no test value for {annotation}; add one here"
    return f"{name}-value"


def test_every_decision_field_survives_the_round_trip_of_a_stored_reply() -> None:
    hints = decision_hints()  # (get_type_hints of Decision's twin: a compiled one has none)
    values = {f: _value_for(f, hints[f], i) for i, f in enumerate(DECISION_FIELDS)}
    decision = Decision(**values)
    state = RunState.new("run-1", "default", 0.0)
    state.remember("h:r", [decision])
    state.remember("h:s", [decision, decision])
    back = RunState.from_bytes(state.to_bytes())
    assert back.replies("h:r") == [decision] and back.replies("h:s") == [decision, decision]


def test_decision_fields_are_the_frozen_reply_columns() -> None:
    # not a correctness guard (a writer with other fields names its columns in each state
    # and readers map them by name) but a size one: ~450 bytes more per state
    assert DECISION_FIELDS == REPLY_COLUMNS, (
        "Decision's fields changed: every state now carries its reply column names; add a "
        "state format whose REPLY_COLUMNS are the new fields"
    )


def test_replies_are_read_by_column_name_and_a_column_this_reader_lacks_is_refused() -> None:
    state = RunState.from_bytes(FORMAT_3_ONE_HANDOFF)
    wire = orjson.loads(state.to_bytes())
    cols = list(REPLY_COLUMNS)
    order = sorted(range(len(cols)), key=lambda i: cols[i])  # another column order
    wire["cols"] = [cols[i] for i in order]
    for _, rows in wire["rec"]:
        rows[:] = [[row[i] for i in order] for row in rows]
    assert RunState.from_wire(orjson.loads(orjson.dumps(wire))) == state
    wire["cols"] = [*wire["cols"][:-1], "renamed_field"]
    with pytest.raises(ValueError, match="renamed_field"):
        RunState.from_wire(wire)


def test_a_newer_state_with_keys_this_reader_does_not_know_still_reads() -> None:
    wire = orjson.loads(RunState.from_bytes(FORMAT_3_ONE_HANDOFF).to_bytes())
    wire["zz"] = {"a": 1}
    assert RunState.from_wire(wire).handoff_count == 1


@pytest.mark.parametrize("bad", [b"[]", b"{}", b'{"v":"4"}', b"[7]", b"3"])
def test_a_record_of_no_known_format_is_refused_naming_what_it_is(bad: bytes) -> None:
    with pytest.raises(ValueError, match="run state format"):
        RunState.from_bytes(bad)
