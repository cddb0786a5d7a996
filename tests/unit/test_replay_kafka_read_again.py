"""`baton replay --from-kafka --since` holds a record read before the range by where it is,
not by its bytes, and reads the kept records of the runs that go on in the range again at the
end (cli/replay_kafka_read.py): a record gone in between (retention, a deletion) fails the
replay closed, named, rather than replaying its run without it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from baton.cli.replay_kafka import replay_from_kafka
from baton.schemas.errors import BrokerUnavailable
from baton.schemas.settings import Settings
from tests.unit.test_attacks_session17_replay_kafka import _EOF, _Said
from tests.unit.test_attacks_session19_replay_kafka import lazy_topics
from tests.unit.test_engine_support import at, handoff
from tests.unit.test_replay_kafka_read_order import BASELINE, REQUESTS, STRICTER, _exit_code, _ms

pytestmark = pytest.mark.unit


class _Refused(_Said):
    """A partition's error as Consumer.poll gives it: not allowed to read the topic."""

    def error(self) -> object:
        from confluent_kafka import KafkaError

        return KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)


SETTINGS = Settings(bootstrap="127.0.0.1:1", partitions=1)


def _replay(monkeypatch: pytest.MonkeyPatch, gone: bool, refused: bool = False) -> int:
    """ra's handoffs at 0 and 1 s, before the range (from 100 s), its third at 200 s in it;
    ``gone``: the partition's first record is gone when it is read again; ``refused``: the
    second read answers an authorization error instead of the records."""
    ra = [handoff(f"ra-h{n}", "t0", "p", "r", run_id="ra").to_json() for n in range(3)]
    stamps = [_ms(0), _ms(1), _ms(200)]
    assigned: list[int] = []

    def said(topic: str, _offset: int) -> Iterator[_Said]:
        if refused and len(assigned) > 1:
            yield _Refused(topic, 0, -1, 0, None, None)
            return
        if topic == REQUESTS:
            for n, (stamp, value) in enumerate(zip(stamps, ra, strict=True)):
                if not (gone and len(assigned) > 1 and n == 0):
                    yield _Said(topic, 0, n, stamp, b"ra", value)
        yield _Said(topic, 0, -1, 0, None, _EOF)

    lazy_topics(monkeypatch, said, assigned)
    report, _ = replay_from_kafka(SETTINGS, STRICTER, BASELINE, at(100), None)
    return _exit_code(report)


def test_a_run_begun_before_since_is_replayed_whole_from_its_records_read_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stricter policy stops ra's third handoff, in the range: a change (exit 1)."""
    assert _replay(monkeypatch, gone=False) == 1


def test_a_record_before_since_gone_when_read_again_fails_the_replay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ra's first handoff gone between the two reads: no replay of ra without it (its third
    would be its second, allowed under both: exit 0), the read fails, named."""
    with pytest.raises(BrokerUnavailable, match="read before the range is gone"):
        _replay(monkeypatch, gone=True)


def test_an_error_on_the_second_read_is_named_as_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """The second read refused (an ACL changed between the reads): the replay fails closed
    and says why, not that a record "is gone" (what the first version said for any error)."""
    with pytest.raises(BrokerUnavailable, match=r"again: .*(?i:authoriz)") as failed:
        _replay(monkeypatch, gone=False, refused=True)
    assert "gone" not in str(failed.value)


def _live(monkeypatch: pytest.MonkeyPatch, after_eof: bool) -> int:
    """ra's two handoffs (0 and 1 s), then a third (2 s) a live writer appends while the
    replay reads: past the partition's end its first fetch reported (``after_eof`` False), or
    after its end-of-partition while the other topics are still read."""
    ra = [handoff(f"ra-h{n}", "t0", "p", "r", run_id="ra").to_json() for n in range(3)]

    def said(topic: str, _offset: int) -> Iterator[_Said]:
        if topic == REQUESTS:
            yield from (_Said(topic, 0, n, _ms(n), b"ra", ra[n]) for n in range(2))
            if after_eof:
                yield _Said(topic, 0, -1, 0, None, _EOF)
            yield _Said(topic, 0, 2, _ms(2), b"ra", ra[2])
        yield _Said(topic, 0, -1, 0, None, _EOF)

    lazy_topics(monkeypatch, said, ends=None if after_eof else {REQUESTS: 2})
    report, _ = replay_from_kafka(SETTINGS, STRICTER, BASELINE, None, None)
    return _exit_code(report)


@pytest.mark.parametrize("after_eof", [False, True], ids=["past-first-fetch-end", "after-eof"])
def test_a_record_written_while_the_replay_reads_is_not_read(
    monkeypatch: pytest.MonkeyPatch, after_eof: bool
) -> None:
    """The read ends at each partition's end when it started (H6, session 19: it chased a
    live writer): ra's third handoff, which the stricter policy stops, was written after that,
    so nothing in the history read changes (exit 0; with the third read: 1)."""
    assert _live(monkeypatch, after_eof) == 0
