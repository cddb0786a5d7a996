"""Run control and delivery: kill switches, sticky stops, fallbacks, shadow mode, tenants,
policy versions, deterministic ids, idempotency, bounded memory and eviction."""

from __future__ import annotations

import orjson
import pytest

from baton.processors.engine import (
    NO_KILLS,
    Origin,
    apply_control,
    approval_id_for,
    decide,
    evict,
    is_evictable,
    refuse,
    request_digest,
)
from baton.processors.state import MAX_PENDING_APPROVALS, RECENT_REPLIES, SEEN_LIMIT, RunState
from baton.processors.sweep import DueIndex
from baton.schemas.decision import Decision, Fallback, Outcome, Phase, Reason, decision_id_for
from baton.schemas.events import KillSwitch, KillSwitchReleased, RunEvent
from tests.unit.test_engine_support import (
    Run,
    at,
    completed,
    finished,
    granted,
    handoff,
    policy_with,
    seed_policy,
)
from tests.unit.test_state_format import FORMAT_3_ONE_HANDOFF

pytestmark = pytest.mark.unit


def _kill(scope: str, t: float = 0, **target: str) -> KillSwitch:
    return KillSwitch(scope=scope, operator="oncall", reason="runaway", event_time=at(t), **target)


def _release(scope: str, t: float = 0, **target: str) -> KillSwitchReleased:
    return KillSwitchReleased(scope=scope, operator="oncall", event_time=at(t), **target)


# ------------------------------------------------------------------ kill switch


@pytest.mark.parametrize(
    ("scope", "target"),
    [("run", {"run_id": "run-1"}), ("tenant", {"tenant": "acme"}), ("global", {})],
)
def test_kill_switch_stops_every_handoff_of_its_scope(scope: str, target: dict[str, str]) -> None:
    policy = seed_policy()
    kills, record = apply_control(NO_KILLS, _kill(scope, **target), policy, at(0))
    assert record.phase == Phase.CONTROL and record.reason == Reason.KILL_SWITCH
    assert record.approver == "oncall" and record.policy_version == policy.version

    run = Run(policy, run_id="run-1", tenant="acme")
    run.kills = kills
    d = run.handoff("t1", "planner", "worker")

    assert d.outcome == Outcome.STOP and d.reason == Reason.KILLED
    assert d.fallback == Fallback.SINGLE_AGENT
    assert run.state is not None and run.state.handoff_count == 0


def test_kill_switch_of_one_run_or_tenant_leaves_the_others_alone() -> None:
    policy = seed_policy()
    kills, _ = apply_control(NO_KILLS, _kill("run", run_id="run-1"), policy, at(0))
    kills, _ = apply_control(kills, _kill("tenant", tenant="acme"), policy, at(1))
    other = Run(policy, run_id="run-2", tenant="globex")
    other.kills = kills
    assert other.handoff("t1", "planner", "worker").outcome == Outcome.ALLOW


def test_released_kill_switch_lets_the_run_continue() -> None:
    policy = seed_policy()
    run = Run(policy)
    run.kills, _ = apply_control(NO_KILLS, _kill("global"), policy, at(0))
    assert run.handoff("t1", "planner", "worker").reason == Reason.KILLED

    run.kills, record = apply_control(run.kills, _release("global", t=5), policy, at(5))

    assert record.reason == Reason.KILL_SWITCH_RELEASED
    assert not run.kills
    assert run.handoff("t2", "planner", "worker", t=6).outcome == Outcome.ALLOW


def test_kill_switch_comes_before_every_other_rule() -> None:
    run = Run()
    for i in range(9):
        run.handoff(f"t{i}", "planner", "worker")  # the 9th stops the run for good
    run.kills, _ = apply_control(NO_KILLS, _kill("run", run_id="run-1"), run.policy, at(0))
    assert run.handoff("t-next", "planner", "worker").reason == Reason.KILLED


# ------------------------------------------------------------------ sticky stop


