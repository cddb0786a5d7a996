"""`baton replay`'s core without Kafka: histories recorded by the worker's own batch step.

A history is decided by ``BatchProcessor`` (which attaches each decision's input and links the
run's chain, as the worker does) plus the worker's approval sweep; what it publishes, one copy
per decision id (re-emissions are not stored), in publish order, is what the audit holds.
"""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.chain import link
from baton.processors.engine import expire_approvals
from baton.processors.recorded import policy_document
from baton.processors.replay import Recorded, label, replay_runs, runs_of
from baton.processors.state import RunState
from baton.schemas.decision import Decision
from baton.schemas.events import (
    ApprovalDenied,
    ApprovalGranted,
    HandoffCompleted,
    HandoffRequested,
    RunEvent,
)
from baton.schemas.policy import Policy
from tests.unit.test_engine_properties import POLICIES, histories
from tests.unit.test_engine_support import at, policy_with, seed_policy

pytestmark = pytest.mark.unit

KEY = b"chain-key"
APPROVALS = "gov.approvals"


def record(
    policy: Policy, timed: list[tuple[RunEvent, datetime]], sweep_every: int = 0
) -> list[Recorded]:
    """What the audit holds after a worker decided ``timed`` (and swept every few events)."""
    states: dict[bytes, RunState] = {}
    proc = BatchProcessor(policy, 1, states, worker="w", chain_key=KEY)
    published: list[Decision] = []
    for offset, (event, now) in enumerate(timed):
        topic = APPROVALS if type(event) in (ApprovalGranted, ApprovalDenied) else "requests"
        rec = InputRecord(topic, 0, offset, event.run_id.encode(), event.to_json())
        out = proc.process([rec], now)
        assert not out.dead_letters, out.dead_letters
        published += [d for _, d in out.decisions]
        if sweep_every and offset % sweep_every == sweep_every - 1:
            for key, state in list(states.items()):
                new, expired = expire_approvals(state, policy, now)
                if expired:
                    link(new, expired, KEY)
                    states[key] = new
                    published += expired
    return stored(published)


def stored(published: list[Decision]) -> list[Recorded]:
    """What the audit holds of ``published``, in publish order: one row per decision id (the
    first copy), no re-emission (the sink stores none)."""
    seen: set[str] = set()
    rows = []
    for d in published:
        if d.reemitted or d.decision_id in seen:
            continue
        seen.add(d.decision_id)
        rows.append(Recorded.of(d))
    return rows


def _policies(*policies: Policy) -> dict[str, Policy]:
    # as replay reads them back from policy_in_force records
    return {p.version: Policy.model_validate_json(policy_document(p)) for p in policies}


@settings(max_examples=150, deadline=None)
@given(histories(), st.sampled_from([0, 1, 3]))
def test_replay_under_the_recorded_policy_reproduces_every_recorded_decision(
    case: tuple, sweep_every: int
) -> None:
    name, timed = case
    policy = POLICIES[name]
    rows = record(policy, timed, sweep_every)
    report = replay_runs(runs_of(rows), policy, _policies(policy), KEY)
    assert report.partial == {}
    [run] = report.runs
    assert run.decisions == len(rows)
    assert run.unfaithful == []
    assert run.changed == 0 and not report.transitions


@settings(max_examples=100, deadline=None)
@given(histories())
def test_a_new_policy_changes_exactly_what_recording_under_it_would_have(case: tuple) -> None:
    name, timed = case
    recorded_policy, new_policy = POLICIES[name], POLICIES["tight"]
    rows = record(recorded_policy, timed)
    report = replay_runs(runs_of(rows), new_policy, _policies(recorded_policy), KEY)
    [run] = report.runs
    assert run.unfaithful == []
    # the reference: the inputs the audit holds recorded under the new policy, step by step
    # (a retry answered from the run's memory is no row: replay never decides it; recorded
    # with it, a duplicate run_finished moved its reply_not_kept from one retry to an
    # earlier one the audit does not hold: docs/replay.md, session 20)
    held = sorted(step for step in _by_step(rows) if step is not None)
    again = _by_step(record(new_policy, [timed[step] for step in held]))
    under_new = {held[i]: decided for i, decided in again.items() if i is not None}
    changed = 0
    for step, recorded in _by_step(rows).items():
        other = under_new.get(step, [])
        for i, rec in enumerate(recorded):
            now = label(other[i].outcome, other[i].reason) if i < len(other) else "-"
            changed += label(rec.outcome, rec.reason) != now
    assert run.changed == changed


def _by_step(rows: list[Recorded]) -> dict[int | None, list[Recorded]]:
    steps: dict[int | None, list[Recorded]] = {}
    for r in rows:
        steps.setdefault(r.offset, []).append(r)
    return steps


def _budget_history(run: str, handoffs: int, cost: float) -> list[tuple[RunEvent, datetime]]:
    timed: list[tuple[RunEvent, datetime]] = []
    for i in range(handoffs):
        timed.append(
            (
                HandoffRequested(
                    request_id=f"{run}-h{i}",
                    run_id=run,
                    task_id=f"t{i}",
                    from_agent="planner",
                    to_agent="researcher",
                    estimated_usd=1.0,
                    event_time=at(10 * i),
                ),
                at(10 * i),
            )
        )
        timed.append(
            (
                HandoffCompleted(
                    request_id=f"{run}-h{i}",
                    run_id=run,
                    task_id=f"t{i}",
                    agent="researcher",
                    cost_usd=cost,
                    event_time=at(10 * i + 5),
                ),
                at(10 * i + 5),
            )
        )
    return timed


