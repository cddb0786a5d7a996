"""reservation_ttl_seconds: an estimate no completion settles is released, and says so."""

from __future__ import annotations

import orjson
import pytest

from baton.processors.engine import decide, expire_due, next_due
from baton.processors.state import RunState
from baton.schemas.decision import Outcome, Phase, Reason
from tests.unit.test_engine_support import Run, at, completed, handoff, policy_with
from tests.unit.test_state_format import FORMAT_3_RESERVING

pytestmark = pytest.mark.unit


def _reserving_run(ttl: float | None = 600) -> Run:
    run = Run(policy_with(shared_max_usd=10, reservation_ttl_seconds=ttl))
    first = run.handoff("search", "planner", "search_agent", estimated_usd=8)
    assert first.outcome == Outcome.ALLOW and first.reserved_usd == 8
    return run


def test_a_reservation_blocks_the_budget_until_its_ttl_then_is_released_by_the_sweep() -> None:
    run = _reserving_run()
    blocked = run.handoff("write", "planner", "writer", estimated_usd=5, t=10)
    assert (blocked.outcome, blocked.reason) == (Outcome.STOP, Reason.SHARED_BUDGET_EXCEEDED)
    assert run.state is not None

    same, nothing = expire_due(run.state, run.policy, at(599.9))
    assert nothing == [] and same is run.state
    swept, [released] = expire_due(run.state, run.policy, at(600))

    assert (released.phase, released.outcome, released.reason) == (
        Phase.CONTROL,
        Outcome.RECORDED,
        Reason.RESERVATION_EXPIRED,
    )
    assert released.request_id == "req-1" and released.task_id == "search"
    assert released.owner == "search_agent" and released.reserved_usd == 0
    assert "8 USD" in (released.detail or "") and "reservation_ttl_seconds" in released.detail
    assert swept.reserved == {} and run.state.reserved  # pure: the input state is unchanged
    run.state = swept
    after = run.handoff("write", "planner", "writer", estimated_usd=5, t=601)
    assert after.outcome == Outcome.ALLOW


def test_the_next_event_after_the_ttl_releases_it_too_and_decides_on_the_freed_budget() -> None:
    run = _reserving_run()
    released, allowed = run.send(
        handoff("req-9", "write", "planner", "writer", estimated_usd=5, t=700), 700
    )
    assert (released.reason, allowed.outcome) == (Reason.RESERVATION_EXPIRED, Outcome.ALLOW)


def test_a_completion_before_the_ttl_settles_it_and_nothing_expires() -> None:
    run = _reserving_run()
    first = run.state.replies("h:req-1")[0]  # type: ignore[union-attr,index]
    run.complete(first, cost_usd=3, t=100)
    assert run.state is not None and run.state.reserved == {} and run.state.reserved_due is None
    assert expire_due(run.state, run.policy, at(10_000))[1] == []


def test_a_late_completion_after_expiry_still_counts_its_cost() -> None:
    run = _reserving_run()
    first = run.state.replies("h:req-1")[0]  # type: ignore[union-attr,index]
    run.state, _ = expire_due(run.state, run.policy, at(600))  # type: ignore[arg-type]
    late = run.complete(first, cost_usd=11, t=700)
    assert (late.outcome, late.reason, late.spent_usd) == (
        Outcome.STOP,
        Reason.SHARED_BUDGET_EXCEEDED,
        11,
    )


def test_without_a_ttl_a_reservation_is_held_until_the_completion() -> None:
    run = _reserving_run(ttl=None)
    assert run.state is not None and run.state.reserved_due is None
    assert expire_due(run.state, run.policy, at(10**7))[1] == []


def test_the_sweep_is_due_at_the_earliest_reservation_expiry() -> None:
    run = _reserving_run()
    run.handoff("other", "planner", "writer", estimated_usd=1, t=50)
    assert run.state is not None
    assert next_due(run.state, retention_s=86_400, tombstone_retention_s=86_400) == (
        at(600).timestamp()
    )


def test_expiry_is_the_same_decision_whenever_it_is_replayed() -> None:
    run = _reserving_run()
    assert run.state is not None
    _, [a] = expire_due(run.state, run.policy, at(650))
    _, [b] = expire_due(RunState.from_bytes(run.state.to_bytes()), run.policy, at(650))
    assert a == b
    # released by the run's next event instead of the sweep: the same decision id (the audit
    # keeps one), and the late completion of the same request gets its own
    late, done = run.send(completed("req-1", "search", "search_agent", 1.0, t=700), 700)
    assert late.decision_id == a.decision_id and late.reason == Reason.RESERVATION_EXPIRED
    assert done.decision_id != a.decision_id and done.reason == Reason.WITHIN_BUDGET