def test_non_sticky_stop_refuses_one_handoff_and_the_run_goes_on() -> None:
    run = Run()
    run.handoff("refund_check", "planner", "billing_agent")
    assert run.handoff("refund_check", "planner", "support_agent").outcome == Outcome.STOP
    assert run.state is not None and run.state.stopped is None
    assert run.handoff("ticket", "planner", "support_agent").outcome == Outcome.ALLOW


def test_stopped_run_keeps_its_original_reason_whatever_comes_next() -> None:
    run = Run()
    for i in range(9):
        run.handoff(f"t{i}", "planner", "worker")  # the 9th stops the run
    # a request that would also break an earlier rule (agent limit) gets the original reason
    d = run.handoff("t-new", "newcomer_1", "newcomer_2")
    assert d.outcome == Outcome.STOP and d.reason == Reason.HANDOFF_BUDGET_EXCEEDED
    assert d.detail == "run already stopped"


def test_stopped_run_stays_stopped_after_the_policy_is_relaxed() -> None:
    run = Run(policy_with(max_handoffs=1))
    run.handoff("t1", "planner", "worker")
    assert run.handoff("t2", "planner", "worker").reason == Reason.HANDOFF_BUDGET_EXCEEDED

    run.policy = policy_with(max_handoffs=100)  # hot reload
    d = run.handoff("t3", "planner", "worker")

    assert d.outcome == Outcome.STOP and d.reason == Reason.HANDOFF_BUDGET_EXCEEDED


def test_stopped_run_also_refuses_a_grant_that_was_pending() -> None:
    run = Run()
    d = run.handoff("refund", "planner", "billing_agent", action="billing.refund.create")
    for i in range(9):
        run.handoff(f"t{i}", "planner", "worker")  # the 9th handoff stops the run
    [g] = run.grant(d.approval_id or "", "finance_lead")
    assert g.outcome == Outcome.STOP and g.reason == Reason.HANDOFF_BUDGET_EXCEEDED


def test_finished_run_refuses_further_handoffs() -> None:
    run = Run()
    run.handoff("t1", "planner", "worker")
    [record] = run.send(finished(t=1), 1)
    assert record.phase == Phase.CONTROL and record.reason == Reason.RUN_FINISHED
    d = run.handoff("t2", "planner", "worker", t=2)
    assert d.outcome == Outcome.STOP and d.reason == Reason.RUN_FINISHED


# ------------------------------------------------------------------ fallback


def test_fallback_by_reason_overrides_the_default_fallback() -> None:
    run = Run(policy_with(fallback_by_reason={"ownership_conflict": "constrained"}))
    run.handoff("refund_check", "planner", "billing_agent")
    run.handoff("lookup", "planner", "search_agent")
    conflict = run.handoff("refund_check", "planner", "support_agent")
    agent_limit = run.handoff("t2", "x1", "x2")  # 5 agents
    assert conflict.fallback == Fallback.CONSTRAINED
    assert agent_limit.reason == Reason.AGENT_LIMIT_EXCEEDED
    assert agent_limit.fallback == Fallback.SINGLE_AGENT


def test_policy_fallback_applies_to_every_stop() -> None:
    run = Run(policy_with(fallback="constrained"))
    run.handoff("refund_check", "planner", "billing_agent")
    assert run.handoff("refund_check", "planner", "x").fallback == Fallback.CONSTRAINED


def test_allows_and_records_carry_no_fallback() -> None:
    run = Run()
    d = run.handoff("t1", "planner", "worker")
    assert d.fallback is None and run.complete(d, 1.0).fallback is None


# ------------------------------------------------------------------ shadow mode


def test_shadow_mode_never_blocks_and_records_what_would_have_happened() -> None:
    run = Run(policy_with(shadow_mode=True))
    allowed = [run.handoff(f"t{i}", "planner", "worker") for i in range(1, 11)]

    ninth, tenth = allowed[8], allowed[9]
    assert all(d.outcome == Outcome.ALLOW for d in allowed)
    assert [d.shadow_outcome for d in allowed[:8]] == [None] * 8
    assert ninth.shadow_outcome == Outcome.STOP
    assert ninth.reason == Reason.HANDOFF_BUDGET_EXCEEDED
    assert ninth.fallback == Fallback.SINGLE_AGENT  # what the orchestrator would have got
    assert tenth.shadow_outcome == Outcome.STOP
    assert run.state is not None and run.state.stopped is None
    assert run.state.handoff_count == 10