def test_a_stricter_handoff_budget_stops_the_runs_that_went_past_it() -> None:
    loose, strict = policy_with(max_handoffs=20), policy_with(max_handoffs=3)
    rows = record(loose, _budget_history("run_long", 6, 2.5)) + record(
        loose, _budget_history("run_short", 2, 1.0)
    )
    report = replay_runs(runs_of(rows), strict, _policies(loose), KEY)
    assert [r.run_id for r in report.changed_runs] == ["run_long"]
    long = report.changed_runs[0]
    assert long.unfaithful == []
    assert report.transitions == {"allow → stop:handoff_budget_exceeded": 3}
    assert long.first_change is not None and long.first_change.step == 7  # the 4th handoff
    assert long.first_change.request_id == "run_long-h3"
    # the three stopped handoffs' completions: 3 x $2.50 not spent, 3 x $1 estimates
    assert long.saved_usd == 7.5 and long.blocked_estimate_usd == 3.0


def test_the_same_policy_changes_nothing() -> None:
    policy = seed_policy()
    rows = record(policy, _budget_history("run_a", 12, 1.0))
    report = replay_runs(runs_of(rows), policy, _policies(policy), KEY)
    assert report.decisions == len(rows) and not report.changed_runs
    assert report.unfaithful_runs == []


def test_a_history_that_does_not_start_in_what_was_read_is_partial_not_replayed() -> None:
    policy = seed_policy()
    rows = record(policy, _budget_history("run_a", 4, 1.0))
    report = replay_runs(runs_of(rows[3:]), policy, _policies(policy), KEY)
    assert report.runs == [] and "does not start" in report.partial["run_a"]


def test_a_run_recorded_without_inputs_or_its_policy_is_partial() -> None:
    policy = seed_policy()
    rows = record(policy, _budget_history("run_a", 2, 1.0))
    no_input = [rows[0]._replace(input=None), *rows[1:]]
    report = replay_runs(runs_of(no_input), policy, _policies(policy), KEY)
    assert "records no input" in report.partial["run_a"]
    # its chain starts in what was read: a row lost its input there (exit 7, never a pass)
    assert report.broken == ["run_a"]
    report = replay_runs(runs_of(rows), policy, {}, KEY)
    assert f"policy {policy.version} is not in the audit" in report.partial["run_a"]
    assert report.broken == ["run_a"]
    # without a chain too (an audit older than inputs, or one stripped of its chain fields to
    # look so): it cannot be decided, so a gate must not pass by its absence (exit 7, named)
    unchained = [r._replace(chain_prev=None, chain_hash=None, input=None) for r in rows]
    report = replay_runs(runs_of(unchained), policy, _policies(policy), KEY)
    assert "records no input" in report.partial["run_a"] and report.broken == ["run_a"]


def test_a_wrong_chain_key_shows_as_unfaithful_not_as_a_change() -> None:
    policy = seed_policy()
    rows = record(policy, _budget_history("run_a", 2, 1.0))
    report = replay_runs(runs_of(rows), policy, _policies(policy), b"another key")
    [run] = report.runs
    assert run.unfaithful and run.changed == 0


def test_a_policy_that_differs_for_another_tenant_only_changes_nothing_here() -> None:
    loose = policy_with(max_handoffs=20)
    rows = record(loose, _budget_history("run_long", 6, 2.5))
    elsewhere = policy_with(max_handoffs=20, tenants={"other": {"max_handoffs": 1}})
    here = policy_with(max_handoffs=20, tenants={"default": {"max_handoffs": 1}})
    assert not replay_runs(runs_of(rows), elsewhere, _policies(loose), KEY).changed_runs
    changed = replay_runs(runs_of(rows), here, _policies(loose), KEY).transitions
    assert changed == {"allow → stop:handoff_budget_exceeded": 5}


def test_a_row_whose_outcome_was_altered_but_not_relinked_is_unfaithful_not_a_change() -> None:
    # the chain hash proves the decision decided again is the one the worker published; the
    # report compares the new policy with the row's own outcome, so a row altered there (an
    # allow rewritten to the stop the new policy gives) must not make the gate pass
    loose, strict = policy_with(max_handoffs=20), policy_with(max_handoffs=3)
    rows = record(loose, _budget_history("run_long", 6, 2.5))
    report = replay_runs(runs_of(rows), strict, _policies(loose), KEY)
    assert report.transitions == {"allow → stop:handoff_budget_exceeded": 3}
    forged = [
        r._replace(outcome="stop", reason="handoff_budget_exceeded")
        if r.input and '"run_long-h3"' in r.input and r.outcome == "allow"
        else r
        for r in rows
    ]
    assert forged != rows
    report = replay_runs(runs_of(forged), strict, _policies(loose), KEY)
    [run] = report.runs
    assert report.unfaithful_runs == [run]
    assert run.unfaithful[0][1:] == ("stop:handoff_budget_exceeded", "allow")
