"""`baton replay --from-kafka`: a record the worker decided nothing for where it was read (a
dead letter: not an event, another run's, an event on the wrong topic; or an event on another
run's partition, forwarded and decided where its copy is read) tells nothing about its key's
run: it neither begins the run before the range nor in a trimmed partition's window, nor
makes the run's start "not a request" (session 18 H6). Each made the run partial, its
change under a stricter policy hidden, exit 0. Without Kafka: the topics through the
stand-in Consumer of tests/unit/test_attacks_session17_replay_kafka.py, or decide_topics.
"""

from __future__ import annotations

import pytest

from baton.cli.replay_kafka import decide_topics, replay_decided, replay_from_kafka
from baton.processors.batch import InputRecord
from baton.schemas.settings import Settings
from tests.unit.test_attacks_session17_replay_kafka import _trimmed_topics
from tests.unit.test_engine_support import at, completed, handoff
from tests.unit.test_replay_kafka_read_order import (
    APPROVALS,
    BASELINE,
    CONTROL,
    REQUESTS,
    STRICTER,
    _exit_code,
    _ms,
    _NoEvent,
)

pytestmark = pytest.mark.unit


def _ra(first_s: float = 100) -> list[tuple[int, int, object]]:
    """Run ra's three handoffs (the stricter policy stops the third), offsets 0-2."""
    events = [handoff(f"ra-h{n}", f"t{n}", "p", "r", run_id="ra") for n in range(3)]
    return [(n, _ms(first_s + n), event) for n, event in enumerate(events)]


class _Keyed:
    """``event``'s bytes under another run's key (a key mismatch: a dead letter)."""

    def __init__(self, run_id: str, event) -> None:
        self.run_id, self._event = run_id, event

    def to_json(self) -> bytes:
        return self._event.to_json()


@pytest.mark.parametrize(
    "dead",
    [
        _NoEvent("ra"),  # not an event
        handoff("x-h0", "t9", "p", "r", run_id="ra"),  # a request on the approvals topic
        _Keyed("ra", completed("zz-h0", "t0", "r", run_id="zz")),  # another run's event
    ],
    ids=["not-an-event", "wrong-topic", "key-mismatch"],
)
def test_a_dead_letter_stamped_before_since_on_a_quiet_partition_does_not_begin_its_run(
    monkeypatch: pytest.MonkeyPatch, dead: object
) -> None:
    """A writer of gov.approvals appends one dead letter under run ra's key, stamped before
    --since: the approvals partition, quiet, has its clock there, so the record was read
    "before the range" and ra was partial (begun before it), its third handoff's stop under
    the stricter policy hidden, exit 0. The worker decided nothing for it: ra is replayed."""
    _trimmed_topics(monkeypatch, {REQUESTS: _ra(), APPROVALS: [(0, _ms(0), dead)]})
    settings = Settings(bootstrap="127.0.0.1:1", partitions=1)
    report, _ = replay_from_kafka(settings, STRICTER, BASELINE, at(50), None)
    assert not report.partial, report.partial
    assert [r.run_id for r in report.changed_runs] == ["ra"]
    assert _exit_code(report) == 1