def test_shadow_mode_lets_approval_gated_actions_through_without_pending_approvals() -> None:
    run = Run(policy_with(shadow_mode=True))
    d = run.handoff("refund", "planner", "billing_agent", action="billing.refund.create")
    assert d.outcome == Outcome.ALLOW and d.shadow_outcome == Outcome.APPROVAL_REQUIRED
    assert run.state is not None and not run.state.pending


def test_shadow_mode_records_overspend_post_handoff_without_stopping() -> None:
    run = Run(policy_with(shadow_mode=True))
    d = run.handoff("t1", "planner", "worker")
    post = run.complete(d, cost_usd=31)
    assert post.outcome == Outcome.RECORDED and post.shadow_outcome == Outcome.STOP
    assert post.reason == Reason.SHARED_BUDGET_EXCEEDED
    assert run.handoff("t2", "planner", "worker").outcome == Outcome.ALLOW


# ------------------------------------------------------------------ tenants and versions


def test_tenant_override_applies_to_that_tenant_only() -> None:
    policy = policy_with(tenants={"acme": {"max_handoffs": 2}})
    acme, other = Run(policy, tenant="acme"), Run(policy, run_id="run-2")
    for run in (acme, other):
        for i in range(2):
            assert run.handoff(f"t{i}", "planner", "worker").outcome == Outcome.ALLOW
    assert acme.handoff("t2", "planner", "worker").reason == Reason.HANDOFF_BUDGET_EXCEEDED
    assert other.handoff("t2", "planner", "worker").outcome == Outcome.ALLOW


def test_tenant_inherits_every_key_it_does_not_override() -> None:
    policy = policy_with(tenants={"acme": {"max_handoffs": 20}})
    run = Run(policy, tenant="acme")
    run.handoff("refund_check", "planner", "billing_agent")
    d = run.handoff("r", "planner", "billing_agent", action="billing.refund.create")
    assert d.outcome == Outcome.APPROVAL_REQUIRED  # require_approval_for from multi_agent
    assert policy.tenants["acme"].max_agents_per_run == 4


def _every_kind_of_decision(run: Run) -> list[Decision]:
    out = [run.handoff("refund_check", "planner", "billing_agent")]
    out.append(run.complete(out[0], 1.0))
    out.append(run.handoff("refund_check", "planner", "x"))
    out.append(run.handoff("refund", "planner", "billing_agent", action="billing.refund.create"))
    out += run.grant(out[-1].approval_id or "", "planner")
    out += run.grant(out[-2].approval_id or "", "finance_lead")
    out += run.send(finished(t=9), 9)
    return out


def test_every_decision_carries_the_version_of_the_policy_in_force() -> None:
    seed, strict = seed_policy(), policy_with(max_handoffs=2)
    decisions = _every_kind_of_decision(Run(seed))
    assert {d.outcome for d in decisions} >= {Outcome.ALLOW, Outcome.STOP, Outcome.RECORDED}
    assert {d.policy_version for d in decisions} == {seed.version}
    assert seed.version != strict.version
    assert {d.policy_version for d in _every_kind_of_decision(Run(strict))} == {strict.version}


def test_tenant_policy_decisions_carry_the_whole_policy_version() -> None:
    policy = policy_with(tenants={"acme": {"max_handoffs": 2}})
    d = Run(policy, tenant="acme").handoff("t1", "planner", "worker")
    assert d.policy_version == policy.version and d.tenant == "acme"


# ------------------------------------------------------------------ deterministic ids


