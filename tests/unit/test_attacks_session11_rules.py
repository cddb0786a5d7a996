"""Session 11 (H3): the rules' leftovers of session 10's attack.

A report redelivered after its run became a tombstone (counted twice), a hostile
orchestrator dodging max_delegation_depth and detect_delegation_cycles by naming no parent
or fresh task ids (``require_lineage``), and the request normal form the worker's digest and
the SDK's matcher each restated. Each test fails on the commit before its fix.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from baton.processors.dedup_keys import request_digest, untimed_fields
from baton.processors.engine import decide, evict, expire_due
from baton.processors.recorded import input_text, policy_document
from baton.processors.replay import replay_runs, runs_of
from baton.processors.state import RunState
from baton.schemas.decision import Decision, Outcome, Phase, Reason
from baton.schemas.errors import PolicyError
from baton.schemas.events import (
    ApprovalDenied,
    ApprovalGranted,
    HandoffCompleted,
    HandoffRequested,
    RunEvent,
)
from baton.schemas.export import json_schemas
from baton.schemas.policy import DEFAULT_POLICY_YAML, Policy, parse_policy
from baton.sinks.trace import format_trace
from baton.streams.sdk.base import answers_request
from tests.unit.test_attacks_replay_share import _recorded_plain
from tests.unit.test_engine_properties_session10 import POLICY, histories
from tests.unit.test_engine_support import Run, at, completed, handoff, policy_with
from tests.unit.test_replay import KEY, _policies

pytestmark = pytest.mark.unit

RETENTION_S, TOMBSTONE_S = 600.0, 5000.0


def _evicted(run: Run, t: float) -> None:
    """The worker's sweep at ``t``: the run to its tombstone, through its changelog bytes."""
    assert run.state is not None
    kept = evict(run.state, at(t), RETENTION_S, TOMBSTONE_S)
    assert kept is not None and kept.evicted_at is not None
    run.state = RunState.from_bytes(kept.to_bytes())
    run.clock = t


# ---------------------------------------------------------------- 1. tombstones count once


def test_a_report_redelivered_after_its_run_became_a_tombstone_counts_once() -> None:
    # the report was counted, the run evicted while idle; the same record again (a consumer
    # restarted from an older offset, a client re-sending) was decided anew and counted: 4.0
    run = Run(policy_with(shared_max_usd=10))
    a = run.handoff("t1", "planner", "billing")
    report = completed(a.request_id, "t1", "billing", cost_usd=2.0, tool_calls=3, steps=4)
    assert run.one(report).reason == Reason.WITHIN_BUDGET
    _evicted(run, 700)

    again = run.one(report, 701)

    assert run.state is not None
    assert (run.state.spent_usd, run.state.tool_calls, run.state.steps) == (2.0, 3, 4)
    assert (again.outcome, again.reason) == (Outcome.RECORDED, Reason.REPLY_NOT_KEPT)
    # and it does not tell the client to send it again under a new request id (a handoff's
    # answer does: a new request is decided anew; a report under a new id counts again)
    assert again.detail is not None and "it would count twice" in again.detail
    # and so every later copy: the tombstone is unchanged by it
    before = run.state
    run.one(report, 702)
    assert run.state is before


def test_a_report_after_the_tombstone_under_a_used_id_with_other_content_counts_once() -> None:
    # money spent is spent: another report under a used request id counts (as in a live run;
    # the tombstone knows its reports by their digests, which differ), and a copy of it does
    # not count again either
    run = Run(policy_with(shared_max_usd=10))
    a = run.handoff("t1", "planner", "billing")
    run.one(completed(a.request_id, "t1", "billing", cost_usd=2.0))
    _evicted(run, 700)
    other = completed(a.request_id, "t1", "billing", cost_usd=1.0)

    first = run.one(other, 701)
    run.one(other, 702)

    assert run.state is not None and run.state.spent_usd == 3.0
    assert (first.outcome, first.reason) == (Outcome.RECORDED, Reason.WITHIN_BUDGET)


