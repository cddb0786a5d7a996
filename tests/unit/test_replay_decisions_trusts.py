"""The five cases `--from-kafka --redecide` gets wrong (strict xfails in
tests/unit/test_attacks_session19_replay_kafka.py; docs/replay.md "What `--redecide`
trusts"), replayed from what the workers decided (gov.decisions): each right. The decisions
are the real engine's (the worker's batch step, its chain key), published as a worker
publishes them; the topics' order and stamps the redecide path trusted play no part."""

from __future__ import annotations

from datetime import timedelta

import pytest

from baton.cli.replay_decisions import replay_decisions
from baton.processors.batch import InputRecord
from baton.processors.control_apply import ControlInForce, apply_control_record
from baton.processors.engine import NO_KILLS, evict
from baton.schemas.events import KillSwitch, KillSwitchReleased
from baton.schemas.settings import Settings
from baton.sinks.replay_source import ReplayScope
from baton.streams.partitioner import partition_for
from tests.unit.test_engine_support import at, finished, granted, handoff, policy_with
from tests.unit.test_replay_decisions_support import KEY, DecisionsTopic, Worker, stand_in_kafka
from tests.unit.test_replay_kafka_read_order import _exit_code

pytestmark = pytest.mark.unit

BASELINE = policy_with(max_handoffs=20)
STRICTER = policy_with(max_handoffs=2)


def _replay_code(
    monkeypatch: pytest.MonkeyPatch,
    topic: DecisionsTopic,
    new_policy: object = STRICTER,
    scope: ReplayScope | None = None,
) -> tuple[int, object]:
    stand_in_kafka(monkeypatch, topic)
    settings = Settings(bootstrap="127.0.0.1:1", partitions=topic.partitions)
    report, *_ = replay_decisions(settings, scope or ReplayScope(), new_policy, KEY, 1, 3600.0)
    return _exit_code(report), report


@pytest.mark.parametrize("since", [None, 3 * 86_400 - 100])
def test_a_run_id_used_again_after_its_tombstone_is_forgotten_shows_its_change(
    monkeypatch: pytest.MonkeyPatch, since: float | None
) -> None:
    """ra finished at 0 s; the worker's sweep evicted it to a tombstone and forgot that a
    day later: its three handoffs three days on are a new run (a new chain), the stricter
    policy's stop of the third a change; rb is in scope too."""
    topic = DecisionsTopic(1)
    worker = Worker(topic, BASELINE)
    worker.decide(finished(run_id="ra"), 0)
    later = 3 * 86_400
    for key, state in list(worker.states.items()):  # the sweep: evicted, then forgotten
        tomb = evict(state, at(later) - timedelta(days=2), 3600.0, 86_400.0)
        assert tomb is not None and evict(tomb, at(later), 3600.0, 86_400.0) is None
        del worker.states[key]
    for n in range(3):
        worker.decide(handoff(f"ra-h{n}", f"t{n}", "p", "q", run_id="ra"), later + n)
    worker.decide(handoff("rb-h0", "t0", "p", "q", run_id="rb"), later + 10)
    assert [d.outcome for d in worker.published if d.run_id == "ra"][-3:] == ["allow"] * 3
    code, report = _replay_code(
        monkeypatch, topic, scope=ReplayScope(since=None if since is None else at(since))
    )
    assert code == 1 and [r.run_id for r in report.changed_runs] == ["ra"], report.partial


def test_runs_past_one_workers_cap_in_a_fleet_show_their_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two workers with max_runs 3, a partition each: three runs fill partition 0's worker,
    ra's three handoffs on partition 1 are allowed by the other; the stricter policy's stop of
    ra's third is a change (a replay with one worker's cap stopped ra under both)."""
    topic = DecisionsTopic(2)
    names = [f"r{n}" for n in range(100)]
    fill = [r for r in names if partition_for(r.encode(), 2) == 0][:3]
    ra = next(r for r in names if partition_for(r.encode(), 2) == 1)
    first = Worker(topic, BASELINE, "w1", max_runs=3)
    second = Worker(topic, BASELINE, "w2", max_runs=3)
    for n, run in enumerate(fill):
        first.decide(handoff(f"{run}-h0", "t0", "p", "q", run_id=run), n)
    for n in range(3):
        second.decide(handoff(f"{ra}-h{n}", f"t{n}", "p", "q", run_id=ra), 10 + n)
    assert "worker_run_limit" not in [d.reason for d in second.published]
    code, report = _replay_code(monkeypatch, topic)
    assert code == 1 and [r.run_id for r in report.changed_runs] == [ra], report.partial


def test_a_run_on_a_quiet_partition_its_writer_stamped_behind_is_in_the_range(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """rx's handoffs, written at 3000-3002 s on a quiet partition and stamped 0-2 s by their
    writer: the worker decided them at 3000 s, and that is the time their decisions say;
    --since 3000 s replays rx and shows the stricter policy's stop."""
    topic = DecisionsTopic(1)
    worker = Worker(topic, BASELINE)
    for n in range(3):
        event = handoff(f"rx-h{n}", f"t{n}", "p", "q", run_id="rx")
        worker.decide(event.model_copy(update={"event_time": at(n)}), 3000 + n)
    code, report = _replay_code(monkeypatch, topic, scope=ReplayScope(since=at(3000)))
    assert code == 1 and [r.run_id for r in report.changed_runs] == ["rx"], report.partial