def test_replaying_a_run_from_scratch_reproduces_every_decision_id() -> None:
    run = Run()
    first = _every_kind_of_decision(run)
    again = _every_kind_of_decision(Run())
    assert [d.decision_id for d in first] == [d.decision_id for d in again]
    assert len({d.decision_id for d in first}) == len(first)
    # (run, request id + the request's digest, phase): a retry reproduces it, another request
    # under the same id (after the dedup window) gets another
    run_id, rid = first[0].run_id, first[0].request_id
    handoff_digest = request_digest(
        handoff(rid, "refund_check", "planner", "billing_agent", run_id=run_id)
    )
    assert first[0].decision_id == decision_id_for(
        run_id, f"{rid}#{handoff_digest}", Phase.PRE_HANDOFF
    )
    assert first[1].decision_id != first[0].decision_id


def test_decision_ids_stay_what_this_version_publishes() -> None:
    # consumers deduplicate on decision_id across upgrades (ClickHouse's ReplacingMergeTree):
    # the derivation is part of the contract, 16-byte BLAKE2b of
    # "<len(run_id)>:<run_id>\x1f<request_id>\x1f<phase>" (since 0.2; 0.1 left the run out)
    assert decision_id_for("run-1", "req-1", "pre_handoff") == "1fab05c67d9faffcb269448f56505596"
    assert decision_id_for("run-1", "req-1", Phase.POST_HANDOFF.value) == decision_id_for(
        "run-1", "req-1", "post_handoff"
    )
    assert decision_id_for("run-1", "req-1", "pre_handoff") != decision_id_for(
        "run-1", "req-1", "post_handoff"
    )


def test_the_same_request_id_in_two_runs_gets_two_decision_ids() -> None:
    # the alerter and the SDK match decisions by id: run B must not answer run A's request
    assert decision_id_for("run-a", "r1", "pre_handoff") != decision_id_for(
        "run-b", "r1", "pre_handoff"
    )
    # and no split of the same characters between run and request collides
    assert decision_id_for("ab", "c", "pre_handoff") != decision_id_for("a", "bc", "pre_handoff")
    assert decision_id_for("a\x1fb", "c", "pre_handoff") != decision_id_for(
        "a", "b\x1fc", "pre_handoff"
    )


def test_decisions_record_where_the_event_was_read() -> None:
    origin = Origin(worker="w1", partition=3, offset=42)
    _, [d] = decide(None, handoff("r1", "t1", "planner", "w"), seed_policy(), at(0), origin=origin)
    assert (d.worker, d.partition, d.offset) == ("w1", 3, 42)
    assert d.decided_at == at(0) and d.event_time == at(0)


# ------------------------------------------------------------------ idempotency


def _replay_changes_nothing(run: Run, event: RunEvent, first: list[Decision]) -> None:
    state = run.state
    assert state is not None
    before = state.to_bytes()
    again = run.send(event, run.clock + 100)
    assert again == first
    assert run.state is state and state.to_bytes() == before


def test_redelivered_handoff_returns_the_recorded_decision_and_counts_once() -> None:
    run = Run()
    event = handoff("req-1", "t1", "planner", "worker")
    first = run.send(event)
    _replay_changes_nothing(run, event, first)
    assert run.state is not None and run.state.handoff_count == 1


def test_redelivered_stop_is_not_turned_into_an_allow() -> None:
    run = Run()
    run.handoff("refund_check", "planner", "billing_agent")
    event = handoff("req-x", "refund_check", "planner", "support_agent")
    first = run.send(event)
    assert first[0].reason == Reason.OWNERSHIP_CONFLICT
    _replay_changes_nothing(run, event, first)


def test_redelivered_completion_does_not_double_count_spend() -> None:
    run = Run()
    d = run.handoff("t1", "planner", "worker")
    event = completed(d.request_id, "t1", "worker", cost_usd=7.5, tool_calls=4)
    first = run.send(event)
    _replay_changes_nothing(run, event, first)
    assert run.state is not None
    assert run.state.spent_usd == pytest.approx(7.5) and run.state.tool_calls == 4


