"""Attacks on the second read of `baton replay --from-kafka --since` (session 19 H6, on
09179d6: a record read before the range is kept by its place and the kept records of the
runs that go on in the range are read again at the end, cli/replay_kafka_read.py). Each test
is one attack; those marked xfail(strict=True) broke through (the reason says how), left for
the lead to fix. Without Kafka: a stand-in Consumer that starts each partition at the offset
it is assigned."""

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

SETTINGS = Settings(bootstrap="127.0.0.1:1", partitions=1)


def _replay(monkeypatch: pytest.MonkeyPatch, recreated: bool) -> int:
    """ra's handoffs at 0 and 1 s, before the range (from 100 s), its third at 200 s in it;
    ``recreated``: when the partition is read again, its offset 0 holds rb's handoff (the
    topic deleted and made again, a broker that keeps its records in memory restarted, and
    a worker wrote there since), not ra's first."""
    ra = [handoff(f"ra-h{n}", "t0", "p", "r", run_id="ra").to_json() for n in range(3)]
    rb = handoff("rb-h0", "t0", "p", "r", run_id="rb").to_json()
    stamps = [_ms(0), _ms(1), _ms(200)]
    assigned: list[int] = []

    def said(topic: str, offset: int) -> Iterator[_Said]:
        if topic == REQUESTS:
            for n, (stamp, value) in enumerate(zip(stamps, ra, strict=True)):
                key = b"ra"
                if recreated and len(assigned) > 1 and n == 0:
                    key, value = b"rb", rb
                if n >= offset:
                    yield _Said(topic, 0, n, stamp, key, value)
        yield _Said(topic, 0, -1, 0, None, _EOF)

    lazy_topics(monkeypatch, said, assigned)
    report, _ = replay_from_kafka(SETTINGS, STRICTER, BASELINE, at(100), None)
    return _exit_code(report)


def test_the_same_history_read_again_shows_the_change(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing changes between the two reads: the stricter policy stops ra's third
    handoff, in the range, exit 1 (before 09179d6 too)."""
    assert _replay(monkeypatch, recreated=False) == 1


def test_a_kept_place_holding_another_record_when_read_again_fails_the_replay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ra's first handoff's place (offset 0) holds rb's handoff when read again: the
    record read first is gone, and the replay must say so (BrokerUnavailable, exit 7),
    never replay ra without it."""
    try:
        code = _replay(monkeypatch, recreated=True)
    except BrokerUnavailable:
        return
    assert code in (1, 7)
