"""Attacks on `baton replay --from-kafka` reading gov.decisions (session 20 H1): a writer of the
topic appends records to a history the worker decided (ra's four handoffs under a policy of
20; the stricter policy of 2 stops the third and fourth: exit 1 when nothing is forged). Each
must end as exit 7 naming the run, or a dead line (a record not used, named on stderr):
never a silent exit 0, never a traceback."""

from __future__ import annotations

import dataclasses

import pytest

from baton.cli.replay_decisions import replay_decisions
from baton.processors.recorded import policy_in_force
from baton.processors.replay import ReplayReport
from baton.schemas.decision import Decision, chain_hash
from baton.schemas.settings import Settings
from baton.sinks.replay_source import ReplayScope
from baton.streams.partitioner import partition_for
from tests.unit.test_engine_support import at, handoff, policy_with
from tests.unit.test_replay_decisions_support import (
    KEY,
    DecisionsTopic,
    Worker,
    json_with,
    stand_in_kafka,
)
from tests.unit.test_replay_kafka_read_order import _exit_code

pytestmark = pytest.mark.unit

BASELINE = policy_with(max_handoffs=20)
STRICTER = policy_with(max_handoffs=2)


def _history() -> tuple[DecisionsTopic, Worker]:
    topic = DecisionsTopic(2)
    worker = Worker(topic, BASELINE)
    for n in range(4):
        for run in ("ra", "rb"):
            worker.decide(handoff(f"{run}-h{n}", f"t{n}", "p", "q", run_id=run), 10 + n)
    return topic, worker


def _replayed(
    monkeypatch: pytest.MonkeyPatch,
    topic: DecisionsTopic,
    policy: object = STRICTER,
    key: bytes = KEY,
) -> tuple[ReplayReport, list[str]]:
    stand_in_kafka(monkeypatch, topic)
    settings = Settings(bootstrap="127.0.0.1:1", partitions=topic.partitions)
    report, _, refused, _ = replay_decisions(settings, ReplayScope(), policy, key, 1, 3600.0)
    return report, refused


def _ra(worker: Worker) -> list[Decision]:
    return [d for d in worker.published if d.run_id == "ra" and not d.reemitted]


def _relinked(d: Decision, key: bytes, **changes: object) -> Decision:
    """``d`` changed and linked again with ``key`` (a writer without the workers' key)."""
    from baton.schemas.decision import CHAIN_FIELDS

    forged = dataclasses.replace(d, **changes)
    values = [getattr(forged, f) for f in CHAIN_FIELDS]
    return dataclasses.replace(forged, chain_hash=chain_hash(key, forged.chain_prev or "", values))


def test_nothing_forged_is_exit_1(monkeypatch: pytest.MonkeyPatch) -> None:
    topic, _ = _history()
    report, refused = _replayed(monkeypatch, topic)
    assert _exit_code(report) == 1 and refused == []