def test_redelivered_grant_does_not_allow_twice() -> None:
    run = Run()
    d = run.handoff("refund", "planner", "billing_agent", action="billing.refund.create")
    event = granted(d.approval_id or "", "finance_lead")
    first = run.send(event)
    _replay_changes_nothing(run, event, first)
    assert run.state is not None and run.state.handoff_count == 1


# ------------------------------------------------------------------ bounded memory


def test_run_remembers_a_bounded_number_of_request_ids_and_replies() -> None:
    run = Run(policy_with(shared_max_usd=None, shared_max_tool_calls=None))
    for i in range(SEEN_LIMIT + 50):
        run.send(completed(f"req-c{i}", "t1", "worker", cost_usd=0.01))
    assert run.state is not None
    assert len(run.state.seen_keys()) == SEEN_LIMIT
    assert len(run.state.recent_keys()) == RECENT_REPLIES
    assert run.state.seen_keys()[0] == "c:req-c50"  # the oldest went first
    assert not run.state.has_seen("c:req-c49") and run.state.has_seen("c:req-c50")
    assert run.state.recent_keys()[-1] == f"c:req-c{SEEN_LIMIT + 49}"
    assert run.state.recent_keys()[0] == f"c:req-c{SEEN_LIMIT + 50 - RECENT_REPLIES}"


def test_pending_approvals_per_run_are_capped() -> None:
    run = Run(policy_with(max_handoffs=None))
    for i in range(MAX_PENDING_APPROVALS):
        d = run.handoff(f"refund-{i}", "planner", "billing_agent", action="billing.refund.create")
        assert d.outcome == Outcome.APPROVAL_REQUIRED
    over = run.handoff("refund-x", "planner", "billing_agent", action="billing.refund.create")
    assert over.outcome == Outcome.STOP
    assert run.state is not None and len(run.state.pending) == MAX_PENDING_APPROVALS


# ------------------------------------------------------------------ eviction


def test_idle_run_is_evictable_after_the_retention_and_not_before() -> None:
    run = Run()
    run.handoff("t1", "planner", "worker", t=100)
    assert run.state is not None
    assert not is_evictable(run.state, at(100 + 3599), retention_s=3600)
    assert is_evictable(run.state, at(100 + 3600), retention_s=3600)


def test_finished_run_is_kept_for_the_retention_to_answer_redeliveries() -> None:
    run = Run()
    run.handoff("t1", "planner", "worker")
    run.send(finished(t=10), 10)
    assert run.state is not None
    assert not is_evictable(run.state, at(11), retention_s=600)
    assert is_evictable(run.state, at(610), retention_s=600)


def test_run_with_a_pending_approval_is_never_evicted() -> None:
    run = Run()
    d = run.handoff("refund", "planner", "billing_agent", action="billing.refund.create")
    assert run.state is not None and d.approval_id == approval_id_for(run.last)
    assert not is_evictable(run.state, at(10**6), retention_s=60)


def _evicted(run: Run, t: float, retention_s: float = 600) -> None:
    assert run.state is not None
    tomb = evict(run.state, at(t), retention_s, tombstone_retention_s=86400)
    assert tomb is not None and tomb.evicted_at == at(t).timestamp()
    # what the table holds after a restart: the tombstone read back from the changelog
    run.state = RunState.from_bytes(tomb.to_bytes())


def test_a_run_stopped_over_budget_stays_stopped_after_eviction() -> None:
    run = Run(policy_with(shared_max_usd=10.0))
    run.handoff("t1", "planner", "worker")
    run.send(completed("r1", "t1", "worker", cost_usd=40.0), 5)
    assert run.state is not None and run.state.stopped == Reason.SHARED_BUDGET_EXCEEDED
    _evicted(run, 5 + 600)
    late = run.handoff("t2", "planner", "writer", t=10_000)
    assert (late.outcome, late.reason) == (Outcome.STOP, Reason.SHARED_BUDGET_EXCEEDED)
    assert late.spent_usd == 40.0 and late.fallback is not None


