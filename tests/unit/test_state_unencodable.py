"""A run state no record can hold (a forged changelog record's counter at 2**64 - 1, which the
next event takes past what orjson writes) ends its own events as dead letters, never the batch:
the batch step encoded changed runs outside the per-record guard, so one such record raised
out of ``BatchProcessor.process`` and every worker reading the partition stopped on it
(found by the session-11 attack on the compiled core, F4: both builds)."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.state import RunState
from baton.schemas.decision import Outcome
from baton.schemas.policy import load_policy
from tests.helpers import handoff

pytestmark = pytest.mark.unit

TOPIC = "gov.handoff.requests"


def _forged(states: dict[bytes, RunState], proc: BatchProcessor, now: datetime) -> None:
    """run_1 as a worker writes it after one handoff, its ``mk`` counter then set to 2**64 - 1
    in the record (orjson reads it; one more mark cannot be written)."""
    proc.process([InputRecord(TOPIC, 0, 1, b"run_1", handoff("run_1", 1, "a").to_json())], now)
    wire = orjson.loads(states[b"run_1"].to_bytes())
    assert wire["mk"] < 2**63
    wire["mk"] = 2**64 - 1
    states[b"run_1"] = RunState.from_bytes(orjson.dumps(wire))


def test_a_state_no_record_can_hold_dead_letters_its_events_and_the_batch_goes_on() -> None:
    states: dict[bytes, RunState] = {}
    proc = BatchProcessor(load_policy(None), 1, states, worker="w")
    now = datetime.now(UTC)
    _forged(states, proc, now)
    before = states[b"run_1"]
    records = [
        InputRecord(TOPIC, 0, 2, b"run_1", handoff("run_1", 2, "b").to_json()),
        InputRecord(TOPIC, 0, 3, b"run_2", handoff("run_2", 1, "a").to_json()),
    ]
    out = proc.process(records, now)  # raised TypeError: Integer exceeds 64-bit range
    # run_2 is decided as ever; run_1's event is a dead letter naming why, nothing of it
    # published (no decision whose state was never written), its state left as it was
    assert [d.run_id for _, d in out.decisions] == ["run_2"]
    assert out.decisions[0][1].outcome is Outcome.ALLOW
    [dead] = out.dead_letters
    letter = orjson.loads(dead.value)
    assert dead.key == b"run_1" and "64-bit" in orjson.dumps(letter).decode(), letter
    assert b"run_1" not in out.changed and states[b"run_1"] is before
