"""A record Kafka delivers again after its run's decision for it is no longer kept.

A worker killed between writing a batch's states and committing its offsets (Faust commits
every ``commit_interval_s``) leaves its successor to read those records again, against the
states that already remember them. A run keeps its newest six replies: a redelivered
handoff older than that was answered ``stop reply_not_kept``, a second answer contradicting
the first (``allow``) in the decisions topic, the stop topic and the audit (CI at b7d4158,
tests/faults/test_worker_failover.py). Its answer is out, so it is answered with nothing.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.batch_records import answered_before
from baton.processors.state import RECENT_REPLIES, RunState
from baton.schemas.decision import Outcome, Phase, Reason
from baton.schemas.events import HandoffCompleted
from baton.schemas.policy import load_policy
from tests.helpers import handoff

pytestmark = pytest.mark.unit

TOPIC = "gov.handoff.requests"
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
#: the records' Kafka timestamp: produced a second before the worker decided them
STAMP = NOW.timestamp() - 1
RUN = "run_r"


def _handoff(n: int, offset: int) -> InputRecord:
    ev = handoff(RUN, n, f"t{n}", event_time=NOW)
    return InputRecord(TOPIC, 0, offset, RUN.encode(), ev.to_json(), None, STAMP)


def _report(n: int, offset: int) -> InputRecord:
    ev = HandoffCompleted(
        request_id=f"{RUN}-h{n}", run_id=RUN, task_id=f"t{n}", agent="researcher",
        cost_usd=0.5, tool_calls=1, event_time=NOW,
    )  # fmt: skip
    return InputRecord(TOPIC, 0, offset, RUN.encode(), ev.to_json(), None, STAMP)


def _history(exactly_once: bool) -> tuple[BatchProcessor, dict[bytes, RunState], list[InputRecord]]:
    """Handoffs 1..8 of one run, each with its report: 16 records at offsets 100..115."""
    states: dict[bytes, RunState] = {}
    proc = BatchProcessor(load_policy(None), 1, states, worker="w", exactly_once=exactly_once)
    records = [r for n in range(1, 9) for r in (_handoff(n, 98 + 2 * n), _report(n, 99 + 2 * n))]
    out = proc.process(records, NOW)
    assert [d.outcome for _, d in out.decisions[::2]] == [Outcome.ALLOW] * 8
    return proc, states, records


@pytest.mark.parametrize("exactly_once", [False, True])
@pytest.mark.parametrize("restored", [False, True], ids=["held", "restored"])
def test_a_redelivered_record_whose_decision_is_gone_gets_no_second_answer(
    exactly_once: bool, restored: bool
) -> None:
    proc, states, records = _history(exactly_once)
    if restored:  # the successor's view: the state read back from its changelog record
        states[RUN.encode()] = RunState.from_bytes(states[RUN.encode()].to_bytes())
    before = states[RUN.encode()].to_bytes()
    old = records[: 2 * 8 - RECENT_REPLIES]  # their decisions no longer kept
    out = proc.process(old, NOW)
    assert out.decisions == [] and out.dead_letters == [] and not out.changed
    assert proc.redelivered == len(old)
    state = states[RUN.encode()]
    assert state.to_bytes() == before  # nothing counted again: handoffs, spend, tool calls
    assert (state.handoff_count, state.spent_usd, state.tool_calls) == (8, 4.0, 8)


def test_a_redelivered_record_still_kept_is_re_emitted_under_at_least_once() -> None:
    proc, _, records = _history(exactly_once=False)
    out = proc.process([records[-1]], NOW)
    [(_, d)] = out.decisions
    assert d.reemitted and d.offset == records[-1].offset and proc.redelivered == 0


def test_a_client_retry_of_a_request_no_longer_kept_is_still_answered_with_a_stop() -> None:
    # a retry is a new record, above every decision the run keeps: answered, never silently
    proc, states, _ = _history(exactly_once=False)
    out = proc.process([_handoff(1, 200), _report(2, 201)], NOW)
    assert [(d.outcome, d.reason) for _, d in out.decisions] == [
        (Outcome.STOP, Reason.REPLY_NOT_KEPT),
        (Outcome.RECORDED, Reason.REPLY_NOT_KEPT),
    ]
    assert proc.redelivered == 0 and states[RUN.encode()].spent_usd == 4.0


def test_only_a_requests_topic_refusal_as_not_kept_can_be_a_redelivery() -> None:
    proc, states, records = _history(exactly_once=False)
    state = states[RUN.encode()]
    [(_, stop)] = proc.process([_handoff(1, 300)], NOW).decisions
    below = records[0]
    assert answered_before(state, [stop], below)
    # an approvals-topic answer (its kept decisions' positions may be of either topic), a
    # reemitted copy, another reason, two decisions: never
    assert not answered_before(state, [replace(stop, phase=Phase.APPROVAL)], below)
    assert not answered_before(state, [replace(stop, reemitted=True)], below)
    assert not answered_before(state, [replace(stop, reason=Reason.REQUEST_ID_REUSED)], below)
    assert not answered_before(state, [stop, stop], below)
    # positions compare within one partition (a topic's partition count changed since),
    # and a record above every kept decision is a new one
    assert not answered_before(state, [stop], replace(below, partition=1))
    # a record without a Kafka timestamp cannot be told from a new one
    assert not answered_before(state, [stop], replace(below, timestamp=None))
    assert not answered_before(state, [stop], replace(below, offset=records[-1].offset + 1))


def test_a_record_below_the_kept_positions_but_stamped_after_them_is_answered() -> None:
    # the requests topic made again, its offsets from 0 (a fresh embedded broker: `baton up`
    # restores the runs from the audit with the positions recorded on the old topic): a
    # client's retry there reads as below the kept decisions, but was produced after them
    proc, _, records = _history(exactly_once=False)
    retry = replace(records[0], timestamp=NOW.timestamp() + 60)
    [(_, d)] = proc.process([retry], NOW + timedelta(minutes=1)).decisions
    assert (d.outcome, d.reason) == (Outcome.STOP, Reason.REPLY_NOT_KEPT)
    assert proc.redelivered == 0