def test_a_finished_run_stays_finished_after_eviction_and_a_late_cost_still_counts() -> None:
    run = Run()
    run.handoff("t1", "planner", "worker")
    run.send(finished(t=10), 10)
    _evicted(run, 10 + 600)
    late = run.handoff("t2", "planner", "writer", t=10_000)
    assert (late.outcome, late.reason) == (Outcome.STOP, Reason.RUN_FINISHED)
    [cost] = run.send(completed("r9", "t1", "worker", cost_usd=3.0), 10_001)
    assert cost.spent_usd == 3.0 and run.state is not None and run.state.spent_usd == 3.0


def test_an_idle_run_evicted_to_a_tombstone_is_stopped_not_restarted_empty() -> None:
    # its task tree (owners, depth) is gone: deciding on from zero would fail open
    run = Run(policy_with(max_handoffs=3))
    for i in range(3):
        run.handoff(f"t{i}", "planner", "worker")
    _evicted(run, 700)
    late = run.handoff("t9", "planner", "writer", t=10_000)
    assert (late.outcome, late.reason) == (Outcome.STOP, Reason.RUN_EXPIRED)
    assert late.handoff_count == 3


def test_a_tombstone_keeps_tenant_counters_and_spend_and_nothing_else() -> None:
    run = Run(tenant="acme")
    run.handoff("t1", "planner", "worker")
    run.send(completed("r1", "t1", "worker", cost_usd=1.5, tool_calls=4), 1)
    assert run.state is not None
    tomb = run.state.tombstone(99.0)
    assert (tomb.tenant, tomb.handoff_count, tomb.spent_usd, tomb.tool_calls) == (
        "acme",
        1,
        1.5,
        4,
    )
    assert not (tomb.tasks or tomb.new_tasks or tomb.agents or tomb.recent)
    # but for a mark of its report, by its digest (session 11: a late copy is not counted)
    assert tomb.seen_keys() == [f"c#{run.state.digest_of('c:r1')}"]
    assert len(tomb.to_bytes()) < 220


def test_a_tombstone_is_forgotten_after_its_own_retention() -> None:
    run = Run()
    run.handoff("t1", "planner", "worker")
    assert run.state is not None
    tomb = evict(run.state, at(1000), 600, tombstone_retention_s=5000)
    assert tomb is not None and tomb is not run.state
    assert evict(tomb, at(1000 + 4999), 600, 5000) is tomb
    assert evict(tomb, at(1000 + 5000), 600, 5000) is None


def test_a_tombstone_is_kept_while_its_run_keeps_knocking() -> None:
    run = Run(policy_with(shared_max_usd=10.0))
    run.handoff("t1", "planner", "worker")
    run.send(completed("r1", "t1", "worker", cost_usd=40.0), 5)
    _evicted(run, 605)
    day = 86400
    for n in range(1, 40):  # a handoff a day, each stopped, past the tombstone's retention
        late = run.handoff(f"t{n + 1}", "planner", "writer", t=605 + n * day)
        assert late.reason == Reason.SHARED_BUDGET_EXCEEDED, n
        assert run.state is not None
        assert evict(run.state, at(605 + n * day + 1), 600, 30 * day) is run.state


def test_shadow_mode_never_turns_the_workers_own_stops_into_allows() -> None:
    run = Run(policy_with(shadow_mode=True))
    run.handoff("t1", "planner", "worker")
    _evicted(run, 700)
    late = run.handoff("t2", "planner", "writer", t=10_000)
    assert (late.outcome, late.reason, late.shadow_outcome) == (
        Outcome.STOP,
        Reason.RUN_EXPIRED,
        None,
    )
    assert run.state is not None and run.state.task("t2") is None  # no task taken on
    # nor the worker's own refusals of runs it will not take on
    _, [full] = refuse(
        None,
        handoff("r9", "t9", "planner", "writer", run_id="run-9"),
        policy_with(shadow_mode=True),
        at(0),
        Reason.WORKER_RUN_LIMIT,
        "full",
    )
    assert (full.outcome, full.shadow_outcome) == (Outcome.STOP, None)