def test_a_worker_down_across_a_release_shows_the_change_of_its_backlog(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ra killed at 5 s; its handoffs written at 50-70 s while the worker is down; released at
    100 s; the worker comes back at 200 s, applies the kill and the release (its follower
    catches up before it decides), then allows the backlog. Its decisions say so; the
    stricter policy stops the third (the re-deciding replay read the backlog before the
    release: killed under both, exit 0)."""
    topic = DecisionsTopic(1)
    worker = Worker(topic, BASELINE, kills=lambda: NO_KILLS)
    in_force = ControlInForce(NO_KILLS, BASELINE, None, "test")
    kill = KillSwitch(scope="run", run_id="ra", operator="ops", event_time=at(5))
    release = KillSwitchReleased(scope="run", run_id="ra", operator="ops", event_time=at(100))
    for offset, command in enumerate((kill, release)):
        rec = InputRecord("gov.control", 0, offset, None, command.to_json())
        applied = apply_control_record(in_force, rec, "w", at(200))
        in_force = applied.in_force
        assert applied.decision is not None
        topic.publish(applied.decision)
    assert in_force.kills == NO_KILLS or not in_force.kills.runs
    for n in range(3):
        event = handoff(f"ra-h{n}", f"t{n}", "p", "q", run_id="ra")
        worker.decide(event.model_copy(update={"event_time": at(50 + 10 * n)}), 200 + n)
    code, report = _replay_code(monkeypatch, topic)
    assert code == 1 and [r.run_id for r in report.changed_runs] == ["ra"], report.partial


def test_a_bot_grant_a_second_after_its_request_amid_a_skewed_partition_is_not_broken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ra's first handoff; rb's request from an orchestrator 5 s ahead; ra's refund handoff,
    gated; a bot's grant 1 s later; ra's third handoff. The worker read them in that order
    and its decisions say so: replayed, not broken; the stricter policy's stop of the third
    is the change."""
    gated = policy_with(max_handoffs=20, require_approval_for=["billing.refund.create"])
    stricter = policy_with(max_handoffs=2, require_approval_for=["billing.refund.create"])
    topic = DecisionsTopic(1)
    worker = Worker(topic, gated)
    worker.decide(handoff("ra-h0", "t0", "p", "q", run_id="ra"), 10)
    early = handoff("rb-h0", "t0", "p", "q", run_id="rb")
    worker.decide(early.model_copy(update={"event_time": at(24)}), 19)
    refund = handoff("ra-h1", "t1", "p", "q", run_id="ra", action="billing.refund.create")
    (asked,) = worker.decide(refund, 20)
    assert asked.outcome == "approval_required"
    worker.decide(granted(asked.approval_id, "bot", run_id="ra", t=21), 21)
    worker.decide(handoff("ra-h2", "t2", "p", "q", run_id="ra"), 30)
    code, report = _replay_code(monkeypatch, topic, stricter)
    assert report.broken == [] and code == 1, report.partial
    assert [r.run_id for r in report.changed_runs] == ["ra"]


def test_every_workers_record_of_a_kill_is_no_conflict(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers' control followers each record the kill of ra and its release (one id a
    command, each its own worker and time): no run step, no conflict; ra's handoffs after
    the release replay as decided (the stricter policy's stop: exit 1)."""
    topic = DecisionsTopic(1)
    worker = Worker(topic, BASELINE, kills=lambda: NO_KILLS)
    kill = KillSwitch(scope="run", run_id="ra", operator="ops", event_time=at(5))
    release = KillSwitchReleased(scope="run", run_id="ra", operator="ops", event_time=at(100))
    for name, now in (("w1", 6), ("w2", 9)):
        in_force = ControlInForce(NO_KILLS, BASELINE, None, "test")
        for offset, command in enumerate((kill, release)):
            rec = InputRecord("gov.control", 0, offset, None, command.to_json())
            applied = apply_control_record(in_force, rec, name, at(now + 100 * offset))
            in_force = applied.in_force
            assert applied.decision is not None
            topic.publish(applied.decision)
    for n in range(3):
        worker.decide(handoff(f"ra-h{n}", f"t{n}", "p", "q", run_id="ra"), 200 + n)
    code, report = _replay_code(monkeypatch, topic)
    assert code == 1 and report.broken == [], report.partial


def test_follower_records_under_one_id_that_differ_are_no_run_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two workers recorded ra's kill under one id, saying different things (one applied,
    one not: their operators lists differed): no run step either way, ra replays."""
    from tests.unit.test_replay_decisions_support import json_with

    topic = DecisionsTopic(1)
    worker = Worker(topic, BASELINE, kills=lambda: NO_KILLS)
    kill = KillSwitch(scope="run", run_id="ra", operator="ops", event_time=at(5))
    rec = InputRecord("gov.control", 0, 0, None, kill.to_json())
    recorded = apply_control_record(ControlInForce(NO_KILLS, BASELINE, None, "t"), rec, "w1", at(6))
    assert recorded.decision is not None
    topic.publish(recorded.decision)
    topic.append(b"ra", json_with(recorded.decision, reason="kill_switch_released", worker="w2"))
    for n in range(3):
        worker.decide(handoff(f"ra-h{n}", f"t{n}", "p", "q", run_id="ra"), 200 + n)
    code, report = _replay_code(monkeypatch, topic)
    assert code == 1 and report.broken == [], report.partial