@pytest.mark.parametrize("where", ["no key", "another key", "another partition"])
def test_a_copy_of_a_decision_off_its_runs_key_or_partition_breaks_the_run(
    monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """A stop under ra's third decision's id (the stricter policy's answer, so that the
    audit's answer "nothing changes" would hide the change), appended with no key, rb's key,
    or on the other partition."""
    topic, worker = _history()
    third = _ra(worker)[2]
    stop = json_with(third, outcome="stop", reason="handoff_budget_exceeded")
    own = partition_for(b"ra", 2)
    key, partition = {
        "no key": (None, own),
        "another key": (b"rb", own),
        "another partition": (b"ra", 1 - own),
    }[where]
    topic.append(key, stop, partition=partition)
    report, _ = _replayed(monkeypatch, topic, BASELINE)
    assert "ra" in report.broken and "no worker's record" in report.partial["ra"]
    assert _exit_code(report) == 7


def test_records_that_are_no_decisions_are_named_dead_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bad JSON, an empty record, a request event, a decision missing its id, one over the
    sink's size bound: each a line naming where it is; the runs replay as before (exit 1)."""
    topic, worker = _history()
    d = _ra(worker)[0].to_json()
    event = handoff("x", "t", "p", "q", run_id="ra").to_json()
    unnamed = d.replace(b'"decision_id"', b'"decision_idx"')
    for value in (b"{not json", None, event, unnamed, b" " * 1_000_001 + d):
        topic.append(b"ra", value)
    report, refused = _replayed(monkeypatch, topic)
    assert len(refused) == 5 and all("gov.decisions[" in line for line in refused)
    assert max(map(len, refused)) < 1_200
    assert _exit_code(report) == 1


def test_sixty_kilobyte_strings_are_shown_cut_and_break_their_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 60 KB run id and reason under ra's key, a 60 KB reason under ra's last id: ra
    broken, named; no line carries the 60 KB."""
    topic, worker = _history()
    last = _ra(worker)[-1]
    topic.append(b"ra", dataclasses.replace(last, run_id="r" * 60_000).to_json())
    topic.append(b"ra", json_with(last, reason="x" * 60_000))
    report, refused = _replayed(monkeypatch, topic)
    assert "ra" in report.broken and _exit_code(report) == 7
    assert all(len(why) < 2_000 for why in report.partial.values())
    assert all(len(line) < 2_000 for line in refused)


def test_a_decision_linked_without_the_workers_key_is_not_reproduced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A writer's allow of ra's fifth handoff, linked after ra's last decision with a key of
    its own: the proof does not reproduce it (exit 7)."""
    topic, worker = _history()
    last = _ra(worker)[-1]
    event = handoff("ra-h9", "t9", "p", "q", run_id="ra")
    fifth = _relinked(
        last,
        b"not the workers' key",
        decision_id="forged-1",
        request_id="ra-h9",
        chain_prev=last.chain_hash,
        input=event.to_json().decode(),
        decided_at=at(20),
    )
    topic.publish(fifth)
    report, _ = _replayed(monkeypatch, topic, BASELINE)
    assert _exit_code(report) == 7, (report.partial, report.unfaithful_runs)


def test_a_policy_record_under_a_run_or_off_its_partition_is_a_dead_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stricter policy's document as a policy_in_force record under run ra, and one
    under key "*" on the other partition: not read as policies (named); the runs replay as
    before."""
    topic, _ = _history()
    record = policy_in_force(STRICTER, at(0), "w")
    topic.append(b"ra", dataclasses.replace(record, run_id="ra").to_json())
    topic.append(b"*", record.to_json(), partition=1 - partition_for(b"*", 2))
    report, refused = _replayed(monkeypatch, topic)
    assert len(refused) == 2 and all("policy_in_force" in line for line in refused)
    assert _exit_code(report) == 1


def test_a_fork_in_a_runs_chain_breaks_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer's record naming ra's second decision's link, as its third does."""
    topic, worker = _history()
    second, third = _ra(worker)[1:3]
    topic.publish(dataclasses.replace(third, decision_id="forged-2", chain_prev=second.chain_hash))
    report, _ = _replayed(monkeypatch, topic, BASELINE)
    assert "ra" in report.broken and _exit_code(report) == 7


def test_a_record_re_deciding_a_step_later_under_its_id_is_not_reproduced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same outcome and reason under ra's third id (what a worker restarted after a crash
    writes, so FINAL keeps it), its input another handoff, linked without the key: the
    replay decides what FINAL holds and the proof fails (exit 7)."""
    topic, worker = _history()
    third = _ra(worker)[2]
    other = handoff("ra-h2", "t7", "p", "q", run_id="ra").to_json().decode()
    topic.publish(_relinked(third, b"", input=other))
    report, _ = _replayed(monkeypatch, topic, BASELINE)
    assert _exit_code(report) == 7, (report.partial, report.unfaithful_runs)


def test_a_forged_start_before_a_run_in_a_trimmed_partition_breaks_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Retention trimmed ra's partition (rc's decision before ra's gone); a writer appends a
    record of ra decided before ra's first, naming a link no record holds: ra is not passed
    as retention's cut (partial), it is broken. Without the writer: exit 1."""
    assert partition_for(b"ra", 2) == partition_for(b"rc", 2) == 0 != partition_for(b"*", 2)
    topic = DecisionsTopic(2)
    worker = Worker(topic, BASELINE)
    worker.decide(handoff("rc-h0", "t0", "p", "q", run_id="rc"), 0)
    for n in range(4):
        worker.decide(handoff(f"ra-h{n}", f"t{n}", "p", "q", run_id="ra"), 10 + n)
    topic.trim(0, 1)
    report, _ = _replayed(monkeypatch, topic)
    assert _exit_code(report) == 1 and report.partial == {}
    forged = _relinked(_ra(worker)[0], b"", decision_id="forged-0", chain_prev="ab" * 16)
    topic.publish(dataclasses.replace(forged, decided_at=at(1)))
    report, _ = _replayed(monkeypatch, topic, BASELINE)
    assert report.broken == ["ra"] and _exit_code(report) == 7, report.partial


