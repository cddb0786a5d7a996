"""Attacks on `baton replay --from-kafka` reading gov.decisions (session 20 H3), after H1's
(tests/unit/test_attacks_session20_replay_decisions.py): run ra's four handoffs decided
under a policy of 20; the stricter policy of 2 stops the third and fourth, so the gate
answers 1 when nothing is forged. What a writer of gov.decisions, or an honest deployment,
does to that answer must end as exit 7 (or 4: the broker cannot be read), never 0."""

from __future__ import annotations

import dataclasses

import pytest

from baton.cli.replay_decisions import replay_decisions
from baton.processors.replay import ReplayReport
from baton.schemas.decision import Decision, Phase
from baton.schemas.settings import Settings
from baton.sinks.replay_source import ReplayScope
from baton.streams.partitioner import partition_for
from tests.unit.test_engine_support import handoff, policy_with
from tests.unit.test_replay_decisions_support import KEY, DecisionsTopic, Worker, stand_in_kafka
from tests.unit.test_replay_kafka_read_order import _exit_code

pytestmark = pytest.mark.unit

BASELINE = policy_with(max_handoffs=20)
STRICTER = policy_with(max_handoffs=2)


def _history() -> tuple[DecisionsTopic, list[Decision]]:
    """gov.decisions holding ra's four handoffs (and the worker's policy record)."""
    topic = DecisionsTopic(2)
    worker = Worker(topic, BASELINE)
    for n in range(4):
        worker.decide(handoff(f"ra-h{n}", f"t{n}", "p", "q", run_id="ra"), 10 + n)
    return topic, [d for d in worker.published if d.run_id == "ra" and not d.reemitted]


def _replayed(
    monkeypatch: pytest.MonkeyPatch, topic: DecisionsTopic
) -> tuple[ReplayReport, list[str]]:
    stand_in_kafka(monkeypatch, topic)
    settings = Settings(bootstrap="127.0.0.1:1", partitions=topic.partitions)
    report, _, refused, _ = replay_decisions(settings, ReplayScope(), STRICTER, KEY, 1, 3600.0)
    return report, refused


def test_records_under_a_steps_id_shaped_as_a_kill_switchs_do_not_hide_the_runs_tail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """B1: a writer appends ra's third and fourth decisions again, the same id, outcome,
    reason, chain hash and input, as control records with a kill switch's request id (the
    control follower's shape: no run step). FINAL keeps the last record under an id, and
    the replay reads no follower record: ra was replayed as its first two handoffs, the
    stricter policy changed nothing, exit 0. (H1's 2de506f/72caa96 fixed it too, and tests
    the shape without an input.)"""
    topic, ra = _history()
    report, _ = _replayed(monkeypatch, topic)
    assert _exit_code(report) == 1
    for d in ra[2:]:
        topic.publish(dataclasses.replace(d, phase=Phase.CONTROL, request_id="kill_switch:x"))
    report, _ = _replayed(monkeypatch, topic)
    assert report.broken == ["ra"] and _exit_code(report) == 7


def test_a_flood_of_junk_records_is_counted_not_held(monkeypatch: pytest.MonkeyPatch) -> None:
    """B2: every record not used was kept as a dead line (about 350 bytes for a 1-byte
    record) for the whole topic, though 50 are shown: a writer's flood of junk grew the
    replay's memory without bound (0.4 MB at 1,000 junk records, 7.2 MB at 20,000)."""
    import tracemalloc

    def peak(junk: int) -> tuple[int, list[str]]:
        topic, _ = _history()
        for _ in range(junk):
            topic.append(b"ra", b"x")
        tracemalloc.start()
        try:
            report, refused = _replayed(monkeypatch, topic)
            return tracemalloc.get_traced_memory()[1], refused
        finally:
            tracemalloc.stop()
            assert _exit_code(report) == 1

    few, refused_few = peak(1_000)
    many, refused_many = peak(20_000)
    assert many < 1.5 * few, (few, many)
    assert len(refused_many) == 51 and refused_many[-1].startswith("19,950 more records")
    assert refused_few[:50] == refused_many[:50]


def _open_transaction(monkeypatch: pytest.MonkeyPatch, topic: DecisionsTopic, lso: int) -> None:
    """The stand-in Kafka read with ``isolation.level=read_committed`` while a transaction
    begun at ``lso`` on ra's partition is open: as librdkafka, the fetches end at the last
    stable offset (the partition's EOF there), records from it on are not delivered, and the
    high watermark (``get_watermark_offsets``) is the partition's end."""
    import confluent_kafka

    from tests.unit.test_replay_decisions_support import _Message

    stand_in_kafka(monkeypatch, topic)
    base = confluent_kafka.Consumer
    own = partition_for(b"ra", topic.partitions)

    class _ReadCommitted(base):  # type: ignore[misc, valid-type]
        def poll(self, timeout: float) -> object:
            p, offset = self._at
            if p != own or offset < lso:
                return super().poll(timeout)
            if offset == lso:
                self._at = (p, lso + 1)  # (the EOF told once)
                return _Message(p, lso, None, None, eof=True)
            return None  # nothing more within the timeout: the transaction is open

    monkeypatch.setattr(confluent_kafka, "Consumer", _ReadCommitted)


