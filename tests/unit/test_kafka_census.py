"""bench.kafka_census reads the fetch wait, the topics fetched and the bytes produced by topic
from requests as aiokafka encodes them (the census's numbers rest on these two parsers)."""

from __future__ import annotations

import pytest
from aiokafka.protocol import fetch, produce

from bench.kafka_census import _fetch_detail, _produce_bytes

pytestmark = pytest.mark.unit


def _fetch_body(version: int) -> bytes:
    cls = getattr(fetch, f"FetchRequest_v{version}")
    partition = [(p, 100 + p, 1 << 20) for p in range(3)]
    if version >= 9:
        partition = [(p, -1, 100 + p, 0, 1 << 20) for p in range(3)]
    elif version >= 5:
        partition = [(p, 100 + p, 0, 1 << 20) for p in range(3)]
    topics = [("gov.handoff.requests", partition), ("gov.approvals", partition[:1])]
    head: tuple = (-1, 10, 1, 1 << 20, 1)
    if version >= 11:
        return cls(*head, 0, -1, topics, [], "").encode()  # the rack
    if version >= 7:
        return cls(*head, 0, -1, topics, []).encode()
    return cls(*head, topics).encode()


@pytest.mark.parametrize("version", [4, 5, 7, 9, 10, 11])
def test_a_fetch_request_gives_its_wait_and_every_topic(version: int) -> None:
    if not hasattr(fetch, f"FetchRequest_v{version}"):
        pytest.skip(f"aiokafka has no FetchRequest_v{version}")
    wait, topics = _fetch_detail(version, memoryview(_fetch_body(version)))
    assert wait == 10
    assert topics == ["gov.handoff.requests", "gov.approvals"]


def test_a_fetch_version_it_cannot_read_names_no_topic() -> None:
    assert _fetch_detail(3, memoryview(bytes(40)))[1] == ["?"]


def test_a_produce_request_gives_its_record_bytes_by_topic() -> None:
    records = [(0, b"x" * 70), (3, b"y" * 30)]
    body = produce.ProduceRequest_v3(
        None, -1, 30000, [("gov.decisions", records), ("runs-changelog", [(1, b"z" * 5)])]
    ).encode()
    assert _produce_bytes(3, memoryview(body)) == {"gov.decisions": 100, "runs-changelog": 5}
    tx = produce.ProduceRequest_v3("tx-1", -1, 30000, [("gov.decisions", records)]).encode()
    assert _produce_bytes(3, memoryview(tx)) == {"gov.decisions": 100}
