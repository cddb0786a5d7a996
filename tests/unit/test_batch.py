"""The worker's batch step: a Kafka redelivery of the same record vs a client's retry."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.state import RunState
from baton.schemas.policy import load_policy
from tests.helpers import handoff

pytestmark = pytest.mark.unit


def _record(offset: int) -> InputRecord:
    ev = handoff("run_1", 1, "research")
    return InputRecord("gov.handoff.requests", 0, offset, b"run_1", ev.to_json())


@pytest.mark.parametrize("exactly_once", [False, True])
def test_redelivered_record_and_client_retry(exactly_once: bool) -> None:
    states: dict[bytes, RunState] = {}
    proc = BatchProcessor(load_policy(None), 1, states, worker="w", exactly_once=exactly_once)
    now = datetime.now(UTC)
    first = proc.process([_record(10)], now)
    [(_, decision)] = first.decisions
    assert first.changed and decision.offset == 10

    again = proc.process([_record(10)], now)  # the same record, delivered again by Kafka
    assert not again.changed
    if exactly_once:
        # its decision went out in the transaction that wrote the state: not a second time
        assert again.decisions == [] and proc.redelivered == 1
    else:
        assert [d for _, d in again.decisions] == [decision]  # the design's re-emission

    retry = proc.process([_record(11)], now)  # the client sent the request again
    assert [d for _, d in retry.decisions] == [decision] and not retry.changed
    assert states[b"run_1"].handoff_count == 1
