"""`baton replay --from-kafka` without Kafka: the topics' records, merged by timestamp, decided
as a worker would have (``decide_topics``), with the control topic's kill switches and policy
updates applied in order; then replayed like an audit."""

from __future__ import annotations

import pytest

from baton.cli.replay_kafka import decide_topics
from baton.processors.batch import InputRecord
from baton.processors.replay import replay_runs, runs_of
from baton.schemas.events import KillSwitch, KillSwitchReleased, PolicyUpdated, RunEvent
from tests.unit.test_engine_support import at, handoff, policy_with

pytestmark = pytest.mark.unit

REQUESTS, APPROVALS, CONTROL = "gov.handoff.requests", "gov.approvals", "gov.control"
BASELINE = policy_with(max_handoffs=20)


def _ms(seconds: float) -> int:
    return int(at(seconds).timestamp() * 1000)


def _request(run: str, n: int, seconds: float) -> tuple[int, str, InputRecord]:
    event: RunEvent = handoff(f"{run}-h{n}", f"t{n}", "planner", "researcher", run_id=run)
    rec = InputRecord(REQUESTS, 0, n, run.encode(), event.to_json())
    return _ms(seconds), REQUESTS, rec


def _control(event: KillSwitch | KillSwitchReleased | PolicyUpdated, seconds: float, offset: int):
    return _ms(seconds), CONTROL, InputRecord(CONTROL, 0, offset, None, event.to_json())


def _kill(run: str, seconds: float, offset: int = 0) -> tuple[int, str, InputRecord]:
    kill = KillSwitch(scope="run", run_id=run, operator="ops", event_time=at(seconds))
    return _control(kill, seconds, offset)


def _outcomes(rows: list, run: str) -> list[str]:
    return [f"{r.outcome}:{r.reason}" for r in rows if r.run_id == run]


def test_a_kill_switch_in_the_range_stops_the_runs_later_handoffs_as_recorded() -> None:
    records = [_request("ra", n, 10 * n) for n in range(4)] + [_request("rb", 9, 25)]
    records.append(_kill("ra", 15))
    rows, policies, _ = decide_topics(records, BASELINE, 1, APPROVALS, CONTROL)
    assert _outcomes(rows, "ra") == ["allow:ok"] * 2 + ["stop:killed"] * 2
    assert _outcomes(rows, "rb") == ["allow:ok"]  # another run: not killed
    # replayed under another policy, the kill's stops are replayed as recorded: no change
    report = replay_runs(runs_of(rows), policy_with(max_handoffs=10), policies)
    assert not report.unfaithful_runs and not report.changed_runs and not report.partial


def test_a_kill_switch_before_the_range_is_in_force_in_it() -> None:
    # gov.control is read from its start: the kill at -100 s holds for events from 0 s on
    records = [_kill("ra", -100), *(_request("ra", n, 10 * n) for n in range(2))]
    rows, _, _ = decide_topics(records, BASELINE, 1, APPROVALS, CONTROL)
    assert _outcomes(rows, "ra") == ["stop:killed", "stop:killed"]


def test_a_kill_and_a_handoff_at_the_same_millisecond_the_kill_applies_first() -> None:
    records = [_request("ra", 0, 0), _request("ra", 1, 10), _kill("ra", 10)]
    rows, _, _ = decide_topics(records, BASELINE, 1, APPROVALS, CONTROL)
    assert _outcomes(rows, "ra") == ["allow:ok", "stop:killed"]


def test_a_policy_update_in_the_range_is_the_baseline_from_then_on() -> None:
    update = PolicyUpdated(
        policy_yaml="multi_agent:\n  max_handoffs: 2\n", operator="ops", event_time=at(25)
    )
    records = [_request("ra", n, 10 * n) for n in range(5)] + [_control(update, 25, 0)]
    rows, policies, _ = decide_topics(records, BASELINE, 1, APPROVALS, CONTROL)
    assert _outcomes(rows, "ra") == ["allow:ok"] * 3 + ["stop:handoff_budget_exceeded"] * 2
    assert len(policies) == 2 and BASELINE.version in policies
    assert [r.policy_version for r in rows][-1] != BASELINE.version
    # replay proves the recorded decisions under the policies then in force (both), and the
    # baseline as the new policy undoes the update's stops
    report = replay_runs(runs_of(rows), BASELINE, policies)
    assert not report.unfaithful_runs and not report.partial
    assert report.transitions == {"stop:handoff_budget_exceeded → allow": 2}


def test_a_forged_control_record_is_not_applied() -> None:
    # not JSON: the follower dead-letters it and nothing changes; the run is not killed
    forged = (_ms(5), CONTROL, InputRecord(CONTROL, 0, 0, None, b'{"type":"kill_switch"'))
    records = [forged, _request("ra", 0, 10)]
    rows, policies, _ = decide_topics(records, BASELINE, 1, APPROVALS, CONTROL)
    assert _outcomes(rows, "ra") == ["allow:ok"] and list(policies) == [BASELINE.version]


def test_records_are_decided_in_timestamp_order_whatever_order_they_were_read_in() -> None:
    # _records returns the requests topic, then the approvals topic, then gov.control
    records = [_request("ra", n, 10 * n) for n in range(4)][::-1]
    rows, policies, _ = decide_topics(records, BASELINE, 1, APPROVALS, CONTROL)
    assert [r.offset for r in rows] == [0, 1, 2, 3]
    report = replay_runs(runs_of(rows), policy_with(max_handoffs=2), policies)
    assert not report.unfaithful_runs and report.transitions == {
        "allow → stop:handoff_budget_exceeded": 2
    }