def test_a_format_2_state_reads_with_reservations_that_never_expire() -> None:
    run = _reserving_run()
    wire = orjson.loads(FORMAT_3_RESERVING)  # the same run, stored by the format-3 engine
    old = wire[:20]  # what format 2 wrote: no steps, no bounces
    old[0] = 2
    old[12] = [row[:3] for row in wire[12]]  # [request_id, usd, tool_calls]
    state = RunState.from_wire(old)
    assert state.reserved_usd == 8 and state.reserved_due is None and state.steps == 0
    assert expire_due(state, run.policy, at(10**7))[1] == []
    # and it is written back in the current format
    assert RunState.from_bytes(state.to_bytes()) == state


def test_a_report_after_the_ttl_is_the_only_post_handoff_record_of_its_request() -> None:
    # the SDK matches its report's answer by request_id and phase: the expiry, decided just
    # before it, must not be taken for it (here the report goes over budget: a stop)
    run = _reserving_run()
    released, done = run.send(completed("req-1", "search", "search_agent", 11.0, t=700), 700)
    assert released.reason == Reason.RESERVATION_EXPIRED and released.phase == Phase.CONTROL
    answers = [d for d in (released, done) if (d.request_id, d.phase) == ("req-1", "post_handoff")]
    assert answers == [done] and done.outcome == Outcome.STOP


#: a run state written by Baton before format 3 (``STATE_FORMAT = 2``, decided by the engine of
#: commit bf0a738^): a reservation of 4 USD by r1, r2 completed for 1.5 USD
FORMAT_2_STATE = (
    b'[2,"run-old","default",1772355600.0,1772355602.0,2,1.5,2,null,false,[["plan","planner","'
    b'orchestrator",null,1],["search","search_agent","planner","plan",2]],["orchestrator","pla'
    b'nner","search_agent"],[["r1",4.0,0]],[],["h:r1","h:r2","c:r2"],[["h:r1",[["a8f37681adf2b'
    b'9a17833c14c6eff2bb3","r1","run-old","default","pre_handoff","allow","ok","planner","orch'
    b'estrator","planner","plan",null,null,1,1,0.0,0,null,null,null,null,null,"f0db3be5a14f035'
    b'd","2026-03-01T09:00:00+00:00","2026-03-01T09:00:00+00:00",null,null,null,null,null,4.0,'
    b'null,null,null,null,null,false]]],["h:r2",[["2c721723eaed4f6ad8792f1240cfd644","r2","run'
    b'-old","default","pre_handoff","allow","ok","search_agent","planner","search_agent","sear'
    b'ch","plan",null,2,2,0.0,0,null,null,null,null,null,"f0db3be5a14f035d","2026-03-01T09:00:'
    b'00+00:00","2026-03-01T09:00:01+00:00",null,null,null,null,null,4.0,null,null,null,null,n'
    b'ull,false]]],["c:r2",[["3480aa47248b4d1aa8f0ce3f46d5b3da","r2","run-old","default","post'
    b'_handoff","recorded","within_budget","search_agent","planner","search_agent","search","p'
    b'lan",null,2,2,1.5,2,"ok",null,null,null,null,"f0db3be5a14f035d","2026-03-01T09:00:00+00:'
    b'00","2026-03-01T09:00:02+00:00",null,null,null,null,null,4.0,null,null,null,null,null,fa'
    b'lse]]]],3,["7717f36d76f23dba","8d768d6c771f06eb","3f416e9426d7c108"],null,""]'
)


def test_a_stored_format_2_state_reads_and_decides_on() -> None:
    state = RunState.from_bytes(FORMAT_2_STATE)
    assert (state.handoff_count, state.spent_usd, state.reserved_usd, state.steps) == (2, 1.5, 4, 0)
    assert state.reserved_due is None and state.bounces == {}
    assert state.task("search") == ("search_agent", "planner", "plan", 2)
    policy = policy_with(shared_max_usd=10, reservation_ttl_seconds=60)
    assert expire_due(state, policy, at(10**6))[1] == []  # its reservation has no expiry
    st, [stop] = decide(
        state,
        handoff("r3", "w", "planner", "writer", run_id="run-old", estimated_usd=6),
        policy,
        at(3),
    )
    assert (stop.reason, stop.detail) == (
        Reason.SHARED_BUDGET_EXCEEDED,
        "spent+reserved+estimate 11.5000 > shared_max_usd 10",
    )
    st, [released] = decide(
        st,
        completed("r2b", "search", "search_agent", status="error", run_id="run-old"),
        policy,
        at(4),
    )
    assert released.reason == Reason.OWNERSHIP_RELEASED
    assert RunState.from_bytes(st.to_bytes()) == st and st.to_wire()["v"] == 4