def test_a_dead_letter_in_a_trimmed_partitions_window_does_not_make_its_run_partial(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A trimmed approvals partition (its first record not at offset 0) whose records are
    dead letters under ra's key: ra had "a record within run_retention_s of the partition's
    first record", partial (it may have begun in what is gone), its change hidden, exit 0.
    A dead letter is no record of ra's for the worker."""
    _trimmed_topics(monkeypatch, {REQUESTS: _ra(), APPROVALS: [(7, _ms(90), _NoEvent("ra"))]})
    settings = Settings(bootstrap="127.0.0.1:1", partitions=1, run_retention_s=3600)
    report, _ = replay_from_kafka(settings, STRICTER, BASELINE, None, None)
    assert not report.partial, report.partial
    assert _exit_code(report) == 1


def _partitioned(monkeypatch: pytest.MonkeyPatch, held: list[tuple]) -> None:
    """A broker of one topic, gov.handoff.requests, of two partitions holding ``held``
    ((partition, offset, stamp ms, key, value), polled in that order): no Kafka."""
    import confluent_kafka

    import baton.streams.net
    from tests.unit.test_attacks_session17_replay_kafka import _EOF, _Said

    class _Topic:
        error = None
        partitions = (0, 1)

    class _Consumer:
        def __init__(self, config: dict) -> None:
            self._queue: list[_Said] = []

        def list_topics(self, topic: str, timeout: float):
            return type("Meta", (), {"topics": {topic: _Topic()}})()

        def assign(self, parts: list) -> None:
            for topic in dict.fromkeys(tp.topic for tp in parts):
                mine = [_Said(topic, *h) for h in held if topic == REQUESTS]
                self._queue += mine + [_Said(topic, p, -1, 0, None, _EOF) for p in (0, 1)]

        def get_watermark_offsets(self, tp: object, timeout: float = 0, cached: bool = False):
            return (-1001, -1001)  # librdkafka's OFFSET_INVALID: not known (read to the EOF)

        def poll(self, timeout: float):
            return self._queue.pop(0) if self._queue else None

        def close(self) -> None:
            pass

    monkeypatch.setattr(confluent_kafka, "Consumer", _Consumer)
    monkeypatch.setattr(baton.streams.net, "check_reachable", lambda *a, **k: None)


def test_an_event_on_another_runs_partition_before_since_does_not_begin_its_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A completion of run ra written, stamped before --since, to partition 1 (hand-picked:
    ra's key hashes to 0), which no other record has moved past --since: the worker forwarded
    it to partition 0 and decided the copy there when it read it (after ra's handoffs: no
    copy is in the range). The misplaced original made ra "begun before the range", its
    change hidden, exit 0."""
    from baton.streams.partitioner import partition_for

    assert partition_for(b"ra", 2) == 0
    misplaced = completed("ra-h0", "t0", "r", run_id="ra")
    held = [(1, 0, _ms(0), b"ra", misplaced.to_json())]
    held += [(0, o, stamp, b"ra", event.to_json()) for o, stamp, event in _ra()]
    _partitioned(monkeypatch, held)
    settings = Settings(bootstrap="127.0.0.1:1", partitions=2)
    report, _ = replay_from_kafka(settings, STRICTER, BASELINE, at(50), None)
    assert not report.partial, report.partial
    assert [r.run_id for r in report.changed_runs] == ["ra"]
    assert _exit_code(report) == 1


def _ra_requests(first_s: float = 10) -> list:
    """Run ra's three handoffs on gov.handoff.requests (partition 0), stamped from first_s."""
    from tests.unit.test_replay_kafka_read_order import _request

    return [_request("ra", n, n, first_s + 10 * n) for n in range(3)]


@pytest.mark.parametrize(
    "first",
    [
        # a completion on the approvals topic (wrong topic)
        (APPROVALS, 0, b"ra", completed("ra-h0", "t0", "r", run_id="ra")),
        # another run's completion under ra's key (key mismatch)
        (APPROVALS, 0, b"ra", completed("zz-h0", "t0", "r", run_id="zz")),
        # ra's completion on partition 1 of two (ra's key hashes to 0): forwarded
        (REQUESTS, 1, b"ra", completed("ra-h0", "t0", "r", run_id="ra")),
    ],
    ids=["wrong-topic", "key-mismatch", "forwarded"],
)
def test_a_record_decided_nothing_for_before_a_runs_first_request_leaves_it_whole(
    first: tuple,
) -> None:
    """A writer of a topic puts one record under ra's key on a quiet partition, stamped
    5 s, before ra's first request (10 s): merged by clock it is read first. It is no run
    event of ra's there (the worker dead-lettered or forwarded it), yet ra's "first event in
    the range" was not a request: ra partial, the stricter policy's stop of its third
    handoff hidden, exit 0."""
    topic, partition, key, event = first
    record = (_ms(5), topic, InputRecord(topic, partition, 0, key, event.to_json()))
    decided = decide_topics([record, *_ra_requests()], BASELINE, 2, APPROVALS, CONTROL)
    report = replay_decided(decided, STRICTER)
    assert not report.partial, report.partial
    assert [r.run_id for r in report.changed_runs] == ["ra"]
    assert _exit_code(report) == 1