def test_a_handoff_at_a_tombstone_is_still_stopped_and_its_report_counted_once() -> None:
    run = Run(policy_with(shared_max_usd=10))
    run.handoff("t1", "planner", "billing")
    _evicted(run, 700)
    late = run.handoff("t2", "planner", "search")
    assert (late.outcome, late.reason) == (Outcome.STOP, Reason.RUN_EXPIRED)
    # its report (the work was done anyway) counts, once
    report = completed(late.request_id, "t2", "search", cost_usd=1.5)
    run.one(report, 701)
    run.one(report, 702)
    assert run.state is not None and run.state.spent_usd == 1.5


def test_the_reports_a_tombstone_keeps_are_the_windows_and_survive_its_bytes() -> None:
    run = Run(policy_with(shared_max_usd=None, max_handoffs=None))
    for i in range(40):  # 40 reports and 40 handoffs: 80 keys, 40 of them reports
        a = run.handoff(f"t{i}", "planner", "billing")
        run.one(completed(a.request_id, f"t{i}", "billing", cost_usd=0.5))
    assert run.state is not None
    tomb = run.state.tombstone(999.0)
    # each report by its digest (which covers its run and request id), 16 hex digits
    reports = [k for k in run.state.seen_keys() if k.startswith("c:")]
    assert len(reports) == 40
    assert tomb.seen_keys() == [f"c#{run.state.digest_of(k)}" for k in reports]
    assert tomb.marks == 40 and not tomb.digests
    assert RunState.from_bytes(tomb.to_bytes()) == tomb


def test_a_report_for_a_run_never_seen_or_forgotten_counts_once_in_its_new_life() -> None:
    # a tombstone forgotten after its retention (by design: the worker keeps it
    # tombstone_retention_s) cannot recognise the copy: it is counted in the run id's new
    # life, once (its copies are recognised there), never more than that report reported
    run = Run(policy_with(shared_max_usd=10))
    a = run.handoff("t1", "planner", "billing")
    report = completed(a.request_id, "t1", "billing", cost_usd=2.0)
    run.one(report)
    _evicted(run, 700)
    assert run.state is not None
    assert evict(run.state, at(700 + TOMBSTONE_S), RETENTION_S, TOMBSTONE_S) is None
    run.state = None  # forgotten

    run.one(report, 700 + TOMBSTONE_S)
    run.one(report, 701 + TOMBSTONE_S)

    assert run.state is not None and run.state.spent_usd == 2.0