def test_records_past_an_open_transaction_are_no_end_of_the_partition(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """B3: a worker died in a transaction on ra's partition (Kafka aborts it after
    transaction.timeout.ms), after ra's second decision; the worker now owning the
    partition decided ra's third and fourth after it. Read committed, the fetches end at the
    open transaction (the last stable offset), below the high watermark: the read took that
    end for the partition's, ra was replayed as its first two handoffs, exit 0. Records the
    broker holds were not read: the replay cannot answer (exit 7), naming the partition."""
    from baton.schemas.errors import ReplayFailed

    topic = DecisionsTopic(2)
    worker = Worker(topic, BASELINE)
    own = partition_for(b"ra", topic.partitions)
    for n in range(4):
        if n == 2:  # the dead worker's open transaction's first record
            lso = topic.append(b"rq", b"{}", partition=own)
        worker.decide(handoff(f"ra-h{n}", f"t{n}", "p", "q", run_id="ra"), 10 + n)
    report, _ = _replayed(monkeypatch, topic)
    assert _exit_code(report) == 1
    _open_transaction(monkeypatch, topic, lso)
    settings = Settings(bootstrap="127.0.0.1:1", partitions=topic.partitions, connect_timeout_s=0.2)
    with pytest.raises(ReplayFailed, match=rf"gov\.decisions\[{own}\].*transaction") as failed:
        replay_decisions(settings, ReplayScope(), STRICTER, KEY, 1, 3600.0)
    assert failed.value.exit_code == 7


@pytest.mark.parametrize("when", ["before its read", "amid its read"])
def test_a_partition_that_lost_its_records_while_the_replay_ran_is_no_empty_one(
    monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """B5: the broker loses ra's partition's records while the replay runs (Tansu keeps
    records in memory: a restart; the topic made again; an unclean leader election). Read
    after the policy records' partition (run rd, one handoff), it was read as empty: the
    report of rd alone, exit 0. Read amid it (ra's first two records read, then the
    partition restarts at offset 0), its end was taken where it went back to."""
    from baton.schemas.errors import ReplayFailed

    topic = DecisionsTopic(2)
    worker = Worker(topic, BASELINE)
    worker.decide(handoff("rd-h0", "t0", "p", "q", run_id="rd"), 5)
    for n in range(4):
        worker.decide(handoff(f"ra-h{n}", f"t{n}", "p", "q", run_id="ra"), 10 + n)
    star, own = partition_for(b"*", 2), partition_for(b"ra", 2)
    assert star != own
    gone = (star, len(topic.records[star]) - 1) if when == "before its read" else (own, 1)

    def written(p: int, offset: int) -> None:
        if (p, offset) == gone:
            topic.records[own] = topic.records[own][: offset + 1]  # (the one polled now)
            topic.lows[own] = 0
            lost.append(True)

    lost: list[bool] = []
    stand_in_kafka(monkeypatch, topic, None, written)
    settings = Settings(bootstrap="127.0.0.1:1", partitions=2, connect_timeout_s=0.2)
    with pytest.raises(ReplayFailed, match=rf"gov\.decisions\[{own}\] (went back|ends at)"):
        replay_decisions(settings, ReplayScope(), STRICTER, KEY, 1, 3600.0)
    assert lost


def test_a_transaction_committed_while_the_read_waits_is_read_however_long(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """B3's wait: a worker's transaction open when the fetch ended, committed while the read
    waits, its records then taking longer to read than connect_timeout_s (a big batch): the
    read goes on while they come (the wait is for the first of them), exit 1."""
    import time

    import confluent_kafka

    from tests.unit.test_replay_decisions_support import _Message

    topic = DecisionsTopic(2)
    worker = Worker(topic, BASELINE)
    own = partition_for(b"ra", topic.partitions)
    for n in range(4):
        if n == 2:
            lso = len(topic.records[own])
        worker.decide(handoff(f"ra-h{n}", f"t{n}", "p", "q", run_id="ra"), 10 + n)
    _open_transaction(monkeypatch, topic, lso)
    read_committed = confluent_kafka.Consumer
    ended: list[int] = []

    class _Committed(read_committed):  # type: ignore[misc, valid-type]
        def poll(self, timeout: float) -> object:
            p, offset = self._at
            if p != own or offset < lso:
                return super().poll(timeout)
            if not ended:  # the fetch ended at the open transaction
                ended.append(offset)
                return _Message(p, offset, None, None, eof=True)
            time.sleep(0.15)  # then it commits: its records, read slowly
            return super(read_committed, self).poll(timeout)

    monkeypatch.setattr(confluent_kafka, "Consumer", _Committed)
    settings = Settings(bootstrap="127.0.0.1:1", partitions=2, connect_timeout_s=0.25)
    report, *_ = replay_decisions(settings, ReplayScope(), STRICTER, KEY, 1, 3600.0)
    assert _exit_code(report) == 1