def test_without_a_chain_key_a_start_forged_after_the_run_is_no_retention_cut(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Workers without BATON_AUDIT_CHAIN_KEY (anyone can link a record): in a trimmed
    partition a writer appends a record of ra, decided before ra's first and correctly
    linked to a link no record holds, so that ra reads as cut by retention (partial, its
    change hidden). It was read after ra's chained decisions, whose start it is not: no cut,
    broken."""
    topic = DecisionsTopic(2)
    worker = Worker(topic, BASELINE, key=b"")
    worker.decide(handoff("rc-h0", "t0", "p", "q", run_id="rc"), 0)
    for n in range(4):
        worker.decide(handoff(f"ra-h{n}", f"t{n}", "p", "q", run_id="ra"), 10 + n)
    worker.decide(handoff("rb-h0", "t0", "p", "q", run_id="rb"), 20)
    topic.trim(0, 1)
    first = _ra(worker)[0]
    topic.publish(
        _relinked(first, b"", decision_id="forged-0", chain_prev="ab" * 16, decided_at=at(1))
    )
    report, _ = _replayed(monkeypatch, topic, STRICTER, key=b"")
    assert report.broken == ["ra"] and _exit_code(report) == 7, report.partial


def test_a_flood_of_junk_records_is_counted_not_listed_nor_held(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """20,000 records that are no decisions: 50 named, the rest counted in one line."""
    topic, _ = _history()
    for n in range(20_000):
        topic.append(b"ra", b"junk %d" % n)
    report, refused = _replayed(monkeypatch, topic)
    assert len(refused) == 51 and refused[-1] == "19,950 more records of gov.decisions"
    assert _exit_code(report) == 1


@pytest.mark.parametrize("copy", ["follower record", "unchained"])
def test_a_runs_last_steps_copied_as_no_step_do_not_hide_their_change(
    monkeypatch: pytest.MonkeyPatch, copy: str
) -> None:
    """ra's third and fourth decisions (the stricter policy's stops) written again under
    their ids, saying the same outcome and reason: as a control follower's record (no input,
    control phase: no run step, so FINAL's row left the run, which then ended after its
    second step: nothing changes, exit 0), or without their chain link (an unchained row is
    decided from whatever input it names). A worker re-deciding a step writes it as it
    did: its run is broken."""
    topic, worker = _history()
    for d in _ra(worker)[2:]:
        if copy == "follower record":
            forged = json_with(d, phase="control", input=None)
        else:
            forged = json_with(d, chain_prev=None, chain_hash=None)
        topic.append(b"ra", forged)
    report, _ = _replayed(monkeypatch, topic)
    assert "ra" in report.broken and _exit_code(report) == 7, (report.partial, report.runs)


@pytest.mark.parametrize("link", ["kept", "relinked without the key"])
def test_a_runs_steps_moved_before_since_do_not_take_it_out_of_scope(
    monkeypatch: pytest.MonkeyPatch, link: str
) -> None:
    """ra decided at 0-1 s and its third and fourth handoffs (the stricter policy's stops) at
    100-101 s, rb at 100 s; --since 50 s. A writer re-publishes ra's third and fourth under
    their ids decided at 2-3 s, the same outcome and reason, their link kept (or linked again
    with a key of its own): FINAL holds them, ra has no decision in the range and is not
    replayed, rb alone is: nothing changes, exit 0. Broken instead."""
    topic = DecisionsTopic(2)
    worker = Worker(topic, BASELINE)
    for n in range(4):
        worker.decide(handoff(f"ra-h{n}", f"t{n}", "p", "q", run_id="ra"), n if n < 2 else 98 + n)
    worker.decide(handoff("rb-h0", "t0", "p", "q", run_id="rb"), 100)
    for n, d in enumerate(_ra(worker)[2:], start=2):
        moved = dataclasses.replace(d, decided_at=at(n))
        topic.publish(moved if link == "kept" else _relinked(moved, b"another key"))
    report, _ = _replayed_since(monkeypatch, topic, at(50))
    assert report.broken == ["ra"] and _exit_code(report) == 7, (report.partial, report.runs)


def _replayed_since(
    monkeypatch: pytest.MonkeyPatch, topic: DecisionsTopic, since: object
) -> tuple[ReplayReport, list[str]]:
    stand_in_kafka(monkeypatch, topic)
    settings = Settings(bootstrap="127.0.0.1:1", partitions=topic.partitions)
    scope = ReplayScope(since=since)  # type: ignore[arg-type]
    report, _, refused, _ = replay_decisions(settings, scope, STRICTER, KEY, 1, 3600.0)
    return report, refused


def test_a_run_broken_by_a_record_read_after_it_was_replayed_is_not_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """rd is on the policy records' partition (read first, replayed); a copy of its third
    decision saying stop is on the other partition, read after: rd is broken, and neither
    listed as replayed nor counted in the changes."""
    assert partition_for(b"rd", 2) == partition_for(b"*", 2) == 1
    topic = DecisionsTopic(2)
    worker = Worker(topic, BASELINE)
    for n in range(4):
        for run in ("ra", "rd"):
            worker.decide(handoff(f"{run}-h{n}", f"t{n}", "p", "q", run_id=run), 10 + n)
    third = [d for d in worker.published if d.run_id == "rd"][2]
    topic.append(b"rd", json_with(third, outcome="stop"), partition=0)
    report, _ = _replayed(monkeypatch, topic)
    assert report.broken == ["rd"] and [r.run_id for r in report.runs] == ["ra"]
    assert report.transitions == {"allow → stop:handoff_budget_exceeded": 2}
    assert _exit_code(report) == 7


def test_a_broken_run_fails_every_scope_but_another_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """ra broken (a stop under its third decision's id): --since after all of ra's decisions
    still fails (a writer's record may have taken ra out of the range); --run rb does not."""
    topic, worker = _history()
    topic.append(b"ra", json_with(_ra(worker)[2], outcome="stop"))
    stand_in_kafka(monkeypatch, topic)
    settings = Settings(bootstrap="127.0.0.1:1", partitions=2)
    for scope, code in ((ReplayScope(since=at(13)), 7), (ReplayScope(run_id="rb"), 1)):
        report, *_ = replay_decisions(settings, scope, STRICTER, KEY, 1, 3600.0)
        assert _exit_code(report) == code, (scope, report.partial)