@settings(max_examples=150, deadline=None)
@given(histories)
def test_reports_redelivered_around_evictions_count_once(history: list) -> None:
    # session 10's histories with their sweeps evicting idle runs (30 s) to tombstones kept
    # for good, and redeliveries of earlier records: spend and steps are the sums over the
    # distinct reports, however often and on whichever side of an eviction each came
    state: RunState | None = None
    records: list[RunEvent] = []
    clock = 0
    for step, dt in history:
        clock += dt
        if step == "sweep":
            if state is not None:
                state, _ = expire_due(state, POLICY, at(clock))
                state = evict(state, at(clock), 30.0, 1e9)
                state = RunState.from_bytes(state.to_bytes()) if state is not None else None
            continue
        event = records[len(records) // 2] if step == "again" and records else step
        if event == "again" or type(event) in (ApprovalGranted, ApprovalDenied):
            continue
        records.append(event)
        state, _ = decide(state, event, POLICY, at(clock))
    reports = {(e.request_id, request_digest(e)): e for e in records if type(e) is HandoffCompleted}
    spent = sum(e.cost_usd for e in reports.values())
    assert (state.spent_usd if state else 0.0) == pytest.approx(spent)
    assert (state.steps if state else 0) == sum(e.steps for e in reports.values())


# ---------------------------------------------------------------- 2. require_lineage

_LINEAGE = {"max_handoffs": None, "max_agents_per_run": None, "max_bounces": None}


def _deep(require_lineage: bool, **limits: object) -> Run:
    """planner -> a (t1) -> b (t2, under t1): b stands at depth 2."""
    run = Run(policy_with(**_LINEAGE, require_lineage=require_lineage, **limits))
    assert run.handoff("t1", "planner", "a").outcome == Outcome.ALLOW
    assert run.handoff("t2", "a", "b", parent_task_id="t1").outcome == Outcome.ALLOW
    return run


@pytest.mark.parametrize("parent", [None, "fresh-task"])
def test_an_agent_deep_in_a_chain_cannot_start_a_fresh_one_to_dodge_the_depth_limit(
    parent: str | None,
) -> None:
    # b is at depth 2 of 2: naming no parent (or a task id the run never saw) put its
    # handoff at depth 1, allowed; the same handoff naming its real parent is too deep
    assert (
        _deep(False, max_delegation_depth=2).handoff("t3", "b", "c", parent_task_id=parent).outcome
        == Outcome.ALLOW
    )  # (the default: decided as before)
    run = _deep(True, max_delegation_depth=2)

    dodge = run.handoff("t3", "b", "c", parent_task_id=parent)

    assert (dodge.outcome, dodge.reason) == (Outcome.STOP, Reason.LINEAGE_REQUIRED)
    assert dodge.detail is not None and "b" in dodge.detail
    honest = run.handoff("t3", "b", "c", parent_task_id="t2")
    assert (honest.outcome, honest.reason) == (Outcome.STOP, Reason.DELEGATION_DEPTH_EXCEEDED)


def test_an_agent_cannot_dodge_the_cycle_rule_by_naming_no_parent() -> None:
    assert (
        _deep(False, detect_delegation_cycles=True).handoff("t3", "b", "a").outcome == Outcome.ALLOW
    )
    run = _deep(True, detect_delegation_cycles=True)
    assert run.handoff("t3", "b", "a").reason == Reason.LINEAGE_REQUIRED
    assert run.handoff("t3", "b", "a", parent_task_id="t2").reason == Reason.DELEGATION_CYCLE


def test_a_parent_owned_by_another_agent_or_released_is_not_lineage() -> None:
    run = _deep(True)
    # a names a task b owns: not a's
    stolen = run.handoff("t3", "a", "c", parent_task_id="t2")
    assert (stolen.reason, stolen.detail) == (
        Reason.LINEAGE_REQUIRED,
        "parent_task_id t2 is not a's: owned by b",
    )
    # b releases t2 (status error): nobody owns it, nothing may hang under it
    run.one(completed("req-2", "t2", "b", status="error"))
    assert run.handoff("t3", "b", "c", parent_task_id="t2").reason == Reason.LINEAGE_REQUIRED


def test_the_runs_first_agent_hands_off_without_a_parent_and_the_chain_goes_on() -> None:
    run = _deep(True, max_delegation_depth=3, detect_delegation_cycles=True)
    assert run.handoff("t4", "planner", "c").outcome == Outcome.ALLOW  # no parent: the root
    assert run.handoff("t5", "planner", "d").outcome == Outcome.ALLOW
    assert run.handoff("t3", "b", "c", parent_task_id="t2").outcome == Outcome.ALLOW
    assert run.state is not None and run.state.task("t3").depth == 3  # type: ignore[union-attr]
    # the first agent is kept through the state's bytes (the agents' order)
    run.state = RunState.from_bytes(run.state.to_bytes())
    assert run.handoff("t6", "c", "e").reason == Reason.LINEAGE_REQUIRED
    assert run.handoff("t7", "planner", "e").outcome == Outcome.ALLOW


def test_require_lineage_applies_per_tenant_and_shadow_mode_records_it() -> None:
    tenants = {"acme": {"require_lineage": True}}
    plain = Run(policy_with(**_LINEAGE, tenants=tenants))
    plain.handoff("t1", "planner", "a")
    assert plain.handoff("t2", "a", "b").outcome == Outcome.ALLOW
    strict = Run(policy_with(**_LINEAGE, tenants=tenants), tenant="acme")
    strict.handoff("t1", "planner", "a")
    assert strict.handoff("t2", "a", "b").reason == Reason.LINEAGE_REQUIRED
    shadow = Run(policy_with(**_LINEAGE, require_lineage=True, shadow_mode=True))
    shadow.handoff("t1", "planner", "a")
    d = shadow.handoff("t2", "a", "b")
    assert (d.outcome, d.shadow_outcome, d.reason) == (
        Outcome.ALLOW,
        Outcome.STOP,
        Reason.LINEAGE_REQUIRED,
    )


def test_require_lineage_in_the_loader_the_schema_and_the_version() -> None:
    for wrong in ("2", "[true]", "{on: true}"):
        with pytest.raises(PolicyError) as caught:
            parse_policy(f"multi_agent: {{require_lineage: {wrong}}}\n", "p")
        assert "multi_agent.require_lineage: must be true or false" in str(caught.value)
    with pytest.raises(PolicyError) as caught:
        parse_policy("tenants: {acme: {require_lineage: 2}}\n", "p")
    assert "tenants.acme.require_lineage" in str(caught.value)
    with pytest.raises(PolicyError, match="require_lineage"):
        parse_policy("multi_agent: {require_lineag: true}\n", "p")
    # a policy that does not set it keeps the version it had before the key existed
    base = "multi_agent: {max_handoffs: 5}\n"
    off = "multi_agent: {max_handoffs: 5, require_lineage: false}\n"
    on = "multi_agent: {max_handoffs: 5, require_lineage: true}\n"
    # (56e9f5d5ec6471a6: the version HEAD gave it before require_lineage existed)
    assert parse_policy(base, "p").version == parse_policy(off, "p").version == "56e9f5d5ec6471a6"
    assert parse_policy(on, "p").version != parse_policy(base, "p").version
    # and its recorded document (policy_in_force, replay) is the one it had, byte for byte:
    # a Baton that predates the key still reads it
    assert "require_lineage" not in policy_document(parse_policy(off, "p"))
    strict = parse_policy(on, "p")
    assert Policy.model_validate_json(policy_document(strict)).version == strict.version
    limits = json_schemas()["policy.schema.json"]["$defs"]["MultiAgentPolicy"]["properties"]
    assert limits["require_lineage"]["type"] == "boolean"
    reasons = json_schemas()["decision.schema.json"]["properties"]["reason"]["enum"]
    assert "lineage_required" in reasons


LINEAGE_POLICY = POLICY.model_copy(
    update={"multi_agent": POLICY.multi_agent.model_copy(update={"require_lineage": True})}
)


def _lineage_holds(before: RunState | None, req: HandoffRequested) -> bool:
    """The oracle: the handoff's giver is the run's first agent (none yet: it is), or names
    a parent task it owned before the event."""
    agents = list(before.agents) if before is not None else []
    if not agents or agents[0] == req.from_agent:
        return True
    parent = before.task(req.parent_task_id) if before and req.parent_task_id else None
    return parent is not None and parent.owner == req.from_agent


@settings(max_examples=150, deadline=None)
@given(histories)
def test_under_require_lineage_every_allow_names_a_parent_its_giver_owns(history: list) -> None:
    # session 10's histories (handoffs, reports that release, grants, sweeps, redeliveries,
    # case variants), decided under its policy with require_lineage on
    state: RunState | None = None
    approvals: list[str] = []
    records: list[RunEvent] = []
    clock = 0
    for step, dt in history:
        clock += dt
        if step == "sweep":
            if state is not None:
                state, _ = expire_due(state, LINEAGE_POLICY, at(clock))
            continue
        event = records[len(records) // 2] if step == "again" and records else step
        if event == "again":
            continue
        if type(event) in (ApprovalGranted, ApprovalDenied) and event.approval_id[0] == "@":
            which = int(event.approval_id[1:])
            if which >= len(approvals):
                continue
            event = event.model_copy(update={"approval_id": approvals[which]})
        records.append(event)
        before = state
        state, decisions = decide(state, event, LINEAGE_POLICY, at(clock))
        if state is before:
            continue
        for d in decisions:
            if d.outcome is Outcome.APPROVAL_REQUIRED and d.approval_id not in approvals:
                approvals.append(d.approval_id)  # type: ignore[arg-type]
            if d.outcome is not Outcome.ALLOW:
                continue
            if d.reason == Reason.APPROVAL_GRANTED:
                assert before is not None
                req = before.pending[d.approval_id].request  # type: ignore[index]
            else:
                assert type(event) is HandoffRequested
                req = event
            assert _lineage_holds(before, req), (d, req)


def test_a_policy_value_keyed_by_a_non_text_key_is_named_not_a_traceback() -> None:
    # YAML keys need not be text: {1: 2} or {on: true} made the loader's message raise a
    # TypeError (orjson refuses non-text keys), a traceback from baton policy check
    for value in ("{1: 2}", "[{1: 2}]", "{on: true}"):
        with pytest.raises(PolicyError) as caught:
            parse_policy(f"multi_agent: {{max_handoffs: {value}}}\n", "p")
        assert "multi_agent.max_handoffs: must be an integer >= 0, got" in str(caught.value)


def test_replay_shows_what_require_lineage_would_stop_and_an_old_policy_replays_the_same() -> None:
    recorded = policy_with(**_LINEAGE)  # recorded before the key existed: none in its text
    assert "require_lineage" not in yaml.safe_dump(yaml.safe_load(DEFAULT_POLICY_YAML))
    rows = _recorded_plain(
        recorded,
        [
            handoff("h1", "t1", "planner", "a", t=0),
            handoff("h2", "t2", "a", "b", t=1),  # no parent: allowed then
        ],
    )
    same = replay_runs(runs_of(rows), policy_with(**_LINEAGE, require_lineage=False),
                       _policies(recorded), KEY)  # fmt: skip
    assert [(r.changed, r.unfaithful) for r in same.runs] == [(0, [])]
    stricter = replay_runs(runs_of(rows), policy_with(**_LINEAGE, require_lineage=True),
                           _policies(recorded), KEY)  # fmt: skip
    assert [(r.changed, r.unfaithful) for r in stricter.runs] == [(1, [])]
    assert stricter.transitions == {"allow → stop:lineage_required": 1}


def test_trace_names_the_lineage_stop_and_its_parent() -> None:
    run = _deep(True)
    stop = run.handoff("t3", "a", "c", parent_task_id="t2")
    step = {
        **dataclasses.asdict(stop),
        "decided_at": at(1),
        "spent_usd": Decimal(0),
        "outcome": str(stop.outcome),
        "phase": str(stop.phase),
    }
    text = format_trace("run-1", [step])
    assert "STOPPED at step 1: lineage_required (a -> c, task=t3)" in text
    assert "parent_task_id t2 is not a's: owned by b" in text


# ---------------------------------------------------------------- 3. one request normal form


def _decision_with_input(event: HandoffCompleted, text: str) -> Decision:
    return Decision(
        decision_id="d",
        request_id=event.request_id,
        run_id=event.run_id,
        tenant=event.tenant,
        phase=Phase.POST_HANDOFF,
        outcome=Outcome.RECORDED,
        reason=Reason.WITHIN_BUDGET,
        policy_version="p",
        decided_at=datetime(2026, 3, 1, tzinfo=UTC),
        input=text,
    )


def test_the_sdk_takes_a_decision_whose_input_differs_only_by_tools_null() -> None:
    # the worker's digest leaves out tools: null (a field added later, at its default), so a
    # report with it is the same request; the SDK's own copy of the rule kept it, and refused
    # the worker's answer to its own report (failed closed at its timeout)
    mine = completed("r1", "t1", "billing", cost_usd=1.0)
    theirs = mine.model_copy(update={"event_time": at(5)})
    assert request_digest(mine) == request_digest(theirs)
    said = input_text(theirs)[:-1] + ',"tools":null}'
    assert answers_request(mine)(_decision_with_input(mine, said))


def test_the_normal_form_drops_only_an_int_zero_of_steps() -> None:
    # 1 == 1.0 == True: a steps of 0.0 or false is not the report that left steps out
    for steps in (0.0, False):
        assert "steps" in untimed_fields({"steps": steps})
    assert untimed_fields({"steps": 0, "tools": None, "event_time": 1, "a": 1}) == {"a": 1}


_reports = st.builds(
    completed,
    st.sampled_from(["r1", "r2"]),
    st.sampled_from(["t1", "t2"]),
    st.sampled_from(["billing", "search"]),
    st.sampled_from([0.0, 1.0, 2.5]),
    st.integers(0, 2),
    status=st.sampled_from(["ok", "error"]),
    t=st.integers(0, 3),
    steps=st.integers(0, 2),
    tools=st.one_of(st.none(), st.lists(st.sampled_from(["a.b", "c.d"]), max_size=1)),
)


@settings(max_examples=300, deadline=None)
@given(_reports, _reports)
def test_the_sdk_takes_a_decision_exactly_when_the_worker_takes_it_for_the_same_request(
    mine: HandoffCompleted, theirs: HandoffCompleted
) -> None:
    said = _decision_with_input(mine, input_text(theirs))
    assert answers_request(mine)(said) == (request_digest(mine) == request_digest(theirs))