def test_the_sweep_index_yields_only_runs_that_are_due() -> None:
    T0 = at(0).timestamp()
    index = DueIndex(retention_s=600, tombstone_retention_s=5000)
    runs = {}
    for i, t in enumerate([0, 100, 200]):
        run = Run(run_id=f"run-{i}")
        run.handoff("t1", "planner", "worker", t=t)
        runs[f"run-{i}".encode()] = run.state
    approval = Run(run_id="run-apr", policy=policy_with(approval={"ttl_seconds": 50}))
    approval.handoff("refund", "planner", "billing_agent", action="billing.refund.create", t=0)
    runs[b"run-apr"] = approval.state
    for key, state in runs.items():  # as each batch tells it about the runs it changed
        index.touch(key, state)
    assert list(index.pop_due(T0 + 49)) == []
    assert list(index.pop_due(T0 + 50)) == [b"run-apr"]  # the approval's TTL, not the run's age
    assert list(index.pop_due(T0 + 650)) == [b"run-0"]
    # run-1 had an event later: the old entry pops, the run is not idle, it is pushed again
    later = Run(run_id="run-1")
    later.handoff("t1", "planner", "worker", t=650)
    index.touch(b"run-1", later.state)
    assert list(index.pop_due(T0 + 700)) == [b"run-1"]  # superseded entry: the caller re-checks
    index.touch(b"run-1", later.state)
    assert list(index.pop_due(T0 + 1249)) == [b"run-2"]
    assert list(index.pop_due(T0 + 1250)) == [b"run-1"]
    index.touch(b"run-2", None)
    assert len(index) == 0 and list(index.pop_due(T0 + 10**9)) == []


def test_a_format_1_state_reads_as_a_live_run_without_digests() -> None:
    run = Run()
    run.handoff("t1", "planner", "worker")
    assert run.state is not None
    # the same run stored by the format-3 engine, cut to what Baton 0.1 wrote
    wire = orjson.loads(FORMAT_3_ONE_HANDOFF)[:17]
    wire[0] = 1
    old = RunState.from_wire(wire)
    assert old.evicted_at is None and old.handoff_count == 1
    assert old.seen_keys() == run.state.seen_keys() and old.digest_of("h:run-1-1") is None


# ------------------------------------------------------------------ engine internals


def test_the_engines_field_view_reads_every_field_as_the_model_does() -> None:
    # the engine reads a handoff's and a report's fields from the model's __dict__, into
    # engine_fields' views (shared interpreted, copied compiled); this fails if pydantic ever
    # stops keeping fields there (approvals and finishes are read from the model itself)
    from baton.processors.engine_fields import handoff_of, report_of

    request = handoff(
        "r1",
        "t1",
        "planner",
        "billing_agent",
        parent_task_id="t0",
        action="a.b",
        tool="search.web",
        estimated_usd=1.5,
        estimated_tool_calls=3,
        task_kind="refund",
    )
    report = completed("r1", "t1", "billing_agent", cost_usd=0.25)
    for event, view in ((request, handoff_of(request)), (report, report_of(report))):
        for name in type(event).model_fields:
            if name != "type":  # the event's kind: the engine dispatches on its class
                assert getattr(view, name) == getattr(event, name), (type(event).__name__, name)


def test_a_request_read_after_its_decide_by_is_stopped_never_allowed_late() -> None:
    # the SDK sets decide_by to when it stops waiting (and fails closed): a request the
    # worker reads later (a frozen broker, a backlog) must not lock a task behind its back
    run = Run()
    late = run.handoff("t1", "planner", "worker", t=100, decide_by=at(99))
    assert (late.outcome, late.reason) == (Outcome.STOP, Reason.REQUEST_EXPIRED)
    assert run.state is not None and run.state.task("t1") is None
    assert run.state.handoff_count == 0
    in_time = run.handoff("t2", "planner", "worker", t=100, decide_by=at(101))
    assert in_time.outcome == Outcome.ALLOW
